"""The supervisor restarts a dead child after a delay that doubles up to a cap."""

from __future__ import annotations

import subprocess
import sys

import pytest
from structlog.testing import capture_logs

from hookdrop.errors import CONFIG_ERROR_EXIT
from hookdrop.supervise import RESTART_CAP, Supervisor


def dead_process(code: int = 3) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-c", f"raise SystemExit({code})"])
    process.wait()
    return process


@pytest.mark.parametrize(
    ("deaths_before", "delay"), [(0, 1.0), (1, 2.0), (3, 8.0), (9, RESTART_CAP)]
)
def test_a_dead_child_is_restarted_after_a_doubling_delay(deaths_before: int, delay: float) -> None:
    supervisor = Supervisor({})
    try:
        child = supervisor.add("worker", ["worker", "notifier"])
        child.restarts = deaths_before
        child.process = dead_process()
        with capture_logs() as logs:
            supervisor.check()
        died = [e for e in logs if e["event"] == "process.died"]
        assert died == [
            {
                "event": "process.died",
                "log_level": "error",
                "name": "worker",
                "exit_code": 3,
                "restart_in": delay,
            }
        ]
        assert child.restarts == deaths_before + 1
        assert child.restart_at is not None
    finally:
        supervisor.stopping.close()


def test_a_child_that_cannot_load_its_configuration_is_said_so_and_retried() -> None:
    supervisor = Supervisor({})
    try:
        child = supervisor.add("worker", ["worker", "notifier"])
        child.process = dead_process(CONFIG_ERROR_EXIT)
        with capture_logs() as logs:
            supervisor.check()
        refused = [e for e in logs if e["event"] == "process.config_refused"]
        assert [(e["name"], e["log_level"]) for e in refused] == [("worker", "error")]
        assert child.restart_at is not None  # still restarted, with the growing delay
        child.process = dead_process()
        child.restart_at = None
        with capture_logs() as logs:
            supervisor.check()
        assert not [e for e in logs if e["event"] == "process.config_refused"]
    finally:
        supervisor.stopping.close()
