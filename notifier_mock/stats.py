"""Request counters of the mock receiver, cheap enough to bump on every request."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

Clock = Callable[[], float]

COUNTER_NAMES = (
    "received",
    "accepted",
    "duplicates",
    "throttled",
    "errors_5xx",
    "timeouts",
    "resets",
    "bad_signature",
    "bad_request",
    "client_gone",
)


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")


class Counters:
    """Counters plus the accepted webhook ids and per-user totals.

    Every finished webhook request lands in exactly one of accepted, throttled, errors_5xx,
    timeouts, resets, bad_signature, bad_request or client_gone (left before sending its
    body); ``received`` minus their sum is in flight.
    Memory grows with distinct webhook ids (~100 bytes each) until :meth:`reset`.
    """

    __slots__ = (
        "_clock",
        "_second",
        "_second_count",
        "_wall_clock",
        "accepted",
        "bad_request",
        "bad_signature",
        "client_gone",
        "counting_since",
        "duplicates",
        "errors_5xx",
        "first_received_at",
        "last_accepted_at",
        "last_second_count",
        "per_user",
        "received",
        "resets",
        "seen_ids",
        "started_at",
        "throttled",
        "timeouts",
    )

    def __init__(self, clock: Clock = time.monotonic, wall_clock: Clock = time.time) -> None:
        self._clock = clock
        self._wall_clock = wall_clock
        self.started_at = wall_clock()
        self.reset()

    def reset(self) -> None:
        """Zero everything (the start time of the process is kept)."""
        self.received = 0
        self.accepted = 0
        self.duplicates = 0
        self.throttled = 0
        self.errors_5xx = 0
        self.timeouts = 0
        self.resets = 0
        self.bad_signature = 0
        self.bad_request = 0
        self.client_gone = 0
        self.seen_ids: set[str] = set()
        self.per_user: dict[str, int] = {}
        self.counting_since = self._wall_clock()
        self.first_received_at: float | None = None  # wall clock of the first request counted
        self.last_accepted_at: float | None = None  # ... and of the last one accepted
        self._second = int(self._clock())
        self._second_count = 0
        self.last_second_count = 0

    def _roll(self, second: int) -> None:
        # Only the previous whole second matters; a gap of more than one second means it was 0.
        self.last_second_count = self._second_count if second == self._second + 1 else 0
        self._second = second
        self._second_count = 0

    def accept(self, msg_id: str, user: str) -> bool:
        """Count one accepted webhook; True if its id was accepted before (a duplicate)."""
        self.accepted += 1
        self.last_accepted_at = self._wall_clock()
        seen = self.seen_ids
        duplicate = msg_id in seen
        if duplicate:
            self.duplicates += 1
        else:
            seen.add(msg_id)
        per_user = self.per_user
        per_user[user] = per_user.get(user, 0) + 1
        second = int(self._clock())
        if second != self._second:
            self._roll(second)
        self._second_count += 1
        return duplicate

    @property
    def unique(self) -> int:
        """Distinct webhook ids among accepted requests."""
        return len(self.seen_ids)

    @property
    def rate_1s(self) -> int:
        """Requests accepted during the last full second of the monotonic clock."""
        second = int(self._clock())
        if second != self._second:
            self._roll(second)
        return self.last_second_count

    @property
    def in_flight(self) -> int:
        """Received requests with no outcome yet (waiting on latency, a hang, their body)."""
        done = (
            self.accepted
            + self.throttled
            + self.errors_5xx
            + self.timeouts
            + self.resets
            + self.bad_signature
            + self.bad_request
            + self.client_gone
        )
        return self.received - done

    def snapshot(self, *, per_user: bool = True) -> dict[str, Any]:
        """The counters as JSON-ready data."""
        data: dict[str, Any] = {name: getattr(self, name) for name in COUNTER_NAMES}
        data["unique"] = self.unique
        data["in_flight"] = self.in_flight
        data["rate_1s"] = self.rate_1s
        data["started_at"] = _iso(self.started_at)
        data["counting_since"] = _iso(self.counting_since)
        # Unix seconds: a job's first request and last acceptance, for its whole-run rate.
        data["first_received_at"] = self.first_received_at
        data["last_accepted_at"] = self.last_accepted_at
        if per_user:
            data["per_user"] = dict(self.per_user)
        return data

    def receive(self) -> None:
        """Count one incoming webhook request (before its outcome is known)."""
        self.received += 1
        if self.first_received_at is None:
            self.first_received_at = self._wall_clock()
