"""Who uses the embedded servers of a state folder, and who stops them.

Every command using the servers holds a shared ``flock`` on ``users.lock`` while it runs; the
kernel drops it when the command ends, however it ends. The last one out stops the servers,
unless ``hookdrop servers start`` keeps them. For commands that cannot do that themselves
(killed by SIGKILL), a guardian process (``python -m hookdrop.embedded._guard``) waits for an
exclusive lock on the same file, which it gets only once every user is gone, and then stops
them. One guardian per state folder holds ``guard.lock``.

Lock order, everywhere: ``users.lock`` before ``embedded.lock`` (see ``_state``).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import structlog

from hookdrop.errors import ConfigError

log = structlog.get_logger(__name__)

USERS_FILE = "users.lock"
GUARD_FILE = "guard.lock"
GUARD_LOG = "guard.log"
_WAIT = 180.0


def open_lock(state_dir: Path, name: str) -> IO[str]:
    path = state_dir / name
    try:
        # Opened close-on-exec (Python's default): processes started meanwhile never hold it.
        return path.open("a")
    except OSError as exc:
        raise ConfigError(f"HOOKDROP_STATE_DIR {state_dir} cannot be used: {exc}") from exc


def try_lock(handle: IO[str], operation: int) -> bool:
    try:
        fcntl.flock(handle.fileno(), operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def lock(handle: IO[str], operation: int, what: str, timeout: float = _WAIT) -> None:
    """Take the lock, waiting at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not try_lock(handle, operation):
        if time.monotonic() > deadline:
            raise ConfigError(f"{what} was not free within {timeout:.0f} s")
        time.sleep(0.05)


def join(state_dir: Path) -> IO[str]:
    """Become a user: a shared lock, held until :func:`leave`. Waits while a guardian stops
    the servers, so that nobody reuses servers about to stop."""
    handle = open_lock(state_dir, USERS_FILE)
    try:
        lock(handle, fcntl.LOCK_SH, f"{handle.name} (servers being stopped)")
    except BaseException:
        handle.close()
        raise
    return handle


def last_to_leave(handle: IO[str]) -> bool:
    """Give up the shared lock; True (holding the lock exclusively) when no user is left.

    Call with the state lock held; a False means others still use the servers, or a guardian
    took the lock to stop them (see :func:`wait_for_guardian`).
    """
    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return try_lock(handle, fcntl.LOCK_EX)


def wait_for_guardian(handle: IO[str]) -> None:
    """Return once no guardian holds the users lock (it stops the servers meanwhile)."""
    try:
        lock(handle, fcntl.LOCK_SH, handle.name)
    finally:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def in_use(state_dir: Path) -> bool:
    """True when some command holds the servers of ``state_dir`` (a look, no waiting)."""
    return _held(state_dir, USERS_FILE)


def guarded(state_dir: Path) -> bool:
    """True when a guardian watches the users of ``state_dir``."""
    return _held(state_dir, GUARD_FILE)


def _held(state_dir: Path, name: str) -> bool:
    """True when some process holds a lock on the lock file ``name`` (a look, no waiting)."""
    if not (state_dir / name).exists():
        return False
    with open_lock(state_dir, name) as handle:
        if try_lock(handle, fcntl.LOCK_EX):
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            return False
        return True


def start_guardian(state_dir: Path) -> None:
    """Start a guardian unless one runs, and return once it watches.

    It outlives this process: a short-lived launcher starts it in a session of its own and
    exits, so it is nobody's child to wait for. The launcher waits for the guardian to close
    the pipe given to it, which it does once it holds ``guard.lock`` (or found another
    guardian holding it).
    """
    if guarded(state_dir):
        return
    launcher = (
        "import os, subprocess, sys\n"
        "ready, told = os.pipe()\n"
        "with open(sys.argv[2], 'ab') as out:\n"
        "    subprocess.Popen(\n"
        "        [sys.executable, '-m', 'hookdrop.embedded._guard', sys.argv[1], str(told)],\n"
        "        stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd='/',\n"
        "        start_new_session=True, pass_fds=(told,))\n"
        "os.close(told)\n"
        "os.read(ready, 1)\n"
    )
    # Not in the state folder (cwd /): a guardian is no server, whatever looks for those.
    try:
        subprocess.run(
            [sys.executable, "-c", launcher, str(state_dir), str(state_dir / GUARD_LOG)],
            cwd="/",
            env={k: v for k, v in os.environ.items() if k != "HOOKDROP_PARENT_PID"},
            check=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        # The last user still stops the servers; only a kill of every user would leave them.
        log.warning("embedded.guard.not_started", state_dir=str(state_dir), error=str(exc))


def wait_guardian_gone(state_dir: Path, timeout: float = 10.0) -> None:
    """Wait (bounded) for a guardian to notice the servers are gone and exit."""
    deadline = time.monotonic() + timeout
    while guarded(state_dir) and time.monotonic() < deadline:
        time.sleep(0.02)
