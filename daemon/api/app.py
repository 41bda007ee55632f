"""The API application: routers, the token and cross-site guards, errors as JSON."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import metadata

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from redis import Redis
from starlette.staticfiles import StaticFiles

from daemon.api import dlq, files, live, metrics, results, system, uploads
from daemon.api._hub import MAX_UPLOAD_BYTES, Hub, StorePool
from daemon.api.auth import OPEN_PATHS, TokenAuth
from daemon.api.crosssite import CrossSiteGuard, HostPolicy
from hookdrop.endpoints import LiveEndpoints
from hookdrop.errors import QueueUnavailable, StoreUnavailable
from hookdrop.ops import BadRequest, Conflict, TooLarge, UnknownFile
from hookdrop.settings import Settings
from hookdrop.store import Store

_ERRORS: tuple[tuple[type[Exception], int], ...] = (
    (UnknownFile, 404),
    (Conflict, 409),
    (BadRequest, 400),
    (TooLarge, 413),
    (StoreUnavailable, 503),
    (QueueUnavailable, 503),
)


def _version() -> str:
    try:
        return metadata.version("hookdrop")
    except metadata.PackageNotFoundError:
        return "0"


def _error(status: int) -> Callable[[Request, Exception], Response]:
    def handler(_request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": str(exc)}, status_code=status)

    return handler


def create_app(
    settings: Settings,
    store_factory: Callable[[], Store],
    redis: Redis,
    *,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    endpoints: LiveEndpoints | None = None,
) -> FastAPI:
    """The API on one Redis client (thread-safe) and Stores made by ``store_factory``."""
    hub = Hub(settings, StorePool(store_factory), redis, max_upload_bytes, endpoints=endpoints)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        hub.pool.close()

    app = FastAPIOffline(
        title="hookdrop",
        version=_version(),
        lifespan=lifespan,
        redoc_url=None,
        static_url="/docs-static",
        description="Files dropped into an inbox become webhook calls, one per row. "
        "Auth: `Authorization: Bearer <HOOKDROP_API_TOKEN>` when a token is set.",
    )
    app.state.hub = hub
    app.add_middleware(TokenAuth, token=settings.api_token)
    # Added last, so it runs first: a foreign page is refused whatever its credentials.
    app.add_middleware(
        CrossSiteGuard,
        open_paths=OPEN_PATHS,
        hosts=HostPolicy.build(settings.api_listen[0], settings.api_allowed_hosts),
    )
    app.mount("/static", StaticFiles(directory=system.STATIC_DIR), name="static")
    for kind, status in _ERRORS:
        app.add_exception_handler(kind, _error(status))
    for module in (files, results, uploads, live, dlq, system, metrics):
        app.include_router(module.router)
    return app
