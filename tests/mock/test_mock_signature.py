"""notifier_mock.signature cross-checked against the standardwebhooks reference package."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook

from notifier_mock.signature import sign, verify

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
BODY = '{"userId":"u-1","alertMessage":"disk full \\u00e9"}'


def reference_headers(secret: str, msg_id: str, when: datetime, body: str) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, when, body),
    }


def test_sign_matches_the_reference() -> None:
    when = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
    expected = Webhook(SECRET).sign("msg_1", when, BODY)
    assert sign(SECRET, "msg_1", int(when.timestamp()), BODY) == expected
    assert sign(SECRET, "msg_1", str(int(when.timestamp())), BODY.encode()) == expected


def test_reference_accepts_our_signature() -> None:
    now = datetime.now(UTC)
    timestamp = int(now.timestamp())
    headers = {
        "webhook-id": "msg_2",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(SECRET, "msg_2", timestamp, BODY),
    }
    assert Webhook(SECRET).verify(BODY, headers) == {
        "userId": "u-1",
        "alertMessage": "disk full \u00e9",
    }


def test_verify_accepts_reference_signature_among_several() -> None:
    now = datetime.now(UTC)
    headers = reference_headers(SECRET, "msg_3", now, BODY)
    other = "v1," + base64.b64encode(b"x" * 32).decode()
    header = f"v2,abc {other} {headers['webhook-signature']}"
    assert verify(SECRET, "msg_3", headers["webhook-timestamp"], BODY.encode(), header)


@pytest.mark.parametrize("change", ["body", "id", "timestamp", "secret", "header"])
def test_verify_rejects_any_change(change: str) -> None:
    now = datetime.now(UTC)
    headers = reference_headers(SECRET, "msg_4", now, BODY)
    msg_id, timestamp, body = "msg_4", headers["webhook-timestamp"], BODY
    secret, header = SECRET, headers["webhook-signature"]
    if change == "body":
        body = body.replace("u-1", "u-2")
    elif change == "id":
        msg_id = "msg_5"
    elif change == "timestamp":
        timestamp = str(int(timestamp) + 1)
    elif change == "secret":
        secret = "whsec_" + base64.b64encode(b"j" * 32).decode()
    else:
        header = "v1,not-base64!!"
    assert not verify(secret, msg_id, timestamp, body, header)
    assert verify(SECRET, "msg_4", headers["webhook-timestamp"], BODY, headers["webhook-signature"])


def test_unpadded_secret_and_raw_key_bytes() -> None:
    key = b"0123456789abcdefghij"  # 20 bytes: base64 needs padding
    padded = "whsec_" + base64.b64encode(key).decode()
    unpadded = padded.rstrip("=")
    assert unpadded != padded
    assert sign(unpadded, "m", 1, "b") == sign(padded, "m", 1, "b") == sign(key, "m", 1, "b")
    assert sign(padded, "m", 1, "b") == Webhook(unpadded).sign(
        "m", datetime.fromtimestamp(1, UTC), "b"
    )


@pytest.mark.parametrize("secret", ["k" * 32, "whsec_", "whsec_***"])
def test_invalid_secret(secret: str) -> None:
    with pytest.raises(ValueError, match="whsec_"):
        sign(secret, "m", 1, "b")
