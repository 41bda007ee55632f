"""Keeps web pages of other sites away from the API (docs/api.md, "Cross-site protection").

A browser lets any page it shows send requests to 127.0.0.1; it only hides the answers from
that page, and even that stops once the page's own name is rebound to 127.0.0.1. So, before
routing and before the token is looked at:

- ``Host`` must be a name the API answers for; a rebound name gets 421 and reads nothing.
- A state change or WebSocket upgrade from another origin (``Origin``, ``Sec-Fetch-Site``)
  gets 403.
- A state change must be a request no page can send without a CORS preflight (which the API
  never grants): one with ``Authorization`` or ``X-Hookdrop-Request``, or with a body type a
  form cannot have. Anything else gets 403.
- No answer may be shown in a frame (``X-Frame-Options``, ``frame-ancestors``): a page could
  otherwise lay the API's own ``/docs`` under its buttons.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import structlog
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hookdrop.settings import split_host

log = structlog.get_logger(__name__)

REQUEST_HEADER = "X-Hookdrop-Request"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# The body types a page may send cross-origin without a preflight (the Fetch standard's
# CORS-safelisted Content-Type values), plus no body type at all.
SIMPLE_CONTENT_TYPES = frozenset(
    {"", "application/x-www-form-urlencoded", "multipart/form-data", "text/plain"}
)
DEFAULT_PORTS = {"http": 80, "https": 443}
HOST_ERROR = "this API does not answer for that Host; add it to HOOKDROP_API_ALLOWED_HOSTS"
ORIGIN_ERROR = "requests from another web origin may not change state or open a WebSocket"
SIMPLE_ERROR = (
    "a state change needs a request a web page cannot forge: add the header "
    f"'{REQUEST_HEADER}: 1' (or Authorization), or send the body as "
    "application/octet-stream or JSON"
)


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """The ``Host`` values the API answers: names on any port, plus pinned name:port pairs."""

    names: frozenset[str]
    pinned: frozenset[tuple[str, int]]
    any_host: bool

    @classmethod
    def build(cls, listen_host: str, allowed: Iterable[str]) -> HostPolicy:
        extra = [parsed for parsed in map(split_host, allowed) if parsed is not None]
        names = {name for name, port in extra if port is None}
        pinned = {(name, port) for name, port in extra if port is not None}
        listen = listen_host.lower()
        if listen in LOOPBACK_HOSTS or listen in WILDCARD_HOSTS:
            names |= LOOPBACK_HOSTS
        else:
            names.add(listen)
        # Beyond loopback a token is mandatory, and it is what protects the API; the names
        # a wildcard listen is reached by are not known, so only an allow-list narrows them.
        any_host = listen not in LOOPBACK_HOSTS and not extra
        return cls(frozenset(names), frozenset(pinned), any_host)

    def accepts(self, name: str, port: int) -> bool:
        return self.any_host or name in self.names or (name, port) in self.pinned


class CrossSiteGuard:
    """Pure ASGI middleware refusing foreign Hosts, foreign origins and forgeable requests."""

    def __init__(self, app: ASGIApp, hosts: HostPolicy, open_paths: frozenset[str]) -> None:
        self.app = app
        self.hosts = hosts
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            send = _no_framing(send)
        if scope["type"] not in ("http", "websocket") or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self.refusal(scope, headers)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, reason, message = refusal
        log.info(
            "api.refused",
            reason=reason,
            method=scope.get("method", "WEBSOCKET"),
            path=scope["path"],
            host=headers.get("host", "")[:200],
            origin=headers.get("origin", "")[:200] or None,
        )
        if scope["type"] == "websocket":
            # A close before the handshake is accepted: the server answers it with 403.
            await send({"type": "websocket.close", "code": 1008})
            return
        await JSONResponse({"error": message}, status_code=status)(scope, receive, send)

    def refusal(self, scope: Scope, headers: Headers) -> tuple[int, str, str] | None:
        """(status, reason, message) when the request is refused, else None."""
        scheme = _http_scheme(scope)
        host = _request_host(headers, scheme)
        if host is None or not self.hosts.accepts(*host):
            return 421, "host", HOST_ERROR
        if scope["type"] == "http" and scope["method"] in SAFE_METHODS:
            return None
        own = (scheme, *host)
        if any(_origin(value) != own for value in headers.getlist("origin")):
            return 403, "origin", ORIGIN_ERROR
        if headers.get("sec-fetch-site") in ("cross-site", "same-site"):
            return 403, "fetch_site", ORIGIN_ERROR
        if scope["type"] == "http" and _forgeable(headers):
            return 403, "simple_request", SIMPLE_ERROR
        return None


# No page may show the API in a frame: a framed /docs could be clicked through by a page.
_FRAMING_HEADERS = (
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
)


def _no_framing(send: Send) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *_FRAMING_HEADERS]}
        await send(message)

    return sending


def _http_scheme(scope: Scope) -> str:
    scheme = str(scope.get("scheme", "http"))
    return {"ws": "http", "wss": "https"}.get(scheme, scheme)


def _request_host(headers: Headers, scheme: str) -> tuple[str, int] | None:
    """The one ``Host`` header as (name, port), the port defaulting by scheme."""
    values = headers.getlist("host")
    parsed = split_host(values[0]) if len(values) == 1 else None
    if parsed is None:
        return None
    name, port = parsed
    return name, port if port is not None else DEFAULT_PORTS.get(scheme, 80)


def _origin(value: str) -> tuple[str, str, int] | None:
    """An ``Origin`` value as (scheme, name, port); None for ``null`` or anything malformed."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    if (
        parts.scheme not in DEFAULT_PORTS
        or not parts.hostname
        or parts.username is not None
        or parts.path
        or parts.query
        or parts.fragment
    ):
        return None
    return parts.scheme, parts.hostname, port if port is not None else DEFAULT_PORTS[parts.scheme]


def _forgeable(headers: Headers) -> bool:
    """A request a page on any site could send without a CORS preflight."""
    if "authorization" in headers or REQUEST_HEADER.lower() in headers:
        return False
    content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return content_type in SIMPLE_CONTENT_TYPES
