"""PostgreSQL stops mid-run and comes back: workers pause and retry (guarantee 8).

While the ledger cannot be written, notifiers stop sending (an outcome that cannot be recorded
could be sent twice later), batchers stop committing chunks, and every process waits it out
(``db.unavailable``). When PostgreSQL returns the run completes with every row delivered.

Repeats: an outage longer than ``lease_seconds`` lets the leases held at that instant run out.
If the monitor's lease sweep runs before the notifier writes its pending results, those
results are refused (no longer its lease) and the chunk is handed over and sent again: at most
the one leased chunk per notifier process (``chunk_size``), each alert under its first id.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hookdrop.settings import Settings
from hookdrop.store import Store
from tests.helpers import wait_for, write_csv
from tests.reliability.conftest import chaos_settings
from tests.reliability.servers import (
    Fleet,
    Mock,
    PostgresServer,
    check_everything_delivered,
    pause,
    wait_delivered,
)

pytestmark = pytest.mark.chaos

ROWS = 8_000
NOTIFIERS = 2
DRAIN = 2.0  # requests already on the wire when PostgreSQL stopped finish within this


def run_postgres_outage(
    tmp_path: Path,
    redis_url: str,
    postgres: tuple[PostgresServer, str],
    mock: Mock,
    fleet_factory: Callable[[Settings], Fleet],
    *,
    rows: int,
    outage: float,
    key_prefix: str,
) -> None:
    server, database_url = postgres
    settings = chaos_settings(
        tmp_path,
        redis_url=redis_url,
        database_url=database_url,
        webhook_url=f"{mock.url}/hook",
        key_prefix=key_prefix,
    )
    fleet = fleet_factory(settings)
    fleet.start("monitor", "monitor")
    fleet.start("batcher", "worker", "batcher")
    for n in range(1, NOTIFIERS + 1):
        fleet.start(f"notifier-{n}", "worker", "notifier")
    wait_for(settings.processing_dir.exists, timeout=30, what="monitor ready")
    began = time.monotonic()
    name = "pg.csv"
    pairs = write_csv(settings.inbox / name, rows)
    with Store(database_url) as store:
        mock.client.wait_until(lambda s: s["unique"] >= rows // 4, timeout=60, per_user=False)

        server.stop("fast")
        down_at = time.monotonic()
        pause(DRAIN)
        sent_after_drain = mock.accepted()
        pause(outage - DRAIN)
        sent_at_end = mock.accepted()
        server.start()
        print(
            f"PostgreSQL down {time.monotonic() - down_at:.1f} s; "
            f"{sent_at_end - sent_after_drain} requests sent while it was down after "
            f"{DRAIN} s"
        )
        assert fleet.dead() == {}, f"processes died while PostgreSQL was down: {fleet.dead()}"
        # Paused, not dropping: nothing was sent that could not be recorded.
        assert sent_at_end == sent_after_drain
        assert sent_at_end < rows, "the file finished before the outage; make it bigger"

        file = wait_delivered(store, mock, fleet, name, rows, timeout=120)
        assert fleet.dead() == {}, f"processes died after the outage: {fleet.dead()}"
        outcome = check_everything_delivered(
            settings, store, mock, file, pairs, max_duplicates=NOTIFIERS * settings.chunk_size
        )
    waited = sum(
        fleet.event_names(f"notifier-{n}")["db.unavailable"] for n in range(1, NOTIFIERS + 1)
    )
    assert waited >= 1, "no notifier reported db.unavailable"
    assert fleet.event_names("monitor")["monitor.dependency_unavailable"] >= 1
    print(
        f"{rows} rows, {outcome.duplicates} duplicates (bound "
        f"{NOTIFIERS * settings.chunk_size}), notifier db.unavailable events: {waited}, "
        f"batcher: {fleet.event_names('batcher')['db.unavailable']}, "
        f"{time.monotonic() - began:.1f} s"
    )


def test_postgres_outage_pauses_workers_and_loses_nothing(
    tmp_path: Path,
    redis_url: str,
    private_postgres: tuple[PostgresServer, str],
    mock: Mock,
    fleet_factory: Callable[[Settings], Fleet],
    key_prefix: str,
) -> None:
    run_postgres_outage(
        tmp_path,
        redis_url,
        private_postgres,
        mock,
        fleet_factory,
        rows=ROWS,
        outage=8.0,
        key_prefix=key_prefix,
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_postgres_outage_of_30_seconds_pauses_workers_and_loses_nothing(
    tmp_path: Path,
    redis_url: str,
    private_postgres: tuple[PostgresServer, str],
    mock: Mock,
    fleet_factory: Callable[[Settings], Fleet],
    key_prefix: str,
) -> None:
    run_postgres_outage(
        tmp_path,
        redis_url,
        private_postgres,
        mock,
        fleet_factory,
        rows=40_000,
        outage=30.0,
        key_prefix=key_prefix,
    )
