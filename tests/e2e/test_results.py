"""What a finished file leaves for the operator, with real processes: its summary beside it in
done/ and its full result as CSV from the monitor's API."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import httpx
import pytest

from hookdrop.settings import Settings
from hookdrop.store import Store
from notifier_mock import MockClient
from tests.helpers import file_rows, free_port, hookdrop_process, kill_group, wait_for

pytestmark = pytest.mark.e2e

TOKEN = "e2e-token-0123456789"
ROWS = 300


def drop(path: Path) -> None:
    """ROWS distinct rows (one message with a comma, quotes and non-ASCII), then a repeat of
    the first row and a row without a user id."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "message"])
        writer.writerow(["u0", 'Zoë said "hi", then left'])
        for n in range(1, ROWS):
            writer.writerow([f"u{n}", f"alert {n}"])
        writer.writerow(["u0", 'Zoë said "hi", then left'])
        writer.writerow(["", "nobody"])
    os.rename(tmp, path)


def test_a_finished_file_has_its_summary_beside_it_and_its_result_as_csv(
    settings: Settings, store: Store, mock: MockClient, tmp_path: Path
) -> None:
    settings = settings.replace(
        webhook_url=mock.hook_url,
        chunk_size=100,
        api_listen=("127.0.0.1", free_port()),
        api_token=TOKEN,
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = [
        hookdrop_process(settings, "monitor", log_path=logs / "monitor.log"),
        hookdrop_process(settings, "worker", "batcher", log_path=logs / "batcher.log"),
        hookdrop_process(settings, "worker", "notifier", log_path=logs / "notifier.log"),
    ]
    try:
        wait_for(settings.processing_dir.exists, what="monitor ready")
        drop(settings.inbox / "week.csv")
        rows = wait_for(
            lambda: [r for r in file_rows(store) if r["status"] == "done" and r["final_path"]],
            timeout=60,
            what="file done and moved",
        )
        file = rows[0]
        url = f"http://{settings.api_listen[0]}:{settings.api_listen[1]}"
        with httpx.Client(base_url=url, headers={"authorization": f"Bearer {TOKEN}"}) as api:
            answer = api.get(f"/files/{file['id']}/result.csv", timeout=10)
    finally:
        for process in procs:
            kill_group(process)
    final = Path(file["final_path"])
    assert final.parent == settings.done_dir
    note = final.with_name(final.name + ".summary.json")
    summary = json.loads(note.read_text(encoding="utf-8"))
    assert {k: summary[k] for k in ("file_id", "name", "sha256", "status")} == {
        "file_id": file["id"],
        "name": "week.csv",
        "sha256": file["content_sha256"],
        "status": "done",
    }
    counts = ("rows", "alerts", "delivered", "rejected", "dead", "cancelled", "row_errors")
    assert {k: summary[k] for k in counts} == {
        "rows": ROWS + 2,
        "alerts": ROWS,
        "delivered": ROWS,
        "rejected": 0,
        "dead": 0,
        "cancelled": 0,
        "row_errors": 1,
    }
    assert summary["repeated_rows"] == 1
    assert summary["first_delivery_at"] and summary["finished_at"]
    assert summary["result_csv"] == f"/files/{file['id']}/result.csv"
    assert sorted(p.name for p in settings.done_dir.iterdir()) == [final.name, note.name]

    assert answer.status_code == 200, answer.text
    lines = list(csv.reader(io.StringIO(answer.content.decode("utf-8"), newline="")))
    assert lines[0] == ["line", "user_id", "alert_id", "status", "http_code", "error"]
    assert lines[1][:2] == ["2", "u0"] and lines[1][3:5] == ["delivered", "200"]
    assert [line[1] for line in lines[1 : ROWS + 1]] == [f"u{n}" for n in range(ROWS)]
    assert {line[3] for line in lines[1 : ROWS + 1]} == {"delivered"}
    assert lines[-1][0] == str(ROWS + 3) and lines[-1][3] == "invalid"  # the repeat has no line
    assert len(lines) == 1 + ROWS + 1
    assert mock.stats()["unique"] == ROWS
