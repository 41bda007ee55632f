"""What a killed test run leaves behind, and its removal by the next run.

A run that dies by SIGKILL cannot clean up: its state folder (``/tmp/hookdrop-test-*``) and
its PostgreSQL databases (``hookdrop_tpl_*``, ``hookdrop_t_*``) stay. Each is marked with its
owner, ``host pid start-time`` (an ``owner`` file, a database comment), as the demo's harness
marks its runs; a run's start removes those whose owner is dead on this host, and only those:
another live run's, another host's, or unmarked ones are left alone.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
from pathlib import Path

import psutil
import psycopg
from psycopg import sql

from hookdrop.errors import HookdropError

OWNER_FILE = "owner"
_PATTERNS = ("hookdrop\\_tpl\\_%", "hookdrop\\_t\\_%")


def owner_of(pid: int) -> str:
    """``host pid start-time``: a pid alone may be reused by another process."""
    try:
        created = f"{psutil.Process(pid).create_time():.2f}"
    except psutil.NoSuchProcess:
        created = "gone"
    return f"{socket.gethostname()} {pid} {created}"


def dead(recorded: str) -> bool:
    """True when ``recorded`` names a process of this host that no longer runs."""
    parts = recorded.split()
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    return owner_of(int(parts[1])) != recorded


def mark_folder(folder: Path, pid: int) -> None:
    (folder / OWNER_FILE).write_text(owner_of(pid), encoding="utf-8")


def mark_database(admin_url: str, name: str, pid: int) -> None:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                sql.Identifier(name), sql.Literal(owner_of(pid))
            )
        )


def forget_dead_folders(parent: Path) -> list[Path]:
    """Stop the servers of, and delete, the ``hookdrop-test-*`` folders of dead runs."""
    from hookdrop.embedded import stop_embedded

    removed = []
    for folder in parent.glob("hookdrop-test-*"):
        try:
            recorded = (folder / OWNER_FILE).read_text(encoding="utf-8")
        except OSError:
            continue  # not marked (an older run) or not ours to read
        if dead(recorded):
            with contextlib.suppress(HookdropError):
                stop_embedded(folder)  # its guardian has most likely stopped them already
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def forget_dead_databases(admin_url: str) -> list[str]:
    """Drop the test databases whose owning run is dead."""
    with psycopg.connect(admin_url, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database"
            " WHERE datname LIKE %s OR datname LIKE %s",
            _PATTERNS,
        ).fetchall()
        dropped = []
        for name, comment in rows:
            if comment and dead(str(comment)):
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
                dropped.append(str(name))
    return dropped
