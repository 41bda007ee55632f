"""Standard Webhooks signatures: HMAC-SHA256 over ``{id}.{timestamp}.{body}``."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from notifier_mock.config import secret_key


def _key(secret: str | bytes) -> bytes:
    return secret if isinstance(secret, bytes) else secret_key(secret)


def _digest(
    key: bytes, msg_id: str | bytes, timestamp: int | str | bytes, body: str | bytes
) -> bytes:
    parts = [
        msg_id if isinstance(msg_id, bytes) else msg_id.encode(),
        timestamp if isinstance(timestamp, bytes) else str(timestamp).encode(),
        body if isinstance(body, bytes) else body.encode(),
    ]
    return hmac.new(key, b".".join(parts), hashlib.sha256).digest()


def sign(secret: str | bytes, msg_id: str, timestamp: int | str, body: str | bytes) -> str:
    """The ``webhook-signature`` value (``v1,<base64>``) for one message.

    ``secret`` is a ``whsec_...`` string or the raw key bytes; ``timestamp`` is Unix seconds.
    """
    digest = _digest(_key(secret), msg_id, timestamp, body)
    return "v1," + base64.b64encode(digest).decode()


def verify(
    secret: str | bytes,
    msg_id: str | bytes,
    timestamp: int | str | bytes,
    body: str | bytes,
    signature_header: str | bytes,
) -> bool:
    """True if any ``v1`` entry of the space-separated ``signature_header`` matches.

    Timestamp freshness is not checked: a load test may replay old messages on purpose.
    """
    expected = _digest(_key(secret), msg_id, timestamp, body)
    header = signature_header if isinstance(signature_header, bytes) else signature_header.encode()
    for entry in header.split():
        version, sep, encoded = entry.partition(b",")
        if version != b"v1" or not sep:
            continue
        try:
            candidate = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            continue
        if hmac.compare_digest(expected, candidate):
            return True
    return False
