from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from hookdrop.alerts import alert_id
from hookdrop.retry import compute_backoff
from workers.classify import classify_error, classify_response, parse_retry_after


def test_backoff_grows_exponentially_up_to_the_cap() -> None:
    waits = [compute_backoff(n, base=0.5, cap=8, jitter=False) for n in range(1, 8)]
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_backoff_jitter_stays_in_the_upper_half() -> None:
    assert compute_backoff(3, base=1, cap=100, rand=lambda: 0.0) == 2.0
    assert compute_backoff(3, base=1, cap=100, rand=lambda: 1.0) == 4.0
    assert compute_backoff(10_000, base=1, cap=30, rand=lambda: 0.5) == 22.5


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="attempt"):
        compute_backoff(0)
    with pytest.raises(ValueError, match="positive"):
        compute_backoff(1, base=0)


def test_alert_ids_are_stable_and_distinct() -> None:
    one = alert_id("abc", 0, "u1", "hello")
    assert one == alert_id("abc", 0, "u1", "hello")
    assert one.startswith("msg_")
    others = {
        alert_id("abd", 0, "u1", "hello"),
        alert_id("abc", 1, "u1", "hello"),
        alert_id("abc", 0, "u1", "hello!"),
        alert_id("abc", 0, "u1h", "ello"),
    }
    assert one not in others and len(others) == 4


def test_retry_after_in_seconds_and_as_a_date() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7", now=now) == 7.0
    assert (
        parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now=now)
        == 30.0
    )
    assert (
        parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now=now) == 0.0
    )
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after(None) is None


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (200, "delivered"),
        (204, "delivered"),
        (429, "throttled"),
        (500, "retry"),
        (503, "retry"),
        (408, "retry"),
        (400, "rejected"),
        (404, "rejected"),
        (410, "rejected"),
    ],
)
def test_answers_are_classified(code: int, kind: str) -> None:
    response = httpx.Response(code, text="nope " * 100, headers={"retry-after": "3"})
    verdict = classify_response(response)
    assert verdict.kind == kind
    assert verdict.code == code
    if kind == "rejected":
        assert verdict.error is not None and verdict.error.startswith(f"HTTP {code}: nope")
        assert len(verdict.error) < 240
    if kind == "throttled":
        assert verdict.retry_after == 3.0


def test_transport_errors_are_retried() -> None:
    assert classify_error(httpx.ReadTimeout("slow")).kind == "retry"
    assert "timeout" in (classify_error(httpx.ConnectTimeout("x")).error or "")
    assert classify_error(httpx.ConnectError("refused")).kind == "retry"


def test_alert_ids_of_the_default_endpoint_are_unchanged_and_others_differ() -> None:
    from hookdrop.alerts import alert_id

    default = alert_id("sha", 0, "u1", "hi")
    assert alert_id("sha", 0, "u1", "hi", "default") == default
    assert alert_id("sha", 0, "u1", "hi", "chat") != default
    assert alert_id("sha", 0, "u1", "hi", "chat") == alert_id("sha", 0, "u1", "hi", "chat")
    assert alert_id("sha", 0, "u1", "hi", "chat") != alert_id("sha", 0, "u1", "hi", "sms")
