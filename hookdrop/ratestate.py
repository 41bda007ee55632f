"""The notifiers' shared rate records in Redis, as everyone reads them.

The notifiers (``workers/ratelimit.py``) write two hashes; the API and the CLI read them:

- the control hash (``Keys.ratecontrol``): the adaptive controller's state, one field per
  ``workers.adaptive.RateState`` field plus ``version``; :data:`RATE` is the rate in force
  (requests per second; absent or 0 while no limit is known);
- the outcomes hash (``Keys.outcomes``): per-second counters, one field per Redis second and
  kind, ``<unix second>:<kind>`` (:func:`outcome_field`), pruned past
  :data:`OUTCOME_HISTORY_SECONDS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

import redis

from hookdrop.keys import Keys

#: The control hash's field holding the rate in force.
RATE = "rate"
#: The notifiers drop outcome counters older than this many seconds.
OUTCOME_HISTORY_SECONDS = 120


class Outcome(StrEnum):
    """The kinds of per-second counters in the outcomes hash."""

    GRANTED = "granted"  # tokens handed out by the global limiter
    OK = "ok"  # requests the receiver accepted
    THROTTLED = "throttled"  # requests it refused with a 429


def outcome_field(second: int, kind: Outcome) -> str:
    return f"{second}:{kind}"


def parse_outcomes(raw: Mapping[bytes, bytes]) -> dict[tuple[int, str], int]:
    """``{(second, kind): count}`` from the outcomes hash; fields of another shape are skipped."""
    found: dict[tuple[int, str], int] = {}
    for field, value in raw.items():
        second, _, kind = field.decode().partition(":")
        if second.isdigit():
            found[(int(second), kind)] = int(value)
    return found


def read_outcomes(conn: redis.Redis, keys: Keys) -> dict[tuple[int, str], int]:
    raw: dict[bytes, bytes] = conn.hgetall(keys.outcomes)  # type: ignore[assignment]
    return parse_outcomes(raw)


def parse_rate(value: bytes | str | None) -> float | None:
    """The rate in force, or None while the notifiers have not set one."""
    return float(value) if value else None


def read_rate(conn: redis.Redis, keys: Keys) -> float | None:
    return parse_rate(conn.hget(keys.ratecontrol, RATE))
