"""A global token bucket driven by an injectable monotonic clock."""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]

# Clock readings are floats: 1000.0 + 0.02 - 1000.0 is a hair under 0.02, and without slack
# a client arriving exactly on time would be refused for 1e-14 s (and told "Retry-After: 1").
_SLACK = 1e-9


class TokenBucket:
    """Allows ``rate`` requests/s on average and up to ``burst`` at once; rate 0 = unlimited.

    The bucket starts full. Not thread-safe: the mock runs one event loop.
    """

    __slots__ = ("_burst", "_clock", "_last", "_rate", "_tokens")

    def __init__(
        self, rate: float, burst: float | None = None, clock: Clock = time.monotonic
    ) -> None:
        self._clock = clock
        self._rate = 0.0
        self._burst = 1.0
        self._tokens = 1.0
        self._last = clock()
        self.reconfigure(rate, burst)

    @property
    def rate(self) -> float:
        """Refill rate in tokens per second (0 = unlimited)."""
        return self._rate

    @property
    def burst(self) -> float:
        """Bucket capacity in tokens."""
        return self._burst

    @property
    def tokens(self) -> float:
        """Tokens available now (after refilling up to the clock's current time)."""
        self._refill(self._clock())
        return self._tokens

    def _refill(self, now: float) -> None:
        elapsed = now - self._last
        self._last = now
        if elapsed > 0:
            self._tokens = min(self._burst, self._tokens + elapsed * self._rate)

    def acquire(self) -> float:
        """Take one token: 0.0 if granted, else the seconds until one will be free."""
        if self._rate <= 0:
            return 0.0
        self._refill(self._clock())
        if self._tokens >= 1.0 - _SLACK:
            self._tokens = max(0.0, self._tokens - 1.0)
            return 0.0
        return (1.0 - self._tokens) / self._rate

    def wait_time(self) -> float:
        """Seconds until a token will be free, without taking one (0.0 if one is free now)."""
        if self._rate <= 0:
            return 0.0
        self._refill(self._clock())
        return max(0.0, 1.0 - _SLACK - self._tokens) / self._rate

    def reconfigure(self, rate: float, burst: float | None = None) -> None:
        """Change rate and burst (None = max(1, rate/10)) keeping the tokens earned so far."""
        if rate < 0:
            raise ValueError(f"rate must be 0 or more, got {rate}")
        new_burst = burst if burst is not None else max(1.0, rate / 10)
        if new_burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst}")
        now = self._clock()
        if self._rate > 0:
            # Tokens earned at the old rate up to now are kept; the new rate applies from now.
            self._refill(now)
            self._tokens = min(self._tokens, new_burst)
        else:
            # Coming from "unlimited" nothing was metered, so start with a full bucket.
            self._tokens = new_burst
        self._last = now
        self._rate = float(rate)
        self._burst = float(new_burst)
