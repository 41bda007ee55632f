"""Stable alert ids: the same row of the same file always gets the same id."""

from __future__ import annotations

import base64
import hashlib


def alert_id(
    content_sha256: str, generation: int, user_id: str, message: str, endpoint: str = "default"
) -> str:
    """The id a receiver sees as ``webhook-id`` on every try of this alert.

    Derived from the file's content hash and the row (user id + message), so a row repeated in
    a file is one alert and a re-read after a crash yields the same ids. A resend of a file by
    the operator (generation > 0) gets new ids on purpose: it is meant to be delivered again.
    """
    digest = hashlib.blake2b(digest_size=15)
    digest.update(content_sha256.encode())
    digest.update(b"\x00%d\x00" % generation)
    if endpoint != "default":
        digest.update(b"endpoint\x00" + endpoint.encode() + b"\x00")
    digest.update(user_id.encode("utf-8", "surrogatepass"))
    digest.update(b"\x00")
    digest.update(message.encode("utf-8", "surrogatepass"))
    return "msg_" + base64.b32encode(digest.digest()).decode().lower()
