"""A small HTTP/1.1 client connection pool on asyncio protocols, for webhook calls.

The notifier sends thousands of small POSTs a second to a handful of hosts. General-purpose
clients spend most of their time per request on features a webhook call does not use (cookie
jars, redirects, tracing, multipart, proxies); this pool does only what it needs: keep-alive
connections per origin, at most ``max_connections`` open at once, the request written in one
go, the response parsed by httptools (uvicorn's parser), the body read whole.

Errors are plain exceptions of this module; :mod:`workers.transport` turns them into httpx's.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import httptools

__all__ = [
    "ConnectFailed",
    "ConnectTimedOut",
    "Disconnected",
    "Pool",
    "PoolTimedOut",
    "ProtocolViolation",
    "RawResponse",
    "ReadTimedOut",
]

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024


class TransportFailure(Exception):
    """The request did not get a complete response."""


class ConnectFailed(TransportFailure):
    pass


class ConnectTimedOut(TransportFailure):
    pass


class PoolTimedOut(TransportFailure):
    pass


class ReadTimedOut(TransportFailure):
    pass


class Disconnected(TransportFailure):
    """The server closed the connection before the whole response arrived."""


class ProtocolViolation(TransportFailure):
    """The server's answer is not valid HTTP/1.1 (or exceeds our limits)."""


@dataclass(frozen=True, slots=True)
class RawResponse:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes


Origin = tuple[str, str, int]  # scheme, host, port


class _Connection(asyncio.Protocol):
    """One keep-alive connection; answers one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[RawResponse] | None = None
        self._reset()

    def _reset(self) -> None:
        self._status = 0
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._until_eof = False  # a body without a length: it ends with the connection

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without inheriting from it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # nothing asked: a server talking out of turn
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ProtocolViolation(f"invalid HTTP response: {exc}"))
        except ProtocolViolation as exc:  # raised by a callback below
            self._fail(exc)

    def eof_received(self) -> bool | None:
        self._lost(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(exc)

    # -- httptools callbacks ------------------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES:
            raise ProtocolViolation("response headers over 64 KiB")
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        if 100 <= self._status < 200:  # an interim answer (no request of ours asks for one)
            self._headers, self._reason, self._header_bytes = [], b"", 0
            return
        names = {name.lower() for name, _value in self._headers}
        self._until_eof = (
            b"content-length" not in names
            and b"transfer-encoding" not in names
            and self._status not in (204, 304)
        )

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > MAX_BODY_BYTES:
            raise ProtocolViolation("response body over 16 MiB")
        self._body.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self._status < 200:
            return
        waiter, self._waiter = self._waiter, None
        response = RawResponse(self._status, self._reason, self._headers, b"".join(self._body))
        keep = self._parser.should_keep_alive()
        self._reset()
        if not keep:
            self.close()
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    # -- use ------------------------------------------------------------------------------

    def send(self, data: Sequence[bytes]) -> asyncio.Future[RawResponse]:
        assert self.transport is not None and self._waiter is None
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.writelines(data)
        return self._waiter

    def usable(self, now: float, expiry: float) -> bool:
        return (
            not self.closed
            and self.transport is not None
            and not self.transport.is_closing()
            and now - self.idle_since < expiry
        )

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _fail(self, error: TransportFailure) -> None:
        waiter, self._waiter = self._waiter, None
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def _lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is None:
            return
        if self._until_eof and self._status:  # a response without a length ends here
            self.on_message_complete()
            return
        if self._waiter is not None:
            detail = f": {exc}" if exc else ""
            self._fail(Disconnected(f"server disconnected without sending a response{detail}"))


class Pool:
    """Connections to any number of origins, at most ``max_connections`` open in all."""

    def __init__(
        self,
        *,
        max_connections: int,
        keepalive_expiry: float,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.max_connections = max_connections
        self.keepalive_expiry = keepalive_expiry
        self.ssl_context = ssl_context
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[Origin, deque[_Connection]] = {}
        self._open: set[_Connection] = set()
        self.closed = False

    async def request(
        self,
        origin: Origin,
        head: bytes,
        body: bytes,
        *,
        pool_timeout: float | None,
        connect_timeout: float | None,
        read_timeout: float | None,
        server_hostname: str | None = None,
    ) -> RawResponse:
        """Send ``head`` (request line and headers, ending in a blank line) and ``body``."""
        if self.closed:
            raise RuntimeError("the connection pool is closed")
        if self._slots.locked():
            try:
                async with asyncio.timeout(pool_timeout):
                    await self._slots.acquire()
            except TimeoutError:
                raise PoolTimedOut("timed out waiting for a free connection") from None
        else:
            await self._slots.acquire()  # a slot is free: returns without suspending
        connection: _Connection | None = None
        try:
            connection = self._idle_connection(origin)
            if connection is None:
                connection = await self._connect(origin, connect_timeout, server_hostname)
            waiter = connection.send((head, body) if body else (head,))
            try:
                async with asyncio.timeout(read_timeout):
                    response = await waiter
            except TimeoutError:
                connection.close()
                raise ReadTimedOut(f"no complete response within {read_timeout} s") from None
            except BaseException:
                connection.close()
                raise
            if not connection.closed:
                connection.idle_since = time.monotonic()
                self._idle.setdefault(origin, deque()).append(connection)
                connection = None
            return response
        finally:
            if connection is not None:
                connection.close()
                self._open.discard(connection)
            self._slots.release()

    def _idle_connection(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()  # the most recently used: the least likely to be stale
            if connection.usable(now, self.keepalive_expiry):
                return connection
            connection.close()
            self._open.discard(connection)
        # A slot is ours, so an open connection to another origin may have to make room.
        if len(self._open) >= self.max_connections:
            self._close_one_idle()
        return None

    def _close_one_idle(self) -> None:
        for idle in self._idle.values():
            if idle:
                connection = idle.popleft()
                connection.close()
                self._open.discard(connection)
                return

    async def _connect(
        self, origin: Origin, timeout: float | None, server_hostname: str | None
    ) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        secure = scheme == "https"
        if secure and self.ssl_context is None:
            raise ConnectFailed("https is not enabled for this pool")
        try:
            async with asyncio.timeout(timeout):
                _transport, connection = await loop.create_connection(
                    _Connection,
                    host,
                    port,
                    ssl=self.ssl_context if secure else None,
                    server_hostname=(server_hostname or host) if secure else None,
                )
        except TimeoutError:
            message = f"could not connect to {host}:{port} within {timeout} s"
            raise ConnectTimedOut(message) from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectFailed(f"could not connect to {host}:{port}: {exc}") from exc
        self._open.add(connection)
        return connection

    async def aclose(self) -> None:
        self.closed = True
        for connection in list(self._open):
            connection.close()
        self._open.clear()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports run their close callbacks
