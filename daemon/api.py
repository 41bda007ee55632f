"""The daemon's HTTP API and live status page (served by the monitor, see docs/api.md).

Every handler is a thin shell over :mod:`hookdrop.control`; blocking calls to PostgreSQL and
Redis run in the thread pool, each with a Store borrowed from a small pool. When
``HOOKDROP_API_TOKEN`` is set every path but ``/healthz`` needs ``Authorization: Bearer``;
the status page also takes ``/?token=...`` once and keeps it in a cookie. Requests from other
web pages are refused by :mod:`daemon.crosssite` first.
"""

from __future__ import annotations

import hmac
import json
import queue
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, NamedTuple, TypeVar

import anyio
import structlog
import uvicorn
from fastapi import Depends, FastAPI, Query, Request, WebSocket, WebSocketDisconnect
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from python_multipart.multipart import MultipartParser, parse_options_header
from redis import Redis, RedisError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from daemon.crosssite import REQUEST_HEADER, CrossSiteGuard, HostPolicy
from hookdrop.control import (
    BadRequest,
    Conflict,
    Control,
    InboxWriter,
    RateTracker,
    TooLarge,
    UnknownFile,
    latency_histogram,
)
from hookdrop.errors import ConfigError, QueueUnavailable, StoreUnavailable
from hookdrop.settings import Settings
from hookdrop.store import Store

log = structlog.get_logger(__name__)

T = TypeVar("T")

MAX_UPLOAD_BYTES = 2 * 1024**3  # 2 GiB; larger files belong on sftp/rsync into the inbox
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the file itself
WRITE_BUFFER = 1 << 20  # bytes gathered before one write in the thread pool
STREAM_INTERVAL = 0.5  # seconds between status polls of SSE and WebSocket streams
HEARTBEAT_SECONDS = 15.0
TOKEN_COOKIE = "hookdrop_token"
OPEN_PATHS = frozenset({"/healthz"})
STATIC_DIR = Path(__file__).parent / "static"
MAX_ID = 2**63 - 1

FileId = Annotated[int, PathParam(ge=1, le=MAX_ID, description="File id (see GET /files)")]
Limit = Annotated[int, Query(ge=1, le=1000, description="Page size")]
Offset = Annotated[int, Query(ge=0, le=2**31, description="Items to skip")]


# -- shared state --------------------------------------------------------------------------


class StorePool:
    """Stores (one PostgreSQL connection each) lent to one request at a time."""

    def __init__(self, factory: Callable[[], Store], keep: int = 8) -> None:
        self.factory = factory
        self.idle: queue.LifoQueue[Store] = queue.LifoQueue()
        self.keep = keep

    @contextmanager
    def borrow(self) -> Iterator[Store]:
        try:
            store = self.idle.get_nowait()
        except queue.Empty:
            store = self.factory()
        try:
            yield store
        finally:
            if self.idle.qsize() < self.keep:
                self.idle.put(store)
            else:
                store.close()

    def close(self) -> None:
        while True:
            try:
                self.idle.get_nowait().close()
            except queue.Empty:
                return


@dataclass
class Hub:
    settings: Settings
    pool: StorePool
    redis: Redis
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    rates: RateTracker = field(default_factory=RateTracker)

    def call(self, action: Callable[[Control], T]) -> T:
        """Run one control action with a borrowed Store (blocking: call from a thread)."""
        with self.pool.borrow() as store:
            return action(Control(self.settings, store, self.redis, self.rates))


