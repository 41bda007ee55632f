"""The supervisor restarts a dead child after a delay that doubles up to a cap."""

from __future__ import annotations

import subprocess
import sys

import pytest
from structlog.testing import capture_logs

from hookdrop.supervise import RESTART_CAP, Supervisor


def dead_process() -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
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
