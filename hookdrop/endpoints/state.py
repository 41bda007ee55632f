"""What an endpoint's Redis keys say about it right now, for the monitor and the operator.

The notifiers write these keys (workers/ratelimit.py, workers/breaker.py); this module only
reads them, so the daemon and the operator's commands need nothing from the workers.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from hookdrop.keys import Keys

CLOSED = "closed"
OPEN = "open"
PROBING = "probing"


@dataclass(frozen=True, slots=True)
class EndpointState:
    backpressure_seconds: float  # left on the 429 back-pressure flag; 0 = none
    breaker: str  # closed, open or probing
    failures: int  # consecutive failures counted by the breaker
    probe_in: float | None  # seconds until the next probe is due (open breaker)
    probe_interval: float | None
    last_error: str | None
    rate: float | None  # requests/s in force; None = no limit in force

    @property
    def accepting(self) -> bool:
        """Alerts may be queued for it: no pause, and the breaker closed or due a probe."""
        if self.backpressure_seconds > 0:
            return False
        return self.breaker == CLOSED or (
            self.breaker == OPEN and self.probe_in is not None and self.probe_in <= 0
        )


def read_state(conn: redis.Redis, keys: Keys) -> EndpointState:
    """One round trip: the flag, the breaker, the rate controller and Redis's clock."""
    pipe = conn.pipeline(transaction=False)
    pipe.pttl(keys.backpressure)
    pipe.hgetall(keys.breaker)
    pipe.hget(keys.ratecontrol, "rate")
    pipe.time()
    pttl, raw, rate, clock = pipe.execute()
    now = clock[0] + clock[1] / 1e6
    breaker = {k.decode(): v.decode() for k, v in raw.items()}
    state = breaker.get("state", CLOSED)
    probe_at = float(breaker["probe_at"]) if "probe_at" in breaker else None
    value = float(rate) if rate else 0.0
    return EndpointState(
        backpressure_seconds=max(0, int(pttl)) / 1000,
        breaker=state,
        failures=int(breaker.get("fails", 0)),
        probe_in=None if state == CLOSED or probe_at is None else round(probe_at - now, 3),
        probe_interval=float(breaker["interval"])
        if state != CLOSED and "interval" in breaker
        else None,
        last_error=breaker.get("error"),
        rate=value if value > 0 else None,
    )
