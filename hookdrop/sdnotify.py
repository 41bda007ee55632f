"""A tiny, dependency-free client of systemd's notification protocol (``sd_notify(3)``).

Under a ``Type=notify`` unit systemd sets ``NOTIFY_SOCKET`` (a unix datagram socket, a path or
an abstract name starting with ``@``) and, with ``WatchdogSec=``, ``WATCHDOG_USEC`` (and
sometimes ``WATCHDOG_PID``). Everything here is a no-op returning ``False`` when those are unset,
so the same code runs unchanged in a terminal, in Docker and under systemd.

Entry points pass their environment snapshot in (``Notifier(environ)``); the module-level
helpers read ``os.environ`` at call time when given none. Only the unit's main process may
notify (``NotifyAccess=main``): give child processes :func:`child_environ`.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

__all__ = [
    "NOTIFY_VARIABLES",
    "Notifier",
    "child_environ",
    "notify",
    "ready",
    "status",
    "stopping",
    "watchdog",
    "watchdog_interval",
]

# The variables systemd hands to the main process for this protocol.
NOTIFY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def _environ(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def _address(raw: str) -> str | None:
    """The ``AF_UNIX`` address for ``NOTIFY_SOCKET``; ``None`` for unsupported kinds."""
    if raw.startswith("@"):
        return "\0" + raw[1:]  # abstract namespace (Linux)
    if raw.startswith("/"):
        return raw
    return None  # e.g. vsock:... addresses, which this client does not speak


def _one_line(text: str) -> str:
    """Keep a free-text value on one line: the protocol is newline-separated."""
    return " ".join(text.split())


def notify(*lines: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``lines`` (e.g. ``"READY=1"``) as one datagram to ``$NOTIFY_SOCKET``.

    Returns ``True`` when the message was sent, ``False`` when there is no socket to send to
    or sending failed (a notification is never worth crashing the daemon for).
    """
    raw = _environ(environ).get("NOTIFY_SOCKET", "")
    address = _address(raw) if raw else None
    if address is None or not lines:
        return False
    payload = "\n".join(lines).encode("utf-8")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(payload, address)
    except OSError:
        return False
    return True


def watchdog_interval(
    environ: Mapping[str, str] | None = None, *, pid: int | None = None
) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``WATCHDOG_USEC``), or ``None``.

    ``None`` when no watchdog is configured, the value is not a positive integer, or
    ``WATCHDOG_PID`` is set to another process than ``pid`` (default: this process).
    """
    env = _environ(environ)
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner:
        try:
            if int(owner) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 2 / 1_000_000


def child_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``environ`` without the notification variables, for child processes."""
    return {key: value for key, value in environ.items() if key not in NOTIFY_VARIABLES}


def ready(text: str | None = None, *, environ: Mapping[str, str] | None = None) -> bool:
    """Tell systemd start-up is complete (``READY=1``), with an optional status line."""
    return Notifier(_environ(environ)).ready(text)


def stopping(text: str | None = None, *, environ: Mapping[str, str] | None = None) -> bool:
    """Tell systemd a graceful stop has begun (``STOPPING=1``)."""
    return Notifier(_environ(environ)).stopping(text)


def watchdog(*, environ: Mapping[str, str] | None = None) -> bool:
    """Ping the watchdog (``WATCHDOG=1``)."""
    return Notifier(_environ(environ)).watchdog()


def status(text: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """Set the one-line status ``systemctl status`` shows (``STATUS=...``)."""
    return Notifier(_environ(environ)).status(text)


class Notifier:
    """sd_notify for one process: reads its environment once, then sends on demand."""

    def __init__(self, environ: Mapping[str, str], *, pid: int | None = None) -> None:
        self._environ = {key: environ[key] for key in NOTIFY_VARIABLES if key in environ}
        self.watchdog_interval = watchdog_interval(self._environ, pid=pid)
        self._last_ping: float | None = None

    @property
    def enabled(self) -> bool:
        """Whether a notification socket is configured at all."""
        return bool(self._environ.get("NOTIFY_SOCKET"))

    def send(self, *lines: str) -> bool:
        """Send raw ``KEY=VALUE`` lines."""
        return notify(*lines, environ=self._environ)

    def _with_status(self, line: str, text: str | None) -> bool:
        if text is None:
            return self.send(line)
        return self.send(line, f"STATUS={_one_line(text)}")

    def ready(self, text: str | None = None) -> bool:
        """``READY=1`` (plus ``STATUS=``): connected, migrations checked, serving."""
        return self._with_status("READY=1", text)

    def stopping(self, text: str | None = None) -> bool:
        """``STOPPING=1`` (plus ``STATUS=``): the first SIGTERM arrived, draining."""
        return self._with_status("STOPPING=1", text)

    def status(self, text: str) -> bool:
        """``STATUS=text`` on one line."""
        return self.send(f"STATUS={_one_line(text)}")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more before systemd's start/stop timeout fires."""
        return self.send(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}")

    def watchdog(self) -> bool:
        """``WATCHDOG=1`` now; ``False`` when no watchdog is configured for this process."""
        if self.watchdog_interval is None:
            return False
        self._last_ping = time.monotonic()
        return self.send("WATCHDOG=1")

    def watchdog_if_due(self, now: float | None = None) -> bool:
        """Ping only when ``watchdog_interval`` has passed since the last ping.

        Call it from the main loop as often as convenient: a hung loop then stops pinging
        and systemd restarts the unit, which a background ping thread would hide.
        """
        if self.watchdog_interval is None:
            return False
        current = time.monotonic() if now is None else now
        if self._last_ping is not None and current - self._last_ping < self.watchdog_interval:
            return False
        sent = self.send("WATCHDOG=1")
        self._last_ping = current
        return sent
