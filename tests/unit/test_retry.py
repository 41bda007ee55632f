"""The one retry helper: tries again with backoff, and gives up when the process stops."""

from __future__ import annotations

import asyncio

import pytest

from hookdrop.errors import QueueUnavailable, StoreUnavailable
from hookdrop.retry import retrying, retrying_async
from hookdrop.shutdown import StopFlag


class Flaky:
    """Fails ``failures`` times with ``error``, then answers ``"ok"``."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


class RecordingFlag:
    """A stop flag that records each wait and is set after ``waits_before_set`` of them."""

    def __init__(self, waits_before_set: int) -> None:
        self.waits: list[float] = []
        self.left = waits_before_set

    def is_set(self) -> bool:
        return self.left < 0

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None
        self.waits.append(timeout)
        self.left -= 1
        return self.is_set()


def test_retrying_tries_again_with_growing_waits_until_it_answers() -> None:
    slept: list[float] = []
    action = Flaky(3, StoreUnavailable("down"))
    assert retrying(action, what="test", sleep=slept.append, base=1, cap=100) == "ok"
    assert action.calls == 4
    assert len(slept) == 3
    assert 0.5 <= slept[0] <= 1 and 1 <= slept[1] <= 2 and 2 <= slept[2] <= 4


def test_retrying_lets_other_errors_through_at_once() -> None:
    action = Flaky(1, ValueError("bad"))
    with pytest.raises(ValueError, match="bad"):
        retrying(action, what="test", sleep=lambda _: None)
    assert action.calls == 1


def test_a_stop_predicate_ends_the_retries_with_the_last_error() -> None:
    action = Flaky(5, QueueUnavailable("gone"))
    with pytest.raises(QueueUnavailable, match="gone"):
        retrying(action, what="test", stop=lambda: action.calls >= 2, sleep=lambda _: None)
    assert action.calls == 2


def test_a_stop_flag_is_the_wait_between_tries() -> None:
    flag = RecordingFlag(waits_before_set=2)
    action = Flaky(10, QueueUnavailable("gone"))

    def no_sleep(_: float) -> None:
        raise AssertionError("a flag waits; sleep is not used")

    with pytest.raises(QueueUnavailable):
        retrying(action, what="test", stop=flag, sleep=no_sleep)
    assert action.calls == 3  # the third wait saw the flag set and gave up
    assert len(flag.waits) == 3


def test_a_set_stop_flag_gives_up_after_the_first_failure() -> None:
    flag = StopFlag()
    flag.set()
    action = Flaky(1, QueueUnavailable("gone"))
    try:
        with pytest.raises(QueueUnavailable):
            retrying(action, what="test", stop=flag)
    finally:
        flag.close()
    assert action.calls == 1


def test_retrying_async_honours_a_stop_flag() -> None:
    flag = StopFlag()
    failures: list[int] = []
    action = Flaky(5, StoreUnavailable("down"))

    async def attempt() -> str:
        return action()

    def failed() -> None:
        failures.append(1)
        flag.set()

    try:
        with pytest.raises(StoreUnavailable):
            asyncio.run(retrying_async(attempt, what="test", stop=flag, on_failure=failed))
    finally:
        flag.close()
    assert action.calls == 1 and failures == [1]
