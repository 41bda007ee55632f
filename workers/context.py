"""What a worker process holds for its jobs: settings, connections, stop requests.

RQ calls job functions with their arguments only; the worker process installs one
:class:`WorkerContext` at start and the job functions look it up here.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any

import redis

from hookdrop.endpoints import LiveEndpoints
from hookdrop.settings import Settings
from hookdrop.shutdown import StopFlag
from hookdrop.store import Store


@dataclass
class WorkerContext:
    settings: Settings
    redis: redis.Redis
    store: Store
    name: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    # Set on the first SIGTERM: finish or checkpoint the current chunk, then return.
    stopping: StopFlag = field(default_factory=StopFlag)
    extras: dict[str, Any] = field(default_factory=dict)
    closed: bool = False
    # The endpoints, re-read on SIGHUP; built from the settings alone when not given.
    endpoints: LiveEndpoints | None = None

    def __post_init__(self) -> None:
        if self.endpoints is None:
            self.endpoints = LiveEndpoints(self.settings, {})

    @property
    def live(self) -> LiveEndpoints:
        assert self.endpoints is not None
        return self.endpoints

    def close(self) -> None:
        self.closed = True
        for extra in self.extras.values():
            close = getattr(extra, "close", None)
            if close is not None:
                close()
        self.store.close()
        self.redis.close()
        self.stopping.set()  # ends the thread waiting to announce a stop
        self.stopping.close()


_current: WorkerContext | None = None


def install(context: WorkerContext | None) -> None:
    global _current  # noqa: PLW0603 - one context per worker process, set once at start
    _current = context


def current() -> WorkerContext:
    if _current is None:
        raise RuntimeError("no worker context: jobs run inside `hookdrop worker`")
    return _current
