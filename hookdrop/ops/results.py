"""A file's full result as CSV, streamed: one line per row, in constant memory.

Columns: ``line`` (where the row starts in the file), ``user_id``, ``alert_id``, ``status``
(an alert status, or ``invalid`` for a row that could not become an alert), ``http_code``
(the receiver's last answer) and ``error`` (the last failure, or why the row was refused).
A row that repeats an earlier one (same user and message) is the same alert, listed once at
the first row's line; the file's ``rows`` minus ``alerts`` minus ``invalid`` counts them.

The text goes out in pieces of about :data:`PIECE_CHARS`, made from the ledger's server-side
cursor; the csv module quotes commas, quotes and line breaks, so every field reads back as it
was (UTF-8 on the wire).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Generator

from hookdrop.ops.errors import UnknownFile
from hookdrop.store import ResultLine, Store, result_lines

HEADER = ("line", "user_id", "alert_id", "status", "http_code", "error")
PIECE_CHARS = 64 * 1024
BATCH = 2000  # lines per fetch from the server-side cursor


def result_csv(store: Store, file_id: int, *, batch: int = BATCH) -> Generator[str, None, None]:
    """The CSV text of a file's result, piece by piece; UnknownFile (at once) if there is no
    such file. ``store`` is held by the generator until it ends or is closed: give it one of
    its own."""
    if store.get_file(file_id) is None:
        raise UnknownFile(file_id)
    return _pieces(result_lines(store, file_id, batch=batch))


def _pieces(lines: Generator[ResultLine, None, None]) -> Generator[str, None, None]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(HEADER)
    try:
        for row in lines:
            writer.writerow(
                (row.line, row.user_id, row.alert_id, row.status, row.http_code, row.error)
            )
            if buffer.tell() >= PIECE_CHARS:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()
    finally:
        lines.close()  # ends the cursor's transaction even when the reader stops early
