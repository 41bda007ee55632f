"""The JSON shapes operators see: a file's status and counts, rows made JSON-ready."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from hookdrop.store import FINISHED_FILES, OPEN, AlertStatus, FileRow


def summary(row: FileRow) -> dict[str, Any]:
    """The JSON shape of one file row (no per-alert counting)."""
    finished = row.status in FINISHED_FILES
    if finished:
        percent = 100
    elif row.alerts_total == 0:
        percent = 0
    else:  # never 100 before it is finished: alerts_total still grows while reading
        percent = min(99, row.settled * 100 // row.alerts_total)
    return {
        "id": row.id,
        "name": row.name,
        "endpoint": row.endpoint,
        "status": str(row.status),
        "finished": finished,
        "paused": row.paused,
        "generation": row.generation,
        "size_bytes": row.size_bytes,
        "read_complete": row.read_complete,
        "duplicate_of": row.duplicate_of,
        "error": row.error,
        "final_path": row.final_path,
        "percent": percent,
        "created_at": _iso(row.created_at),
        "first_delivery_at": _iso(row.first_delivery_at),
        "finished_at": _iso(row.finished_at),
    }


def counts(row: FileRow, open_counts: dict[AlertStatus, int]) -> dict[str, int]:
    return {
        "rows": row.rows_total,
        "invalid": row.rows_invalid,
        "alerts": row.alerts_total,
        "queued": open_counts.get(AlertStatus.PENDING, 0),
        "sending": open_counts.get(AlertStatus.SENDING, 0),
        "delivered": row.delivered,
        "throttled": open_counts.get(AlertStatus.THROTTLED, 0),
        "retrying": open_counts.get(AlertStatus.RETRYING, 0),
        "dlq": open_counts.get(AlertStatus.DLQ, 0),
        "deferred": open_counts.get(AlertStatus.DEFERRED, 0),
        "dead": row.dead,
        "rejected": row.rejected,
        "cancelled": row.cancelled,
        "remaining": max(0, row.alerts_total - row.settled),
    }


def no_open_alerts() -> dict[AlertStatus, int]:
    return dict.fromkeys(OPEN, 0)


def average_rate(row: FileRow) -> float | None:
    """Delivered/s since the first delivery, once that is a second or more ago."""
    started = row.first_delivery_at
    if not started or not row.delivered:
        return None
    elapsed = (datetime.now(UTC) - started).total_seconds()
    return row.delivered / elapsed if elapsed >= 1.0 else None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def jsonable(row: Any) -> dict[str, Any]:
    """A typed row (or a dict of one) with its values made JSON-ready."""
    is_row = dataclasses.is_dataclass(row) and not isinstance(row, type)
    data = dataclasses.asdict(row) if is_row else dict(row)

    def plain(value: Any) -> Any:
        if isinstance(value, datetime):
            return value.isoformat()
        if isinstance(value, Decimal):
            return int(value)
        if isinstance(value, str):
            return str(value)  # a StrEnum as its plain value
        return value

    return {key: plain(value) for key, value in data.items()}
