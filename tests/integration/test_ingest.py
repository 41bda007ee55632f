"""Ingest on real Redis and PostgreSQL: readiness, claims, duplicates, bad rows, crash resume."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from daemon.claim import Claimer
from daemon.readiness import ReadinessTracker, open_for_writing
from daemon.recovery import Recovery
from hookdrop.alerts import alert_id
from hookdrop.intake import ensure_dirs
from hookdrop.settings import Settings
from hookdrop.store import Store
from tests.helpers import (
    dies_with_tests,
    file_rows,
    hookdrop_process,
    kill_group,
    queued_alert_ids,
    run_burst,
    running_monitor,
    wait_for,
    write_csv,
)


def _claimed(store: Store, count: int = 1) -> list[dict[str, object]]:
    rows = wait_for(
        lambda: (
            [r for r in file_rows(store) if r["status"] != "failed"]
            if len(file_rows(store)) >= count
            else None
        ),
        what=f"{count} claimed files",
    )
    return rows


# -- readiness --------------------------------------------------------------------------------


def test_a_file_held_open_for_writing_is_not_ready_until_closed(tmp_path: Path) -> None:
    path = tmp_path / "slow.csv"
    clock = [0.0]
    tracker = ReadinessTracker(1.0, clock=lambda: clock[0])
    # A real writer process that writes one line each time we ask, and holds the file open.
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\nf = open(sys.argv[1], 'w')\nfor line in sys.stdin:\n"
            "    f.write(line); f.flush(); print('ok', flush=True)\n"
            "f.close()\nprint('closed', flush=True)",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=dies_with_tests,  # noqa: PLW1509 - one system call
    )
    assert writer.stdin and writer.stdout
    try:
        writer.stdin.write("user_id,message\n")
        writer.stdin.flush()
        assert writer.stdout.readline().strip() == "ok"
        assert str(path) in open_for_writing([str(path)])
        tracker.hint(path)
        for _ in range(5):  # long pauses between writes: settled by size, but still open
            clock[0] += 5
            assert tracker.ready() == []
        writer.stdin.write("u1,hello\n")
        writer.stdin.flush()
        assert writer.stdout.readline().strip() == "ok"
        clock[0] += 5
        assert tracker.ready() == []  # size changed: the settle time starts again
        writer.stdin.close()
        assert writer.stdout.readline().strip() == "closed"
        writer.wait(timeout=10)
        clock[0] += 0.5
        assert tracker.ready() == []  # closed, but not yet still for the settle time
        clock[0] += 1.0
        assert tracker.ready() == [path]
    finally:
        writer.kill()
        writer.wait()
        writer.stdout.close()
        if not writer.stdin.closed:
            writer.stdin.close()


def test_readonly_handles_do_not_block_readiness(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("user_id,message\nu1,hi\n")
    with path.open("r"):
        assert open_for_writing([str(path)]) == set()
    with path.open("a"):
        assert open_for_writing([str(path)]) == {str(path)}


def test_hidden_and_temp_names_are_never_followed(tmp_path: Path) -> None:
    tracker = ReadinessTracker(0.0)
    for name in (".data.csv.Xa81", "data.csv.part", "x.tmp", "y.filepart", "z.crdownload"):
        (tmp_path / name).write_text("u,m\n")
        tracker.hint(tmp_path / name)
    assert tracker.pending == []


# -- claims through a running monitor ---------------------------------------------------------


def test_rsync_style_hidden_temp_renamed_into_place_is_claimed_once(
    settings: Settings, store: Store
) -> None:
    with running_monitor(settings):
        temp = settings.inbox / ".alerts.csv.Qx81Za"
        pairs = write_csv(temp, 500)
        os.rename(temp, settings.inbox / "alerts.csv")
        rows = _claimed(store)
    assert [r["name"] for r in rows] == ["alerts.csv"]
    assert rows[0]["status"] in ("claimed", "reading")
    assert len(pairs) == 500


def test_sftp_style_hard_link_then_unlink_is_claimed_once(settings: Settings, store: Store) -> None:
    with running_monitor(settings):
        temp = settings.inbox / "upload.csv.filepart"
        write_csv(temp, 300)
        os.link(temp, settings.inbox / "upload.csv")
        os.unlink(temp)
        rows = _claimed(store)
    assert [r["name"] for r in rows] == ["upload.csv"]


def test_large_cp_is_claimed_only_when_complete(
    settings: Settings, store: Store, tmp_path: Path
) -> None:
    source = tmp_path / "big.csv"
    write_csv(source, 1_500_000)  # about 35 MB
    import hashlib

    expected = hashlib.sha256(source.read_bytes()).hexdigest()
    with running_monitor(settings):
        subprocess.run(["cp", str(source), str(settings.inbox / "big.csv")], check=True)
        rows = _claimed(store)
    assert len(rows) == 1
    assert rows[0]["content_sha256"] == expected
    assert rows[0]["size_bytes"] == source.stat().st_size


def test_two_monitors_racing_claim_each_file_exactly_once(settings: Settings, store: Store) -> None:
    ensure_dirs(settings)
    with running_monitor(settings, "monitor-a"), running_monitor(settings, "monitor-b"):
        for n in range(30):
            write_csv(settings.inbox / f"batch-{n}.csv", 20, start=n * 1000)
        wait_for(lambda: len(file_rows(store)) >= 30, what="30 files claimed")
    rows = file_rows(store)
    assert sorted(r["name"] for r in rows) == sorted(f"batch-{n}.csv" for n in range(30))
    assert all(r["status"] in ("claimed", "reading") for r in rows)
    assert {r["claimed_by"] for r in rows} <= {"monitor-a", "monitor-b"}
    assert len(list(settings.processing_dir.iterdir())) == 30


def test_two_claimers_racing_for_one_path(
    settings: Settings, store: Store, rconn: redis.Redis
) -> None:
    """The rename is the arbiter: the loser sees the file gone and claims nothing."""
    ensure_dirs(settings)
    path = settings.inbox / "contested.csv"
    write_csv(path, 10)
    first = Claimer(settings, store, rconn, "a").claim(path)
    second = Claimer(settings, store, rconn, "b").claim(path)
    assert first is not None and first.status == "claimed"
    assert second is None
    assert len(file_rows(store)) == 1


def test_same_content_dropped_twice_is_reported_and_not_sent_again(
    settings: Settings, store: Store, rconn: redis.Redis
) -> None:
    with running_monitor(settings):
        write_csv(settings.inbox / "monday.csv", 50)
        wait_for(lambda: len(file_rows(store)) == 1, what="first claim")
        write_csv(settings.inbox / "monday-again.csv", 50)
        wait_for(lambda: len(file_rows(store)) == 2, what="second drop recorded")
    first, second = file_rows(store)
    assert second["status"] == "duplicate"
    assert second["duplicate_of"] == first["id"]
    assert Path(second["final_path"]).parent == settings.done_dir
    run_burst(settings, "batcher")
    assert sum(queued_alert_ids(rconn, settings).values()) == 50  # once, not twice


def test_unreadable_file_goes_to_failed_with_a_readable_error(
    settings: Settings, store: Store
) -> None:
    with running_monitor(settings):
        (settings.inbox / "photo.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 50)
        (settings.inbox / "empty.csv").write_bytes(b"")
        wait_for(lambda: len(file_rows(store)) == 2, what="both recorded")
    rows = {r["name"]: r for r in file_rows(store)}
    for name in ("photo.csv", "empty.csv"):
        assert rows[name]["status"] == "failed"
        final = Path(rows[name]["final_path"])
        assert final.parent == settings.failed_dir and final.exists()
        note = final.with_name(final.name + ".error.txt").read_text()
        assert rows[name]["error"] in note
    assert "empty" in rows["empty.csv"]["error"].lower()
    assert "binary" in rows["photo.csv"]["error"].lower()


# -- the batcher ------------------------------------------------------------------------------


def test_malformed_rows_become_row_errors_and_the_rest_goes_on(
    settings: Settings, store: Store, rconn: redis.Redis
) -> None:
    ensure_dirs(settings)
    content = (
        "user_id,message,plan\n"
        "u1,hello,gold\n"
        ",no user here,x\n"  # line 3: no user id
        'u2,"multi\nline, with comma",silver\n'  # lines 4-5: one record
        "u3,\xff\xfe broken,x\n"  # line 6: undecodable
        "u4,ok again,bronze\n"  # line 7
        "u1,hello,gold\n"  # line 8: the same alert as line 2
    ).encode("latin-1")
    path = settings.inbox / "mixed.csv"
    path.write_bytes(content)
    claimed = Claimer(settings, store, rconn, "t").claim(path)
    assert claimed is not None and claimed.status == "claimed"
    run_burst(settings, "batcher")

    file = store.get_file(claimed.file_id)
    assert file is not None
    assert (file.status, file.rows_total, file.rows_invalid, file.alerts_total) == (
        "delivering",
        6,
        2,
        3,
    )
    with store.transaction() as conn:
        errors = conn.execute("SELECT line_no, reason FROM row_errors ORDER BY line_no").fetchall()
        alerts = conn.execute(
            "SELECT line_no, user_id, message, extra FROM alerts ORDER BY line_no"
        ).fetchall()
    assert [e["line_no"] for e in errors] == [3, 6]
    assert "user" in errors[0]["reason"].lower()
    assert "utf-8" in errors[1]["reason"].lower()
    assert [(a["line_no"], a["user_id"]) for a in alerts] == [(2, "u1"), (4, "u2"), (7, "u4")]
    assert alerts[1]["message"] == "multi\nline, with comma"
    assert alerts[0]["extra"] == {"plan": "gold"}
    queued = queued_alert_ids(rconn, settings)
    assert set(queued) == {
        alert_id(file.content_sha256, 0, a["user_id"], a["message"]) for a in alerts
    }
    assert max(queued.values()) == 1


def test_batcher_stops_reading_above_the_high_water_mark(
    settings: Settings, store: Store, rconn: redis.Redis
) -> None:
    settings = settings.replace(queue_high_water=3, chunk_size=50)
    ensure_dirs(settings)
    path = settings.inbox / "many.csv"
    write_csv(path, 2_000)
    claimed = Claimer(settings, store, rconn, "t").claim(path)
    assert claimed is not None
    reader = hookdrop_process(settings, "worker", "batcher")
    try:
        wait_for(lambda: len(queued_alert_ids(rconn, settings)) >= 150, what="queue filling")
        checkpoint = settings.keys.checkpoint(claimed.file_id)
        wait_for(lambda: rconn.hget(checkpoint, "records"), what="checkpoint")
        first = int(rconn.hget(checkpoint, "records") or 0)
        # The reader is blocked: the queue stays at the mark and the checkpoint does not move.
        for _ in range(20):
            assert len(rconn.lrange(f"rq:queue:{settings.keys.notifier_queue}", 0, -1)) <= 3
            time.sleep(0.05)
        assert int(rconn.hget(checkpoint, "records") or 0) == first < 2_000
    finally:
        kill_group(reader)


def test_kill_9_of_the_batcher_mid_file_then_restart_enqueues_each_alert_once(
    settings: Settings, store: Store, rconn: redis.Redis, tmp_path: Path
) -> None:
    settings = settings.replace(chunk_size=200)
    ensure_dirs(settings)
    path = settings.inbox / "huge.csv"
    pairs = write_csv(path, 120_000)
    with (settings.inbox / "huge.csv").open("a") as handle:  # repeated rows: one alert each
        for n in range(0, 120_000, 7):
            handle.write(f"u{n},alert number {n}\n")
    claimed = Claimer(settings, store, rconn, "t").claim(path)
    assert claimed is not None
    checkpoint = settings.keys.checkpoint(claimed.file_id)

    kills = 0
    for stop_at in (20_000, 60_000, 100_000):
        reader = hookdrop_process(settings, "worker", "batcher", log_path=tmp_path / "b.log")
        wait_for(
            lambda at=stop_at: int(rconn.hget(checkpoint, "records") or 0) >= at,
            timeout=60,
            what=f"batcher past record {stop_at}",
        )
        kill_group(reader)  # kill -9 of the whole process group
        kills += 1
        # The dead batcher's lock runs out, then recovery queues the file again.
        recovery = Recovery(settings, store, rconn)
        wait_for(recovery.requeue_stalled_reads, timeout=30, what="read re-queued")

    run_burst(settings, "batcher")
    file = store.get_file(claimed.file_id)
    assert file is not None and file.read_complete
    queued = queued_alert_ids(rconn, settings)
    expected = {alert_id(file.content_sha256, 0, u, m) for u, m in pairs}
    assert kills == 3
    assert set(queued) == expected
    assert [i for i, n in queued.items() if n > 1] == []
    assert file.alerts_total == len(expected)


@pytest.mark.parametrize("name", ["report.csv.gz", "report.jsonl"])
def test_jsonl_and_gzip_files_are_read(
    settings: Settings, store: Store, rconn: redis.Redis, name: str
) -> None:
    import gzip
    import json

    ensure_dirs(settings)
    lines = [json.dumps({"userId": n, "alertMessage": f"m{n}", "tier": "a"}) for n in range(40)]
    if name.endswith(".gz"):
        body = "user_id,message\n" + "".join(f"{n},m{n}\n" for n in range(40))
        data = gzip.compress(body.encode())
    else:
        data = ("\n".join(lines) + "\n").encode()
    (settings.inbox / name).write_bytes(data)
    claimed = Claimer(settings, store, rconn, "t").claim(settings.inbox / name)
    assert claimed is not None and claimed.status == "claimed"
    run_burst(settings, "batcher")
    assert sum(queued_alert_ids(rconn, settings).values()) == 40
