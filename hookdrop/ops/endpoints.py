"""The operator's view of the endpoints: configuration (credentials masked), what their Redis
keys say now (rate in force, back-pressure, breaker) and their alerts in the ledger."""

from __future__ import annotations

from typing import Any

import redis

from hookdrop.endpoints import DEFAULT, Endpoints
from hookdrop.endpoints.state import read_state
from hookdrop.keys import Keys
from hookdrop.ops.rates import RATE_WINDOW
from hookdrop.store import EndpointCounts, Store


def endpoints_view(
    endpoints: Endpoints, store: Store, conn: redis.Redis, keys: Keys
) -> list[dict[str, Any]]:
    """One entry per endpoint configured or named by a file in the ledger, by name."""
    counts = store.endpoint_counts()
    names = sorted({*endpoints.names, *counts} or {DEFAULT})
    now = int(conn.time()[0])
    return [
        _one(
            name,
            endpoints,
            counts=counts.get(name, EndpointCounts()),
            conn=conn,
            keys=keys.scoped(name),
            now=now,
        )
        for name in names
    ]


def _one(
    name: str,
    endpoints: Endpoints,
    *,
    counts: EndpointCounts,
    conn: redis.Redis,
    keys: Keys,
    now: int,
) -> dict[str, Any]:
    state = read_state(conn, keys)
    configured = endpoints.by_name.get(name)
    return {
        "name": name,
        "configured": configured is not None,
        "url": configured.masked_url if configured else None,
        "method": configured.method if configured else None,
        "format": configured.format if configured else None,
        "folder": None if name == DEFAULT else name,
        "rate_limit": {
            "configured": (configured.rate_limit or None) if configured else None,
            "current": state.rate,
        },
        "backpressure": {
            "active": state.backpressure_seconds > 0,
            "seconds_left": state.backpressure_seconds,
        },
        "breaker": {
            "state": state.breaker,
            "failures": state.failures,
            "probe_in": state.probe_in,
            "probe_interval": state.probe_interval,
            "last_error": state.last_error,
        },
        "counts": {
            "delivered": counts.delivered,
            "rejected": counts.rejected,
            "dead": counts.dead,
            "active_files": counts.active_files,
            **{str(status): n for status, n in sorted(counts.open.items())},
        },
        "delivered_per_second": _recent_rate(conn, keys, now),
    }


def _recent_rate(conn: redis.Redis, keys: Keys, now: int) -> float:
    """Accepted requests per second over the last RATE_WINDOW seconds."""
    window = int(RATE_WINDOW)
    fields = [f"{t}:ok" for t in range(now - window, now)]
    values = conn.hmget(keys.outcomes, fields)
    return round(sum(int(v) for v in values if v) / max(1, window), 1)
