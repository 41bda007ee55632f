"""What hookdrop leaves on servers other deployments and test runs share: only its own."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import psycopg
import pytest
import redis
from rq.group import Group

from hookdrop.devtools.harness import forget_abandoned_runs
from hookdrop.keys import Keys
from hookdrop.settings import Settings
from tests.helpers import run_burst


def test_workers_never_set_rqs_shared_group_cleaning_key(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken: list[int] = []

    def record(_cls: type[Group], _connection: redis.Redis, timeout: int) -> bool:
        taken.append(timeout)
        return True

    monkeypatch.setattr(Group, "acquire_maintenance_lock", classmethod(record))

    run_burst(settings, "notifier")
    run_burst(settings, "batcher")

    assert taken == []


def _schemas(database_url: str) -> set[str]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'hookdrop_run_%'"
        ).fetchall()
    return {str(row[0]) for row in rows}


def _make_run(
    runs: Path, run: str, owner: str | None, database_url: str, rconn: redis.Redis
) -> None:
    (runs / run / "logs").mkdir(parents=True)
    if owner is not None:
        (runs / run / "owner").write_text(owner, encoding="utf-8")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "hookdrop_run_{run}"')
    rconn.set(Keys(f"run-{run}").epoch, "1")


def test_runs_whose_process_died_are_cleaned_up_and_others_left_alone(
    tmp_path: Path, database_url: str, rconn: redis.Redis, redis_url: str
) -> None:
    runs = tmp_path / "runs"
    me = psutil.Process(os.getpid())
    _make_run(runs, "deadbeef", "4194304 12.00", database_url, rconn)  # no such process
    _make_run(runs, "a1a1a1a1", f"{me.pid} {me.create_time():.2f}", database_url, rconn)
    _make_run(runs, "b2b2b2b2", None, database_url, rconn)  # a failed run kept to look at
    try:
        assert forget_abandoned_runs(runs, database_url, redis_url) == ["deadbeef"]

        assert sorted(p.name for p in runs.iterdir()) == ["a1a1a1a1", "b2b2b2b2"]
        assert _schemas(database_url) == {"hookdrop_run_a1a1a1a1", "hookdrop_run_b2b2b2b2"}
        assert rconn.get(Keys("run-deadbeef").epoch) is None
        assert rconn.get(Keys("run-a1a1a1a1").epoch) == b"1"
    finally:
        for run in ("deadbeef", "a1a1a1a1", "b2b2b2b2"):
            rconn.delete(Keys(f"run-{run}").epoch)
