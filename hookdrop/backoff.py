"""Retry timing: exponential backoff with full jitter, capped."""

from __future__ import annotations

import random
from collections.abc import Callable


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
    ceiling = min(cap, base * 2 ** min(attempt - 1, 62))
    if not jitter:
        return ceiling
    return ceiling / 2 + rand() * ceiling / 2
