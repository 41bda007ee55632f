"""Bad input through a real monitor, batcher and notifier: every case ends as written down.

The table ``CASES`` says, for each kind of bad input, how it is produced, the status its file
must end in, the alerts that must be delivered, the row errors (line, words of the reason) and
the words the file's error must contain. All of them are dropped into one inbox together and
driven through a running monitor, an in-process burst batcher and notifier, and the mock
receiver; each case is then checked on its own against PostgreSQL (files, alerts, row_errors),
the folders (done/, failed/ with its ``.error.txt``) and the receiver.

Files that change under the daemon (deleted or replaced while settling or while being read)
need their own timing and have their own tests below the table.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import random
import re
import threading
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis
from rq import Queue

from hookdrop import connections
from hookdrop.intake import ensure_dirs
from hookdrop.queues import forget_deployment
from hookdrop.settings import Settings
from hookdrop.store import Store
from notifier_mock import MockClient
from tests.helpers import (
    ALERT_ROWS,
    MockProcess,
    file_rows,
    run_burst,
    running_monitor,
    wait_for,
    write_csv,
)

MB = 1 << 20


# -- the table -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One kind of bad input and what must become of it."""

    name: str  # the file's name in the inbox
    produce: Callable[[Path, Path], None]  # (path in the inbox, a folder outside it)
    status: str  # the file's final status
    alerts: frozenset[tuple[str, str]] | None = frozenset()  # delivered; None: see note
    row_errors: tuple[tuple[int, str], ...] = ()  # (line, words of the reason)
    error: str | None = None  # words of files.error (None: no error)
    note: str = ""  # why, where it is not obvious


def drop(path: Path, content: bytes) -> None:
    """Write a hidden temp file, then rename it into place: complete before it appears."""
    temp = path.with_name(f".{uuid.uuid4().hex[:6]}.tmp")
    temp.write_bytes(content)
    os.rename(temp, path)


def data(content: bytes) -> Callable[[Path, Path], None]:
    return lambda path, _outside: drop(path, content)


def symlink_out(path: Path, outside: Path) -> None:
    target = outside / "target.csv"
    target.write_bytes(b"user_id,message\nlink-u1,must never be sent\n")
    path.symlink_to(target)


def fifo(path: Path, _outside: Path) -> None:
    os.mkfifo(path)


def pairs(prefix: str, *messages: str) -> frozenset[tuple[str, str]]:
    return frozenset((f"{prefix}{n}", m) for n, m in enumerate(messages, 1))


