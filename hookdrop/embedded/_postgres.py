"""The embedded PostgreSQL: the binaries of the ``pgserver`` package, data in ``<state>/pg``.

PostgreSQL refuses to run as root, so under root it runs as the ``postgres`` system user (or
``nobody``). That user must reach both its data folder and the binaries:

- data: when it cannot traverse the folders leading to the state folder (a 0700 home or
  ``mktemp -d``), the data goes to ``/var/lib/hookdrop/embedded-postgres/<checkout>-<id>``,
  a random id chosen once per state folder and recorded in its ``embedded.json``
  (``hookdrop servers stop --remove`` deletes it);
- binaries: when it cannot reach the installed package (a virtualenv inside such a folder),
  it runs a copy of pgserver's ``bin``, ``lib``, ``share`` and bundled libraries (hard links
  where the file system allows), kept beside the data folder and made once per installation.

Every local user can reach loopback, and the role is a superuser (``COPY ... TO PROGRAM``
runs commands as the server's user), so connections need the state folder's password
(scram-sha-256). A data folder an earlier hookdrop made with ``trust`` gets the password at
its first start.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import psycopg
import structlog
from psycopg import sql

from hookdrop.embedded import _process
from hookdrop.embedded._binaries import binaries_for, can_traverse, remove_copy
from hookdrop.embedded._package import package_dir
from hookdrop.embedded._process import RunAs
from hookdrop.errors import ConfigError, HookdropError

log = structlog.get_logger(__name__)

DATABASE_NAME = "hookdrop"
"""Database created in the embedded PostgreSQL and named in its URL."""

DATABASE_ROLE = "hookdrop"
"""Superuser role of the embedded PostgreSQL (``initdb -U``)."""

START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
_PORT_ATTEMPTS = 3
# Where PostgreSQL's files go when hookdrop runs as root and the unprivileged server user
# cannot reach the state folder.
_ROOT_PG_PARENTS = (Path("/var/lib/hookdrop"), Path("/var/lib/hookdrop/embedded-postgres"))


@dataclass(frozen=True, slots=True)
class Layout:
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"


class _PortInUse(Exception):
    """The chosen port was taken between choosing it and the server binding it."""


def url(port: int, password: str) -> str:
    return f"postgresql://{DATABASE_ROLE}:{password}@{_process.LOOPBACK}:{port}/{DATABASE_NAME}"


# --------------------------------------------------------------------------- where things are


def install_dir() -> Path:
    """pgserver's installation (``bin``, ``lib``, ``share``)."""
    # Located without importing: importing pgserver sets up its own locks and atexit hooks.
    root = package_dir("pgserver", "DATABASE_URL") / "pginstall"
    if not os.access(root / "bin" / "postgres", os.X_OK):
        raise ConfigError(f"DATABASE_URL is not set and {root / 'bin' / 'postgres'} is missing")
    return root


def postgres_dir(state_dir: Path, state: dict[str, Any]) -> Path:
    """Folder holding ``data/`` and ``postgres.log``; recorded once, never moved."""
    recorded = state.get("postgres_dir")
    if isinstance(recorded, str) and recorded:
        return Path(recorded)
    inside = state_dir / "pg"
    if os.geteuid() != 0 or can_traverse(state_dir, _default_run_as()):
        return inside
    return _ROOT_PG_PARENTS[-1] / _relocated_name(state_dir)


def remove_binaries_copy() -> Path | None:
    """Delete the copy of this installation's binaries kept for relocated data, if unused."""
    try:
        install = install_dir()
    except ConfigError:
        return None
    return remove_copy(install, _ROOT_PG_PARENTS[-1])


def relocated(layout: Layout) -> bool:
    return layout.root.parent == _ROOT_PG_PARENTS[-1]


def _relocated_name(state_dir: Path) -> str:
    """``<checkout>-<random id>``: a new state folder, even at the same path (a new clone),
    never reuses the data of an old one; the name says whose it is and is never hidden."""
    folder = state_dir.parent if state_dir.name.startswith(".") else state_dir
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", folder.name).lstrip(".")[:40] or "state"
    return f"{name}-{secrets.token_hex(8)}"


