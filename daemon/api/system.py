"""The whole system: overview, throughput, health and readiness, and the status page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse, JSONResponse, Response
from redis import RedisError

from daemon.api._hub import ControlDep, HubDep
from hookdrop.errors import StoreUnavailable

STATIC_DIR = Path(__file__).parent / "static"

router = APIRouter(tags=["system"])


@router.get("/overview", summary="Totals, queues, DLQ, back-pressure")
def overview(control: ControlDep) -> Any:
    return control.overview()


@router.get(
    "/endpoints",
    summary="Every endpoint: URL (credentials masked), limit, rate in force, back-pressure, "
    "circuit breaker, counts",
)
def endpoints(control: ControlDep) -> Any:
    return {"endpoints": control.endpoints()}


@router.get("/throughput", summary="Accepted webhook calls per second over the last 120 s")
def throughput(control: ControlDep, seconds: Annotated[int, Query(ge=1, le=120)] = 120) -> Any:
    return control.throughput(seconds)


@router.get("/healthz", summary="The process is alive (no auth)")
def healthz() -> Any:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Redis and PostgreSQL answer",
    responses={503: {"description": "a dependency is down"}},
)
def readyz(hub: HubDep) -> Response:
    checks: dict[str, str] = {}
    try:
        hub.redis.ping()
        checks["redis"] = "ok"
    except RedisError as exc:  # QueueUnavailable is one, and so is any other reply error
        checks["redis"] = f"failed: {exc}"
    try:
        with hub.pool.borrow() as store:
            store.ping()
        checks["postgres"] = "ok"
    except StoreUnavailable as exc:
        checks["postgres"] = f"failed: {exc}"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"ready": ready, **checks}, status_code=200 if ready else 503)


@router.get("/", include_in_schema=False)
def index() -> HTMLResponse:
    return HTMLResponse(
        (STATIC_DIR / "index.html").read_text("utf-8"), headers={"cache-control": "no-cache"}
    )
