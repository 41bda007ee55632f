"""Scaling out with real processes, each started as on its own host: its own settings
environment, working directory and ``HOOKDROP_STATE_DIR``, sharing only Redis, PostgreSQL,
the inbox and the key prefix.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hookdrop.settings import Settings
from hookdrop.store import Store
from notifier_mock import MockClient
from tests.helpers import dies_with_tests, file_rows, free_port, kill_group, wait_for, write_csv

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Node:
    """One hookdrop process started as if on a host of its own."""

    name: str
    args: tuple[str, ...]
    home: Path
    settings: Settings
    process: subprocess.Popen[bytes]

    @property
    def log(self) -> Path:
        return self.home / "hookdrop.log"

    def events(self, name: str) -> list[dict[str, Any]]:
        """This process's JSON log events called ``name`` (rq's plain lines are skipped)."""
        found = []
        for line in self.log.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("event") == name:
                    found.append(event)
        return found


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    """Started nodes, all killed (with their process groups) after the test."""
    started: list[Node] = []
    yield started
    for node in started:
        kill_group(node.process)


def start_node(nodes: list[Node], base: Settings, tmp_path: Path, name: str, *args: str) -> Node:
    """``hookdrop ARGS`` in ``<tmp>/<name>/`` with settings of its own, as on another host."""
    home = tmp_path / name
    home.mkdir()
    settings = base.replace(
        state_dir=home / "state", log_format="json", api_listen=("127.0.0.1", free_port())
    )
    # The code under test, whatever checkout the suite runs from (the cwd is not the repo).
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, **settings.to_environ(), "PYTHONPATH": path}
    with (home / "hookdrop.log").open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "hookdrop", *args],
            cwd=home,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=dies_with_tests,  # noqa: PLW1509 - one system call
        )
    node = Node(name, args, home, settings, process)
    nodes.append(node)
    return node


def wait_started(nodes: list[Node], timeout: float = 60) -> None:
    """Every node logged its start (watching the inbox / listening on its queue)."""
    for node in nodes:
        event = "monitor.started" if node.args[0] == "monitor" else "worker.started"
        wanted = (
            int(node.args[node.args.index("--processes") + 1]) if "--processes" in node.args else 1
        )

        def up(node: Node = node, event: str = event, wanted: int = wanted) -> bool:
            return len(node.events(event)) >= wanted or node.process.poll() is not None

        wait_for(up, timeout=timeout, what=f"{node.name} to start")
        assert node.process.poll() is None, node.log.read_text()[-2000:]


def drop_at_once(inbox: Path, staging: Path, files: int, rows: int) -> list[str]:
    """Write ``files`` distinct CSVs aside, then rename them all into the inbox in one go."""
    staging.mkdir()
    names = [f"batch-{n:02d}.csv" for n in range(files)]
    for n, name in enumerate(names):
        write_csv(staging / name, rows, start=n * rows)
    for name in names:
        os.rename(staging / name, inbox / name)
    return names


def test_two_monitor_processes_on_one_inbox_claim_each_file_exactly_once(
    settings: Settings, store: Store, nodes: list[Node], tmp_path: Path
) -> None:
    files = 40
    monitors = [start_node(nodes, settings, tmp_path, f"host-{h}", "monitor") for h in "ab"]
    wait_started(monitors)
    names = drop_at_once(settings.inbox, tmp_path / "staging", files, rows=50)

    def settled() -> list[dict[str, Any]]:
        # Once the inbox is empty nothing is left to claim, and every claim in progress shows
        # as a file in processing/ without its row yet.
        left = [e for e in os.scandir(settings.inbox) if e.is_file()]
        claimed = [e for e in os.scandir(settings.processing_dir) if e.is_file()]
        rows = file_rows(store)
        if left or len(rows) < len(claimed) or len(rows) < files:
            return []
        return rows

    rows = wait_for(settled, timeout=60, what="all 40 files claimed")
    by_name = Counter(r["name"] for r in rows)
    assert len(rows) == files
    assert sorted(by_name) == names
    assert set(by_name.values()) == {1}
    assert {r["status"] for r in rows} == {"claimed"}
    in_processing = Counter(p.name.split("--", 1)[1] for p in settings.processing_dir.iterdir())
    assert in_processing == Counter(names)
    # claimed_by is "<host>:<pid>" of the monitor that won; both are real monitor processes.
    owners = {f"{socket.gethostname()}:{m.process.pid}": m.name for m in monitors}
    by_owner = Counter(owners.get(r["claimed_by"], r["claimed_by"]) for r in rows)
    assert set(by_owner) <= set(owners.values()), by_owner
    lost = {m.name: len(m.events("file.claim_lost")) for m in monitors}
    print(f"40 files, claims per monitor {dict(by_owner)}, races lost {lost}")


def test_global_rate_limit_holds_across_notifier_processes_of_two_hosts(
    settings: Settings, store: Store, nodes: list[Node], mock: MockClient, tmp_path: Path
) -> None:
    limit = 400.0
    rows = 6_000
    pools = 2
    per_pool = 2
    base = settings.replace(
        webhook_url=mock.hook_url,
        rate_limit=limit,
        chunk_size=200,
        queue_high_water=20,
    )
    start_node(nodes, base, tmp_path, "host-a", "monitor")
    start_node(nodes, base, tmp_path, "host-b", "worker", "batcher")
    notifiers = [
        start_node(
            nodes, base, tmp_path, f"host-{h}", "worker", "notifier", "--processes", str(per_pool)
        )
        for h in "cd"
    ]
    wait_started(nodes)
    write_csv(settings.inbox / "limited.csv", rows)

    # Sample the receiver's accepted count every 0.25 s, from its first request until the
    # last 400 (the tail, when fewer alerts than senders are left, is not steady state).
    first = mock.wait_until(lambda s: s["accepted"] > 0, timeout=60, per_user=False)
    assert first["throttled"] == 0
    samples: list[tuple[float, int]] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        before = time.monotonic()
        accepted = mock.stats(per_user=False)["accepted"]
        samples.append(((before + time.monotonic()) / 2, accepted))
        if accepted >= rows - limit:
            break
        time.sleep(0.25)  # the sampling period, not a wait for a condition
    final = mock.wait_until(lambda s: s["unique"] >= rows, timeout=60, per_user=False)

    # Warm-up: the first second (processes fetch their first jobs and tokens).
    steady = [s for s in samples if s[0] >= samples[0][0] + 1.0]
    assert len(steady) >= 20, f"only {len(steady)} samples in steady state"
    # The GCRA lets the fleet run ahead by burst_seconds (0.05 s) of the rate: 20 requests;
    # each of the 4 processes may also hold one unspent batch of rate * burst_seconds = 20
    # tokens taken before a window opens. So a window may see (4 + 1) * 20 = 100 above the
    # rate; the 10 % covers sampling jitter (each sample is one /stats round trip).
    allowance = (pools * per_pool + 1) * limit * 0.05
    worst = 0.0
    for (t0, a0), (t1, a1) in zip(steady, steady[4:], strict=False):
        rate = (a1 - a0) / (t1 - t0)
        worst = max(worst, rate)
        assert a1 - a0 <= limit * 1.1 * (t1 - t0) + allowance, (t1 - t0, a1 - a0)
    (t_start, a_start), (t_end, a_end) = steady[0], steady[-1]
    average = (a_end - a_start) / (t_end - t_start)
    assert average >= 0.8 * limit
    assert final["duplicates"] == 0
    assert final["unique"] == rows
    assert final["throttled"] == 0
    for node in notifiers:  # both hosts took part
        assert node.events("chunk.done"), f"{node.name} delivered nothing"
    print(
        f"rate limit {limit:.0f}/s over {pools * per_pool} notifier processes on 2 hosts: "
        f"average {average:.0f}/s, worst 1 s window {worst:.0f}/s over "
        f"{t_end - t_start:.1f}s; allowance {limit * 1.1:.0f}/s + {allowance:.0f}"
    )


def test_batchers_and_notifiers_on_separate_hosts_share_the_work_and_send_each_alert_once(
    settings: Settings, store: Store, nodes: list[Node], mock: MockClient, tmp_path: Path
) -> None:
    files, rows = 6, 3_000
    base = settings.replace(
        webhook_url=mock.hook_url,
        chunk_size=200,
        queue_high_water=20,
        concurrency=16,
    )
    start_node(nodes, base, tmp_path, "host-a", "monitor")
    batchers = [
        start_node(nodes, base, tmp_path, f"batcher-{n}", "worker", "batcher") for n in (1, 2)
    ]
    notifiers = [
        start_node(nodes, base, tmp_path, f"notifier-{n}", "worker", "notifier") for n in (1, 2, 3)
    ]
    # Every worker is blocked on its queue before the work arrives; Redis serves blocked
    # clients first come, first served, so no early starter can take everything.
    wait_started(nodes)
    names = drop_at_once(settings.inbox, tmp_path / "staging", files, rows)

    final = mock.wait_until(lambda s: s["unique"] >= files * rows, timeout=180, per_user=False)

    def all_done() -> list[dict[str, Any]]:
        found = file_rows(store)
        return found if len(found) == files and {r["status"] for r in found} == {"done"} else []

    done = wait_for(all_done, timeout=60, what="every file done")

    assert sorted(r["name"] for r in done) == names
    assert {(r["alerts_total"], r["delivered"]) for r in done} == {(rows, rows)}
    assert final["unique"] == final["accepted"] == files * rows
    assert final["duplicates"] == 0
    reads = {b.name: len(b.events("batch.read_complete")) for b in batchers}
    sent = {n.name: sum(e["delivered"] for e in n.events("chunk.done")) for n in notifiers}
    assert sum(reads.values()) == files  # each file read to its end by one batcher
    assert sum(sent.values()) == files * rows  # each alert delivered by one notifier
    assert sum(1 for count in reads.values() if count) >= 2, reads
    assert sum(1 for count in sent.values() if count) >= 2, sent
    print(
        f"{files} files x {rows} rows: files read per batcher {reads}, alerts delivered per "
        f"notifier {sent}"
    )