def hub_of(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


def get_control(request: Request) -> Iterator[Control]:
    hub = hub_of(request)
    with hub.pool.borrow() as store:
        yield Control(hub.settings, store, hub.redis, hub.rates)


ControlDep = Annotated[Control, Depends(get_control)]


# -- auth ----------------------------------------------------------------------------------


class TokenAuth:
    """Bearer token on every path but /healthz; the page may pass ``?token=`` once."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    def _ok(self, supplied: str | None) -> bool:
        return supplied is not None and hmac.compare_digest(supplied.encode(),
                                                            (self.token or "").encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (self.token is None or scope["type"] not in ("http", "websocket")
                or scope["path"] in OPEN_PATHS):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        cookie = _cookie(headers.get("cookie", ""), TOKEN_COOKIE)
        if (scheme.lower() == "bearer" and self._ok(credentials.strip())) or self._ok(cookie):
            await self.app(scope, receive, send)
            return
        query_token = _query_token(scope)
        if scope["type"] == "http" and scope["path"] == "/" and self._ok(query_token):
            # Keep the token out of the address bar and history: cookie, then back to /.
            response: Response = Response(status_code=303, headers={"location": "/"})
            response.set_cookie(TOKEN_COOKIE, self.token or "", httponly=True,
                                samesite="strict", path="/")
            await response(scope, receive, send)
            return
        log.info("api.unauthorized", path=scope["path"])
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        response = JSONResponse({"error": "missing or wrong bearer token"}, status_code=401,
                                headers={"www-authenticate": "Bearer"})
        await response(scope, receive, send)


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def _query_token(scope: Scope) -> str | None:
    from urllib.parse import parse_qs

    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
    return values[0] if values else None


# -- uploads -------------------------------------------------------------------------------


class _Upload:
    """Streams a request body into the inbox: raw bytes, or the first file of a multipart."""

    def __init__(self, hub: Hub, name: str | None) -> None:
        self.hub = hub
        self.name = name
        self.writer: InboxWriter | None = None
        self.buffer = bytearray()
        self.received = 0

    async def open(self, name: str) -> None:
        self.writer = await run_in_threadpool(
            InboxWriter, self.hub.settings.inbox, name, limit=self.hub.max_upload_bytes)

    def add(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > self.hub.max_upload_bytes:
            raise TooLarge(f"upload larger than the {self.hub.max_upload_bytes} bytes allowed")
        self.buffer += data

    async def flush(self, force: bool = False) -> None:
        if self.writer is not None and self.buffer and (force or len(self.buffer) >= WRITE_BUFFER):
            data, self.buffer = bytes(self.buffer), bytearray()
            await run_in_threadpool(self.writer.write, data)

    async def raw(self, request: Request) -> None:
        if not self.name:
            raise BadRequest("give the file name: POST /files?name=alerts.csv (or upload "
                             "multipart/form-data with a filename)")
        await self.open(self.name)
        async for chunk in request.stream():
            self.add(chunk)
            await self.flush()

    async def multipart(self, request: Request, boundary: bytes) -> None:
        state: dict[str, Any] = {"field": b"", "value": b"", "headers": {}, "file": False,
                                 "taken": False, "pending": None}

        def on_part_begin() -> None:
            state.update(headers={}, file=False)

        def on_header_field(data: bytes, start: int, end: int) -> None:
            state["field"] += data[start:end]

        def on_header_value(data: bytes, start: int, end: int) -> None:
            state["value"] += data[start:end]

        def on_header_end() -> None:
            state["headers"][state["field"].lower()] = state["value"]
            state.update(field=b"", value=b"")

        def on_headers_finished() -> None:
            _, options = parse_options_header(state["headers"].get(b"content-disposition", b""))
            filename = options.get(b"filename")
            if filename is not None and not state["taken"]:
                state.update(file=True, taken=True,
                             pending=self.name or filename.decode("utf-8", "replace"))

        def on_part_data(data: bytes, start: int, end: int) -> None:
            if state["file"]:
                self.add(data[start:end])

        def on_part_end() -> None:
            state["file"] = False

        parser = MultipartParser(boundary, {
            "on_part_begin": on_part_begin, "on_header_field": on_header_field,
            "on_header_value": on_header_value, "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        })
        async for chunk in request.stream():
            parser.write(chunk)
            if state["pending"] is not None:
                await self.open(state["pending"])
                state["pending"] = None
            await self.flush()
        parser.finalize()
        if not state["taken"]:
            raise BadRequest("multipart body has no file part (a part with a filename)")

    async def commit(self) -> Path:
        assert self.writer is not None
        await self.flush(force=True)
        return await run_in_threadpool(self.writer.commit)

    async def abort(self) -> None:
        if self.writer is not None:
            await run_in_threadpool(self.writer.abort)


# Declared on every state change so /docs sends it (pre-filled) from a browser.
_REQUEST_HEADER_PARAM: dict[str, Any] = {"parameters": [{
    "name": REQUEST_HEADER, "in": "header", "required": False,
    "schema": {"type": "string", "default": "1"},
    "description": "Any value. Needed without Authorization when the body is a form, "
                   "text/plain or absent (see Cross-site protection in docs/api.md).",
}]}

_UPLOAD_BODY = {**_REQUEST_HEADER_PARAM, "requestBody": {"required": True, "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {"schema": {
        "type": "object", "required": ["file"],
        "properties": {"file": {"type": "string", "format": "binary"}}}},
}}}


# -- metrics -------------------------------------------------------------------------------


class _Collector:
    """Reads everything at scrape time; nothing is kept in this process."""

    def __init__(self, control: Control) -> None:
        self.control = control

    def collect(self) -> Iterator[Metric]:
        control = self.control
        totals = control.outcome_totals()
        view = control.overview()
        alerts = CounterMetricFamily("hookdrop_alerts", "Alerts that reached an end state.",
                                     labels=["status"])
        for status in ("delivered", "rejected", "dead", "cancelled"):
            alerts.add_metric([status], totals[status])
        yield alerts
        yield CounterMetricFamily("hookdrop_invalid_rows", "Rows that could not become alerts.",
                                  value=totals["invalid_rows"])
        depth = GaugeMetricFamily("hookdrop_queue_depth", "Jobs waiting in each RQ queue.",
                                  labels=["queue"])
        workers = GaugeMetricFamily("hookdrop_workers", "Live RQ workers per queue.",
                                    labels=["queue"])
        for name, count in view["queues"].items():
            depth.add_metric([name], count)
            workers.add_metric([name], view["workers"][name])
        yield depth
        yield workers
        yield GaugeMetricFamily("hookdrop_dlq_size", "Alerts waiting in the DLQ.",
                                value=view["dlq"])
        yield GaugeMetricFamily("hookdrop_dead_alerts", "Alerts dead (awaiting a replay).",
                                value=view["dead"])
        yield GaugeMetricFamily("hookdrop_active_files", "Files being read or delivered.",
                                value=view["files"].get("active", 0))
        pressure = view["backpressure"]
        yield GaugeMetricFamily("hookdrop_backpressure_active",
                                "1 while a 429 holds every notifier off.",
                                value=int(pressure["active"]))
        yield GaugeMetricFamily("hookdrop_backpressure_seconds_left",
                                "Seconds left on the back-pressure flag.",
                                value=pressure["seconds_left"])
        yield GaugeMetricFamily("hookdrop_deliveries_per_second",
                                "Accepted webhook calls per second over the last 10 s.",
                                value=view["delivered_per_second"])
        current = view["rate_limit"]["current"]
        if current is not None:
            yield GaugeMetricFamily("hookdrop_rate_limit_current",
                                    "The adaptive global rate limit (requests/s).", value=current)
        buckets, total = latency_histogram(control.redis, control.keys)
        yield HistogramMetricFamily("hookdrop_delivery_latency_seconds",
                                    "Webhook call latency of delivered alerts.",
                                    buckets=buckets, sum_value=total)


# -- the app -------------------------------------------------------------------------------


def _status_key(status: dict[str, Any]) -> str:
    """What counts as a change worth sending (the rate and ETA move all the time)."""
    return json.dumps({k: v for k, v in status.items() if k not in ("rate", "eta_seconds")},
                      sort_keys=True, default=str)


def _version() -> str:
    try:
        return metadata.version("hookdrop")
    except metadata.PackageNotFoundError:
        return "0"


def create_app(settings: Settings, store_factory: Callable[[], Store], redis: Redis,
               *, max_upload_bytes: int = MAX_UPLOAD_BYTES) -> FastAPI:
    """The API on one Redis client (thread-safe) and Stores made by ``store_factory``."""
    hub = Hub(settings, StorePool(store_factory), redis, max_upload_bytes)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        hub.pool.close()

    app = FastAPIOffline(
        title="hookdrop", version=_version(), lifespan=lifespan, redoc_url=None,
        static_url="/docs-static",
        description="Files dropped into an inbox become webhook calls, one per row. "
                    "Auth: `Authorization: Bearer <HOOKDROP_API_TOKEN>` when a token is set.",
    )
    app.state.hub = hub
    app.add_middleware(TokenAuth, token=settings.api_token)
    # Added last, so it runs first: a foreign page is refused whatever its credentials.
    app.add_middleware(CrossSiteGuard, open_paths=OPEN_PATHS,
                       hosts=HostPolicy.build(settings.api_listen[0], settings.api_allowed_hosts))
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    def error(status: int) -> Callable[[Request, Exception], Response]:
        def handler(_request: Request, exc: Exception) -> Response:
            return JSONResponse({"error": str(exc)}, status_code=status)
        return handler

    for kind, status in ((UnknownFile, 404), (Conflict, 409), (BadRequest, 400),
                         (TooLarge, 413), (StoreUnavailable, 503), (QueueUnavailable, 503)):
        app.add_exception_handler(kind, error(status))

    # -- files ----------------------------------------------------------------------------

    @app.get("/files", tags=["files"], summary="List files, newest first")
    def list_files(control: ControlDep, limit: Limit = 50, offset: Offset = 0) -> Any:
        return {"files": control.list_files(limit, offset), "limit": limit, "offset": offset}

    @app.post("/files", tags=["files"], status_code=201, openapi_extra=_UPLOAD_BODY,
              summary="Upload a file into the inbox (raw body with ?name=, or multipart)",
              responses={400: {"description": "bad name"}, 409: {"description": "name taken"},
                         413: {"description": "too large"}})
    async def upload(request: Request, name: Annotated[str | None, Query(
            max_length=255, description="File name in the inbox")] = None) -> Any:
        ctype, options = parse_options_header(request.headers.get("content-type", ""))
        is_multipart = ctype == b"multipart/form-data"
        length = request.headers.get("content-length", "")
        allowed = hub.max_upload_bytes + (MULTIPART_OVERHEAD if is_multipart else 0)
        if length.isdigit() and int(length) > allowed:
            raise TooLarge(f"upload larger than the {hub.max_upload_bytes} bytes allowed")
        upload = _Upload(hub, name)
        try:
            if is_multipart:
                boundary = options.get(b"boundary")
                if not boundary:
                    raise BadRequest("multipart/form-data without a boundary")
                await upload.multipart(request, boundary)
            else:
                await upload.raw(request)
            final = await upload.commit()
        except BaseException:
            await upload.abort()
            raise
        log.info("api.uploaded", name=final.name, size=upload.received)
        return {"name": final.name, "size": upload.writer.size if upload.writer else 0}

    @app.get("/files/{file_id}", tags=["files"], summary="Status, counts, rate and ETA")
    def file_status(control: ControlDep, file_id: FileId) -> Any:
        return control.file_status(file_id)

    @app.get("/files/{file_id}/result", tags=["files"],
             summary="Bad rows and failed alerts with reasons (paginated)")
    def file_result(control: ControlDep, file_id: FileId, limit: Limit = 100,
                    offset: Offset = 0) -> Any:
        return control.file_result(file_id, limit, offset)

    @app.get("/files/{file_id}/events", tags=["files"],
             summary="Server-sent events: the file's status on change, until it is finished",
             responses={200: {"content": {"text/event-stream": {}}}})
    async def file_events(file_id: FileId) -> StreamingResponse:
        first = await run_in_threadpool(hub.call, lambda c: c.file_status(file_id))

        async def stream() -> AsyncIterator[str]:
            status, last, quiet = first, None, 0.0
            while True:
                key = _status_key(status)
                if key != last:
                    yield f"event: status\ndata: {json.dumps(status)}\n\n"
                    last, quiet = key, 0.0
                elif quiet >= HEARTBEAT_SECONDS:
                    yield ": keep-alive\n\n"
                    quiet = 0.0
                if status["finished"]:
                    yield "event: end\ndata: {}\n\n"
                    return
                await anyio.sleep(STREAM_INTERVAL)
                quiet += STREAM_INTERVAL
                status = await run_in_threadpool(hub.call, lambda c: c.file_status(file_id))

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache",
                                          "x-accel-buffering": "no"})

    @app.post("/files/{file_id}/pause", tags=["actions"], openapi_extra=_REQUEST_HEADER_PARAM,
              summary="Stop sending this file")
    def pause(control: ControlDep, file_id: FileId) -> Any:
        return control.pause(file_id)

    @app.post("/files/{file_id}/resume", tags=["actions"], openapi_extra=_REQUEST_HEADER_PARAM,
              summary="Send this file again")
    def resume(control: ControlDep, file_id: FileId) -> Any:
        return control.resume(file_id)

    @app.post("/files/{file_id}/cancel", tags=["actions"], openapi_extra=_REQUEST_HEADER_PARAM,
              summary="Cancel every alert of this file not yet sent")
    def cancel(control: ControlDep, file_id: FileId) -> Any:
        return control.cancel(file_id)

    @app.post("/files/{file_id}/resend", tags=["actions"], status_code=201,
              openapi_extra=_REQUEST_HEADER_PARAM,
              summary="Send a finished file again, as a new generation (new alert ids)")
    def resend(control: ControlDep, file_id: FileId) -> Any:
        return control.resend(file_id)

    # -- DLQ ------------------------------------------------------------------------------

    @app.get("/dlq", tags=["dlq"], summary="Alerts in the DLQ, dead or rejected")
    def dlq(control: ControlDep, status: Annotated[str, Query(
            max_length=100, description="Comma-separated: dlq, dead, rejected")] = "dlq,dead",
            limit: Limit = 100, offset: Offset = 0) -> Any:
        return control.dlq_list(status.split(","), limit, offset)

    @app.post("/dlq/replay", tags=["dlq"], openapi_extra=_REQUEST_HEADER_PARAM,
              summary="Replay DLQ / dead / rejected alerts (all, or one file's)")
    def replay(control: ControlDep,
               file_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
               status: Annotated[str, Query(max_length=100)] = "dlq,dead") -> Any:
        return {"replayed": control.replay(file_id, status.split(",")), "file_id": file_id}

    # -- system ---------------------------------------------------------------------------

    @app.get("/overview", tags=["system"], summary="Totals, queues, DLQ, back-pressure")
    def overview(control: ControlDep) -> Any:
        return control.overview()

    @app.get("/throughput", tags=["system"],
             summary="Accepted webhook calls per second over the last 120 s")
    def throughput(control: ControlDep,
                   seconds: Annotated[int, Query(ge=1, le=120)] = 120) -> Any:
        return control.throughput(seconds)

    @app.get("/metrics", tags=["system"], summary="Prometheus metrics",
             response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    def metrics(control: ControlDep) -> Response:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(control))
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", tags=["system"], summary="The process is alive (no auth)")
    def healthz() -> Any:
        return {"status": "ok"}

    @app.get("/readyz", tags=["system"], summary="Redis and PostgreSQL answer",
             responses={503: {"description": "a dependency is down"}})
    def readyz() -> Response:
        checks: dict[str, str] = {}
        try:
            hub.redis.ping()
            checks["redis"] = "ok"
        except RedisError as exc:
            checks["redis"] = f"failed: {exc}"
        try:
            with hub.pool.borrow() as store:
                store.ping()
            checks["postgres"] = "ok"
        except StoreUnavailable as exc:
            checks["postgres"] = f"failed: {exc}"
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse({"ready": ready, **checks}, status_code=200 if ready else 503)

    @app.get("/", include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse((STATIC_DIR / "index.html").read_text("utf-8"),
                            headers={"cache-control": "no-cache"})

    # -- live updates over a WebSocket ----------------------------------------------------

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        subscribed: dict[int, str | None] = {}
        send_lock = anyio.Lock()
        wake = [anyio.Event()]

        async def send(message: dict[str, Any]) -> None:
            async with send_lock:
                await websocket.send_json(message)

        async def reader() -> None:
            while True:
                try:
                    message = json.loads(await websocket.receive_text())
                except json.JSONDecodeError:
                    await send({"error": "send JSON, e.g. {\"subscribe\": 12}"})
                    continue
                target = message.get("subscribe", message.get("fileId")) \
                    if isinstance(message, dict) else None
                drop = message.get("unsubscribe") if isinstance(message, dict) else None
                if isinstance(drop, int) and not isinstance(drop, bool):
                    subscribed.pop(drop, None)
                elif isinstance(target, int) and not isinstance(target, bool) \
                        and 1 <= target <= MAX_ID:
                    subscribed[target] = None
                    wake[0].set()
                else:
                    await send({"error": "expected {\"subscribe\": <file id>} or "
                                         "{\"fileId\": <file id>}"})

        async def writer() -> None:
            while True:
                for file_id in list(subscribed):
                    try:
                        status = await run_in_threadpool(
                            hub.call, lambda c, f=file_id: c.file_status(f))
                    except UnknownFile as exc:
                        subscribed.pop(file_id, None)
                        await send({"error": str(exc), "fileId": file_id})
                        continue
                    key = _status_key(status)
                    if subscribed.get(file_id, "gone") != key and file_id in subscribed:
                        subscribed[file_id] = key
                        await send(status)
                with anyio.move_on_after(STREAM_INTERVAL):
                    await wake[0].wait()
                wake[0] = anyio.Event()

        try:
            async with anyio.create_task_group() as group:
                async def read_then_stop() -> None:
                    try:
                        await reader()
                    finally:
                        group.cancel_scope.cancel()

                group.start_soon(read_then_stop)
                group.start_soon(writer)
        except* WebSocketDisconnect:
            pass

    return app


# -- serving in the monitor ----------------------------------------------------------------


class ApiServer(NamedTuple):
    thread: threading.Thread
    server: uvicorn.Server

    @property
    def port(self) -> int:
        return int(self.server.servers[0].sockets[0].getsockname()[1])

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        log.info("api.stopped")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        raise ConfigError(f"HOOKDROP_API_LISTEN={host}:{port}: cannot listen "
                          f"({exc.strerror or exc})") from None


def run_api_in_thread(settings: Settings, *, startup_timeout: float = 10.0) -> ApiServer:
    """Serve the API on ``settings.api_listen`` from a daemon thread with its own loop.

    The socket is bound here, so a port in use is a ConfigError raised to the caller.
    """
    settings.require("redis_url", "database_url")
    host, port = settings.api_listen
    sock = _bind(host, port)
    conn = Redis.from_url(settings.redis_url,  # type: ignore[arg-type]
                                socket_connect_timeout=2, socket_timeout=5,
                                health_check_interval=30)
    app = create_app(settings, lambda: Store(settings.database_url,  # type: ignore[arg-type]
                                             application_name="hookdrop-api"), conn)
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=1, ws_ping_interval=20)
    server = uvicorn.Server(config)

    def serve() -> None:
        try:
            server.run(sockets=[sock])
        finally:
            sock.close()
            conn.close()

    thread = threading.Thread(target=serve, name="hookdrop-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:  # no start-up callback in uvicorn: poll its flag briefly
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise ConfigError(f"HOOKDROP_API_LISTEN={host}:{port}: the API did not start")
        time.sleep(0.01)
    api = ApiServer(thread, server)
    log.info("api.started", url=f"http://{host}:{api.port}/", auth=bool(settings.api_token))
    return api
