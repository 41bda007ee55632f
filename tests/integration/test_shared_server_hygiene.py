"""What hookdrop leaves on servers other deployments and test runs share: only its own."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import psycopg
import pytest
import redis
from rq.group import Group

from hookdrop.devtools.harness import forget_abandoned_runs
from hookdrop.keys import Keys
from hookdrop.settings import Settings
from tests import leftovers
from tests.conftest import Servers
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


def test_a_run_removes_what_dead_runs_left_and_nothing_of_live_ones(
    servers: Servers, tmp_path: Path
) -> None:
    folders = {name: tmp_path / f"hookdrop-test-{name}" for name in ("dead", "live", "unmarked")}
    for folder in folders.values():
        folder.mkdir()
    suffix = uuid.uuid4().hex[:8]
    databases = {name: f"hookdrop_t_{name}_{suffix}" for name in ("dead", "live")}
    with psycopg.connect(servers.admin_url, autocommit=True) as admin:
        for name in databases.values():
            admin.execute(f'CREATE DATABASE "{name}"')
    try:
        killed = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            leftovers.mark_folder(folders["dead"], killed.pid)
            leftovers.mark_database(servers.admin_url, databases["dead"], killed.pid)
        finally:
            killed.kill()  # the run that made them was killed
            killed.wait()
        leftovers.mark_folder(folders["live"], os.getpid())
        leftovers.mark_database(servers.admin_url, databases["live"], os.getpid())

        assert leftovers.forget_dead_folders(tmp_path) == [folders["dead"]]
        assert databases["dead"] in leftovers.forget_dead_databases(servers.admin_url)

        assert [f.exists() for f in folders.values()] == [False, True, True]
        with psycopg.connect(servers.admin_url, autocommit=True) as admin:
            left = {
                row[0]
                for row in admin.execute(
                    "SELECT datname FROM pg_database WHERE datname = ANY(%s)",
                    (list(databases.values()),),
                )
            }
        assert left == {databases["live"]}
    finally:
        with psycopg.connect(servers.admin_url, autocommit=True) as admin:
            for name in databases.values():
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