RANDOM_BYTES = bytes(b for b in random.Random(7).randbytes(4096) if b not in (0, 0x1F))
GZ_ROWS = 2000
GZ_BODY = ("user_id,message\n" + "".join(f"gz-u{n},gz row {n}\n" for n in range(GZ_ROWS))).encode()
_GZ = gzip.compress(GZ_BODY, mtime=0)
GZ_CUT = _GZ[: len(_GZ) * 3 // 4]  # ends well before the end of the stream


def gz_complete_rows() -> int:
    """Data rows wholly inside the part of the stream that survives the cut."""
    inflater = zlib.decompressobj(wbits=31)
    survived = inflater.decompress(GZ_CUT)
    return survived.count(b"\n") - 1  # minus the header line


CASES = [
    Case(
        "blank-only.csv",
        data(b"\n  \r\n\t\n \n"),
        "failed",
        error="empty file",
        note="no content but blank lines",
    ),
    Case(
        "random-bytes.csv",
        data(RANDOM_BYTES),
        "failed",
        error="binary file",
        note="no NUL byte, so it is the share of undecodable bytes that tells",
    ),
    Case("utf16.csv", data("user_id,message\nu1,hi\n".encode("utf-16")), "failed", error="UTF-16"),
    Case(
        "array.json", data(b'[{"userId": "a1", "message": "hi"}]\n'), "failed", error="JSON array"
    ),
    Case(
        "header-only.csv",
        data(b"user_id,message\r\n"),
        "done",
        note="readable, nothing to send: done at once",
    ),
    Case(
        "latin1-row.csv",
        data(b"lat-u1,hello\nlat-u2,caf\xe9 cr\xe8me\nlat-u3,bye\n"),
        "done",
        alerts=frozenset({("lat-u1", "hello"), ("lat-u3", "bye")}),
        row_errors=((2, "invalid utf-8"),),
    ),
    Case(
        "bom-crlf.csv",
        data(b"\xef\xbb\xbfuser_id,message\r\nbom-u1,one\r\nbom-u2,two\r\n"),
        "done",
        alerts=pairs("bom-u", "one", "two"),
        note="the BOM is not part of the first column's name, no \\r left in messages",
    ),
    Case(
        "quoted-newlines.csv",
        data(
            b'user_id,message\nqn-u1,"line one\nline two, with comma"\nqn-u2,"say ""hi"""\r\n'
            b'qn-u3,"crlf\r\ninside"\nqn-u4,after\n'
        ),
        "done",
        alerts=pairs(
            "qn-u", "line one\nline two, with comma", 'say "hi"', "crlf\r\ninside", "after"
        ),
    ),
    Case(
        "unclosed-quote.csv",
        data(b'uq-u1,ok\nuq-u2,"never closed\nuq-u3,swallowed\n'),
        "done",
        alerts=pairs("uq-u", "ok"),
        row_errors=((2, "quoted field not closed"),),
        note="an open quote runs to the end of the file: one bad record, not two",
    ),
    Case(
        "columns.csv",
        data(
            b"user_id,message,team\ncol-u1,hi,a\ncol-u2,only two\ncol-u3,hi,b,surplus\n"
            b"col-u4,fine,c\n"
        ),
        "done",
        alerts=frozenset({("col-u1", "hi"), ("col-u4", "fine")}),
        row_errors=(
            (3, "wrong column count: 2 (expected 3)"),
            (4, "wrong column count: 4 (expected 3)"),
        ),
    ),
    Case(
        "huge-line.csv",
        data(
            b"big-u1,before\nbig-u2," + b"x" * (MB + 10) + b"\nbig-u3,after\n"
            b"big-u4," + b"y" * 100_000 + b"\nbig-u5,last\n"
        ),
        "done",
        alerts=frozenset({("big-u1", "before"), ("big-u3", "after"), ("big-u5", "last")}),
        row_errors=((2, f"record longer than {MB} bytes"), (4, "absurdly long field")),
    ),
    Case(
        "duplicates.csv",
        data(b"user_id,message\ndup-u1,same\ndup-u1,same\ndup-u2,other\ndup-u1,same\n"),
        "done",
        alerts=pairs("dup-u", "same", "other"),
        note="a repeated row is one alert: the receiver sees dup-u1 once",
    ),
    Case(
        "broken.jsonl",
        data(
            b'{"userId": "js-u1", "message": "good"}\n'
            b'{"userId": "js-u2", "message": "cut sho\n'
            b"[1, 2]\n"
            b'{"message": "nobody"}\n'
            b"\n"
            b'{"user_id": "js-u3", "alertMessage": "also good", "team": "t"}\r\n'
        ),
        "done",
        alerts=frozenset({("js-u1", "good"), ("js-u3", "also good")}),
        row_errors=((2, "broken json"), (3, "not a json object"), (4, "no user id")),
    ),
    Case(
        "cut.csv.gz",
        data(GZ_CUT),
        "failed",
        alerts=None,
        error="truncated .gz",
        note="the rows before the cut are sent (checked by the .gz tests below); the file "
        "ends failed, with the line the stream breaks after",
    ),
    Case(
        "link.csv",
        symlink_out,
        "failed",
        error="symbolic link",
        note="the link itself goes to failed/, its target is never read nor moved",
    ),
    Case(
        "pipe.csv",
        fifo,
        "failed",
        error="named pipe (FIFO)",
        note="refused from lstat, never opened: opening a FIFO would block",
    ),
    Case(
        "with space.csv",
        data(b"sp-u1,a name with spaces\n"),
        "done",
        alerts=pairs("sp-u", "a name with spaces"),
    ),
    Case(
        "ünïcødé 📣.csv",
        data("uni-u1,ça marche 📣\n".encode()),
        "done",
        alerts=pairs("uni-u", "ça marche 📣"),
    ),
    Case(
        "new\nline.csv",
        data(b"nl-u1,a newline in the name\n"),
        "done",
        alerts=pairs("nl-u", "a newline in the name"),
    ),
]


# -- one run of all the cases ----------------------------------------------------------------


@dataclass
class Outcome:
    settings: Settings
    outside: Path
    outside_before: dict[str, tuple[bytes, int]]
    files: dict[str, dict[str, Any]]
    alerts: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    row_errors: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    receiver: dict[str, Any] = field(default_factory=dict)


def _url_with_path(url: str, path: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=path))


@pytest.fixture(scope="module")
def mock_url() -> Iterator[str]:
    receiver = MockProcess()
    try:
        yield receiver.url
    finally:
        receiver.close()


