"""Stopping real processes mid-file: SIGTERM drains, a second SIGTERM stops at once.

Every process runs as its own ``hookdrop`` command in its own process group, with JSON logs;
signals go to the main process only, as systemd's ``KillMode=mixed`` sends them (the worker
pool parent forwards them to its children).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from hookdrop.settings import Settings
from hookdrop.store import Store
from tests.helpers import (
    ALERT_ROWS,
    StartMock,
    file_rows,
    free_port,
    hookdrop_process,
    kill_group,
    wait_for,
    write_csv,
)

pytestmark = pytest.mark.e2e

# systemd gives workers TimeoutStopSec=90 and the monitor 60; a drain here takes a chunk's
# in-flight requests and one results flush, so 30 s is already generous.
STOP_BOUND = 30.0
# rq ignores a second SIGTERM that arrives within 1 s of the first (it takes it for the
# duplicate a pool and a terminal both send); a deliberate second signal must come later.
RQ_DUPLICATE_SIGNAL_WINDOW = 1.0
# A cold stop ends the job at once; rq's teardown then waits up to 1 s for its pub/sub thread.
# The graceful stop it cuts short would take the rest of the 10 s answers (over 8 s).
COLD_STOP_BOUND = 4.0

Procs = dict[str, subprocess.Popen[bytes]]


def start_all(settings: Settings, logs: Path, phase: str) -> Procs:
    logs.mkdir(exist_ok=True)
    return {
        "monitor": hookdrop_process(settings, "monitor", log_path=logs / f"{phase}-monitor.log"),
        "batcher": hookdrop_process(
            settings, "worker", "batcher", log_path=logs / f"{phase}-batcher.log"
        ),
        "notifier": hookdrop_process(
            settings,
            "worker",
            "notifier",
            "--processes",
            "2",
            log_path=logs / f"{phase}-notifier.log",
        ),
    }


def events(log: Path, name: str | None = None) -> list[dict[str, Any]]:
    """The JSON log events in ``log`` (rq's own plain-text lines are skipped)."""
    found = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if name is None or event.get("event") == name:
            found.append(event)
    return found


def group_gone(process: subprocess.Popen[bytes]) -> bool:
    """True once no process is left in ``process``'s group (pool children included)."""
    if process.poll() is None:
        return False  # also reaps it: a zombie still counts as a member of its group
    try:
        os.killpg(process.pid, 0)
    except ProcessLookupError:
        return True
    return False


def wait_exit(procs: Procs, bound: float) -> dict[str, int]:
    """Exit codes of every process, each of which (and its group) must end within ``bound``."""
    deadline = time.monotonic() + bound
    codes = {}
    for name, process in procs.items():
        try:
            codes[name] = process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{name} still running {bound}s after SIGTERM") from None
        wait_for(
            functools.partial(group_gone, process),
            timeout=max(0.1, deadline - time.monotonic()),
            what=f"every process of the {name} group to exit",
        )
    return codes


def alert_counts(store: Store) -> dict[str, int]:
    with store.transaction() as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE a.ledger_status = 'delivered') AS delivered,"
            " count(*) FILTER (WHERE a.ledger_status IN ('pending', 'retrying', 'throttled')"
            "                  AND l.until > now()) AS leased,"
            f" count(*) AS total FROM ({ALERT_ROWS}) AS a LEFT JOIN chunk_leases AS l"
            " ON l.file_id = a.file_id AND l.chunk_seq = a.chunk_seq"
        ).fetchone()
    assert row is not None
    return {k: int(v) for k, v in row.items()}


def stop_everything(*groups: Procs) -> None:
    for procs in groups:
        for process in procs.values():
            kill_group(process)


