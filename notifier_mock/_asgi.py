"""Minimal ASGI typing and response helpers (no framework on purpose: speed)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_TYPE = (b"content-type", b"application/json")


class Response:
    """A complete, prebuilt response; reusable because servers do not mutate the messages."""

    __slots__ = ("body", "start")

    def __init__(
        self, status: int, body: bytes, extra_headers: tuple[tuple[bytes, bytes], ...] = ()
    ) -> None:
        headers = [JSON_TYPE, (b"content-length", str(len(body)).encode()), *extra_headers]
        self.start: Message = {"type": "http.response.start", "status": status, "headers": headers}
        self.body: Message = {"type": "http.response.body", "body": body}

    async def send(self, send: Send) -> None:
        """Send this response."""
        await send(self.start)
        await send(self.body)


def json_response(
    status: int, data: Any, extra_headers: tuple[tuple[bytes, bytes], ...] = ()
) -> Response:
    """A JSON response for ``data``."""
    return Response(status, orjson.dumps(data), extra_headers)


def error_response(status: int, message: str) -> Response:
    """``{"error": message}`` with ``status``."""
    return json_response(status, {"error": message})


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body; None if the client disconnected. ValueError over ``limit``."""
    message = await receive()
    if message["type"] != "http.request":
        return None
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise ValueError(f"body larger than {limit} bytes")
        return body
    chunks = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ValueError(f"body larger than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def wait_disconnect(receive: Receive) -> None:
    """Return once the client has gone (call after the body was read)."""
    while (await receive())["type"] != "http.disconnect":
        pass
