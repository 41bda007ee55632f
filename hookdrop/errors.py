"""hookdrop's own exception hierarchy. Library exceptions are translated at the boundary."""

from __future__ import annotations

import redis


class HookdropError(Exception):
    """Base of every error hookdrop raises on purpose."""


# The exit code of a process that stops on a ConfigError (as sysexits' EX_USAGE).
CONFIG_ERROR_EXIT = 2


class ConfigError(HookdropError):
    """A setting is missing or wrong; the message names the setting and says what is wrong."""


class SchemaOutdated(ConfigError):
    """The database has not been migrated to this version's schema (`hookdrop db migrate`)."""


class NotRunning(HookdropError):
    """A command that only looks at a running hookdrop found no servers to look at."""


class StoreUnavailable(HookdropError):
    """PostgreSQL cannot be reached right now; the caller pauses and retries."""


class StoreError(HookdropError):
    """PostgreSQL refused a statement (not an outage): retrying the same will not help."""


class QueueUnavailable(HookdropError, redis.ConnectionError):
    """Redis cannot be reached right now; the caller pauses and retries.

    Also a ``redis.ConnectionError``, so library code that waits out a lost connection (RQ's
    dequeue loop) still does when the client maps the error to this one.
    """


class UnreadableFile(HookdropError):
    """A dropped file cannot be read at all (empty, binary, unknown format)."""


class ShutdownRequested(SystemExit):
    """Raised in the main thread when a second SIGTERM or SIGINT asks to stop at once.

    A SystemExit (exit status 128 + signal number), so an ``except Exception`` cannot swallow
    it and event loops let it through as they do for any request to exit.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum
