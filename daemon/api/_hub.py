"""What every route shares: settings, a pool of ledger connections, one Redis client."""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Query, Request
from fastapi import Path as PathParam
from redis import Redis

from daemon.api.crosssite import REQUEST_HEADER
from hookdrop.endpoints import LiveEndpoints
from hookdrop.ops import Control, RateTracker
from hookdrop.settings import Settings
from hookdrop.store import Store

T = TypeVar("T")

MAX_UPLOAD_BYTES = 2 * 1024**3  # 2 GiB; larger files belong on sftp/rsync into the inbox
MAX_ID = 2**63 - 1

FileId = Annotated[int, PathParam(ge=1, le=MAX_ID, description="File id (see GET /files)")]
Limit = Annotated[int, Query(ge=1, le=1000, description="Page size")]
Offset = Annotated[int, Query(ge=0, le=2**31, description="Items to skip")]

# Declared on every state change so /docs sends it (pre-filled) from a browser.
REQUEST_HEADER_PARAM: dict[str, Any] = {
    "parameters": [
        {
            "name": REQUEST_HEADER,
            "in": "header",
            "required": False,
            "schema": {"type": "string", "default": "1"},
            "description": "Any value. Needed without Authorization when the body is a form, "
            "text/plain or absent (see Cross-site protection in docs/api.md).",
        }
    ]
}


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
    endpoints: LiveEndpoints | None = None  # the monitor's, re-read on SIGHUP

    def call(self, action: Callable[[Control], T]) -> T:
        """Run one control action with a borrowed Store (blocking: call from a thread)."""
        with self.pool.borrow() as store:
            return action(Control(self.settings, store, self.redis, self.rates, self.endpoints))


def hub_of(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


def get_control(request: Request) -> Iterator[Control]:
    hub = hub_of(request)
    with hub.pool.borrow() as store:
        yield Control(hub.settings, store, hub.redis, hub.rates, hub.endpoints)


ControlDep = Annotated[Control, Depends(get_control)]
HubDep = Annotated[Hub, Depends(hub_of)]
