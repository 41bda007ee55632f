"""The HTTP client the notifier sends webhooks with.

Callers (and tests) only see :mod:`httpx`: requests, responses and exceptions are httpx
types. Underneath, :class:`AiohttpTransport` drives one long-lived ``aiohttp.ClientSession``
because httpx's default (httpcore) transport is several times slower at the concurrency
the notifier runs at; docs/benchmarks.md has the measurements.

Mocking with respx
------------------
respx's default mocker patches httpcore, which this transport never calls, so a plain
``respx.mock`` does **not** intercept requests from :func:`make_client`: they would go to
the network. Use one of::

    with respx.mock(using="httpx") as router:  # patches AsyncClient._transport_for_url
        ...

    router = respx.Router()
    mock = httpx.MockTransport(router.async_handler)
    client = make_client(timeout=5, concurrency=8, transport=mock)
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import httpx
from yarl import URL

if TYPE_CHECKING:
    from httpx._types import CookieTypes

__all__ = ["AiohttpTransport", "WebhookClient", "make_client"]

# Idle keep-alive connections are dropped a little before the common 5 s server idle timeout
# (uvicorn, Node): reusing one the server is closing fails a POST, which is never retried.
DEFAULT_KEEPALIVE_EXPIRY: Final = 4.0


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport that sends each request over a shared ``aiohttp.ClientSession``.

    HTTP/1.1 only, no proxies, response bodies are read eagerly (webhook answers are
    small). Honours the httpx ``timeout`` request extension: ``pool`` bounds the wait for
    one of the ``max_connections`` slots, ``connect`` the TCP/TLS setup, ``read`` each
    socket read; ``write`` is not enforced separately (bodies are small). aiohttp and
    socket errors are raised as the matching httpx exceptions.

    The session is opened on the first request and bound to that event loop; use one
    transport per loop and close it with :meth:`aclose`.
    """

    def __init__(
        self,
        *,
        max_connections: int,
        keepalive_expiry: float = DEFAULT_KEEPALIVE_EXPIRY,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._verify = verify
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Our own slot count, so a full pool surfaces as httpx.PoolTimeout rather than
        # as aiohttp's connect timeout, which covers both the wait and the connect.
        self._slots: asyncio.Semaphore | None = None
        self._closed = False
        self._timeouts: dict[tuple[float | None, float | None], aiohttp.ClientTimeout] = {}

    def _open(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("AiohttpTransport is closed")
        loop = asyncio.get_running_loop()
        if self._session is not None:
            if loop is not self._loop:
                raise RuntimeError(
                    "AiohttpTransport is bound to another event loop; "
                    "create one client per loop and keep that loop running"
                )
            return self._session
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            limit_per_host=0,
            keepalive_timeout=self._keepalive_expiry,
            # Same CA bundle (certifi) as httpx's own transport.
            ssl=httpx.create_ssl_context() if self._verify is True else self._verify,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            # httpx already handles cookies, decompression, redirects and default headers.
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None),
            trust_env=False,
        )
        self._slots = asyncio.Semaphore(self._max_connections)
        self._loop = loop
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and return the response with its body already read."""
        session = self._session
        if session is None or self._loop is not asyncio.get_running_loop():
            session = self._open()
        slots = self._slots
        assert slots is not None  # set together with the session
        timeouts: Mapping[str, float | None] = request.extensions.get("timeout", {})

        if slots.locked():
            try:
                async with asyncio.timeout(timeouts.get("pool")):
                    await slots.acquire()
            except TimeoutError:
                raise httpx.PoolTimeout(
                    "timed out waiting for a free connection", request=request
                ) from None
        else:
            await slots.acquire()  # a slot is free: returns without suspending
        try:
            headers = request.headers.multi_items()
            try:
                body = request.content
            except httpx.RequestNotRead:
                body = await request.aread()
                # The body goes out whole with a Content-Length, not in httpx's chunks.
                headers = [(k, v) for k, v in headers if k.lower() != "transfer-encoding"]
            url = URL(str(request.url), encoded=True)
            if url.raw_user is not None:
                # httpx already turned URL credentials into an Authorization header;
                # aiohttp refuses a request that has both.
                url = url.with_user(None)
            try:
                async with session.request(
                    request.method,
                    url,
                    headers=headers,
                    data=body or None,
                    allow_redirects=False,
                    timeout=self._client_timeout(timeouts.get("connect"), timeouts.get("read")),
                    server_hostname=request.extensions.get("sni_hostname"),
                ) as response:
                    content = await response.read()
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise _to_httpx(exc, request) from exc
        finally:
            slots.release()

        extensions: dict[str, Any] = {"http_version": b"HTTP/1.1"}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode("latin-1", "replace")
        # stream=, not content=: content= would add a Content-Length header of its own.
        return httpx.Response(
            response.status,
            headers=list(response.raw_headers),
            stream=httpx.ByteStream(content),
            request=request,
            extensions=extensions,
        )

    def _client_timeout(self, connect: float | None, read: float | None) -> aiohttp.ClientTimeout:
        # A client uses one or two timeout settings; don't build a new object per request.
        key = (connect, read)
        timeout = self._timeouts.get(key)
        if timeout is None:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=read)
            if len(self._timeouts) < 64:
                self._timeouts[key] = timeout
        return timeout

    async def aclose(self) -> None:
        """Close the session and every pooled connection."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _to_httpx(exc: BaseException, request: httpx.Request) -> httpx.TransportError:
    """Map an aiohttp/socket error onto the httpx exception a caller would expect."""
    message = str(exc) or type(exc).__name__
    error: httpx.TransportError
    # Order matters: the aiohttp classes below inherit from one another.
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        error = httpx.ConnectTimeout(message, request=request)
    elif isinstance(exc, TimeoutError):  # SocketTimeoutError and other read timeouts
        error = httpx.ReadTimeout(message, request=request)
    elif isinstance(exc, aiohttp.ClientConnectorError):
        error = httpx.ConnectError(message, request=request)
    elif isinstance(exc, aiohttp.ServerDisconnectedError):
        error = httpx.RemoteProtocolError(
            "Server disconnected without sending a response.", request=request
        )
    elif isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
        error = httpx.RemoteProtocolError(message, request=request)
    elif isinstance(exc, aiohttp.NonHttpUrlClientError | aiohttp.InvalidURL):
        error = httpx.UnsupportedProtocol(message, request=request)
    elif isinstance(exc, OSError):  # resets and broken pipes on an open connection
        error = httpx.ReadError(message, request=request)
    else:
        error = httpx.TransportError(message, request=request)
    return error