@pytest.fixture(scope="module")
def outcome(
    servers: Any, template_db: str, mock_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Outcome]:
    """Drop every case at once, run everything until each file is final, collect results."""
    root = tmp_path_factory.mktemp("bad-input")
    database = f"hookdrop_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(servers.admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}" TEMPLATE "{template_db}"')
    settings = Settings(
        inbox=root / "inbox",
        state_dir=root / "state",
        redis_url=servers.redis_url,
        database_url=_url_with_path(servers.admin_url, f"/{database}"),
        key_prefix=f"t{uuid.uuid4().hex[:8]}",
        webhook_url=f"{mock_url}/hook",
        settle_seconds=0.3,
        scan_interval=0.5,
        chunk_size=500,
        lease_seconds=3.0,
        dlq_interval=1.0,
        log_format="console",
    )
    outside = root / "outside"
    outside.mkdir()
    conn = redis.Redis.from_url(connections.redis_url(settings))
    try:
        with Store(connections.database_url(settings)) as store, MockClient(mock_url) as mock:
            ensure_dirs(settings)
            with running_monitor(settings):
                for case in CASES:
                    case.produce(settings.inbox / case.name, outside)
                outside_before = {
                    p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in outside.iterdir()
                }
                wait_for(
                    lambda: len(file_rows(store)) >= len(CASES),
                    timeout=30,
                    what="every case recorded",
                )
                run_burst(settings, "batcher")
                run_burst(settings, "notifier")
                wait_for(
                    lambda: all(
                        r["status"] in ("done", "failed") and r["final_path"]
                        for r in file_rows(store)
                    ),
                    timeout=30,
                    what="every file final and moved",
                )
            files = {r["name"]: r for r in file_rows(store)}
            result = Outcome(settings, outside, outside_before, files)
            with store.transaction() as db:
                for row in db.execute(
                    f"SELECT * FROM ({ALERT_ROWS}) AS a ORDER BY line_no"
                ).fetchall():
                    alert = {**row, "status": row["ledger_status"]}
                    result.alerts.setdefault(alert["file_id"], []).append(alert)
                for row in db.execute("SELECT * FROM row_errors ORDER BY line_no").fetchall():
                    result.row_errors.setdefault(row["file_id"], []).append(row)
            result.receiver = mock.stats()
            yield result
    finally:
        forget_deployment(conn, settings.keys)
        conn.close()
        with psycopg.connect(servers.admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@pytest.mark.chaos
@pytest.mark.parametrize("case", CASES, ids=[c.name.replace("\n", "\\n") for c in CASES])
def test_bad_input_ends_as_the_table_says(outcome: Outcome, case: Case) -> None:
    file = outcome.files.get(case.name)
    assert file is not None, f"{case.name!r} was never recorded; recorded: {list(outcome.files)}"
    assert file["status"] == case.status, file["error"]
    if case.error is None:
        assert file["error"] is None
    else:
        assert case.error.lower() in (file["error"] or "").lower()

    final = Path(file["final_path"])
    folder = outcome.settings.done_dir if case.status == "done" else outcome.settings.failed_dir
    assert final.parent == folder
    assert final.name.endswith("--" + case.name)
    assert os.path.lexists(final)
    note = final.with_name(final.name + ".error.txt")
    if case.status == "failed":
        assert file["error"] in note.read_text(encoding="utf-8")
    else:
        assert not os.path.lexists(note)

    alerts = outcome.alerts.get(file["id"], [])
    assert {a["status"] for a in alerts} <= {"delivered"}
    assert file["alerts_total"] == file["delivered"] == len(alerts)
    if case.alerts is not None:
        assert {(a["user_id"], a["message"]) for a in alerts} == case.alerts
        assert len(alerts) == len(case.alerts)  # repeated rows are one alert
        per_user = outcome.receiver["per_user"]
        assert [per_user.get(user) for user, _ in case.alerts] == [1] * len(case.alerts)
    errors = [(e["line_no"], e["reason"]) for e in outcome.row_errors.get(file["id"], [])]
    assert [line for line, _ in errors] == [line for line, _ in case.row_errors]
    for (_, reason), (_, words) in zip(errors, case.row_errors, strict=True):
        assert words.lower() in reason.lower()
    assert file["rows_invalid"] == len(case.row_errors)


@pytest.mark.chaos
def test_the_receiver_got_each_delivered_alert_once(outcome: Outcome) -> None:
    delivered = sum(a["status"] == "delivered" for rows in outcome.alerts.values() for a in rows)
    assert delivered == sum(r["delivered"] for r in outcome.files.values())
    stats = outcome.receiver
    assert stats["duplicates"] == 0
    assert stats["unique"] == stats["accepted"] == delivered
    assert "link-u1" not in stats["per_user"]


@pytest.mark.chaos
def test_a_symlink_target_outside_the_inbox_is_left_untouched(outcome: Outcome) -> None:
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in outcome.outside.iterdir()}
    assert after == outcome.outside_before
    link = Path(outcome.files["link.csv"]["final_path"])
    assert link.is_symlink()
    assert link.resolve() == outcome.outside / "target.csv"


