"""Stop requests that are safe to make from a signal handler.

A signal handler runs in the main thread between two bytecodes, possibly while that thread
holds a lock (a log write, an ``Event``, a connection pool). So the handlers here take no
lock: the first SIGTERM or SIGINT sets a :class:`StopFlag` (a plain attribute and a byte
written to a pipe, which also wakes whoever waits on it); a second one, at least a second
later, raises :class:`~hookdrop.errors.ShutdownRequested` to stop at once. A repeat within
the second is the same request arriving twice (a terminal's Ctrl+C reaches the whole process
group, and a parent forwards it too) and is ignored. Logging and notifying systemd happen
afterwards, outside the handler.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Final

from hookdrop.errors import ShutdownRequested

REPEAT_WINDOW: Final = 1.0
STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)


class StopFlag:
    """Set once, seen by every thread; ``wait`` wakes as soon as it is set."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._set = False

    def set(self) -> None:
        """Safe in a signal handler: no lock, one write to a non-blocking pipe."""
        self._set = True
        # A full pipe means waiters were woken already; a closed one, that nobody waits.
        with contextlib.suppress(OSError):
            os.write(self._write, b"!")

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        """Block until set or ``timeout`` seconds passed; whether it is set."""
        if not self._set:
            with contextlib.suppress(OSError, ValueError):  # closed: the owner is going away
                select.select([self._read], [], [], timeout)
        return self._set

    def close(self) -> None:
        for fd in (self._read, self._write):
            with contextlib.suppress(OSError):
                os.close(fd)


class StopSignals:
    """SIGTERM/SIGINT handling for one process: graceful first, forced on a later repeat."""

    def __init__(
        self,
        flag: StopFlag,
        *,
        on_first: Callable[[], None] | None = None,
        on_force: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.flag = flag
        self.on_first = on_first
        self.on_force = on_force
        self.clock = clock
        self.first_at: float | None = None
        self.signum: int | None = None
        self.forced = False

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self.handle)

    def handle(self, signum: int, _frame: FrameType | None = None) -> None:
        now = self.clock()
        if self.first_at is None:
            self.first_at, self.signum = now, signum
            self.flag.set()
            if self.on_first is not None:
                self.on_first()
            return
        if now - self.first_at < REPEAT_WINDOW or self.forced:
            return
        self.forced = True
        if self.on_force is not None:
            self.on_force(signum)
            return
        raise ShutdownRequested(signum)
