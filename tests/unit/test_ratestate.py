"""Reading the notifiers' rate records: the outcomes hash and the rate in force."""

from __future__ import annotations

from hookdrop.ratestate import Outcome, outcome_field, parse_outcomes, parse_rate


def test_outcome_fields_read_back_as_second_and_kind() -> None:
    raw = {
        outcome_field(1_700_000_000, Outcome.OK).encode(): b"12",
        outcome_field(1_700_000_000, Outcome.THROTTLED).encode(): b"3",
        outcome_field(1_700_000_001, Outcome.GRANTED).encode(): b"15",
    }
    assert parse_outcomes(raw) == {
        (1_700_000_000, "ok"): 12,
        (1_700_000_000, "throttled"): 3,
        (1_700_000_001, "granted"): 15,
    }


def test_fields_of_another_shape_are_skipped() -> None:
    assert parse_outcomes({b"first": b"1", b"x:ok": b"2", b"7:ok": b"4"}) == {(7, "ok"): 4}


def test_no_rate_until_the_notifiers_set_one() -> None:
    assert parse_rate(None) is None
    assert parse_rate(b"") is None
    assert parse_rate(b"250.5") == 250.5
