"""kill -9 of any hookdrop process, again and again, during one file (docs/guarantees.md).

The victims are the monitor, the batcher and the notifier processes, each killed with its
whole process group (RQ work-horses included), then started again, at seeded random moments
(``HOOKDROP_CHAOS_SEED`` replays a run).

The bound on repeats: alerts a notifier delivered *and recorded* are never claimed again;
alerts it had not sent are sent once by whoever takes them over when the lease runs out. A
sender takes its next alert only once the outcome of its last one is written, so what a kill
can repeat is what was in flight then: at most ``concurrency`` requests per notifier process.
Batcher and monitor kills send nothing themselves, and every replay they cause goes through
the ledger. Hence ``duplicates <= notifier kills x concurrency``, each under the id of the
alert it repeats, counted at the receiver.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import psutil
import pytest

from hookdrop import connections
from hookdrop.settings import Settings
from hookdrop.store import Store
from tests.helpers import file_rows, wait_for, write_csv
from tests.reliability.conftest import chaos_settings
from tests.reliability.servers import (
    Fleet,
    Mock,
    chaos_rng,
    check_everything_delivered,
    pause,
    wait_delivered,
)

pytestmark = pytest.mark.chaos

NOTIFIERS = ("notifier-1", "notifier-2")
VICTIMS = ("monitor", "batcher", *NOTIFIERS)
# A ceiling only, so the file lasts long enough for the kills even on a faster machine.
RATE_LIMIT = 800.0


def run_kills(
    settings: Settings,
    store: Store,
    mock: Mock,
    fleet: Fleet,
    *,
    rows: int,
    kills: tuple[int, int],
    every: tuple[float, float],
    timeout: float,
    victims: tuple[str, ...] = VICTIMS,
) -> None:
    """Kill a random one of ``victims`` every ``every`` seconds while the file is being
    delivered, between ``kills[0]`` and ``kills[1]`` times; then check every row arrived."""
    rng, seed = chaos_rng()
    notifiers = NOTIFIERS
    fleet.start("monitor", "monitor")
    fleet.start("batcher", "worker", "batcher")
    for name in notifiers:
        fleet.start(name, "worker", "notifier")
    wait_for(settings.processing_dir.exists, timeout=30, what="monitor ready")
    began = time.monotonic()
    name = "kills.csv"
    pairs = write_csv(settings.inbox / name, rows)
    # Kills start once the file is claimed: a monitor killed inside its claim leaves an
    # orphan that is adopted only after a 60 s grace (daemon/claim.py), too long for CI.
    wait_for(lambda: file_rows(store), timeout=30, what="file claimed")

    def finished() -> bool:
        return any(r["status"] == "done" for r in file_rows(store))

    schedule: list[tuple[float, str]] = []
    deadline = time.monotonic() + timeout
    while len(schedule) < kills[1] and time.monotonic() < deadline:
        pause(rng.uniform(*every))
        if finished():
            break
        victim = rng.choice(victims)
        fleet.kill(victim)
        schedule.append((round(time.monotonic() - began, 1), victim))
        pause(rng.uniform(0.0, 1.0))  # down for a moment, as before a supervisor restarts it
        fleet.restart(victim)
    print(f"seed {seed}: kills (s, victim): {schedule}")
    assert len(schedule) >= kills[0], (
        f"only {len(schedule)} kills landed before the file finished (seed {seed})"
    )

    file = wait_delivered(
        store, mock, fleet, name, rows, timeout=max(60.0, deadline - time.monotonic())
    )
    assert fleet.dead() == {}, f"processes died on their own: {fleet.dead()} (seed {seed})"
    notifier_kills = sum(fleet.kills[n] for n in notifiers)
    bound = notifier_kills * settings.concurrency
    outcome = check_everything_delivered(settings, store, mock, file, pairs, max_duplicates=bound)
    print(
        f"seed {seed}: {rows} rows, {len(schedule)} kills {dict(fleet.kills)}, "
        f"{outcome.duplicates} duplicates (bound {bound}), "
        f"{time.monotonic() - began:.1f} s"
    )


def kill_settings(settings: Settings, mock: Mock) -> Settings:
    return chaos_settings(
        settings.inbox.parent,
        redis_url=connections.redis_url(settings),
        database_url=connections.database_url(settings),
        webhook_url=f"{mock.url}/hook",
        key_prefix=settings.key_prefix,
    ).replace(rate_limit=RATE_LIMIT)


def test_repeated_kill_9_of_any_process_loses_nothing_and_repeats_only_in_flight_alerts(
    settings: Settings, store: Store, mock: Mock, fleet_factory: Callable[[Settings], Fleet]
) -> None:
    chaos = kill_settings(settings, mock)
    run_kills(
        chaos,
        store,
        mock,
        fleet_factory(chaos),
        rows=20_000,
        kills=(12, 12),
        every=(0.5, 1.5),
        timeout=100,
    )


def test_kill_9_of_a_notifier_at_full_speed_repeats_at_most_what_it_had_in_flight(
    settings: Settings, store: Store, mock: Mock, fleet_factory: Callable[[Settings], Fleet]
) -> None:
    """No rate limit and the default concurrency: outcomes waiting to be written would be
    hundreds per kill; only the requests in flight (at most 64 per process) may repeat."""
    chaos = kill_settings(settings, mock).replace(
        rate_limit=0.0, concurrency=64, chunk_size=500, queue_high_water=20
    )
    run_kills(
        chaos,
        store,
        mock,
        fleet_factory(chaos),
        rows=60_000,
        kills=(6, 6),
        every=(0.8, 1.6),
        timeout=120,
        victims=NOTIFIERS,
    )


def holds_a_lease(store: Store, fleet: Fleet, name: str) -> bool:
    """Whether a process of ``name`` holds a live chunk lease (owner ``host:pid:token``)."""
    top = psutil.Process(fleet.procs[name].pid)
    pids = {top.pid} | {child.pid for child in top.children(recursive=True)}
    with store.transaction() as conn:
        owners = [
            row["owner"]
            for row in conn.execute("SELECT owner FROM chunk_leases WHERE until > now()")
        ]
    return any(int(owner.split(":")[1]) in pids for owner in owners)


def test_a_notifier_frozen_past_its_lease_repeats_at_most_what_it_had_in_flight(
    settings: Settings, store: Store, mock: Mock, fleet_factory: Callable[[Settings], Fleet]
) -> None:
    """SIGSTOP of a notifier for longer than its lease: the monitor hands its chunks to the
    other notifier. Woken, it asks PostgreSQL before its next request and sends nothing of
    a chunk it lost; what may repeat is what it had in flight when it froze."""
    chaos = kill_settings(settings, mock)
    fleet = fleet_factory(chaos)
    fleet.start("monitor", "monitor")
    fleet.start("batcher", "worker", "batcher")
    for name in NOTIFIERS:
        fleet.start(name, "worker", "notifier")
    wait_for(chaos.processing_dir.exists, timeout=30, what="monitor ready")
    rows, name = 12_000, "frozen.csv"
    pairs = write_csv(chaos.inbox / name, rows)
    wait_for(lambda: mock.accepted() >= 500, timeout=60, what="delivery under way")

    def frozen_holding_a_chunk() -> bool:
        """Freeze notifier-1; keep it frozen only if it holds a live lease (mid-chunk)."""
        fleet.freeze("notifier-1")
        if holds_a_lease(store, fleet, "notifier-1"):
            return True
        fleet.freeze("notifier-1", frozen=False)  # between two chunks: try again
        return False

    wait_for(frozen_holding_a_chunk, timeout=60, interval=0.02, what="notifier-1 mid-chunk")
    try:
        pause(2 * chaos.lease_seconds + 1)  # the fault: frozen well past its lease
    finally:
        fleet.freeze("notifier-1", frozen=False)
    file = wait_delivered(store, mock, fleet, name, rows, timeout=120)
    assert fleet.dead() == {}, f"processes died on their own: {fleet.dead()}"
    assert any(e["event"] == "chunk.lease_lost" for e in fleet.events("notifier-1")), (
        "the frozen notifier never learnt it lost its chunk"
    )
    outcome = check_everything_delivered(
        chaos, store, mock, file, pairs, max_duplicates=chaos.concurrency
    )
    print(f"frozen notifier: {outcome.duplicates} duplicates (bound {chaos.concurrency})")


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_kill_9_at_random_moments_through_200k_rows_loses_nothing(
    settings: Settings, store: Store, mock: Mock, fleet_factory: Callable[[Settings], Fleet]
) -> None:
    chaos = kill_settings(settings, mock)
    run_kills(
        chaos,
        store,
        mock,
        fleet_factory(chaos),
        rows=200_000,
        kills=(10, 500),
        every=(1.0, 12.0),
        timeout=1200,
    )
