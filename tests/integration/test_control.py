"""Operator actions (hookdrop.ops and the CLI commands on it) against real Redis and
PostgreSQL, with real notifier and batcher jobs run in-process and respx as the receiver."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import httpx
import psycopg
import pytest
import redis
import respx
from click.testing import CliRunner

from daemon.claim import Claimer
from daemon.recovery import Recovery
from hookdrop.cli import cli
from hookdrop.intake import ensure_dirs
from hookdrop.ops import BadRequest, Conflict, Control, UnknownFile, send, send_chunks
from hookdrop.queues import enqueue_deliveries
from hookdrop.settings import Settings
from hookdrop.store import AlertStatus, Store
from tests.helpers import ledger_file, run_burst, write_csv

URL = "http://receiver.test/hook"


def make_file(
    store: Store, count: int, *, name: str = "t.csv", status: str = "reading"
) -> tuple[int, list[str]]:
    """A file row whose ``count`` alerts are in the ledger and fully read."""
    return ledger_file(
        store, count, name=name, status=status, errors=[(count + 2, "no user id", ",oops")]
    )


@pytest.fixture
def csettings(settings: Settings) -> Settings:
    ensure_dirs(settings)
    return settings.replace(
        webhook_url=URL,
        rate_limit=200.0,
        concurrency=4,
        chunk_size=100,
        max_tries=1,
        attempt_budget=1,
        breaker_failures=0,  # dead alerts are under test, not the breaker
    )


@pytest.fixture
def control(csettings: Settings, store: Store, rconn: redis.Redis) -> Control:
    return Control(csettings, store, rconn)


class Receiver:
    """Records every webhook id with the time it arrived; can act on the n-th request."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.calls: list[tuple[float, str]] = []
        self.hooks: dict[int, object] = {}
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.calls.append((time.monotonic(), request.headers["webhook-id"]))
            n = len(self.calls)
        hook = self.hooks.get(n)
        if callable(hook):
            hook()
        return httpx.Response(self.status)

    def ids(self) -> Counter[str]:
        return Counter(i for _, i in self.calls)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    with respx.mock(using="httpx") as router:
        router.post(URL).mock(side_effect=rec)
        yield rec


def test_pause_stops_sending_promptly_and_resume_finishes_without_a_miss_or_duplicate(
    csettings: Settings,
    control: Control,
    store: Store,
    rconn: redis.Redis,
    receiver: Receiver,
) -> None:
    file_id, ids = make_file(store, 300)
    enqueue_deliveries(rconn, csettings.keys, file_id, [(1, ids)])
    paused_at: list[float] = []
    receiver.hooks[40] = lambda: (control.pause(file_id), paused_at.append(time.monotonic()))

    run_burst(csettings, "notifier")

    assert paused_at, "the receiver never saw 40 requests"
    sent_while_paused = [t for t, _ in receiver.calls if t > paused_at[0]]
    assert len(receiver.calls) < 300
    # Running jobs watch the paused key every 0.25 s: sending stops well within a second.
    assert not sent_while_paused or max(sent_while_paused) - paused_at[0] < 1.0
    status = control.file_status(file_id)
    assert status["paused"] is True
    assert status["counts"]["delivered"] == len(receiver.calls)
    assert rconn.exists(csettings.keys.paused(file_id))

    resumed = control.resume(file_id)
    assert resumed["requeued"] == 300 - len(receiver.calls)
    assert not rconn.exists(csettings.keys.paused(file_id))
    run_burst(csettings, "notifier")

    seen = receiver.ids()
    assert set(seen) == set(ids)
    assert max(seen.values()) == 1
    Recovery(csettings, store, rconn).finish_files()
    final = control.file_status(file_id)
    assert (final["status"], final["counts"]["delivered"], final["percent"]) == ("done", 300, 100)


def test_pause_resume_and_cancel_refuse_finished_and_unknown_files(
    control: Control,
    store: Store,
) -> None:
    file_id, _ = make_file(store, 3)
    control.cancel(file_id)
    for action in (control.pause, control.resume, control.cancel):
        with pytest.raises(Conflict, match="cancelled"):
            action(file_id)
        with pytest.raises(UnknownFile):
            action(999_999)