@pytest.mark.chaos
def test_a_fifo_does_not_hold_up_the_files_dropped_with_it(outcome: Outcome) -> None:
    fifo_row = outcome.files["pipe.csv"]
    assert Path(fifo_row["final_path"]).is_fifo()
    others = [r for name, r in outcome.files.items() if name != "pipe.csv"]
    assert len(others) == len(CASES) - 1
    assert all(r["status"] in ("done", "failed") for r in others)


@pytest.mark.chaos
def test_truncated_gz_rows_before_the_cut_are_delivered(outcome: Outcome) -> None:
    file = outcome.files["cut.csv.gz"]
    alerts = outcome.alerts.get(file["id"], [])
    assert alerts, "nothing before the cut was read"
    assert {a["status"] for a in alerts} == {"delivered"}
    assert {a["user_id"] for a in alerts} == {f"gz-u{n}" for n in range(len(alerts))}
    assert file["rows_total"] == len(alerts) < GZ_ROWS
    # The error names the line the stream breaks after: past every row it counted.
    match = re.search(r"after line (\d+)", file["error"])
    assert match is not None, file["error"]
    assert file["rows_total"] < int(match.group(1)) <= gz_complete_rows() + 2


@pytest.mark.chaos
def test_truncated_gz_every_complete_row_before_the_cut_is_accounted_for(
    outcome: Outcome,
) -> None:
    file = outcome.files["cut.csv.gz"]
    assert file["rows_total"] >= gz_complete_rows() - 1  # the row at the cut may be partial


def test_a_file_name_that_is_not_utf8_does_not_stop_the_monitor(
    settings: Settings, store: Store
) -> None:
    with running_monitor(settings, name="latin1-names"):
        temp = settings.inbox / ".latin1.tmp"
        temp.write_bytes(b"lat1-u1,a latin-1 file name\n")
        os.rename(temp, os.path.join(os.fsencode(settings.inbox), b"caf\xe9.csv"))
        write_csv(settings.inbox / "after.csv", 3, start=10)

        def monitor_alive() -> bool:
            return any(t.name == "monitor-latin1-names" for t in threading.enumerate())

        wait_for(
            lambda: len(file_rows(store)) >= 2 or not monitor_alive(),
            what="both files recorded, or the monitor gone",
        )
        assert monitor_alive()
    assert len(file_rows(store)) == 2


# -- files that change under the daemon ------------------------------------------------------


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _alert_pairs(store: Store, file_id: int) -> set[tuple[str, str]]:
    with store.transaction() as db:
        rows = db.execute(
            "SELECT user_id, message FROM alerts WHERE file_id = %s", (file_id,)
        ).fetchall()
    return {(r["user_id"], r["message"]) for r in rows}


@pytest.mark.chaos
def test_a_file_deleted_while_settling_is_never_claimed_and_leaves_no_error(
    settings: Settings, store: Store
) -> None:
    settings = settings.replace(settle_seconds=2.0)
    with running_monitor(settings) as monitor:
        path = settings.inbox / "gone.csv"
        write_csv(path, 10)
        wait_for(lambda: path in monitor.tracker.pending, what="the monitor follows it")
        path.unlink()
        wait_for(lambda: path not in monitor.tracker.pending, what="the monitor lets it go")
        write_csv(settings.inbox / "sentinel.csv", 5, start=100)
        wait_for(lambda: file_rows(store), what="the sentinel claimed")
    assert [r["name"] for r in file_rows(store)] == ["sentinel.csv"]
    assert list(settings.failed_dir.iterdir()) == []


@pytest.mark.chaos
def test_a_file_replaced_while_settling_is_read_as_its_final_content(
    settings: Settings, store: Store
) -> None:
    settings = settings.replace(settle_seconds=2.0)
    with running_monitor(settings) as monitor:
        path = settings.inbox / "report.csv"
        write_csv(path, 10)
        wait_for(lambda: path in monitor.tracker.pending, what="the monitor follows it")
        final = b"user_id,message\nnew-u1,the final content\nnew-u2,is what counts\n"
        drop(path, final)  # a hidden temp renamed over it
        rows = wait_for(lambda: file_rows(store), what="claimed")
        run_burst(settings, "batcher")
    assert len(rows) == 1
    assert rows[0]["content_sha256"] == _sha(final)
    assert _alert_pairs(store, rows[0]["id"]) == {
        ("new-u1", "the final content"),
        ("new-u2", "is what counts"),
    }