def _default_run_as() -> RunAs:
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return RunAs(name=name, uid=entry.pw_uid, gid=entry.pw_gid)
    raise ConfigError(
        "hookdrop runs as root and PostgreSQL refuses to; no 'postgres' or 'nobody' user "
        "exists to run the embedded PostgreSQL as. Set DATABASE_URL or run as another user"
    )


def _run_as_for(layout: Layout) -> RunAs | None:
    if os.geteuid() != 0:
        return None
    if layout.data.exists():
        # PostgreSQL only starts as the owner of its data folder, so keep using that owner.
        info = layout.data.stat()
        if info.st_uid == 0:
            raise ConfigError(f"{layout.data} belongs to root; PostgreSQL cannot run as root")
        try:
            name = pwd.getpwuid(info.st_uid).pw_name
        except KeyError:
            name = str(info.st_uid)
        return RunAs(name=name, uid=info.st_uid, gid=info.st_gid)
    return _default_run_as()


def _prepare_root(layout: Layout, run_as: RunAs | None) -> None:
    if run_as is not None and relocated(layout):
        for parent in _ROOT_PG_PARENTS:
            if not parent.exists():
                parent.mkdir(mode=0o755)
                parent.chmod(0o755)  # mkdir's mode is filtered by the umask
    layout.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    if run_as is None:
        return
    # The server writes its log itself when started by pg_ctl: a log first opened by root (a
    # server started as a child writes to the parent's handle) would refuse it.
    layout.log.touch(mode=0o600)
    for path in (layout.root, layout.log):
        if path.stat().st_uid != run_as.uid:
            os.chown(path, run_as.uid, run_as.gid)
    if not can_traverse(layout.root, run_as):
        raise ConfigError(
            f"user {run_as.name} cannot reach {layout.root}; make its parent folders "
            "traversable, choose another HOOKDROP_STATE_DIR or set DATABASE_URL"
        )


# --------------------------------------------------------------------------- start and stop


def running(layout: Layout, port: int | None, password: str) -> bool:
    """True when the PostgreSQL of ``layout`` answers on ``port``."""
    return port is not None and _answers(port, layout.data, password)


def ensure(layout: Layout, port: int | None, password: str) -> tuple[int, bool]:
    """Reuse the running server or start one (detached): ``(port, started)``."""
    if port is not None and _answers(port, layout.data, password):
        _secure(layout, port, password)
        _create_database(port, password)
        return port, False
    live = postmaster(layout.data)
    if live is not None:
        # Alive but not answering yet (starting, recovering): wait rather than start again.
        live_port = live[1]
        if _process.wait_until(lambda: _answers(live_port, layout.data, password), START_TIMEOUT):
            _secure(layout, live_port, password)
            _create_database(live_port, password)
            return live_port, False
        raise ConfigError(
            f"embedded PostgreSQL (pid {live[0]}) runs but does not answer on port "
            f"{live_port}; see {layout.log}"
        )
    install_dir()  # a missing package is reported before anything is created
    run_as = _run_as_for(layout)
    try:
        _prepare_root(layout, run_as)
        bindir = binaries_for(install_dir(), layout.root.parent, run_as)
    except OSError as exc:
        # A read-only /var/lib, a state folder PostgreSQL's user cannot enter, a full disk.
        where = f" {exc.filename}" if exc.filename else ""
        raise ConfigError(
            f"cannot prepare the embedded PostgreSQL's folder{where}: "
            f"{exc.strerror or exc}; choose another HOOKDROP_STATE_DIR or set DATABASE_URL"
        ) from None
    if relocated(layout) and not layout.data.exists():
        log.warning(
            "embedded.postgres.relocated",
            dir=str(layout.root),
            run_as=run_as.name if run_as else None,
        )
    if not (layout.data / "PG_VERSION").exists():
        _initdb(bindir, layout, run_as, password)
    _remove_stale_pidfile(layout)
    for attempt in range(_PORT_ATTEMPTS):
        if attempt > 0 or port is None or not _process.port_free(port):
            port = _process.free_port()
        began = time.monotonic()
        try:
            _pg_ctl_start(bindir, layout, run_as, port)
        except _PortInUse:
            log.warning("embedded.postgres.port_taken", port=port)
            continue
        try:
            _secure(layout, port, password)
            _create_database(port, password)
        except BaseException:
            stop(layout)
            raise
        log.info(
            "embedded.postgres.started",
            port=port,
            dir=str(layout.root),
            run_as=run_as.name if run_as else None,
            seconds=round(time.monotonic() - began, 3),
        )
        return port, True
    raise ConfigError(
        f"embedded PostgreSQL failed to start: no free port after {_PORT_ATTEMPTS} attempts; "
        f"see {layout.log}"
    )


