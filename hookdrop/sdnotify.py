"""A tiny, dependency-free client of systemd's notification protocol (``sd_notify(3)``).

Under a ``Type=notify`` unit systemd sets ``NOTIFY_SOCKET`` (a unix datagram socket, a path or
an abstract name starting with ``@``) and, with ``WatchdogSec=``, ``WATCHDOG_USEC`` (and
sometimes ``WATCHDOG_PID``). Everything here is a no-op returning ``False`` when those are unset,
so the same code runs unchanged in a terminal, in Docker and under systemd.

The helpers read ``os.environ`` at call time unless given an environment. Only the unit's main
process may notify (``NotifyAccess=main``): give child processes :func:`child_environ`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

__all__ = ["NOTIFY_VARIABLES", "child_environ", "notify", "watchdog_interval"]

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
