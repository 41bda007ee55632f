"""Connections to Redis and PostgreSQL, built in one place with one set of options.

Every process gets its clients here, from settings whose server URLs are resolved. The Redis
client reports an outage (a lost connection, a timeout) as
:class:`~hookdrop.errors.QueueUnavailable`, for commands, pipelines and scripts alike, so
hookdrop's code handles one exception; PostgreSQL's are translated by the store.
"""

from __future__ import annotations

from typing import Any, cast

import redis
from redis.client import Pipeline

from hookdrop.errors import QueueUnavailable
from hookdrop.settings import Settings
from hookdrop.store import Store

# No socket timeout of our own: blocking commands (RQ's dequeue) must be free to wait. An RQ
# worker sets one on the pool it is given, its dequeue timeout plus 10 s (with the workers'
# 15 s TTL: 1 s dequeues, an 11 s socket timeout for every client of that pool). Elsewhere
# dead peers are found by TCP keepalive and the periodic health check.
_REDIS_OPTIONS: dict[str, Any] = {
    "health_check_interval": 30,
    "socket_connect_timeout": 5,
    "socket_keepalive": True,
}


def _unavailable(exc: redis.RedisError) -> QueueUnavailable:
    return QueueUnavailable(f"Redis unavailable: {exc}")


class _Pipeline(Pipeline):
    def execute(self, raise_on_error: bool = True) -> list[Any]:
        try:
            return super().execute(raise_on_error)
        except QueueUnavailable:
            raise
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise _unavailable(exc) from exc

    def immediate_execute_command(self, *args: Any, **options: Any) -> Any:
        try:
            return super().immediate_execute_command(*args, **options)  # type: ignore[no-untyped-call]
        except QueueUnavailable:
            raise
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise _unavailable(exc) from exc


class Redis(redis.Redis):
    """redis-py's client whose outage errors come out as QueueUnavailable."""

    def execute_command(self, *args: Any, **options: Any) -> Any:
        try:
            return super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        except QueueUnavailable:
            raise
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise _unavailable(exc) from exc

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> _Pipeline:
        return _Pipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)


def redis_url(settings: Settings) -> str:
    """The Redis URL of resolved settings; ConfigError when it is missing."""
    settings.require("redis_url")
    assert settings.redis_url is not None
    return settings.redis_url


def database_url(settings: Settings) -> str:
    """The PostgreSQL URL of resolved settings; ConfigError when it is missing."""
    settings.require("database_url")
    assert settings.database_url is not None
    return settings.database_url


def connect_redis(settings: Settings, *, name: str) -> Redis:
    """A Redis client for one process (thread-safe; it pools its connections)."""
    client = Redis.from_url(redis_url(settings), client_name=name, **_REDIS_OPTIONS)
    return cast(Redis, client)  # from_url is a classmethod that builds this class


def connect_store(settings: Settings, *, name: str, keyed: bool = False) -> Store:
    """A PostgreSQL ledger connection (one per thread), opened on first use; ``keyed``: for a
    process whose statements all find their rows by key (the workers'), which then keeps one
    plan per statement instead of planning every run again."""
    return Store(database_url(settings), application_name=name, keyed=keyed)
