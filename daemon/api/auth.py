"""The API token: a bearer header, or the cookie the status page sets after ``/?token=``.

The cookie never holds the token itself (browsers send a host's cookies to every port of it,
so any local web server could collect it): it holds a value derived from the token, which
only reads. Changing anything takes ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import parse_qs

import structlog
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

log = structlog.get_logger(__name__)

TOKEN_COOKIE = "hookdrop_token"
OPEN_PATHS = frozenset({"/healthz"})


READING_METHODS = frozenset({"GET", "HEAD"})
READ_ONLY_ERROR = (
    "the status page's cookie only reads; to change anything send "
    "Authorization: Bearer <HOOKDROP_API_TOKEN>"
)


def session_value(token: str) -> str:
    """The status page's cookie for ``token``: derived from it, never the token itself."""
    return hmac.new(token.encode(), b"hookdrop status page", hashlib.sha256).hexdigest()


def _same(supplied: str | None, expected: str) -> bool:
    return supplied is not None and hmac.compare_digest(supplied.encode(), expected.encode())


class TokenAuth:
    """Bearer token on every path but /healthz; the page may pass ``?token=`` once and then
    reads with a cookie."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token
        self.session = session_value(token) if token else ""

    def _ok(self, supplied: str | None) -> bool:
        return _same(supplied, self.token or "")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.token is None
            or scope["type"] not in ("http", "websocket")
            or scope["path"] in OPEN_PATHS
        ):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self._ok(credentials.strip()):
            await self.app(scope, receive, send)
            return
        if _same(_cookie(headers.get("cookie", ""), TOKEN_COOKIE), self.session):
            if scope["type"] == "websocket" or scope["method"] in READING_METHODS:
                await self.app(scope, receive, send)
                return
            log.info("api.unauthorized", path=scope["path"], reason="cookie reads only")
            await JSONResponse(
                {"error": READ_ONLY_ERROR}, status_code=401, headers={"www-authenticate": "Bearer"}
            )(scope, receive, send)
            return
        query_token = _query_token(scope)
        if scope["type"] == "http" and scope["path"] == "/" and self._ok(query_token):
            # Keep the token out of the address bar and history: cookie, then back to /.
            response: Response = Response(status_code=303, headers={"location": "/"})
            response.set_cookie(
                TOKEN_COOKIE, self.session, httponly=True, samesite="strict", path="/"
            )
            await response(scope, receive, send)
            return
        log.info("api.unauthorized", path=scope["path"])
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        response = JSONResponse(
            {"error": "missing or wrong bearer token"},
            status_code=401,
            headers={"www-authenticate": "Bearer"},
        )
        await response(scope, receive, send)


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def _query_token(scope: Scope) -> str | None:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
    return values[0] if values else None
