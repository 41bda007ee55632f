"""Running server tools, recognising server processes, ports and logs.

Servers run detached, in sessions of their own: a Ctrl-C at a terminal or a signal to a
command's process group never reaches them; who stops them is decided in ``_users``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import structlog

from hookdrop.errors import ConfigError

log = structlog.get_logger(__name__)

LOOPBACK = "127.0.0.1"
_LOG_TAIL_BYTES = 16384


@dataclass(frozen=True, slots=True)
class RunAs:
    """Unprivileged account PostgreSQL runs as when hookdrop itself runs as root."""

    name: str
    uid: int
    gid: int

    def subprocess_kwargs(self) -> dict[str, Any]:
        # extra_groups=[] drops root's supplementary groups too, not just uid and gid.
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def server_environ() -> dict[str, str]:
    """The environment of a server or its tools: ours without PG* variables, C messages."""
    # A PGPORT or PGDATA meant for another server must not leak in; English messages are what
    # the log checks rely on.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def run(command: list[str], *, run_as: RunAs | None, cwd: Path, timeout: float) -> tuple[int, str]:
    """Run ``command`` (as ``run_as`` if given); return its exit code and merged output.

    Interrupted (Ctrl-C, a timeout), the command and every process it started in its session
    are killed, and gone, before this returns: nothing of it writes to its files afterwards.
    """
    extra = run_as.subprocess_kwargs() if run_as is not None else {}
    # A file, not a pipe: a server forked off the command could keep a pipe open forever.
    with tempfile.TemporaryFile() as output:
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=server_environ(),
                # A server it forks (pg_ctl's postmaster) must not share a process group
                # or a terminal with the command.
                start_new_session=True,
                **extra,
            )
        except OSError as exc:
            raise ConfigError(f"cannot run {command[0]}: {exc}") from exc
        try:
            code = process.wait(timeout=timeout)
        except BaseException as exc:
            # subprocess.run would leave the children of initdb (postgres --boot, in the
            # command's session) writing into its folder while the caller removes it.
            _kill_session(process)
            if isinstance(exc, subprocess.TimeoutExpired):
                raise ConfigError(
                    f"{Path(command[0]).name} did not finish within {timeout:.0f} s"
                ) from exc
            raise
        output.seek(0)
        return code, output.read().decode("utf-8", errors="replace")


def _kill_session(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the session ``process`` leads and wait until none of its processes is left."""
    session = process.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(session, signal.SIGKILL)
    process.wait()

    def members() -> list[int]:
        found = []
        for candidate in psutil.process_iter():
            try:
                if (
                    os.getsid(candidate.pid) == session
                    and candidate.status() != psutil.STATUS_ZOMBIE
                ):
                    found.append(candidate.pid)
            except (OSError, psutil.Error):
                continue  # gone meanwhile
        return found

    while members():
        # A pg_ctl-started postmaster left the session (setsid) and is not a member.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(session, signal.SIGKILL)
        time.sleep(0.02)


def is_our_process(pid: int, name: str, cwd: Path) -> bool:
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


@dataclass(frozen=True, slots=True)
class Known:
    """A server process as seen while its state folder existed: enough to stop it later
    even when that folder is gone (the start time guards against pid reuse)."""

    pid: int
    created: float
    stop_signal: int

    @classmethod
    def of(cls, pid: int, stop_signal: int) -> Known | None:
        try:
            return cls(pid, psutil.Process(pid).create_time(), stop_signal)
        except psutil.Error:
            return None

    def alive(self) -> bool:
        try:
            process = psutil.Process(self.pid)
            same: bool = process.create_time() == self.created
            return same and process.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def stop(self, timeout: float) -> bool:
        """Signal it to stop and wait; True once it is gone."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, self.stop_signal)
        return wait_until(lambda: not self.alive(), timeout)


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text(encoding="utf-8").split()[0])
    except FileNotFoundError:
        return None
    except (IndexError, ValueError):
        return None  # empty or garbled pidfile: treat the server as not running


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # Same option the servers set, so a port in TIME_WAIT still counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
    return port


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def read_from(path: Path, offset: int) -> str:
    """What was written to ``path`` after ``offset`` (its last 16 KiB at most)."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(offset, size - _LOG_TAIL_BYTES))
            return handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def size_of(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