def test_first_sigterm_drains_every_process_and_a_restart_finishes_without_duplicates(
    settings: Settings, store: Store, start_mock: StartMock, tmp_path: Path
) -> None:
    rows = 30_000
    # 20 ms per answer keeps requests in flight at the SIGTERM; the global limit stretches
    # the file over >= 12 s so it is well mid-flight at one third.
    mock = start_mock(latency_ms=20)
    settings = settings.replace(
        webhook_url=mock.hook_url,
        rate_limit=2_500,
        concurrency=32,
        chunk_size=500,
        queue_high_water=20,
        log_format="json",
        api_listen=("127.0.0.1", free_port()),
    )
    logs = tmp_path / "logs"
    first: Procs = {}
    second: Procs = {}
    try:
        first = start_all(settings, logs, "first")
        wait_for(settings.processing_dir.exists, what="monitor ready")
        pairs = write_csv(settings.inbox / "big.csv", rows)
        # Two notifiers finish their 500-alert chunks about together: aim half-way into a
        # pair of chunks so the SIGTERM lands while both hold unsent alerts.
        mock.wait_until(lambda s: s["unique"] >= rows // 3 + 250, timeout=120, per_user=False)

        signalled = time.monotonic()
        for process in first.values():
            process.send_signal(signal.SIGTERM)
        codes = wait_exit(first, STOP_BOUND)
        stop_seconds = time.monotonic() - signalled

        assert codes == {"monitor": 0, "batcher": 0, "notifier": 0}, codes
        assert stop_seconds < STOP_BOUND
        assert events(logs / "first-monitor.log", "monitor.stopping")
        assert len(events(logs / "first-batcher.log", "worker.stopping")) == 1
        # Both pool children got the forwarded signal (rq names each worker differently).
        # (the pool and its children share one log file: give its last lines a moment)
        wait_for(
            lambda: (
                len({e["worker"] for e in events(logs / "first-notifier.log", "worker.stopping")})
                == 2
            ),
            timeout=5,
            what="both pool children logged worker.stopping",
        )
        # The batcher was mid-file: it stopped between chunks, its checkpoint committed.
        assert events(logs / "first-batcher.log", "batch.interrupted")
        # The notifiers stopped mid-chunk and handed their unsent alerts back.
        released = sum(e["alerts"] for e in events(logs / "first-notifier.log", "chunk.released"))
        assert released > 0

        at_stop = mock.stats(per_user=False)
        assert at_stop["in_flight"] == 0  # the drain waited for every answer
        assert rows // 3 <= at_stop["unique"] < rows
        # Results are written before exit: PostgreSQL knows of every accepted request, and
        # what was claimed but not sent was handed back (no live lease left behind).
        counts = alert_counts(store)
        assert counts["delivered"] == at_stop["accepted"] == at_stop["unique"]
        assert counts["leased"] == 0
        assert counts["total"] < rows

        second = start_all(settings, logs, "second")
        final = mock.wait_until(lambda s: s["unique"] >= rows, timeout=180, per_user=False)
        done = wait_for(
            lambda: [r for r in file_rows(store) if r["status"] == "done"],
            timeout=60,
            what="file done",
        )
    finally:
        stop_everything(first, second)

    assert final["duplicates"] == 0
    assert final["unique"] == final["accepted"] == len(pairs)
    assert (done[0]["alerts_total"], done[0]["delivered"]) == (rows, rows)
    resumed = events(logs / "second-batcher.log", "batch.started")
    assert resumed, "the restarted batcher never picked the file up again"
    assert resumed[0]["resume_at"] > 0  # it resumed from the checkpoint, not from line 1
    print(
        f"graceful stop of 5 processes took {stop_seconds:.2f}s at "
        f"{at_stop['unique']}/{rows} delivered, {released} alerts handed back; after "
        f"restart {final['unique']} unique, {final['duplicates']} duplicates; batcher "
        f"resumed at {resumed[0]['resume_at']}"
    )


def test_second_sigterm_stops_a_busy_notifier_at_once_and_loses_nothing(
    settings: Settings, store: Store, start_mock: StartMock, tmp_path: Path
) -> None:
    rows = 6_000
    concurrency = 8
    processes = 2
    mock = start_mock()
    settings = settings.replace(
        webhook_url=mock.hook_url,
        rate_limit=500,
        concurrency=concurrency,
        chunk_size=200,
        queue_high_water=20,
        log_format="json",
        api_listen=("127.0.0.1", free_port()),
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    procs: Procs = {}
    restarted: Procs = {}
    try:
        procs = {
            "monitor": hookdrop_process(settings, "monitor", log_path=logs / "monitor.log"),
            "batcher": hookdrop_process(
                settings, "worker", "batcher", log_path=logs / "batcher.log"
            ),
        }
        notifier = procs["notifier"] = hookdrop_process(
            settings,
            "worker",
            "notifier",
            "--processes",
            str(processes),
            log_path=logs / "notifier.log",
        )
        wait_for(settings.processing_dir.exists, what="monitor ready")
        write_csv(settings.inbox / "busy.csv", rows)
        mock.wait_until(lambda s: s["unique"] >= 1_000, timeout=120, per_user=False)
        # Answers now take 10 s: every sender of both processes ends up waiting on one.
        mock.configure(latency_ms=10_000)
        mock.wait_until(
            lambda s: s["in_flight"] >= processes * concurrency, timeout=30, per_user=False
        )

        notifier.send_signal(signal.SIGTERM)
        first_signal = time.monotonic()
        wait_for(
            lambda: len(events(logs / "notifier.log", "worker.stopping")) == processes,
            timeout=10,
            what="both notifier processes to start a graceful stop",
        )
        wait_for(
            lambda: time.monotonic() - first_signal > RQ_DUPLICATE_SIGNAL_WINDOW + 0.2,
            timeout=5,
            what="rq's duplicate-signal window to pass",
        )
        assert notifier.poll() is None  # a graceful stop waits for the 10 s answers
        in_flight = mock.stats(per_user=False)["in_flight"]
        assert 0 < in_flight <= processes * concurrency

        notifier.send_signal(signal.SIGTERM)
        second_signal = time.monotonic()
        wait_for(
            lambda: group_gone(notifier),
            timeout=COLD_STOP_BOUND + 5,
            what="the notifier group to exit after the second SIGTERM",
        )
        cold_seconds = time.monotonic() - second_signal
        code = notifier.wait(timeout=1)
        assert cold_seconds < COLD_STOP_BOUND
        assert code == 0

        mock.configure(latency_ms=0)
        restarted = {
            "notifier": hookdrop_process(
                settings,
                "worker",
                "notifier",
                "--processes",
                str(processes),
                log_path=logs / "notifier-2.log",
            )
        }
        # Wait out the answers the killed processes left hanging: they count when they end.
        final = mock.wait_until(
            lambda s: s["unique"] >= rows and s["in_flight"] == 0, timeout=180, per_user=False
        )
        done = wait_for(
            lambda: [r for r in file_rows(store) if r["status"] == "done"],
            timeout=60,
            what="file done",
        )
    finally:
        stop_everything(procs, restarted)

    assert final["unique"] == rows
    assert (done[0]["alerts_total"], done[0]["delivered"]) == (rows, rows)
    # Only the requests in flight at the cold stop can arrive twice (their result was never
    # written): each is accepted once when its 10 s answer ends and once when re-sent.
    assert final["duplicates"] <= in_flight
    print(
        f"second SIGTERM stopped 2 busy notifiers in {cold_seconds:.2f}s with {in_flight} "
        f"requests in flight; after restart {final['unique']} unique, "
        f"{final['duplicates']} duplicates"
    )
