"""hookdrop's own exception hierarchy. Library exceptions are translated at the boundary."""

from __future__ import annotations


class HookdropError(Exception):
    """Base of every error hookdrop raises on purpose."""


class ConfigError(HookdropError):
    """A setting is missing or wrong; the message names the setting and says what is wrong."""


class NotRunning(HookdropError):
    """A command that only looks at a running hookdrop found no servers to look at."""


class StoreUnavailable(HookdropError):
    """PostgreSQL cannot be reached right now; the caller pauses and retries."""


class QueueUnavailable(HookdropError):
    """Redis cannot be reached right now; the caller pauses and retries."""


class UnreadableFile(HookdropError):
    """A dropped file cannot be read at all (empty, binary, unknown format)."""


class ShutdownRequested(BaseException):
    """Raised inside a worker when a second SIGTERM asks it to stop at once.

    Derives from BaseException so an ``except Exception`` cannot swallow it.
    """
