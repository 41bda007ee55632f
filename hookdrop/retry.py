"""Retrying: the backoff policy, and the one helper (sync and async) every retry loop uses.

An outage of PostgreSQL or Redis pauses the work that needs it and never drops it; so a
caller wraps the step in :func:`retrying` (or :func:`retrying_async`) and gets its result once
the server answers, or the last error when ``stop`` says the process is stopping. ``stop`` is
a predicate or a flag (:class:`hookdrop.shutdown.StopFlag`, :class:`threading.Event`); a flag
also cuts the wait between tries short.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar, runtime_checkable

import structlog

from hookdrop.errors import QueueUnavailable, StoreUnavailable

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: Errors that mean "a server cannot serve now": wait and try again.
TRANSIENT: tuple[type[Exception], ...] = (StoreUnavailable, QueueUnavailable)


def compute_backoff(
    attempt: int,
    *,
    base: float = 0.5,
    cap: float = 30.0,
    jitter: bool = True,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before try number ``attempt + 1`` (``attempt`` >= 1 failures so far).

    The ceiling grows as ``base * 2 ** (attempt - 1)`` up to ``cap``; with jitter the wait is
    drawn uniformly from the upper half of it, so retries spread out but never collapse to 0.
    """
    if attempt < 1:
        raise ValueError("attempt counts failures so far and starts at 1")
    if base <= 0 or cap <= 0:
        raise ValueError("base and cap must be positive")
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 62))
    if not jitter:
        return ceiling
    return ceiling / 2 + rand() * ceiling / 2


@runtime_checkable
class Flag(Protocol):
    """A stop flag whose ``wait`` returns early once it is set."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


Stop = Callable[[], bool] | Flag


def _is_stopping(stop: Stop) -> bool:
    return stop.is_set() if isinstance(stop, Flag) else stop()


def _event(exc: BaseException) -> str:
    return "db.unavailable" if isinstance(exc, StoreUnavailable) else "redis.unavailable"


def _never() -> bool:
    return False


def retrying(
    action: Callable[[], T],
    *,
    what: str,
    stop: Stop = _never,
    retry_on: tuple[type[Exception], ...] = TRANSIENT,
    base: float = 0.5,
    cap: float = 10.0,
    sleep: Callable[[float], object] = time.sleep,
) -> T:
    """``action()``, tried again with backoff while it raises one of ``retry_on``.

    ``stop`` lets a stopping process give up (its work is recovered later): the last error is
    raised then. When ``stop`` is a flag, the wait between tries is the flag's own ``wait``, so
    a stop ends it at once (``sleep`` is used with a predicate only).
    """
    attempt = 0
    while True:
        try:
            return action()
        except retry_on as exc:
            attempt += 1
            if _is_stopping(stop):
                raise
            delay = compute_backoff(attempt, base=base, cap=cap)
            log.warning(_event(exc), action=what, error=str(exc), retry_in=round(delay, 2))
            if isinstance(stop, Flag):
                if stop.wait(delay):
                    raise
            else:
                sleep(delay)


async def retrying_async(
    action: Callable[[], Awaitable[T]],
    *,
    what: str,
    stop: Stop = _never,
    retry_on: tuple[type[Exception], ...] = TRANSIENT,
    on_failure: Callable[[], object] | None = None,
    base: float = 0.5,
    cap: float = 10.0,
) -> T:
    """:func:`retrying` for coroutines; ``on_failure`` runs after each failed try."""
    attempt = 0
    while True:
        try:
            return await action()
        except retry_on as exc:
            attempt += 1
            if on_failure is not None:
                on_failure()
            if _is_stopping(stop):
                raise
            delay = compute_backoff(attempt, base=base, cap=cap)
            log.warning(_event(exc), action=what, error=str(exc), retry_in=round(delay, 2))
            await asyncio.sleep(delay)