def _initdb(bindir: Path, layout: Layout, run_as: RunAs | None, password: str) -> None:
    began = time.monotonic()
    staging = layout.root / "data.initdb"
    pwfile = layout.root / "initdb.password"
    # initdb into a side folder and rename, so an interrupted initdb never leaves a
    # half-made data folder that later starts would trip over.
    if staging.exists():
        shutil.rmtree(staging)
    pwfile.unlink(missing_ok=True)
    pwfile.touch(mode=0o600)
    pwfile.write_text(password + "\n", encoding="utf-8")
    if run_as is not None:
        os.chown(pwfile, run_as.uid, run_as.gid)
    try:
        code, output = _process.run(
            [
                str(bindir / "initdb"),
                "-D",
                str(staging),
                "-U",
                DATABASE_ROLE,
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "--encoding=UTF8",
                "--locale=C",
                "--no-instructions",
            ],
            run_as=run_as,
            cwd=layout.root,
            timeout=120,
        )
        if code != 0:
            raise ConfigError(
                f"embedded PostgreSQL initdb failed: {_process.last_line(output) or 'no output'}"
            )
        with (staging / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write(
                "\n# Added by hookdrop: loopback TCP only. No unix socket, so the length of\n"
                "# the state folder's path never matters; the port is given at start.\n"
                f"listen_addresses = '{_process.LOOPBACK}'\n"
                "unix_socket_directories = ''\n"
            )
        _write_hba(staging)
        staging.rename(layout.data)
    except BaseException:
        # Interrupted (Ctrl-C) or failed: no half-made folder for the next start. The run
        # returns only once initdb and its children are gone, so nothing writes here now.
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        pwfile.unlink(missing_ok=True)
    log.info(
        "embedded.postgres.initialised",
        dir=str(layout.data),
        seconds=round(time.monotonic() - began, 3),
    )


def _write_hba(data: Path) -> None:
    # Loopback TCP only, and only with the password: every local user can reach loopback.
    (data / "pg_hba.conf").write_text(
        "# Written by hookdrop: local TCP connections with the password only.\n"
        "host all all 127.0.0.1/32 scram-sha-256\n"
        "host all all ::1/128 scram-sha-256\n",
        encoding="utf-8",
    )


def _secure(layout: Layout, port: int, password: str) -> None:
    """Give a data folder made with ``trust`` (by an earlier hookdrop) the password."""
    hba = layout.data / "pg_hba.conf"
    if " trust" not in hba.read_text(encoding="utf-8"):
        return
    with _connect(port, password) as conn:
        conn.execute(
            sql.SQL("alter role {} password {}").format(
                sql.Identifier(DATABASE_ROLE), sql.Literal(password)
            )
        )
        _write_hba(layout.data)
        conn.execute("select pg_reload_conf()")
    log.warning("embedded.postgres.password_set", dir=str(layout.data))


def _connect(port: int, password: str, timeout: int = 5) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=_process.LOOPBACK,
        port=port,
        user=DATABASE_ROLE,
        password=password,
        dbname="postgres",
        connect_timeout=timeout,
        autocommit=True,
    )


