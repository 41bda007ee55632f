"""Smoke runs of the README's main command and of the benchmark, at small sizes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hookdrop import connections
from hookdrop.settings import Settings
from tests.helpers import run_hookdrop

pytestmark = pytest.mark.e2e


def _env(settings: Settings, tmp_path: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "REDIS_URL": connections.redis_url(settings),
        "DATABASE_URL": connections.database_url(settings),
        "HOOKDROP_STATE_DIR": str(tmp_path / "state"),
        "HOOKDROP_SETTLE_SECONDS": "0.3",
        "HOOKDROP_LOG_FORMAT": "json",
    }
    env.pop("HOOKDROP_INBOX", None)
    return env


def test_demo_delivers_every_row_once_and_says_so(settings: Settings, tmp_path: Path) -> None:
    done = run_hookdrop(
        "demo", "--rows", "3000", "--json", env=_env(settings, tmp_path), cwd=tmp_path, timeout=240
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["ok"] is True
    assert (summary["rows"], summary["delivered"], summary["missed"], summary["duplicates"]) == (
        3000,
        3000,
        0,
        0,
    )
    assert summary["deliveries_per_second"] > 0
    # the run cleans up after itself: no run folder left behind
    assert not list((tmp_path / "state" / "runs").glob("*"))


def test_bench_quick_runs_every_scenario(settings: Settings, tmp_path: Path) -> None:
    plot = tmp_path / "plot.png"
    done = run_hookdrop(
        "bench",
        "--quick",
        "--served",
        "2000",
        "--json",
        "--plot",
        str(plot),
        env=_env(settings, tmp_path),
        cwd=tmp_path,
        timeout=420,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout)
    a, b, c = results["a_unlimited"], results["b_limited"], results["c_lowered"]
    assert (a["served"], a["missed"], a["duplicates"]) == (2000, 0, 0)
    assert a["bare_sender_per_s"] > 0 and a["ratio_to_bare"] > 0
    assert b, "scenario b ran no receiver shape"
    for shape in b:
        assert shape["delivered"] == shape["rows"] and shape["duplicates"] == 0
        assert shape["share_of_limit_used_whole_run"] > 0
    assert c["duplicates"] == 0 and c["seconds_until_under_new_limit"] is not None
    d = results["d_large_file"]
    assert d["rows_read"] > 0 and d["batcher_rss_peak_mb"] > 0
    assert results["e_latency"]["first_webhook_seconds_median"] > 0
    assert plot.stat().st_size > 10_000  # a real PNG was drawn
