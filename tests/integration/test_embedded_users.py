"""Embedded servers shared by several commands: the last user out, or the guardian, stops them."""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

import hookdrop.embedded
from hookdrop.embedded import (
    EmbeddedServers,
    embedded_postgres_dir,
    embedded_servers,
    find_running,
    postgres_reachable,
    redis_reachable,
    server_processes,
    start_detached,
)
from hookdrop.embedded._process import Known
from tests.helpers import kill_group, wait_for
from tests.integration.test_embedded import (
    RELOCATED,
    _both_down,
    _clean_up,
    _python,
    pytestmark,  # noqa: F401 - the same skip when the embedded extra is missing
)


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "st"
    copies = set(RELOCATED.glob("pgbin-*"))
    try:
        yield directory
    finally:
        _clean_up(directory, tmp_path, copies)


_USER_SCRIPT = (
    "import json, sys, time\n"
    "from pathlib import Path\n"
    "from hookdrop.embedded import embedded_servers\n"
    "with embedded_servers(Path(sys.argv[1])) as s:\n"
    "    print('RESULT ' + json.dumps([s.redis_url, s.database_url]), flush=True)\n"
    "    while not Path(sys.argv[2]).exists():\n"
    "        time.sleep(0.05)\n"
)


def test_servers_run_until_the_last_command_using_them_ends(
    state_dir: Path, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    starter = _python(_USER_SCRIPT, str(state_dir), str(go))
    try:
        assert starter.stdout is not None
        line = next(line for line in starter.stdout if line.startswith("RESULT "))
        urls = json.loads(line.removeprefix("RESULT "))
        with embedded_servers(state_dir) as servers:
            assert [servers.redis_url, servers.database_url] == urls
            assert servers.started == ()
            assert hookdrop.embedded.servers_use(state_dir).startswith("in use")

            go.touch()  # the command that started them ends first
            assert starter.wait(timeout=60) == 0

            assert not _both_down(servers)
            assert redis_reachable(urls[0]) and postgres_reachable(urls[1])

        assert _both_down(servers)
        assert find_running(state_dir) == EmbeddedServers(state_dir.resolve())
    finally:
        kill_group(starter)  # type: ignore[arg-type]
        if starter.stdout is not None:
            starter.stdout.close()


def test_servers_stop_when_every_command_using_them_was_killed(
    state_dir: Path, tmp_path: Path
) -> None:
    users = [_python(_USER_SCRIPT, str(state_dir), str(tmp_path / "never")) for _ in range(2)]
    try:
        found = []
        for user in users:
            assert user.stdout is not None
            line = next(line for line in user.stdout if line.startswith("RESULT "))
            found.append(json.loads(line.removeprefix("RESULT ")))
        assert found[0] == found[1]
        servers = EmbeddedServers(state_dir, *found[0])

        os.kill(users[0].pid, signal.SIGKILL)
        users[0].wait(timeout=30)
        assert not _both_down(servers)  # the other one still uses them

        os.kill(users[1].pid, signal.SIGKILL)

        wait_for(lambda: _both_down(servers), timeout=60, what="servers stopped")
        assert hookdrop.embedded.servers_use(state_dir) == "not running"
    finally:
        for user in users:
            kill_group(user)  # type: ignore[arg-type]
            if user.stdout is not None:
                user.stdout.close()


def test_servers_left_without_a_guardian_are_said_so_and_adopted(state_dir: Path) -> None:
    with embedded_servers(state_dir) as servers:
        pass
    # As after every process was killed at once, guardian included: servers nobody uses.
    start_detached(state_dir)
    state = json.loads((state_dir / "embedded.json").read_text())
    state.pop("kept")
    (state_dir / "embedded.json").write_text(json.dumps(state))
    assert hookdrop.embedded.servers_use(state_dir).startswith("no command uses them")

    with embedded_servers(state_dir) as again:
        assert again.started == ()
        assert again.redis_url and redis_reachable(again.redis_url)

    assert _both_down(again)
    assert servers.state_dir == again.state_dir


def test_servers_stop_when_their_state_folder_is_deleted_under_their_users(
    state_dir: Path, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    user = _python(_USER_SCRIPT, str(state_dir), str(go))
    pg_dir = None
    known: list[Known] = []
    try:
        assert user.stdout is not None
        line = next(line for line in user.stdout if line.startswith("RESULT "))
        servers = EmbeddedServers(state_dir, *json.loads(line.removeprefix("RESULT ")))
        pg_dir = embedded_postgres_dir(state_dir)
        known = server_processes(state_dir)
        assert len(known) == 2

        shutil.rmtree(state_dir)  # a clone deleted while a command uses its servers
        go.touch()

        assert user.wait(timeout=60) == 0
        wait_for(lambda: _both_down(servers), timeout=60, what="servers stopped")
        wait_for(lambda: not any(k.alive() for k in known), timeout=60, what="servers gone")
    finally:
        kill_group(user)  # type: ignore[arg-type]
        if user.stdout is not None:
            user.stdout.close()
        for server in known:
            server.stop(timeout=60)
        if pg_dir is not None and not pg_dir.is_relative_to(tmp_path):
            shutil.rmtree(pg_dir, ignore_errors=True)
