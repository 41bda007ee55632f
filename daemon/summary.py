"""``<name>.summary.json`` beside every finished file in ``done/`` (and ``failed/``).

A small record an operator can hand on with the file: its id, name and hash, the counts, when
its deliveries started and ended, and where the API serves the full result. The inbox is
hostile (docs/security.md): the note is written to a hidden temporary file created new
(``O_EXCL``, no link followed), synced, then renamed over the note's name, so a link planted
at that name is replaced, never written through, and a reader sees a whole note or none.
The monitor reads only the top of the inbox, so nothing in ``done/`` or ``failed/`` is ever
taken for a file to send. Writing the note never fails the finishing of a file: a note that
cannot be written is logged and skipped.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from hookdrop.inbox import SUMMARY_SUFFIX, note_path, write_note
from hookdrop.store import FileRow

log = structlog.get_logger(__name__)


def summary_of(row: FileRow) -> dict[str, Any]:
    """The note's content for one file row."""
    return {
        "file_id": row.id,
        "name": row.name,
        "sha256": row.content_sha256,
        "generation": row.generation,
        "status": str(row.status),
        "error": row.error,
        "rows": row.rows_total,
        "alerts": row.alerts_total,
        "delivered": row.delivered,
        "rejected": row.rejected,
        "dead": row.dead,
        "cancelled": row.cancelled,
        "row_errors": row.rows_invalid,
        # Rows repeating an earlier row's user and message: one alert, sent once.
        "repeated_rows": max(0, row.rows_total - row.rows_invalid - row.alerts_total),
        "created_at": _iso(row.created_at),
        "first_delivery_at": _iso(row.first_delivery_at),
        "finished_at": _iso(row.finished_at),
        "result": f"/files/{row.id}/result",
        "result_csv": f"/files/{row.id}/result.csv",
    }


def write_summary(final: Path, row: FileRow) -> Path | None:
    """Write ``<final>.summary.json`` atomically; the note's path, or None if it could not be
    written (logged)."""
    note = note_path(final, SUMMARY_SUFFIX)
    data = json.dumps(summary_of(row), ensure_ascii=False, indent=2).encode("utf-8") + b"\n"
    try:
        write_note(note, data)
    except OSError as exc:
        log.error("file.summary_failed", file_id=row.id, path=str(note), error=str(exc))
        return None
    return note


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None
