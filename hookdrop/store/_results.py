"""A file's result, line by line, read through a server-side cursor.

A file can hold millions of rows, so its result is never a list: PostgreSQL keeps the cursor
and hands out ``batch`` lines per round trip, and the reader holds one batch at a time.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import RowMaker

from hookdrop.store._sql import queries
from hookdrop.store._store import Store

#: The status of a line that could not become an alert (a row error).
INVALID = "invalid"
DEFAULT_BATCH = 2000


@dataclass(frozen=True, slots=True)
class ResultLine:
    """One row of a file: an alert with its outcome, or a row error (no user or alert id)."""

    line: int
    user_id: str | None
    alert_id: str | None
    status: str  # an AlertStatus, or INVALID
    http_code: int | None
    error: str | None


def result_lines(
    store: Store, file_id: int, *, batch: int = DEFAULT_BATCH
) -> Generator[ResultLine, None, None]:
    """Every line of a file's result in line order, fetched ``batch`` at a time.

    The cursor lives in a transaction on ``store``'s connection until the iterator is
    exhausted or closed: give it a Store of its own. Outages come out as StoreUnavailable.
    """
    if batch < 1:
        raise ValueError(f"batch must be at least 1, not {batch}")
    with store.transaction() as conn:
        cursor = conn.cursor(name=f"result_{file_id}", row_factory=_positional)
        try:
            cursor.execute(queries()["result_lines"], {"file_id": file_id})
            # One FETCH of ``batch`` lines at a time (iterating the cursor costs more per line).
            while lines := cursor.fetchmany(batch):
                yield from lines
        finally:
            cursor.close()


def _positional(_cursor: psycopg.Cursor[Any]) -> RowMaker[ResultLine]:
    # The query's columns are ResultLine's fields in order: built by position, cheaper per line
    # than from a mapping of names (class_row), which counts over millions of lines.
    def make(values: Sequence[Any]) -> ResultLine:
        return ResultLine(*values)

    return make
