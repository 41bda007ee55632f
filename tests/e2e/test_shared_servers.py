"""Two test runs at once on one Redis and one PostgreSQL both pass.

What two developers, or two CI jobs on one host, do: each run keeps to its own keys and
databases, so neither disturbs the other. The runs use a part of the suite that leans on Redis
hardest (queues, checkpoints, flags, real worker processes); they are this suite's own servers.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from tests.conftest import Servers
from tests.helpers import dies_with_tests, kill_group

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
# About 40 s alone on two idle cores: queues, checkpoints, pauses, back-pressure flags, the
# shared rate limiter, and a whole pipeline of real processes. The two slowest ingest tests
# (a 120,000-row file killed three times, a large copy) add time and no new kind of key.
PART = (
    "tests/integration/test_ingest.py",
    "tests/integration/test_control.py",
    "tests/integration/test_delivery.py",
    "tests/integration/test_ratelimit.py",
    "tests/e2e/test_pipeline.py",
    "-k",
    "not kill_9 and not large_cp",
)


def _passed(output: str) -> int:
    match = re.search(r"(\d+) passed", output)
    return int(match.group(1)) if match else 0


def _templates(servers: Servers) -> set[str]:
    with psycopg.connect(servers.admin_url) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'hookdrop\\_tpl\\_%'"
        ).fetchall()
    return {str(row[0]) for row in rows}


def test_two_test_runs_at_once_on_the_same_servers_both_pass(
    servers: Servers, tmp_path: Path
) -> None:
    templates_before = _templates(servers)
    env = {**os.environ, "REDIS_URL": servers.redis_url, "DATABASE_URL": servers.admin_url}
    env.pop("PYTEST_CURRENT_TEST", None)
    runs: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        for n in (1, 2):
            output = tmp_path / f"run{n}.txt"
            with output.open("wb") as out:
                runs.append(
                    (
                        subprocess.Popen(
                            [
                                sys.executable,
                                "-m",
                                "pytest",
                                "-q",
                                "-p",
                                "no:cacheprovider",
                                "--basetemp",
                                str(tmp_path / f"run{n}"),
                                *PART,
                            ],
                            cwd=REPO,
                            env=env,
                            stdout=out,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                            preexec_fn=dies_with_tests,  # noqa: PLW1509 - one system call
                        ),
                        output,
                    )
                )
        deadline = time.monotonic() + 600
        for process, _ in runs:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for process, _ in runs:
            kill_group(process)

    outputs = [output.read_text(errors="replace") for _, output in runs]
    for (process, _), text in zip(runs, outputs, strict=True):
        assert process.returncode == 0, text[-4000:]
    counts = [_passed(text) for text in outputs]
    assert counts[0] == counts[1] > 40, counts
    # Each run dropped the template database it made (others' may come and go meanwhile).
    made = {name for name in _templates(servers) - templates_before if len(name) == 25}
    assert made == set()