def _pg_ctl_start(bindir: Path, layout: Layout, run_as: RunAs | None, port: int) -> None:
    offset = _process.size_of(layout.log)
    code, output = _process.run(
        [
            str(bindir / "pg_ctl"),
            "-D",
            str(layout.data),
            "-l",
            str(layout.log),
            "-w",
            "-t",
            str(int(START_TIMEOUT)),
            "-o",
            f"-p {port}",
            "start",
        ],
        run_as=run_as,
        cwd=layout.root,
        timeout=START_TIMEOUT + 30,
    )
    if code == 0:
        return
    new_log = _process.read_from(layout.log, offset)
    if "Address already in use" in new_log:
        raise _PortInUse
    reason = _process.last_line(new_log) or _process.last_line(output) or "no output"
    raise ConfigError(f"embedded PostgreSQL failed to start: {reason}; see {layout.log}")


def _answers(port: int, data: Path, password: str) -> bool:
    """True when the server on ``port`` answers and serves ``data`` (not another server)."""
    try:
        with _connect(port, password, timeout=2) as conn:
            row = conn.execute("select current_setting('data_directory')").fetchone()
    except psycopg.OperationalError as exc:
        log.debug("embedded.postgres.not_ours", port=port, error=str(exc).strip())
        return False
    return row is not None and Path(str(row[0])).resolve() == data.resolve()


def _create_database(port: int, password: str) -> None:
    with _connect(port, password) as conn:
        exists = conn.execute(
            "select 1 from pg_database where datname = %s", (DATABASE_NAME,)
        ).fetchone()
        if exists is None:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(DATABASE_NAME)))
            log.info("embedded.postgres.database_created", database=DATABASE_NAME)


def postmaster(data: Path) -> tuple[int, int] | None:
    """(pid, port) of the live postmaster of ``data``, from its postmaster.pid."""
    try:
        lines = (data / "postmaster.pid").read_text(encoding="utf-8").splitlines()
    except OSError:
        return None  # none, or its folder cannot be reached: nothing runs from it
    try:
        pid, port = int(lines[0]), int(lines[3])
    except (IndexError, ValueError):
        return None  # being written right now, or truncated by a crash
    return (pid, port) if _process.is_our_process(pid, "postgres", data) else None


def _remove_stale_pidfile(layout: Layout) -> None:
    """Delete the postmaster.pid of a crashed server once none of its processes is left.

    PostgreSQL refuses to start while the pid in that file exists, and a crashed postmaster
    can linger as a zombie forever in containers whose init does not reap orphans.
    PostgreSQL's own guard against old backends still writing is the shared memory check
    that this file points at, so the file only goes once no live process works in the data
    folder any more.
    """
    stale = layout.data / "postmaster.pid"
    if not stale.exists():
        return

    def leftovers() -> list[int]:
        return [
            process.pid
            for process in psutil.process_iter()
            if _process.is_our_process(process.pid, "postgres", layout.data)
        ]

    if not _process.wait_until(lambda: not leftovers(), 10.0):
        raise ConfigError(
            f"embedded PostgreSQL crashed but its processes {leftovers()} still run; stop them "
            f"and try again (see {layout.log})"
        )
    log.warning("embedded.postgres.stale_pidfile", path=str(stale))
    stale.unlink()


def stop(layout: Layout) -> int | None:
    """Stop the PostgreSQL of ``layout`` wherever it was started from; its pid, if any."""
    live = postmaster(layout.data)
    if live is None:
        return None
    pid = live[0]
    os.kill(pid, signal.SIGINT)  # fast shutdown
    if not _process.wait_until(lambda: postmaster(layout.data) is None, STOP_TIMEOUT):
        raise HookdropError(
            f"embedded PostgreSQL (pid {pid}) did not stop within {STOP_TIMEOUT:.0f} s; "
            f"see {layout.log}"
        )
    log.info("embedded.postgres.stopped", pid=pid)
    return pid