class _SendOnlyCookies(httpx.Cookies):
    """Cookies sent with requests but never learnt from responses."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class WebhookClient(httpx.AsyncClient):
    """An ``httpx.AsyncClient`` that does not keep cookies from responses.

    Deliveries must not depend on one another, and one shared client would otherwise echo
    a receiver's ``Set-Cookie`` back on later deliveries to that host. Skipping httpx's
    per-response cookie parsing also saves about a quarter of its per-request CPU time.
    """

    def __init__(self, *, cookies: CookieTypes | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cookies = cookies if cookies is not None else {}

    @property
    def cookies(self) -> httpx.Cookies:
        """Cookies sent with every request (empty unless set explicitly)."""
        return self._send_only_cookies

    @cookies.setter
    def cookies(self, cookies: CookieTypes) -> None:
        self._send_only_cookies = _SendOnlyCookies(cookies)


def make_client(
    *,
    timeout: float,
    concurrency: int,
    headers: Mapping[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """Build the webhook client: create once per process, reuse for every job, then ``aclose()``.

    ``timeout`` applies to each phase (pool wait, connect, read, write); ``concurrency``
    caps open connections. ``transport`` replaces :class:`AiohttpTransport`, e.g. with
    ``httpx.MockTransport`` in tests; ``respx.mock(using="httpx")`` also works without it,
    plain ``respx.mock`` does not (see the module docstring).
    """
    return WebhookClient(
        transport=transport or AiohttpTransport(max_connections=concurrency),
        timeout=httpx.Timeout(timeout),
        headers=headers,
        # Skips .netrc and env lookups; env proxies are already ignored with a custom transport.
        trust_env=False,
        follow_redirects=False,
    )
