"""Choosing which injected fault, if any, a request gets."""

from __future__ import annotations

import enum
import random

from notifier_mock.config import MockConfig

ERROR_STATUSES = (500, 502, 503)


class Fault(enum.Enum):
    """What happens to a request the limiter let through."""

    NONE = "none"
    RESET = "reset"
    TIMEOUT = "timeout"
    ERROR = "error"


class FaultPicker:
    """Draws faults with the configured shares; one draw per request keeps the shares exact."""

    __slots__ = (
        "_error_upto",
        "_jitter_s",
        "_latency_s",
        "_reset_upto",
        "_rng",
        "_timeout_upto",
        "active",
    )

    def __init__(self, config: MockConfig, rng: random.Random) -> None:
        self._rng = rng
        self._reset_upto = config.reset_rate
        self._timeout_upto = self._reset_upto + config.timeout_rate
        self._error_upto = self._timeout_upto + config.error_rate
        self._latency_s = config.latency_ms / 1000
        self._jitter_s = config.latency_jitter_ms / 1000
        # Lets the hot path skip the random draw when no fault is configured.
        self.active = self._error_upto > 0

    def pick(self) -> Fault:
        """The fault for one request."""
        if not self.active:
            return Fault.NONE
        draw = self._rng.random()
        if draw < self._reset_upto:
            return Fault.RESET
        if draw < self._timeout_upto:
            return Fault.TIMEOUT
        if draw < self._error_upto:
            return Fault.ERROR
        return Fault.NONE

    def error_status(self) -> int:
        """Which 5xx an injected error answers with."""
        return self._rng.choice(ERROR_STATUSES)

    def delay(self) -> float:
        """Seconds to wait before answering: latency plus a uniform 0..jitter extra."""
        if self._jitter_s > 0:
            return self._latency_s + self._rng.uniform(0.0, self._jitter_s)
        return self._latency_s
