"""Redis goes away mid-run and comes back, with or without its data (guarantees 4, 5).

Redis holds only queues, checkpoints and flags; PostgreSQL holds the ledger. Whether a private
Redis comes back with its data (AOF, ``appendfsync always``) or empty, the run completes with
every row delivered; coming back empty, the monitor sees ``<prefix>:epoch`` gone and rebuilds
the queues from PostgreSQL and the file from ``processing/``. The only repeats allowed are
alerts a notifier held under lease when Redis went away (at most ``chunk_size`` per notifier
process), each under its first id.

No process may die meanwhile: workers and the monitor wait for Redis and carry on (a process
that did die would be restarted by the test, as systemd's ``Restart=on-failure`` does in
production, and then fail the test once everything else has been checked).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hookdrop.settings import Settings
from hookdrop.store import Store
from tests.helpers import file_rows, wait_for, write_csv
from tests.reliability.conftest import chaos_settings
from tests.reliability.servers import (
    Fleet,
    Mock,
    RedisServer,
    check_everything_delivered,
    pause,
    wait_delivered,
)

pytestmark = pytest.mark.chaos

NOTIFIERS = 2


def epoch(server: RedisServer, settings: Settings) -> bytes | None:
    conn = server.client()
    try:
        value = conn.get(settings.keys.epoch)
        return value if isinstance(value, bytes) else None
    finally:
        conn.close()


def run_redis_outage(
    tmp_path: Path,
    database_url: str,
    store: Store,
    mock: Mock,
    server: RedisServer,
    fleet: Callable[[Settings], Fleet],
    *,
    rows: int,
    outage: float,
    wipe: bool,
) -> tuple[Settings, Fleet, bytes]:
    settings = chaos_settings(
        tmp_path, redis_url=server.url, database_url=database_url, webhook_url=f"{mock.url}/hook"
    )
    procs = fleet(settings)
    procs.start("monitor", "monitor")
    procs.start("batcher", "worker", "batcher")
    for n in range(1, NOTIFIERS + 1):
        procs.start(f"notifier-{n}", "worker", "notifier")
    wait_for(settings.processing_dir.exists, timeout=30, what="monitor ready")
    began = time.monotonic()
    name = "redis.csv"
    pairs = write_csv(settings.inbox / name, rows)
    first_epoch = wait_for(lambda: epoch(server, settings), timeout=30, what="epoch set")
    mock.client.wait_until(lambda s: s["unique"] >= rows // 4, timeout=60, per_user=False)

    server.stop()  # SIGTERM: a clean shutdown, the AOF (if any) fsynced
    (file,) = file_rows(store)
    assert not file["read_complete"], "the batcher must still be reading when Redis goes"
    if wipe:
        server.wipe()
    down_at = time.monotonic()
    pause(outage)
    server.start()
    print(f"Redis {'wiped' if wipe else 'kept'}: down {time.monotonic() - down_at:.1f} s")

    file = wait_delivered(store, mock, procs, name, rows, timeout=120, revive=True)
    bound = NOTIFIERS * settings.chunk_size
    outcome = check_everything_delivered(settings, store, mock, file, pairs, max_duplicates=bound)
    print(
        f"{rows} rows, {outcome.duplicates} duplicates (bound {bound}), died and "
        f"restarted (name, exit code): {procs.deaths}, {time.monotonic() - began:.1f} s"
    )
    return settings, procs, first_epoch


def assert_no_process_died(fleet: Fleet) -> None:
    assert not fleet.deaths, (
        f"processes died on the Redis outage (name, exit code): {fleet.deaths}; "
        f"see the logs in {fleet.logs}"
    )


@pytest.mark.parametrize(
    ("rows", "outage"),
    [
        pytest.param(8_000, 3.0, id="short"),
        pytest.param(40_000, 20.0, id="long", marks=[pytest.mark.slow, pytest.mark.timeout(900)]),
    ],
)
def test_redis_restarted_with_its_data_loses_nothing(
    tmp_path: Path,
    database_url: str,
    store: Store,
    mock: Mock,
    private_redis: Callable[[bool], RedisServer],
    fleet_factory: Callable[[Settings], Fleet],
    rows: int,
    outage: float,
) -> None:
    server = private_redis(True)
    settings, fleet, first_epoch = run_redis_outage(
        tmp_path,
        database_url,
        store,
        mock,
        server,
        fleet_factory,
        rows=rows,
        outage=outage,
        wipe=False,
    )
    assert epoch(server, settings) == first_epoch  # the same Redis lifetime: nothing rebuilt
    assert fleet.event_names("monitor")["redis.rebuilt"] == 0
    assert_no_process_died(fleet)


@pytest.mark.parametrize(
    ("rows", "outage"),
    [
        pytest.param(8_000, 3.0, id="short"),
        pytest.param(40_000, 20.0, id="long", marks=[pytest.mark.slow, pytest.mark.timeout(900)]),
    ],
)
def test_redis_restarted_empty_is_rebuilt_from_postgres_and_processing(
    tmp_path: Path,
    database_url: str,
    store: Store,
    mock: Mock,
    private_redis: Callable[[bool], RedisServer],
    fleet_factory: Callable[[Settings], Fleet],
    rows: int,
    outage: float,
) -> None:
    server = private_redis(False)
    settings, fleet, first_epoch = run_redis_outage(
        tmp_path,
        database_url,
        store,
        mock,
        server,
        fleet_factory,
        rows=rows,
        outage=outage,
        wipe=True,
    )
    assert epoch(server, settings) not in (None, first_epoch)  # a new Redis lifetime
    assert fleet.event_names("monitor")["redis.rebuilt"] >= 1
    # The checkpoint went with Redis: the file was read again from processing/, from the top.
    starts = [e for e in fleet.events("batcher") if e.get("event") == "batch.started"]
    assert len(starts) >= 2 and starts[-1]["resume_at"] == 0, starts
    assert_no_process_died(fleet)
