"""Starting, recognising and stopping server processes.

A server that a command owns is its child: it runs in a session of its own (a Ctrl-C at the
terminal reaches the command, which then stops its own children before the servers), and on
Linux the kernel sends it a stop signal when the process that started it dies, so not even a
kill -9 of the owner leaves it running.
"""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import sys
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
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
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


@dataclass(slots=True)
class Child:
    """A server this process started and must stop: ``stop_signal`` is its graceful stop."""

    name: str
    process: subprocess.Popen[bytes]
    stop_signal: int
    log: Path


def server_environ() -> dict[str, str]:
    """The environment of a server or its tools: ours without PG* variables, C messages."""
    # A PGPORT or PGDATA meant for another server must not leak in; English messages are what
    # the log checks rely on.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _die_with_parent(stop_signal: int) -> Callable[[], None] | None:
    """A preexec function asking the kernel for ``stop_signal`` when our process dies."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded here: the child must not load libraries
    parent = os.getpid()

    def preexec() -> None:
        # Runs in the child after it dropped to its user (a uid change clears the setting).
        libc.prctl(_PR_SET_PDEATHSIG, stop_signal, 0, 0, 0)
        if os.getppid() != parent:  # the owner died before the request took effect
            os._exit(1)

    return preexec


def spawn_owned(
    command: list[str],
    *,
    name: str,
    cwd: Path,
    log_path: Path,
    stop_signal: int,
    run_as: RunAs | None,
) -> Child:
    """Start ``command`` as a child that stops when this process stops (or dies)."""
    extra = run_as.subprocess_kwargs() if run_as is not None else {}
    with log_path.open("ab") as output:
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=server_environ(),
                start_new_session=True,
                # The function makes two system calls and takes no lock, which is what
                # makes a preexec function safe in a process with threads.
                preexec_fn=_die_with_parent(stop_signal),  # noqa: PLW1509
                **extra,
            )
        except OSError as exc:
            raise ConfigError(f"cannot run {command[0]}: {exc}") from exc
    return Child(name=name, process=process, stop_signal=stop_signal, log=log_path)


def stop_child(child: Child, timeout: float) -> bool:
    """Ask ``child`` to stop, wait for it; kill it after ``timeout``. True if it stopped."""
    if child.process.poll() is None:
        child.process.send_signal(child.stop_signal)
    try:
        child.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        log.error(
            f"embedded.{child.name}.killed",
            pid=child.process.pid,
            reason=f"did not stop within {timeout:.0f} s",
            log=str(child.log),
        )
        child.process.kill()
        child.process.wait()
        return False
    return True


def run(command: list[str], *, run_as: RunAs | None, cwd: Path, timeout: float) -> tuple[int, str]:
    """Run ``command`` (as ``run_as`` if given); return its exit code and merged output."""
    extra = run_as.subprocess_kwargs() if run_as is not None else {}
    # A file, not a pipe: a server forked off the command could keep a pipe open forever.
    with tempfile.TemporaryFile() as output:
        try:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=server_environ(),
                timeout=timeout,
                check=False,
                **extra,
            )
        except subprocess.TimeoutExpired as exc:
            raise ConfigError(
                f"{Path(command[0]).name} did not finish within {timeout:.0f} s"
            ) from exc
        except OSError as exc:
            raise ConfigError(f"cannot run {command[0]}: {exc}") from exc
        output.seek(0)
        return result.returncode, output.read().decode("utf-8", errors="replace")


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
