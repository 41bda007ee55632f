"""Token bucket and Retry-After of the mock receiver, on a fake clock."""

from __future__ import annotations

import math
from email.utils import parsedate_to_datetime

import pytest

from notifier_mock.limiter import TokenBucket
from notifier_mock.retry_after import retry_after


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def take(bucket: TokenBucket, count: int) -> list[float]:
    return [bucket.acquire() for _ in range(count)]


def test_unlimited_when_rate_is_zero() -> None:
    bucket = TokenBucket(0, clock=FakeClock())
    assert take(bucket, 10_000) == [0.0] * 10_000


def test_burst_then_wait_until_a_token_is_free() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10, burst=3, clock=clock)
    assert take(bucket, 3) == [0.0, 0.0, 0.0]
    assert bucket.acquire() == pytest.approx(0.1)
    clock.advance(0.04)
    assert bucket.acquire() == pytest.approx(0.06)


def test_wait_time_does_not_take_a_token() -> None:
    clock = FakeClock()
    bucket = TokenBucket(4, burst=1, clock=clock)
    assert bucket.wait_time() == 0.0
    assert bucket.wait_time() == 0.0
    assert bucket.acquire() == 0.0
    assert bucket.wait_time() == pytest.approx(0.25)
    clock.advance(0.25)
    assert bucket.wait_time() == 0.0
    assert TokenBucket(0, clock=clock).wait_time() == 0.0


def test_refill_is_capped_at_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(100, burst=5, clock=clock)
    take(bucket, 5)
    clock.advance(0.02)
    assert take(bucket, 3) == [0.0, 0.0, pytest.approx(0.01)]
    clock.advance(3600)
    assert bucket.tokens == 5
    assert sum(wait == 0.0 for wait in take(bucket, 10)) == 5


def test_default_burst_is_a_tenth_of_the_rate_but_at_least_one() -> None:
    assert TokenBucket(200, clock=FakeClock()).burst == 20
    assert TokenBucket(5, clock=FakeClock()).burst == 1


def test_steady_rate_over_time() -> None:
    clock = FakeClock()
    bucket = TokenBucket(50, burst=1, clock=clock)
    granted = 0
    for _ in range(1000):  # 10 simulated seconds in 10 ms steps, 3 tries each
        granted += sum(wait == 0.0 for wait in take(bucket, 3))
        clock.advance(0.01)
    assert granted == pytest.approx(500, abs=2)


def test_changing_the_rate_keeps_tokens_earned_at_the_old_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10, burst=10, clock=clock)
    take(bucket, 10)
    clock.advance(0.5)  # 5 tokens earned at 10/s
    bucket.reconfigure(100, burst=10)
    assert bucket.tokens == pytest.approx(5)
    take(bucket, 5)
    assert bucket.acquire() == pytest.approx(0.01)  # the new rate applies from now on
    clock.advance(0.05)
    assert bucket.tokens == pytest.approx(5)


def test_lowering_burst_drops_excess_tokens_and_unlimited_to_limited_starts_full() -> None:
    clock = FakeClock()
    bucket = TokenBucket(100, burst=50, clock=clock)
    bucket.reconfigure(100, burst=2)
    assert take(bucket, 3)[2] > 0
    bucket.reconfigure(0)
    assert take(bucket, 100) == [0.0] * 100
    bucket.reconfigure(10, burst=4)
    assert sum(wait == 0.0 for wait in take(bucket, 10)) == 4


@pytest.mark.parametrize(("rate", "burst"), [(-1, None), (10, 0.5)])
def test_invalid_reconfigure(rate: float, burst: float | None) -> None:
    with pytest.raises(ValueError, match="must be"):
        TokenBucket(rate, burst, clock=FakeClock())


@pytest.mark.parametrize(
    ("wait", "expected"),
    [
        (0.0001, "1"),
        (0.2, "1"),
        (1.0, "1"),
        (1.2, "2"),
        (2.0000000000000004, "2"),
        (59.01, "60"),
    ],
)
def test_retry_after_seconds_rounds_up_and_is_at_least_one(wait: float, expected: str) -> None:
    assert retry_after("seconds", wait, 0.0) == expected


@pytest.mark.parametrize("wait", [0.25, 1.0, 7.9])
def test_retry_after_date_is_the_instant_rounded_up(wait: float) -> None:
    wall = 1_750_000_000.6
    value = retry_after("date", wait, wall)
    assert value is not None
    assert value.endswith(" GMT")
    parsed = parsedate_to_datetime(value)
    assert parsed.timestamp() == math.ceil(wall + wait)


def test_retry_after_none_and_unknown_mode() -> None:
    assert retry_after("none", 3.0, 0.0) is None
    with pytest.raises(ValueError, match="retry_after_mode"):
        retry_after("minutes", 3.0, 0.0)
