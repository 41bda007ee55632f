"""The global limiter on a real Redis: shared limit, back-pressure flag, adaptive rate."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from hookdrop.keys import Keys
from workers.adaptive import RateState, Tuning, tick
from workers.ratelimit import AcquireStopped, GlobalLimiter


@pytest.fixture(name="keys")
def _keys(key_prefix: str) -> Keys:
    """The test's own prefix, whose keys are deleted when it ends."""
    return Keys(key_prefix)


def test_two_processes_together_never_exceed_the_global_rate(
    rconn: redis.Redis, keys: Keys
) -> None:
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


def test_no_limit_grants_everything_until_a_429(rconn: redis.Redis, keys: Keys) -> None:
    limiter = GlobalLimiter(rconn, keys)
    grant = limiter.take(64)
    assert (grant.tokens, grant.rate) == (64, None)


def test_a_429_holds_every_process_briefly_and_the_flag_keeps_its_retry_after(
    rconn: redis.Redis, keys: Keys
) -> None:
    one, other = GlobalLimiter(rconn, keys), GlobalLimiter(rconn, keys)
    one.take(10)
    one.answered(0)  # the receiver accepted requests before it refused one
    one.throttled(1.0, epoch=0)
    hold = one.tuning.hold_after_cut
    grant = other.take(10)
    assert grant.tokens == 0  # everybody holds ...
    assert 0 < grant.wait_seconds <= hold  # ... briefly, then goes on at the new rate
    assert 0.8 < other.paused_for() <= 1.0  # the flag: the receiver asked for 1 s
    # a shorter pause never shortens a longer flag
    other.throttled(0.05)
    assert other.paused_for() > 0.8

    async def wait_for_token() -> float:
        started = time.monotonic()
        await other.acquire()
        return time.monotonic() - started

    waited = asyncio.run(wait_for_token())
    assert waited <= hold + 0.2
    assert other.paused_for() > 0  # still shown while the refused requests wait


def test_a_receiver_refusing_everything_holds_every_process_for_the_whole_pause(
    rconn: redis.Redis, keys: Keys
) -> None:
    one, other = GlobalLimiter(rconn, keys), GlobalLimiter(rconn, keys)
    one.throttled(0.4, epoch=0)  # no answer but 429s in this epoch
    grant = other.take(10)
    assert grant.tokens == 0
    assert 0.2 < grant.wait_seconds <= 0.4


def _set_state(rconn: redis.Redis, keys: Keys, state: RateState) -> None:
    rconn.hset(keys.ratecontrol, mapping={**state.to_fields(), "version": "1"})


def _redis_now(rconn: redis.Redis) -> float:
    seconds, micros = rconn.time()
    return float(seconds) + micros / 1e6


def test_a_429_seen_by_many_processes_moves_the_rate_once(rconn: redis.Redis, keys: Keys) -> None:
    limiters = [GlobalLimiter(rconn, keys) for _ in range(4)]
    _set_state(
        rconn,
        keys,
        RateState(rate=1000, good=1000, bad=1100, since=_redis_now(rconn) - 10, epoch=3),
    )
    grant = limiters[0].take(5)
    assert (grant.tokens, grant.rate, grant.epoch) == (5, 1000.0, 3)
    for limiter in limiters:
        limiter.answered(grant.epoch)  # 200s came back in this epoch before the 429s
    rates = [limiter.throttled(1.0, grant.epoch) for limiter in limiters]
    state = limiters[0].state()
    assert state.epoch == 4  # one cut, not four
    assert rates == [state.rate] * 4
    assert 950 <= state.rate < 1000  # refused after 10 s: just under
    paused = limiters[1].take(1)
    assert (paused.tokens, paused.epoch) == (0, 4)  # everybody holds off, under the new epoch


def test_a_429_from_before_the_last_cut_is_ignored(rconn: redis.Redis, keys: Keys) -> None:
    limiter = GlobalLimiter(rconn, keys)
    _set_state(rconn, keys, RateState(rate=500, good=500, bad=520, epoch=8))
    assert limiter.throttled(0.05, epoch=7) == 500.0
    assert limiter.state().epoch == 8
    assert limiter.paused_for() > 0  # but it still pauses everybody


def test_the_first_429_with_no_rate_starts_below_the_measured_sending_rate(
    rconn: redis.Redis, keys: Keys
) -> None:
    limiter = GlobalLimiter(rconn, keys)
    assert limiter.take(64).rate is None  # unlimited until a 429
    # 900 tokens granted since the first one, a second ago: sending at 900/s.
    rconn.hset(keys.ratelimit, mapping={"granted": 900, "first": _redis_now(rconn) - 1})
    rate = limiter.throttled(0.2)
    assert rate is not None
    assert 0.9 * 900 * limiter.tuning.blind_cut <= rate <= 900 * limiter.tuning.blind_cut
    assert limiter.paused_for() > 0