def _claim_one(settings: Settings, store: Store, rows: int) -> tuple[dict[str, Any], set[Any]]:
    """Drop a file through a running monitor and return its files row once claimed."""
    with running_monitor(settings):
        written = write_csv(settings.inbox / "victim.csv", rows)
        file = wait_for(lambda: file_rows(store), what="claimed")[0]
    return file, written


def _batcher_queue_idle(settings: Settings, conn: redis.Redis) -> bool:
    queue = Queue(settings.keys.batcher_queue, connection=conn)
    return (queue.count, queue.started_job_registry.count, queue.failed_job_registry.count) == (
        0,
        0,
        0,
    )


def test_a_file_deleted_from_processing_before_it_is_read_ends_failed_with_a_clear_error(
    settings: Settings, store: Store, rconn: redis.Redis
) -> None:
    """Documented outcome: failed, error 'disappeared', nothing sent, no crash loop."""
    file, _written = _claim_one(settings, store, 50)
    Path(file["processing_path"]).unlink()
    run_burst(settings, "batcher")
    assert _batcher_queue_idle(settings, rconn)  # the job ended; it did not fail or hang
    with running_monitor(settings) as monitor:
        requeued: list[int] = []
        original = monitor.recovery.requeue_stalled_reads

        def counting() -> int:
            requeued.append(original())
            return requeued[-1]

        monitor.recovery.requeue_stalled_reads = counting  # type: ignore[method-assign]
        failed = wait_for(
            lambda: [r for r in file_rows(store) if r["status"] == "failed"], what="file failed"
        )[0]
        wait_for(lambda: len(requeued) >= 3, what="three recovery rounds")
    assert "disappeared" in failed["error"]
    assert failed["alerts_total"] == 0
    assert requeued[:3] == [0, 0, 0]
    assert _batcher_queue_idle(settings, rconn)


@pytest.mark.parametrize("change", ["delete", "replace"])
def test_a_file_changed_in_processing_while_being_read_completes_from_what_was_claimed(
    settings: Settings, store: Store, rconn: redis.Redis, change: str
) -> None:
    """Documented outcome: the batcher keeps its open handle, so it reads the claimed bytes.

    The file is bigger than the reader's buffer, and the change happens while the batcher is
    held mid-file by back-pressure (high-water mark 1, nobody delivering).
    """
    rows = 15_000  # about 370 KB, past the parser's 256 KiB read buffer
    settings = settings.replace(chunk_size=1_000, queue_high_water=1)
    file, written = _claim_one(settings, store, rows)
    processing = Path(file["processing_path"])
    checkpoint = settings.keys.checkpoint(file["id"])
    finished = threading.Event()
    problems: list[BaseException] = []

    def interfere() -> None:
        conn = redis.Redis.from_url(connections.redis_url(settings))
        queue = Queue(settings.keys.notifier_queue, connection=conn)

        def drained() -> bool:
            queue.empty()  # stands in for the notifiers, so the batcher can go on
            return finished.is_set()

        try:
            wait_for(
                lambda: int(conn.hget(checkpoint, "records") or 0) >= 1_000,
                what="first chunk committed",
            )
            assert int(conn.hget(checkpoint, "records") or 0) < rows
            if change == "delete":
                processing.unlink()
            else:
                drop(processing, b"user_id,message\nother-u1,not what was claimed\n")
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread below
            problems.append(exc)
        finally:
            try:
                wait_for(drained, timeout=120, what="batcher done")
            finally:
                conn.close()

    helper = threading.Thread(target=interfere, name="interfere")
    helper.start()
    try:
        run_burst(settings, "batcher")
    finally:
        finished.set()
        helper.join(timeout=30)
    assert not helper.is_alive()
    assert not problems, problems
    done = store.get_file(file["id"])
    assert done is not None
    assert (done.read_complete, done.error, done.alerts_total) == (True, None, rows)
    assert _alert_pairs(store, file["id"]) == written
    assert _batcher_queue_idle(settings, rconn)


@pytest.mark.chaos
def test_a_file_replaced_in_processing_before_it_is_read_is_not_sent_as_other_content(
    settings: Settings, store: Store
) -> None:
    file, written = _claim_one(settings, store, 20)
    write_csv(Path(file["processing_path"]), 20, start=70_000)
    run_burst(settings, "batcher")
    done = store.get_file(file["id"])
    assert done is not None
    sent = _alert_pairs(store, file["id"])
    assert sent <= written
    assert sent == written or (done.error and "changed" in done.error)
