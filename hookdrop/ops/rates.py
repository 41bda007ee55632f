"""Delivered/s of each file, from the counters an operator's view samples as it polls."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

RATE_WINDOW = 10.0  # seconds of progress the current rate is measured over


class RateTracker:
    """Delivered/s of each file over the last ``window`` seconds, from sampled counters.

    Lives as long as the API (or a ``status --watch``): every status read adds a sample.
    Thread-safe; forgets files not looked at for a while.
    """

    def __init__(
        self, window: float = RATE_WINDOW, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window = window
        self.clock = clock
        self._samples: dict[int, deque[tuple[float, int]]] = {}
        self._lock = threading.Lock()

    def observe(self, file_id: int, delivered: int) -> float | None:
        """Record a sample; the rate over the window, or None until it spans a second."""
        now = self.clock()
        with self._lock:
            samples = self._samples.setdefault(file_id, deque())
            samples.append((now, delivered))
            # Keep one sample at or before the window start so the span covers it all.
            while len(samples) > 2 and samples[1][0] <= now - self.window:
                samples.popleft()
            for other in [f for f, s in self._samples.items() if s[-1][0] < now - 30 * self.window]:
                del self._samples[other]
            first_at, first = samples[0]
        span = now - first_at
        if span < 1.0:
            return None
        return max(0.0, (delivered - first) / span)
