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
    rconn.hset(keys.ratelimit, "rate", "2000")  # smoothed sending at 2000/s
    now = int(rconn.time()[0])
    # second -1 was paused (nothing accepted); second -2 was saturated: 300 in, some refused
    rconn.hset(keys.outcomes, mapping={f"{now - 2}:ok": 300, f"{now - 2}:throttled": 40,
                                       f"{now - 3}:ok": 900})
    rate = limiter.throttled(0.01)
    assert rate is not None and abs(rate - 0.9 * 300) < 1e-6
    # several notifiers hitting the same 429 burst cut only once
    assert limiter.throttled(0.01) == rate
    assert float(rconn.hget(keys.ratelimit, "ceiling") or 0) == 300


def test_refusals_of_unsmoothed_bursts_slow_down_without_setting_a_ceiling(
        rconn: redis.Redis) -> None:
    keys = _keys(rconn)
    limiter = GlobalLimiter(rconn, keys, cut_factor=1.0, hold_after_cut=0.0, fast_step=0.5)
    now = int(rconn.time()[0])
    # no rate in force: bursts of concurrent requests, part of each refused
    rconn.hset(keys.outcomes, mapping={f"{now - 1}:ok": 210, f"{now - 1}:throttled": 150})
    assert limiter.throttled(0.01) == 360.0  # the rate that was sent, now smoothed
    assert rconn.hget(keys.ratelimit, "ceiling") is None
    rconn.hset(keys.ratelimit, "last_cut", "0")
    rconn.delete(keys.backpressure)  # the pause is over
    assert limiter.take(1).rate == 540.0  # no known limit: it climbs quickly


def test_crossing_the_limit_by_a_raise_takes_the_rate_before_it_as_ceiling(
        rconn: redis.Redis) -> None:
    keys = _keys(rconn)
    limiter = GlobalLimiter(rconn, keys, cut_factor=1.0)
    now_ms = float(rconn.time()[0]) * 1000
    rconn.hset(keys.ratelimit, mapping={"rate": "1020", "before_raise": "1000",
                                        "last_raise": str(now_ms - 300)})
    now = int(rconn.time()[0])
    rconn.hset(keys.outcomes, mapping={f"{now - 1}:ok": 1000, f"{now - 1}:throttled": 3,
                                       f"{now - 1}:granted": 1010})
    assert limiter.throttled(0.01) == 1000.0
    assert float(rconn.hget(keys.ratelimit, "ceiling") or 0) == 1000.0


def test_a_429_with_no_history_pauses_but_does_not_guess_a_rate(rconn: redis.Redis) -> None:
    keys = _keys(rconn)
    limiter = GlobalLimiter(rconn, keys)
    assert limiter.throttled(0.2) is None
    assert rconn.hget(keys.ratelimit, "rate") is None
    assert limiter.paused_for() > 0


def test_the_rate_climbs_back_to_just_under_the_ceiling(rconn: redis.Redis) -> None:
    keys = _keys(rconn)
    limiter = GlobalLimiter(rconn, keys, max_rate=1000, hold_after_cut=0.0, fast_step=0.5,
                            explore_after=3600)
    now_ms = float(rconn.time()[0]) * 1000
    rconn.hset(keys.ratelimit, mapping={"rate": "100", "ceiling": "400",
                                        "last_cut": str(now_ms), "last_raise": "0"})
    assert limiter.take(1).rate == 150.0
    rconn.hset(keys.ratelimit, mapping={"rate": "350", "last_raise": "0"})
    assert limiter.take(1).rate == 396.0  # 99% of the ceiling, not beyond
    rconn.hset(keys.ratelimit, "last_raise", "0")
    assert limiter.take(1).rate == 396.0  # and it stays there until a long quiet spell


def test_after_a_long_quiet_spell_it_explores_but_never_past_the_limit(
        rconn: redis.Redis) -> None:
    keys = _keys(rconn)
    limiter = GlobalLimiter(rconn, keys, max_rate=1000, hold_after_cut=0.0, explore_after=0.0,
                            explore_step=0.5)
    rconn.hset(keys.ratelimit, mapping={"rate": "396", "ceiling": "400", "last_cut": "0",
                                        "last_raise": "0"})
    assert limiter.take(1).rate == 594.0
    rconn.hset(keys.ratelimit, mapping={"rate": "900", "last_raise": "0"})
    assert limiter.take(1).rate == 1000.0  # never above the configured limit
