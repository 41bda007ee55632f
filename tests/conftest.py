"""Shared fixtures: real Redis and PostgreSQL, isolated per test.

Servers follow hookdrop's own rule: ``REDIS_URL`` / ``DATABASE_URL`` when set; otherwise
embedded servers, started for the session in a state folder of its own and stopped at its end.
A server that cannot be had skips the tests that need it, and fails the run under CI (``CI``
set).

Isolation holds with several test runs on the same servers at once: each test has a key prefix
of its own (every Redis key it makes starts with it, RQ's job, queue and worker keys included)
and exactly those keys are deleted when it ends; nothing is flushed. Each test has its own
PostgreSQL database, cloned from a migrated template. Every hookdrop process a test starts
with ``hookdrop_process`` is killed with its process group when the test ends, pass or fail,
and every process a test starts gets SIGKILL if the test run itself dies
(``tests.helpers.dies_with_tests``); what a killed run left (its state folder, its databases)
is removed by the next run's start (``tests.leftovers``). A SIGTERM ends the run as Ctrl-C
does, with every fixture's clean-up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import NoReturn
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis

from hookdrop.errors import ConfigError
from hookdrop.keys import Keys
from hookdrop.queues import forget_deployment
from hookdrop.settings import Settings
from hookdrop.store import Store
from tests import leftovers
from tests.helpers import free_port, reap_processes


@dataclass(frozen=True)
class Servers:
    redis_url: str  # shared by every test; isolation is by key prefix
    admin_url: str  # PostgreSQL database used to create and drop test databases


def _unavailable(message: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    from hookdrop.embedded import embedded_servers, postgres_reachable, redis_reachable

    redis_url = os.environ.get("REDIS_URL") or None
    pg_url = os.environ.get("DATABASE_URL") or None
    # What killed runs left: only theirs, never a live run's.
    leftovers.forget_dead_folders(Path(tempfile.gettempdir()))
    with contextlib.ExitStack() as session:
        if not (redis_url and pg_url):
            # Readable by the server user PostgreSQL runs as under root.
            state_dir = Path(tempfile.mkdtemp(prefix="hookdrop-test-"))
            state_dir.chmod(0o755)
            leftovers.mark_folder(state_dir, os.getpid())
            session.callback(shutil.rmtree, state_dir, ignore_errors=True)
            try:
                embedded = session.enter_context(
                    embedded_servers(state_dir, redis=not redis_url, postgres=not pg_url)
                )
            except ConfigError as exc:
                _unavailable(f"REDIS_URL/DATABASE_URL not set, no embedded servers: {exc}")
            redis_url = redis_url or embedded.redis_url
            pg_url = pg_url or embedded.database_url
        assert redis_url and pg_url
        if not redis_reachable(redis_url):
            _unavailable(f"REDIS_URL={redis_url}: server not reachable")
        if not postgres_reachable(pg_url):
            _unavailable(f"DATABASE_URL={pg_url}: server not reachable")
        leftovers.forget_dead_databases(pg_url)
        yield Servers(redis_url=redis_url, admin_url=pg_url)


@pytest.fixture(scope="session")
def template_db(servers: Servers) -> Iterator[str]:
    """A migrated database of this test run, cloned by every test and dropped at its end.

    Its own, not one per migration set: another run on the same server may be cloning from
    its own template at the moment this one is dropped.
    """
    name = f"hookdrop_tpl_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(servers.admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        leftovers.mark_database(servers.admin_url, name, os.getpid())
        with Store(_with_database(servers.admin_url, name)) as store:
            store.migrate()
        yield name
    finally:
        with psycopg.connect(servers.admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(servers: Servers, template_db: str) -> Iterator[str]:
    name = f"hookdrop_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(servers.admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    leftovers.mark_database(servers.admin_url, name, os.getpid())
    yield _with_database(servers.admin_url, name)
    with psycopg.connect(servers.admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def key_prefix() -> str:
    """This test's Redis key prefix (``HOOKDROP_KEY_PREFIX``)."""
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
def redis_url(servers: Servers, key_prefix: str) -> Iterator[str]:
    yield servers.redis_url
    reap_processes()  # before the keys go: a live worker would make new ones
    conn = redis.Redis.from_url(servers.redis_url)
    try:
        forget_deployment(conn, Keys(key_prefix))
    finally:
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
def settings(tmp_path: Path, redis_url: str, database_url: str, key_prefix: str) -> Settings:
    return Settings(
        inbox=tmp_path / "inbox",
        state_dir=tmp_path / "state",
        redis_url=redis_url,
        database_url=database_url,
        key_prefix=key_prefix,
        webhook_url="http://127.0.0.1:9/",
        api_listen=("127.0.0.1", free_port()),
        settle_seconds=0.3,
        scan_interval=0.5,
        chunk_size=100,
        queue_high_water=100_000,
        lease_seconds=3.0,
        dlq_interval=1.0,
        log_format="console",
    )


@pytest.fixture(autouse=True)
def _no_process_leaks() -> Iterator[None]:
    """Every ``hookdrop_process`` a test started is killed with its group when it ends."""
    yield
    reap_processes()


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


def pytest_configure(config: pytest.Config) -> None:
    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the clean-up must finish
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Whatever a test started and did not reap (an interrupted test) goes with the run."""
    reap_processes()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Under CI (``CI`` set) a skipped test is a failed one: nothing passes by not running."""
    report = yield
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, which must run every test: {reason}"
    return report