def test_cancel_marks_the_rest_cancelled_and_they_are_never_sent(
    csettings: Settings,
    control: Control,
    store: Store,
    rconn: redis.Redis,
    receiver: Receiver,
) -> None:
    file_id, ids = make_file(store, 300)
    enqueue_deliveries(rconn, csettings.keys, file_id, [(1, ids)])
    cancelled_at: list[float] = []
    receiver.hooks[30] = lambda: (control.cancel(file_id), cancelled_at.append(time.monotonic()))

    run_burst(csettings, "notifier")
    # The running job handed back what it had not sent; the monitor's round ends them.
    Recovery(csettings, store, rconn).requeue_expired_leases()

    status = control.file_status(file_id)
    counts = status["counts"]
    assert status["status"] == "cancelled"
    assert counts["delivered"] + counts["cancelled"] == 300
    # What reached the receiver is counted delivered, exactly; nothing else was sent.
    assert counts["delivered"] == len(receiver.calls) < 300
    late = [t for t, _ in receiver.calls if t > cancelled_at[0]]
    assert not late or max(late) - cancelled_at[0] < 1.0

    sent_before = len(receiver.calls)
    enqueue_deliveries(rconn, csettings.keys, file_id, [(1, ids)])
    run_burst(csettings, "notifier")
    assert len(receiver.calls) == sent_before


def test_dead_alerts_are_replayed_and_then_delivered(
    csettings: Settings,
    control: Control,
    store: Store,
    rconn: redis.Redis,
) -> None:
    file_id, ids = make_file(store, 20)
    enqueue_deliveries(rconn, csettings.keys, file_id, [(1, ids)])
    with respx.mock(using="httpx") as router:
        router.post(URL).respond(503)
        run_burst(csettings, "notifier")
    assert control.file_status(file_id)["counts"]["dead"] == 20
    listed = control.dlq_list(["dead"])
    assert listed["dead"] == 20
    assert {a["id"] for a in listed["alerts"]} == set(ids)
    assert {a["last_status_code"] for a in listed["alerts"]} == {503}

    assert control.replay(file_id, ["dead"]) == 20
    counts = control.file_status(file_id)["counts"]
    assert (counts["dead"], counts["dlq"]) == (0, 20)
    assert Recovery(csettings, store, rconn).reinject_dlq() == 20

    rec = Receiver()
    with respx.mock(using="httpx") as router:
        router.post(URL).mock(side_effect=rec)
        run_burst(csettings, "notifier")
    assert set(rec.ids()) == set(ids)
    assert control.file_status(file_id)["counts"]["delivered"] == 20
    assert control.dlq_list(["dlq", "dead"])["alerts"] == []


def test_replay_checks_its_arguments(control: Control) -> None:
    with pytest.raises(BadRequest, match="status"):
        control.replay(None, ["delivered"])
    with pytest.raises(UnknownFile):
        control.replay(424242, ["dead"])


def test_resend_creates_generation_1_with_new_alert_ids(
    csettings: Settings,
    control: Control,
    store: Store,
    rconn: redis.Redis,
    receiver: Receiver,
) -> None:
    write_csv(csettings.inbox / "monday.csv", 40)
    claimed = Claimer(csettings, store, rconn, "t").claim(csettings.inbox / "monday.csv")
    assert claimed is not None
    with pytest.raises(Conflict, match="finished"):
        control.resend(claimed.file_id)
    run_burst(csettings, "batcher")
    run_burst(csettings, "notifier")
    Recovery(csettings, store, rconn).finish_files()
    first = store.get_file(claimed.file_id)
    assert first is not None and first.status == "done"
    assert Path(first.final_path or "").parent == csettings.done_dir
    first_ids = set(receiver.ids())
    assert len(first_ids) == 40

    again = control.resend(claimed.file_id)
    assert (again["generation"], again["status"]) == (1, "claimed")
    run_burst(csettings, "batcher")
    run_burst(csettings, "notifier")

    second_ids = set(receiver.ids()) - first_ids
    assert len(second_ids) == 40
    assert len(receiver.calls) == 80
    row = store.get_file(again["file_id"])
    assert row is not None and (row.generation, row.delivered) == (1, 40)
    assert Path(first.final_path or "").exists()  # the original stays where it was


@pytest.mark.parametrize(
    "name",
    [
        "../evil.csv",
        "a/b.csv",
        "a\\b.csv",
        "x\x00.csv",
        "line\nbreak.csv",
        "..",
        "",
        ".hidden.csv",
        "x.csv.part",
        "bell\x07.csv",
        "rtl\u202e.csv",
    ],
)
def test_send_refuses_bad_names(csettings: Settings, tmp_path: Path, name: str) -> None:
    source = tmp_path / "source.csv"
    source.write_text("user_id,message\nu1,hi\n")
    with pytest.raises(BadRequest):
        send(source, csettings.inbox, name)
    assert [p for p in csettings.inbox.iterdir() if p.is_file()] == []


