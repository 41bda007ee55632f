"""The global limiter on a real Redis: shared limit, back-pressure flag, adaptive rate."""

from __future__ import annotations

import asyncio
import time

import redis

from hookdrop.keys import Keys
from workers.ratelimit import GlobalLimiter


def _keys(rconn: redis.Redis) -> Keys:
    return Keys(f"rl{time.monotonic_ns()}")


def test_two_processes_together_never_exceed_the_global_rate(rconn: redis.Redis) -> None:
    keys = _keys(rconn)
    a = GlobalLimiter(rconn, keys, max_rate=200, burst_seconds=0.05)
    b = GlobalLimiter(rconn, keys, max_rate=200, burst_seconds=0.05)
    granted = 0
    started = time.monotonic()
    calls = 0
    while time.monotonic() - started < 1.0 and calls < 200_000:
        granted += a.take(5).tokens + b.take(5).tokens
        calls += 2
    elapsed = time.monotonic() - started
    # GCRA: at most rate * elapsed plus the burst allowance (0.05 s) plus one batch.
    assert granted <= 200 * elapsed + 200 * 0.05 + 10
    assert granted >= 100  # and it does grant


def test_no_limit_grants_everything_until_a_429(rconn: redis.Redis) -> None:
    limiter = GlobalLimiter(rconn, _keys(rconn))
    grant = limiter.take(64)
    assert (grant.tokens, grant.rate) == (64, None)


def test_back_pressure_flag_stops_every_process_until_it_expires(rconn: redis.Redis) -> None:
    keys = _keys(rconn)
    one, other = GlobalLimiter(rconn, keys), GlobalLimiter(rconn, keys)
    one.throttled(0.4)
    grant = other.take(10)
    assert grant.tokens == 0
    assert 0.2 < grant.wait_seconds <= 0.4
    assert other.paused_for() > 0
    # a shorter pause never shortens a longer one
    other.throttled(0.05)
    assert other.paused_for() > 0.2

    async def wait_for_token() -> float:
        started = time.monotonic()
        await other.acquire()
        return time.monotonic() - started

    waited = asyncio.run(wait_for_token())
    assert waited >= 0.15
    assert other.paused_for() == 0


def test_a_429_cuts_the_rate_to_what_the_receiver_accepted(rconn: redis.Redis) -> None:
    keys = _keys(rconn)
    limiter = GlobalLimiter(rconn, keys, max_rate=0, cut_factor=0.9)
    now = int(rconn.time()[0])
    rconn.hset(keys.outcomes, mapping={f"{now - 1}:ok": 300, f"{now - 2}:ok": 500})
    rate = limiter.throttled(0.01)
    assert rate is not None and abs(rate - 0.9 * 400) < 1e-6
    # several notifiers hitting the same 429 burst cut only once
    assert limiter.throttled(0.01) == rate
    assert float(rconn.hget(keys.ratelimit, "ceiling") or 0) == 400


def test_the_rate_probes_back_up_after_a_quiet_spell(rconn: redis.Redis) -> None:
    keys = _keys(rconn)
    limiter = GlobalLimiter(rconn, keys, max_rate=1000, probe_after=0.0, fast_step=0.5)
    rconn.hset(keys.ratelimit, mapping={"rate": "100", "last_cut": "0", "last_raise": "0"})
    grant = limiter.take(1)
    assert grant.rate == 150.0
    rconn.hset(keys.ratelimit, mapping={"rate": "900", "last_raise": "0"})
    assert limiter.take(1).rate == 1000.0  # never above the configured limit
