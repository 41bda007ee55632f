"""A test run killed or stopped leaves none of the processes its tests started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.helpers import dies_with_tests, free_port, kill_group, wait_for

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]

INNER_TEST = """
import time
from pathlib import Path

from hookdrop.settings import Settings
from tests.helpers import hookdrop_process


def test_holds_a_mock_until_the_run_is_stopped() -> None:
    mock = hookdrop_process(Settings.load({{}}, {{}}), "mock", "--port", "{port}")
    Path("{ready}").write_text(str(mock.pid))
    while True:  # until the run is killed or stopped: that is what is tested
        time.sleep(0.1)
"""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_a_stopped_test_run_leaves_no_process_its_tests_started(
    tmp_path: Path, sig: signal.Signals
) -> None:
    ready = tmp_path / "ready"
    inner = tmp_path / "test_inner.py"
    inner.write_text(INNER_TEST.format(port=free_port(), ready=ready), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    run = subprocess.Popen(
        [
            *(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"),
            *("-p", "tests.conftest", "--rootdir", str(tmp_path), "-o", "timeout=0", str(inner)),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=dies_with_tests,  # noqa: PLW1509 - one system call
    )
    try:
        pid = int(wait_for(lambda: ready.exists() and ready.read_text(), what="the inner mock"))
        assert not _gone(pid)

        os.kill(run.pid, sig)

        run.wait(timeout=60)
        wait_for(lambda: _gone(pid), timeout=30, what="the mock the run started gone")
    finally:
        kill_group(run)
