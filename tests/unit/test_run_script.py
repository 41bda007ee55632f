"""The quick start's `./run` and CI's `.ci/run`, as a newcomer meets them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_run_and_ci_run_are_executable() -> None:
    for script in (REPO / "run", REPO / ".ci" / "run"):
        assert os.access(script, os.X_OK), f"{script.name} is not executable"


def test_run_help_prints_the_usage_and_no_shell_code() -> None:
    done = subprocess.run(
        [str(REPO / "run"), "--help"], capture_output=True, text=True, timeout=30, check=True
    )

    assert "./run demo" in done.stdout and "./run test" in done.stdout
    assert "REDIS_URL" in done.stdout
    assert "set -" not in done.stdout and "#" not in done.stdout
