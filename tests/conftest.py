"""Shared fixtures: real Redis and PostgreSQL, isolated per test.

Servers: ``REDIS_URL`` / ``DATABASE_URL`` when set; else the local defaults
(127.0.0.1:6379 and 127.0.0.1:5432); else embedded servers in a state folder. Under CI
(``CI`` set) a server that cannot be reached fails the run instead of being skipped.

Isolation: one empty Redis database for the session, flushed before each test, plus a key
prefix per test; one PostgreSQL database per test, cloned from a migrated template.
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis

from hookdrop.settings import Settings
from hookdrop.store import Store, migrations

LOCAL_REDIS = "redis://127.0.0.1:6379/0"
LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass(frozen=True)
class Servers:
    redis_url: str  # base URL; tests get their own db number
    admin_url: str  # PostgreSQL database used to create and drop test databases
    redis_db: int


def _reachable_redis(url: str) -> bool:
    from hookdrop.embedded import redis_reachable

    return redis_reachable(url)


def _reachable_pg(url: str) -> bool:
    from hookdrop.embedded import postgres_reachable

    return postgres_reachable(url)


def _find_servers(state_dir: Path) -> tuple[str, str]:
    redis_url = os.environ.get("REDIS_URL")
    pg_url = os.environ.get("DATABASE_URL")
    if not redis_url and _reachable_redis(LOCAL_REDIS):
        redis_url = LOCAL_REDIS
    if not pg_url and _reachable_pg(LOCAL_POSTGRES):
        pg_url = LOCAL_POSTGRES
    if not redis_url or not pg_url:
        from hookdrop.embedded import resolve_servers

        redis_url, pg_url = resolve_servers(redis_url, pg_url, state_dir)
    for name, url, ok in (("REDIS_URL", redis_url, _reachable_redis(redis_url)),
                          ("DATABASE_URL", pg_url, _reachable_pg(pg_url))):
        if not ok:
            message = f"{name}={url}: server not reachable"
            if os.environ.get("CI"):
                pytest.fail(message, pytrace=False)
            pytest.skip(message)
    return redis_url, pg_url


def _with_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Servers:
    state_dir = Path(os.environ.get("HOOKDROP_TEST_STATE_DIR", ".hookdrop-test"))
    redis_url, pg_url = _find_servers(state_dir.absolute())
    probe = redis.Redis.from_url(redis_url)
    databases = int(probe.config_get("databases").get("databases", 16))
    for db in range(databases - 1, 0, -1):
        conn = redis.Redis.from_url(_with_db(redis_url, db))
        empty = conn.dbsize() == 0
        conn.close()
        if empty:
            break
    else:
        pytest.fail("no empty Redis database left for the tests", pytrace=False)
    probe.close()
    return Servers(redis_url=redis_url, admin_url=pg_url, redis_db=db)


@pytest.fixture(scope="session")
def template_db(servers: Servers) -> str:
    """A migrated database, named after the migrations' content, cloned by every test."""
    digest = hashlib.sha1("".join(sql for _, _, sql in migrations()).encode()).hexdigest()[:10]
    name = f"hookdrop_tpl_{digest}"
    with psycopg.connect(servers.admin_url, autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            building = f"{name}_build_{uuid.uuid4().hex[:6]}"
            admin.execute(f'CREATE DATABASE "{building}"')
            with Store(_with_database(servers.admin_url, building)) as store:
                store.migrate()
            try:
                admin.execute(f'ALTER DATABASE "{building}" RENAME TO "{name}"')
            except psycopg.errors.DuplicateDatabase:
                admin.execute(f'DROP DATABASE "{building}"')
    return name


@pytest.fixture
def database_url(servers: Servers, template_db: str) -> Iterator[str]:
    name = f"hookdrop_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(servers.admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield _with_database(servers.admin_url, name)
    with psycopg.connect(servers.admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_url(servers: Servers) -> Iterator[str]:
    url = _with_db(servers.redis_url, servers.redis_db)
    conn = redis.Redis.from_url(url)
    conn.flushdb()
    yield url
    conn.flushdb()
    conn.close()


@pytest.fixture
def rconn(redis_url: str) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(redis_url)
    yield conn
    conn.close()


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    with Store(database_url) as s:
        yield s


@pytest.fixture
def settings(tmp_path: Path, redis_url: str, database_url: str) -> Settings:
    return Settings(
        inbox=tmp_path / "inbox",
        state_dir=tmp_path / "state",
        redis_url=redis_url,
        database_url=database_url,
        key_prefix=f"t{uuid.uuid4().hex[:8]}",
        webhook_url="http://127.0.0.1:9/",
        settle_seconds=0.3,
        scan_interval=0.5,
        chunk_size=100,
        queue_high_water=100_000,
        lease_seconds=3.0,
        dlq_interval=1.0,
        log_format="console",
    )


@pytest.fixture(autouse=True)
def _no_thread_leaks() -> Iterator[None]:
    """A test must stop every thread it starts."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in set(threading.enumerate()) - before if t.is_alive() and not t.daemon]
    for thread in leaked:
        thread.join(timeout=5)
    still = [t.name for t in leaked if t.is_alive()]
    assert not still, f"threads left running: {still}"


@pytest.fixture(autouse=True)
def _no_env_leaks() -> Iterator[None]:
    def snapshot() -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}

    before = snapshot()
    yield
    after = snapshot()
    if after != before:
        changed = sorted({k for k, _ in set(after.items()) ^ set(before.items())})
        for key in changed:
            if key in before:
                os.environ[key] = before[key]
            else:
                os.environ.pop(key, None)
        pytest.fail(f"test changed the environment: {changed}")