def test_a_quiet_spell_with_demand_raises_the_rate_once_for_everyone(
    rconn: redis.Redis, keys: Keys
) -> None:
    tuning = Tuning(climb_hold=0.0)
    a, b = GlobalLimiter(rconn, keys, tuning=tuning), GlobalLimiter(rconn, keys, tuning=tuning)
    since = _redis_now(rconn) - 2
    _set_state(rconn, keys, RateState(rate=100, bad=0, step=1.0, since=since))
    rconn.hset(keys.ratelimit, "granted", "1000")  # 200 tokens used in the 2 s since
    snap_a, snap_b = a.snapshot(), b.snapshot()
    new = tick(snap_a.state, now=snap_a.now, granted=snap_a.granted, max_rate=0)
    assert new is not None and new.rate == 200
    assert a.save(snap_a, new) is True  # the compare-and-set itself
    assert b.save(snap_b, new) is False  # b read a stale version
    assert a.state().rate == 200 and a.take(1).rate == 200.0


def test_an_idle_system_keeps_its_rate(rconn: redis.Redis, keys: Keys) -> None:
    limiter = GlobalLimiter(rconn, keys, tuning=Tuning(climb_hold=0.0))
    _set_state(rconn, keys, RateState(rate=100, bad=0, step=1.0, since=_redis_now(rconn) - 5))
    assert limiter.adjust().rate == 100  # nothing was granted: nothing was tested


def test_a_configured_limit_applies_from_the_start_and_caps_every_move(
    rconn: redis.Redis, keys: Keys
) -> None:
    limiter = GlobalLimiter(rconn, keys, max_rate=300)
    assert limiter.take(1).rate == 300.0
    assert limiter.adjust().rate == 300
    now = int(rconn.time()[0])
    rconn.hset(keys.outcomes, f"{now - 1}:granted", 5000)
    rate = limiter.throttled(0.01)
    assert rate is not None and rate <= 300


def test_a_429_with_no_other_answer_in_its_epoch_pauses_without_a_cut(
    rconn: redis.Redis, keys: Keys
) -> None:
    limiter = GlobalLimiter(rconn, keys)
    _set_state(
        rconn, keys, RateState(rate=800, good=800, bad=820, epoch=4, since=_redis_now(rconn) - 10)
    )
    assert limiter.throttled(0.05, epoch=4) == 800.0  # nothing answered in epoch 4 here
    assert limiter.state().epoch == 5 and limiter.paused_for() > 0
    limiter.answered(5)
    assert limiter.throttled(0.05, epoch=5) is not None
    assert limiter.state().rate < 800  # now it measured something


def test_a_429_before_anything_was_sent_reports_no_rate(rconn: redis.Redis, keys: Keys) -> None:
    limiter = GlobalLimiter(rconn, keys)
    assert limiter.throttled(0.05) is None  # paused, but no rate guessed from nothing
    assert limiter.paused_for() > 0


@pytest.mark.parametrize("rate", [0.5, 3, 6.911442, 9, 12, 14, 17, 19, 25, 60])
def test_every_rate_grants_tokens_at_about_that_rate(
    rconn: redis.Redis, keys: Keys, rate: float
) -> None:
    """Slow rates make the burst one interval: the whole token must not be lost to the
    rounding of the millisecond clock (which answered "0 tokens, wait 0 ms" for ever)."""
    limiter = GlobalLimiter(rconn, keys, max_rate=rate)
    window = max(1.0, 2.5 / rate)

    async def count() -> int:
        tokens = 0
        started = time.monotonic()
        with pytest.raises(AcquireStopped):
            while True:
                await limiter.acquire(stop=lambda: time.monotonic() - started > window)
                tokens += 1
        return tokens

    granted = asyncio.run(count())
    expected = rate * window
    # A token lost to rounding granted none at all; a busy box's event loop only runs late.
    assert expected * 0.8 - 1.5 <= granted <= expected + 1 + rate * 0.05


def test_a_waiting_acquire_ends_when_its_stop_condition_comes_true(
    rconn: redis.Redis, keys: Keys
) -> None:
    limiter = GlobalLimiter(rconn, keys, max_rate=0.5)
    stopped = False

    async def run() -> float:
        await limiter.acquire()  # the first token is free; the next one is 2 s away
        started = time.monotonic()
        with pytest.raises(AcquireStopped):
            await limiter.acquire(stop=lambda: stopped)
        return time.monotonic() - started

    async def stop_soon() -> float:
        nonlocal stopped
        waiter = asyncio.create_task(run())
        await asyncio.sleep(0.2)
        stopped = True
        return await waiter

    assert asyncio.run(stop_soon()) < 0.2 + 0.5
