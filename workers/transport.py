"""The HTTP client the notifier sends webhooks with.

Callers (and tests) only see :mod:`httpx`: requests, responses and exceptions are httpx
types. Underneath, :class:`WebhookTransport` sends over the small keep-alive pool of
:mod:`workers.http1`, because general-purpose transports spend several times more CPU per
request than a webhook call needs (docs/benchmarks.md has the measurements). The notifier
sends through :meth:`WebhookClient.deliver`, which skips the client's redirect, auth and
cookie handling that a webhook call never uses.

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
import re
import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import httpx

from workers import http1

if TYPE_CHECKING:
    from httpx._types import CookieTypes

__all__ = ["WebhookClient", "WebhookTransport", "make_client"]

# Idle keep-alive connections are dropped a little before the common 5 s server idle timeout
# (uvicorn, Node): reusing one the server is closing fails a POST, which is never retried.
DEFAULT_KEEPALIVE_EXPIRY: Final = 4.0
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_HTTP_VERSION: Final = {"http_version": b"HTTP/1.1"}
_UNSAFE: Final = re.compile(rb"[\r\n\x00]")


class WebhookTransport(httpx.AsyncBaseTransport):
    """An httpx transport that sends each request over a shared keep-alive pool.

    HTTP/1.1 only, no proxies, response bodies are read whole (webhook answers are small;
    more than 16 MiB is an error). Honours the httpx ``timeout`` request extension: ``pool``
    bounds the wait for one of the ``max_connections`` slots, ``connect`` the TCP/TLS setup,
    ``read`` the wait for the whole response; ``write`` is not enforced separately (bodies
    are small). Failures are raised as the matching httpx exceptions.

    The pool is made on the first request and bound to that event loop; use one transport
    per loop and close it with :meth:`aclose`.
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
        self._pool: http1.Pool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def _open(self) -> http1.Pool:
        if self._closed:
            raise RuntimeError("WebhookTransport is closed")
        loop = asyncio.get_running_loop()
        if self._pool is not None:
            if loop is not self._loop:
                raise RuntimeError(
                    "WebhookTransport is bound to another event loop; "
                    "create one client per loop and keep that loop running"
                )
            return self._pool
        if self._verify is True:
            context: ssl.SSLContext | None = httpx.create_ssl_context()  # certifi, as httpx
        elif self._verify is False:
            context = httpx.create_ssl_context(verify=False)
        else:
            context = self._verify
        self._pool = http1.Pool(
            max_connections=self._max_connections,
            keepalive_expiry=self._keepalive_expiry,
            ssl_context=context,
        )
        self._loop = loop
        return self._pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and return the response with its body already read."""
        pool = self._pool
        if pool is None or self._loop is not asyncio.get_running_loop():
            pool = self._open()
        url = request.url
        scheme = url.scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(
                f"request URL has an unsupported protocol {scheme!r}", request=request
            )
        try:
            body = request.content
            headers = request.headers.raw
        except httpx.RequestNotRead:
            body = await request.aread()
            # The body goes out whole with a Content-Length, not in chunks.
            headers = [(k, v) for k, v in request.headers.raw if k.lower() != b"transfer-encoding"]
            headers.append((b"Content-Length", str(len(body)).encode()))
        for name, value in headers:
            if _UNSAFE.search(name) or _UNSAFE.search(value):
                # Never written raw: a line break would start another header or request.
                raise httpx.LocalProtocolError(
                    f"refused to send header {name.decode('latin-1')!r}: "
                    "it contains a line break or a NUL"
                )
        head = b"".join(
            [
                request.method.encode(),
                b" ",
                url.raw_path,
                b" HTTP/1.1\r\n",
                *[b"%s: %s\r\n" % pair for pair in headers],
                b"\r\n",
            ]
        )
        timeouts: Mapping[str, float | None] = request.extensions.get("timeout", {})
        sni = request.extensions.get("sni_hostname")
        try:
            raw = await pool.request(
                (scheme, url.host, url.port or _DEFAULT_PORTS[scheme]),
                head,
                body,
                pool_timeout=timeouts.get("pool"),
                connect_timeout=timeouts.get("connect"),
                read_timeout=timeouts.get("read"),
                server_hostname=sni.decode() if isinstance(sni, bytes) else sni,
            )
        except http1.TransportFailure as exc:
            raise _to_httpx(exc, request) from exc
        extensions = dict(_HTTP_VERSION)
        if raw.reason:
            extensions["reason_phrase"] = raw.reason
        # content= reads (and decodes) the body at once; it adds a Content-Length header
        # only where the answer had none (a chunked or close-delimited one).
        return httpx.Response(
            raw.status,
            headers=raw.headers,
            content=raw.body,
            request=request,
            extensions=extensions,
        )

    async def aclose(self) -> None:
        """Close every pooled connection; later requests raise RuntimeError."""
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.aclose()


_ERRORS: Final[dict[type[http1.TransportFailure], type[httpx.TransportError]]] = {
    http1.ConnectFailed: httpx.ConnectError,
    http1.ConnectTimedOut: httpx.ConnectTimeout,
    http1.PoolTimedOut: httpx.PoolTimeout,
    http1.ReadTimedOut: httpx.ReadTimeout,
    http1.Disconnected: httpx.RemoteProtocolError,
    http1.ProtocolViolation: httpx.RemoteProtocolError,
}


def _to_httpx(exc: http1.TransportFailure, request: httpx.Request) -> httpx.TransportError:
    """The httpx exception a caller expects for a failure of the pool."""
    error_type = _ERRORS.get(type(exc), httpx.TransportError)
    return error_type(str(exc) or type(exc).__name__, request=request)


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

    async def deliver(self, request: httpx.Request) -> httpx.Response:
        """Send one webhook call built in full by the caller; the response is read whole.

        The short way through the client: no redirects to follow, no auth flow, cookies or
        event hooks to apply (a webhook client has none), which is most of ``send``'s cost per
        request. The transport is looked up as ``send`` does, so ``respx.mock(using="httpx")``
        intercepts this too.
        """
        if self.is_closed:
            raise RuntimeError("Cannot send a request, as the client has been closed.")
        transport = self._transport_for_url(request.url)
        response = await transport.handle_async_request(request)
        await response.aread()
        return response


def make_client(
    *,
    timeout: float,
    concurrency: int,
    headers: Mapping[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> WebhookClient:
    """Build the webhook client: create once per process, reuse for every job, then ``aclose()``.

    ``timeout`` applies to each phase (pool wait, connect, read, write); ``concurrency``
    caps open connections. ``transport`` replaces :class:`WebhookTransport`, e.g. with
    ``httpx.MockTransport`` in tests; ``respx.mock(using="httpx")`` also works without it,
    plain ``respx.mock`` does not (see the module docstring).
    """
    return WebhookClient(
        transport=transport or WebhookTransport(max_connections=concurrency),
        timeout=httpx.Timeout(timeout),
        headers=headers,
        # Skips .netrc and env lookups; env proxies are already ignored with a custom transport.
        trust_env=False,
        follow_redirects=False,
    )
