"""A file's full result as CSV (the ledger's cursor, the API route, the CLI) and the summary
written beside a finished file, on real Redis and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from click.testing import CliRunner
from structlog.testing import capture_logs

from daemon.api import run_api_in_thread
from daemon.readiness import ReadinessTracker
from daemon.recovery import Recovery
from hookdrop.alerts import alert_id
from hookdrop.cli import cli
from hookdrop.inbox import NAME_MAX
from hookdrop.intake import ensure_dirs
from hookdrop.ops import UnknownFile, result_csv
from hookdrop.settings import Settings
from hookdrop.store import AlertStatus, Result, Store, result_lines
from tests.helpers import kill_group, ledger_file

TOKEN = "test-token-0123456789"


@pytest.fixture
def rsettings(settings: Settings) -> Settings:
    ensure_dirs(settings)
    return settings.replace(api_listen=("127.0.0.1", 0), api_token=TOKEN)


@pytest.fixture
def api_url(rsettings: Settings) -> Iterator[str]:
    server = run_api_in_thread(rsettings)
    yield f"http://127.0.0.1:{server.port}"
    server.stop()
    assert not server.thread.is_alive()


HEADER = ["line", "user_id", "alert_id", "status", "http_code", "error"]
TRICKY_USERS = ["a,b", 'say "hi"', "two\nlines", "Zoë 東京 🚀", "plain"]


def tricky_file(store: Store, sha: str = "sha-tricky") -> tuple[int, list[str]]:
    """Five alerts whose user ids need quoting, and two row errors between them; the second
    alert rejected with an error that needs quoting too."""
    file_id = store.insert_file(
        name="tricky.csv",
        sha=sha,
        generation=0,
        size=1,
        layout={},
        chunk_size=100,
        path="/nonexistent",
        claimed_by="t",
        identity=None,
    )
    assert file_id is not None
    alerts = [
        (alert_id(sha, 0, user, "m"), 2 + 2 * n, user, "m", None, None)
        for n, user in enumerate(TRICKY_USERS)
    ]
    errors = [(3, 'no "user", here', "x"), (7, "bad UTF-8: é\nthen", "y")]
    written = store.write_chunk(
        file_id=file_id,
        seq=1,
        alerts=alerts,
        errors=errors,
        rows=7,
        invalid_before=0,
        alerts_before=0,
    )
    store.finish_read(file_id, rows=7, invalid=2, alerts=5, error=None)
    ids = [aid for aid, _ in written.owned]
    assert len(ids) == 5
    store.claim_chunk(file_id, 1, ids, "t", 60)
    store.record_results(
        [
            Result(ids[0], AlertStatus.DELIVERED, code=200),
            Result(ids[1], AlertStatus.REJECTED, code=422, error='refused: "user",\nnope ✗'),
        ],
        file_id,
        1,
        "t",
    )
    return file_id, [a[0] for a in alerts]


def expected_tricky(ids: list[str]) -> list[list[str]]:
    return [
        HEADER,
        ["2", TRICKY_USERS[0], ids[0], "delivered", "200", ""],
        ["3", "", "", "invalid", "", 'no "user", here'],
        ["4", TRICKY_USERS[1], ids[1], "rejected", "422", 'refused: "user",\nnope ✗'],
        ["6", TRICKY_USERS[2], ids[2], "sending", "", ""],
        ["7", "", "", "invalid", "", "bad UTF-8: é\nthen"],
        ["8", TRICKY_USERS[3], ids[3], "sending", "", ""],
        ["10", TRICKY_USERS[4], ids[4], "sending", "", ""],
    ]


def parse(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


# -- the CSV stream ------------------------------------------------------------------------


def test_result_csv_lists_every_row_in_line_order_and_quotes_what_needs_it(
    store: Store,
) -> None:
    file_id, ids = tricky_file(store)
    text = "".join(result_csv(store, file_id))
    assert parse(text) == expected_tricky(ids)
    assert text.startswith("line,user_id,alert_id,status,http_code,error\r\n")


def test_result_csv_of_an_unknown_file_fails_before_streaming(store: Store) -> None:
    with pytest.raises(UnknownFile):
        result_csv(store, 424242)


def test_result_csv_of_a_file_without_rows_is_the_header_alone(store: Store) -> None:
    file_id, _ = tricky_file(store)
    with store.transaction() as conn:
        conn.execute("DELETE FROM alerts WHERE file_id = %s", (file_id,))
        conn.execute("DELETE FROM row_errors WHERE file_id = %s", (file_id,))
    assert parse("".join(result_csv(store, file_id))) == [HEADER]


def big_file(store: Store, rows: int) -> int:
    """A delivered file of ``rows`` alerts, every 1000th line a row error, written in bulk."""
    file_id = store.insert_file(
        name="big.csv",
        sha="sha-big",
        generation=0,
        size=1,
        layout={},
        chunk_size=1000,
        path="/nonexistent",
        claimed_by="t",
        identity=None,
    )
    with store.transaction() as conn:
        conn.execute(
            "INSERT INTO alerts (id, file_id, chunk_seq, line_no, user_id, message, status,"
            " last_status_code)"
            " SELECT 'msg_' || lpad(n::text, 12, '0'), %s, n / 1000, n + 2, 'user-' || n,"
            " 'message ' || n, 'delivered', 200"
            " FROM generate_series(0, %s - 1) AS n WHERE n %% 1000 <> 999",
            (file_id, rows),
        )
        conn.execute(
            "INSERT INTO row_errors (file_id, line_no, reason, excerpt)"
            " SELECT %s, n + 2, 'no user id', ',x' FROM generate_series(999, %s - 1, 1000) AS n",
            (file_id, rows),
        )
    return file_id


def test_a_large_result_streams_in_bounded_memory(database_url: str, store: Store) -> None:
    rows = 200_000
    file_id = big_file(store, rows)
    size = lines = 0
    last = 0
    tracemalloc.start()
    try:
        with Store(database_url) as own:
            for piece in result_csv(own, file_id, batch=1000):
                size += len(piece)
                for record in csv.reader(io.StringIO(piece, newline="")):
                    if record[0] == "line":
                        continue
                    line = int(record[0])
                    assert line == last + 1 if last else line == 2
                    assert record[3] == ("invalid" if (line - 2) % 1000 == 999 else "delivered")
                    last = line
                    lines += 1
        _, streamed_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        with Store(database_url) as own:  # the same lines held at once: what the bound is for
            held = list(result_lines(own, file_id, batch=rows))
        _, held_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert lines == len(held) == rows
    assert size > 10_000_000
    # A batch and a piece in memory, never the file's result: a fifth of the CSV text, a
    # tenth of what holding the lines takes.
    assert streamed_peak < size / 5, (streamed_peak, size)
    assert streamed_peak < held_peak / 10, (streamed_peak, held_peak)


def test_a_reader_that_stops_early_ends_the_cursor_and_its_transaction(
    database_url: str, store: Store
) -> None:
    file_id = big_file(store, 5_000)
    with Store(database_url, application_name="result-reader") as own:
        pieces = result_csv(own, file_id, batch=100)
        assert next(pieces).startswith("line,")
        with store.transaction() as conn:
            state = conn.execute(
                "SELECT state FROM pg_stat_activity WHERE application_name = 'result-reader'"
                " AND datname = current_database()"
            ).fetchone()
        assert state is not None and state["state"] == "idle in transaction"
        pieces.close()
        with store.transaction() as conn:
            state = conn.execute(
                "SELECT state FROM pg_stat_activity WHERE application_name = 'result-reader'"
                " AND datname = current_database()"
            ).fetchone()
        assert state is not None and state["state"] == "idle"


# -- the API route and the CLI -------------------------------------------------------------


def test_api_streams_the_result_csv_behind_the_token(api_url: str, store: Store) -> None:
    file_id, ids = tricky_file(store)
    path = f"/files/{file_id}/result.csv"
    auth = {"authorization": f"Bearer {TOKEN}"}
    client = httpx.Client(base_url=api_url, headers=auth, timeout=10)
    anonymous = httpx.Client(base_url=api_url, timeout=10)
    with client.stream("GET", path) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/csv; charset=utf-8"
        assert "attachment" in response.headers["content-disposition"]
        body = response.read().decode("utf-8")
    assert parse(body) == expected_tricky(ids)
    assert anonymous.get(path).status_code == 401
    foreign = client.get(path, headers={"host": "evil.example"})
    assert foreign.status_code == 421 and "tricky" not in foreign.text
    missing = client.get("/files/424242/result.csv")
    assert missing.status_code == 404
    assert missing.json() == {"error": "no file with id 424242"}
    assert client.get("/files/0/result.csv").status_code == 422
    assert "/files/{file_id}/result.csv" in client.get("/openapi.json").json()["paths"]
    client.close()
    anonymous.close()


def test_cli_result_csv_prints_every_row(rsettings: Settings, store: Store) -> None:
    file_id, ids = tricky_file(store)
    env = rsettings.to_environ()
    printed = CliRunner().invoke(cli, ["result", str(file_id), "--csv"], env=env)
    assert printed.exit_code == 0, printed.output
    assert parse(printed.stdout_bytes.decode("utf-8")) == expected_tricky(ids)
    missing = CliRunner().invoke(cli, ["result", "424242", "--csv"], env=env)
    assert isinstance(missing.exception, UnknownFile)


# -- the summary beside a finished file ----------------------------------------------------


def finished_file(settings: Settings, store: Store, name: str) -> tuple[int, Path]:
    """A file in processing/ whose alerts are all settled (one delivered, one rejected)."""
    file_id, _ = tricky_file(store, sha=f"sha-{name[:20]}")
    processing = settings.processing_dir / f"tok--{name[:200]}"
    processing.write_text("the file\n")
    with store.transaction() as conn:
        conn.execute(
            "UPDATE alerts SET status = 'dead' WHERE file_id = %s AND status = 'sending'",
            (file_id,),
        )
        conn.execute(
            "UPDATE files SET dead = 3, processing_path = %s, name = %s WHERE id = %s",
            (str(processing), name, file_id),
        )
    return file_id, processing


def test_a_finished_file_gets_its_summary_beside_it_in_done(
    rsettings: Settings, store: Store, rconn: redis.Redis
) -> None:
    file_id, _ = finished_file(rsettings, store, "monday.csv")
    assert Recovery(rsettings, store, rconn).finish_files() == 1
    final = rsettings.done_dir / f"{file_id}--monday.csv"
    assert final.read_text() == "the file\n"
    summary = json.loads((rsettings.done_dir / f"{final.name}.summary.json").read_text())
    row = store.get_file(file_id)
    assert row is not None and row.finished_at is not None
    assert summary == {
        "file_id": file_id,
        "name": "monday.csv",
        "sha256": "sha-monday.csv",
        "generation": 0,
        "status": "done",
        "error": None,
        "rows": 7,
        "alerts": 5,
        "delivered": 1,
        "rejected": 1,
        "dead": 3,
        "cancelled": 0,
        "row_errors": 2,
        "repeated_rows": 0,
        "created_at": row.created_at.isoformat(),
        "first_delivery_at": row.first_delivery_at and row.first_delivery_at.isoformat(),
        "finished_at": row.finished_at.isoformat(),
        "result": f"/files/{file_id}/result",
        "result_csv": f"/files/{file_id}/result.csv",
    }
    assert sorted(p.name for p in rsettings.done_dir.iterdir()) == [
        final.name,
        f"{final.name}.summary.json",
    ]


def test_a_summary_replaces_a_planted_link_and_fits_a_long_name(
    rsettings: Settings, store: Store, rconn: redis.Redis, tmp_path: Path
) -> None:
    name = "é" * 120 + ".csv"  # 244 bytes: the name in done/ is shortened
    file_id, _ = finished_file(rsettings, store, name)
    Recovery(rsettings, store, rconn).finish_files()
    row = store.get_file(file_id)
    assert row is not None and row.final_path
    final = Path(row.final_path)
    note = rsettings.done_dir / f"{final.name}.summary.json"
    assert len(os.fsencode(note.name)) <= NAME_MAX
    assert json.loads(note.read_text())["name"] == name
    # Someone with write access to done/ plants a link at the note's name: a rewrite replaces
    # the link and never writes through it.
    target = tmp_path / "target.txt"
    target.write_text("keep me")
    note.unlink()
    note.symlink_to(target)
    with store.transaction() as conn:  # replayed and finished again: the summary is rewritten
        conn.execute("UPDATE files SET status = 'delivering' WHERE id = %s", (file_id,))
    assert Recovery(rsettings, store, rconn).finish_files() == 1
    assert target.read_text() == "keep me"
    assert not note.is_symlink()
    assert json.loads(note.read_text())["file_id"] == file_id


def test_a_summary_that_cannot_be_written_does_not_stop_the_file(
    rsettings: Settings, store: Store, rconn: redis.Redis
) -> None:
    file_id, _ = finished_file(rsettings, store, "blocked.csv")
    final = rsettings.done_dir / f"{file_id}--blocked.csv"
    (rsettings.done_dir / f"{final.name}.summary.json").mkdir()  # a folder where the note goes
    with capture_logs() as logs:
        Recovery(rsettings, store, rconn).finish_files()
    row = store.get_file(file_id)
    assert row is not None and row.final_path == str(final) and final.exists()
    assert [e["file_id"] for e in logs if e["event"] == "file.summary_failed"] == [file_id]
    assert not [p for p in rsettings.done_dir.iterdir() if p.name.startswith(".")]


def test_notes_moved_back_into_the_inbox_are_never_read(tmp_path: Path) -> None:
    tracker = ReadinessTracker(0.0)
    for name in ("7--week.csv.summary.json", "7--week.csv.error.txt", "X.SUMMARY.JSON"):
        (tmp_path / name).write_text('{"file_id": 7}\n')
        tracker.hint(tmp_path / name)
    (tmp_path / "week.csv").write_text("u,m\n")
    tracker.hint(tmp_path / "week.csv")
    assert tracker.pending == [tmp_path / "week.csv"]


def test_cli_result_csv_into_a_pipe_closed_early_stops_quietly(
    rsettings: Settings, store: Store
) -> None:
    file_id = big_file(store, 50_000)  # megabytes: far more than a pipe holds
    process = subprocess.Popen(
        [sys.executable, "-m", "hookdrop", "result", str(file_id), "--csv"],
        env={**os.environ, **rsettings.to_environ()},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        assert process.stdout.read(5) == b"line,"
        process.stdout.close()  # as `| head -1` does
        stderr = process.stderr.read().decode()
        assert process.wait(timeout=30) == 1
    finally:
        kill_group(process)
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
    assert "Traceback" not in stderr and "Error" not in stderr, stderr


def in_processing(settings: Settings, store: Store, file_id: int, name: str) -> Path:
    """Put the file ``name`` of ledger row ``file_id`` in processing/, as a claim does."""
    processing = settings.processing_dir / f"tok--{name}"
    processing.write_text("the file\n")
    with store.transaction() as conn:
        conn.execute(
            "UPDATE files SET processing_path = %s, name = %s WHERE id = %s",
            (str(processing), name, file_id),
        )
    return processing


def test_a_cancelled_files_summary_counts_what_its_notifier_still_sent_and_handed_back(
    rsettings: Settings, store: Store, rconn: redis.Redis
) -> None:
    """Alerts of a chunk a live notifier holds are left to it by the cancel: the file stays in
    processing/ until the lease ends, so its summary counts what was in flight (delivered) and
    what it handed back (cancelled)."""
    file_id, ids = tricky_file(store, sha="sha-cancel-late")
    processing = in_processing(rsettings, store, file_id, "late.csv")
    recovery = Recovery(rsettings, store, rconn)
    assert store.cancel_file(file_id)  # "t" still holds the chunk's three open alerts
    recovery.finish_files()
    summary_path = rsettings.failed_dir / f"{file_id}--late.csv.summary.json"
    assert processing.exists() and not summary_path.exists()
    # One request was in flight: it succeeds; the notifier sees the cancel and hands back.
    delivered = Result(ids[2], AlertStatus.DELIVERED, code=200)
    assert store.record_results([delivered], file_id, 1, "t") == 1
    store.end_lease(file_id, 1, "t")
    recovery.requeue_expired_leases()
    assert recovery.requeue_expired_leases() == 0  # nothing of a cancelled file is queued
    recovery.finish_files()
    summary = json.loads(summary_path.read_text())
    assert (summary["delivered"], summary["rejected"], summary["cancelled"]) == (2, 1, 2)


def test_a_cancelled_file_waits_for_a_stalled_holder_before_its_summary(
    rsettings: Settings, store: Store, rconn: redis.Redis
) -> None:
    """A notifier's lease ran out (a stall) and the file was cancelled: the file moves, with
    its summary, only once the lease sweep ended that lease, so the outcomes the notifier
    writes late are in it."""
    file_id, ids = ledger_file(store, 4, sha="sha-stalled", status="delivering")
    in_processing(rsettings, store, file_id, "stalled.csv")
    assert store.claim_chunk(file_id, 1, ids, "slow", 60) is not None
    with store.transaction() as conn:
        conn.execute("UPDATE chunk_leases SET until = now() - interval '1 s'")
    assert store.cancel_file(file_id)
    recovery = Recovery(rsettings, store, rconn)
    recovery.finish_files()
    final = rsettings.failed_dir / f"{file_id}--stalled.csv"
    assert not final.exists()  # its holder may still write
    late = [Result(alert, AlertStatus.DELIVERED, code=200, first_try=True) for alert in ids[:3]]
    assert store.record_results(late, file_id, 1, "slow") == 3
    recovery.requeue_expired_leases()  # ends the lease, then the leftover
    recovery.finish_files()
    summary = json.loads((rsettings.failed_dir / f"{final.name}.summary.json").read_text())
    assert (summary["status"], summary["delivered"], summary["cancelled"]) == ("cancelled", 3, 1)


def test_a_cancelled_file_gets_its_summary_in_failed(
    rsettings: Settings, store: Store, rconn: redis.Redis
) -> None:
    file_id, _ = tricky_file(store, sha="sha-cancelled")
    in_processing(rsettings, store, file_id, "stopped.csv")
    store.end_lease(file_id, 1, "t")  # the three alerts still open were handed back
    assert store.cancel_file(file_id)
    Recovery(rsettings, store, rconn).finish_files()
    final = rsettings.failed_dir / f"{file_id}--stopped.csv"
    summary = json.loads((rsettings.failed_dir / f"{final.name}.summary.json").read_text())
    assert (summary["status"], summary["delivered"], summary["rejected"]) == ("cancelled", 1, 1)
    assert summary["cancelled"] == 3 and summary["finished_at"] is not None