def test_send_lands_atomically_and_never_overwrites(csettings: Settings, tmp_path: Path) -> None:
    inbox = csettings.inbox
    seen_during: list[list[str]] = []

    def chunks() -> Iterator[bytes]:
        yield b"user_id,message\n"
        for n in range(5):
            seen_during.append(sorted(p.name for p in inbox.iterdir() if p.is_file()))
            yield f"u{n},hello {n}\n".encode()

    final = send_chunks(chunks(), inbox, "drop.csv")
    assert final == inbox / "drop.csv"
    # While writing, only a hidden temp name (which the monitor ignores) existed.
    assert all(
        len(names) == 1 and names[0].startswith(".drop.csv.") and names[0].endswith(".part")
        for names in seen_during
    )
    assert final.read_text().splitlines()[-1] == "u4,hello 4"
    assert sorted(p.name for p in inbox.iterdir() if p.is_file()) == ["drop.csv"]

    other = tmp_path / "drop.csv"
    other.write_text("user_id,message\nu9,other\n")
    with pytest.raises(Conflict, match="already exists"):
        send(other, inbox)
    assert final.read_text().startswith("user_id,message\nu0")
    assert sorted(p.name for p in inbox.iterdir() if p.is_file()) == ["drop.csv"]


# -- the CLI commands ----------------------------------------------------------------------


Invoke = Callable[..., click.testing.Result]


@pytest.fixture
def run_cli(csettings: Settings) -> Invoke:
    """The ``hookdrop`` command, run in this process with the test's settings."""

    def invoke(*args: str) -> click.testing.Result:
        return CliRunner().invoke(
            cli, list(args), env=csettings.to_environ(), catch_exceptions=True
        )

    return invoke


def test_cli_status_files_and_result_print_json(run_cli: Invoke, store: Store) -> None:
    file_id, _ = make_file(store, 5)
    status = run_cli("status", str(file_id), "--json")
    assert status.exit_code == 0, status.output
    assert json.loads(status.output)["counts"]["alerts"] == 5
    files = run_cli("files", "--json")
    assert [f["id"] for f in json.loads(files.output)] == [file_id]
    result = run_cli("result", str(file_id), "--json")
    assert json.loads(result.output)["row_errors"][0]["reason"] == "no user id"
    overview = run_cli("status", "--json")
    assert json.loads(overview.output)["overview"]["files"]["active"] == 1


def test_cli_watch_ends_when_the_file_is_finished(run_cli: Invoke, store: Store) -> None:
    file_id, _ = make_file(store, 5)
    cancel = run_cli("cancel", str(file_id))
    assert cancel.exit_code == 0 and "cancelled" in cancel.output
    watched = run_cli("status", str(file_id), "--watch", "--json")
    assert watched.exit_code == 0, watched.output
    assert json.loads(watched.output.splitlines()[-1])["status"] == "cancelled"


def test_cli_errors_and_send(run_cli: Invoke, csettings: Settings, tmp_path: Path) -> None:
    missing = run_cli("pause", "777")
    assert isinstance(missing.exception, UnknownFile)
    source = tmp_path / "monday.csv"
    source.write_text("user_id,message\nu1,hi\n")
    sent = run_cli("send", str(source))
    assert sent.exit_code == 0, sent.output
    assert (csettings.inbox / "monday.csv").read_text() == source.read_text()


def test_a_refused_cancel_changes_no_alert(store: Store, control: Control) -> None:
    """Cancelling twice while a chunk handed back after the first cancel is not yet swept,
    and cancelling a failed file: both are refused, and neither touches an alert."""
    file_id, ids = make_file(store, 10)
    leased = store.claim_chunk(file_id, 1, ids, "notifier-1", 30.0)
    assert leased is not None
    control.cancel(file_id)  # the leased chunk is left to its notifier
    store.end_lease(file_id, 1, "notifier-1", given=leased[1], settled=False)  # handed back

    with pytest.raises(Conflict, match="cancelled"):
        control.cancel(file_id)
    assert store.status_counts(file_id) == {AlertStatus.PENDING: 10}
    assert store.cancel_leftovers() == [file_id]  # the monitor's sweep ends them, counted
    file = store.get_file(file_id)
    assert file is not None and file.cancelled == 10
    assert store.status_counts(file_id) == {AlertStatus.CANCELLED: 10}

    # A failed file whose dead alerts were replayed: they wait in the DLQ.
    failed_id, _ = make_file(store, 4, name="failed.csv")
    with psycopg.connect(store.url, autocommit=True) as conn:
        conn.execute("UPDATE alerts SET status = 'dlq' WHERE file_id = %s", (failed_id,))
        conn.execute("UPDATE files SET status = 'failed' WHERE id = %s", (failed_id,))
    with pytest.raises(Conflict):
        control.cancel(failed_id)
    assert store.status_counts(failed_id) == {AlertStatus.DLQ: 4}
