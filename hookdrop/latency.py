"""The delivery latency histogram, shared through Redis by every notifier.

Notifiers add the latencies of the alerts they just recorded as delivered; the API reads the
buckets for ``/metrics``. One hash (``<prefix>:latency``): a count per bucket ``le:<ms>`` (and
``le:inf``), ``sum_ms`` and ``count``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Final

import redis

from hookdrop.keys import Keys

LATENCY_BUCKETS_MS: Final = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


def observe_latencies(conn: redis.Redis, keys: Keys, latencies_ms: Iterable[float]) -> None:
    """Add delivery latencies (ms) to the shared histogram: one round trip per batch."""
    buckets: Counter[str] = Counter()
    total = 0.0
    for ms in latencies_ms:
        bucket = next((f"le:{b}" for b in LATENCY_BUCKETS_MS if ms <= b), "le:inf")
        buckets[bucket] += 1
        total += ms
    count = sum(buckets.values())
    if not count:
        return
    pipe = conn.pipeline(transaction=False)
    for bucket, n in buckets.items():
        pipe.hincrby(keys.latency, bucket, n)
    pipe.hincrbyfloat(keys.latency, "sum_ms", total)
    pipe.hincrby(keys.latency, "count", count)
    pipe.execute()


def latency_histogram(conn: redis.Redis, keys: Keys) -> tuple[list[tuple[str, float]], float]:
    """Cumulative (le seconds, count) buckets ending with +Inf, and the sum in seconds."""
    stored: dict[bytes, bytes] = conn.hgetall(keys.latency)  # type: ignore[assignment]
    raw = {k.decode(): v.decode() for k, v in stored.items()}
    cumulative: list[tuple[str, float]] = []
    running = 0
    for bound in LATENCY_BUCKETS_MS:
        running += int(raw.get(f"le:{bound}", 0))
        cumulative.append((repr(bound / 1000), float(running)))
    running += int(raw.get("le:inf", 0))
    cumulative.append(("+Inf", float(running)))
    return cumulative, float(raw.get("sum_ms", 0.0)) / 1000
