"""The file formats hookdrop reads: CSV or JSON Lines, optionally gzipped.

:func:`sniff` looks at the start of a file once and returns a :class:`Layout`;
:func:`read_rows` streams the records as :class:`Row` or :class:`RowError`, each paired with
the :class:`Position` just after it, and can start again from any such position.

Memory stays bounded whatever the file: lines are read with ``readline(limit)``, a record
longer than ``max_record_bytes`` is skipped to the next newline and reported as one row error.
Offsets are byte offsets in the decompressed stream, so a resume after a crash continues with
exactly the next record. A row containing a NUL character is a row error: no store can hold it.

Known limits: CR-only (old Mac) line ends are not supported; a record that starts with ``{``
on the first non-blank line makes the file JSON Lines; after a record that is too long, the
reader continues after the next newline even if that newline was inside quotes.
"""

from __future__ import annotations

from collections.abc import Iterator

from hookdrop.formats._csv import csv_records
from hookdrop.formats._jsonl import jsonl_records
from hookdrop.formats._records import (
    DEFAULT_MAX_RECORD_BYTES,
    MAX_MESSAGE_CHARS,
    MAX_USER_ID_CHARS,
    MESSAGE_NAMES,
    NUL_REASON,
    USER_ID_NAMES,
    Gap,
    Item,
    Layout,
    Position,
    Row,
    RowError,
)
from hookdrop.formats._stream import PROGRESS_EVERY, Meter, ProgressCallback, Source, open_stream
from hookdrop.formats.sniff import SNIFF_BUDGET_BYTES, ensure_csv_field_limit, sniff

__all__ = [
    "DEFAULT_MAX_RECORD_BYTES",
    "MAX_MESSAGE_CHARS",
    "MAX_USER_ID_CHARS",
    "MESSAGE_NAMES",
    "NUL_REASON",
    "PROGRESS_EVERY",
    "SNIFF_BUDGET_BYTES",
    "USER_ID_NAMES",
    "Gap",
    "Item",
    "Layout",
    "Position",
    "ProgressCallback",
    "Row",
    "RowError",
    "Source",
    "read_rows",
    "sniff",
]


def read_rows(
    source: Source,
    layout: Layout,
    start: Position | None = None,
    *,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    gap_bytes: int | None = None,
    on_progress: ProgressCallback | None = None,
) -> Iterator[tuple[Item, Position]]:
    """Yield every record of ``source`` with the Position just after it.

    ``start`` (a Position yielded earlier) continues with exactly the next record; None
    starts at the beginning, after the BOM and the CSV header. Raises UnreadableFile when a
    compressed stream is truncated or corrupt, after yielding the records before the damage.
    A record is too long when its raw bytes, line endings included, exceed max_record_bytes.

    ``gap_bytes``: after a run of at least that many bytes of blank lines, a :class:`Gap` is
    yielded (at a place that does not depend on buffering), so a caller can checkpoint in the
    middle of a long blank stretch. ``on_progress(bytes)`` is called at least every
    :data:`PROGRESS_EVERY` bytes consumed, whatever is being read (a line that never ends, a
    resume that decompresses its way forward), so a caller can show it is alive.
    Raises csv.field_size_limit (process-wide) to at least max_record_bytes + 1.
    """
    if max_record_bytes < 1:
        raise ValueError("max_record_bytes must be positive")
    if layout.format not in ("csv", "jsonl"):
        raise ValueError(f"unknown layout format {layout.format!r}")
    if gap_bytes is not None and gap_bytes < 1:
        raise ValueError("gap_bytes must be positive")
    if start is not None and start.offset <= 0:
        start = None  # nothing consumed yet: same as the beginning
    ensure_csv_field_limit(max_record_bytes)
    return _records(
        source,
        layout,
        start,
        max_record_bytes=max_record_bytes,
        gap_bytes=gap_bytes,
        on_progress=on_progress,
    )


def _records(
    source: Source,
    layout: Layout,
    start: Position | None,
    *,
    max_record_bytes: int,
    gap_bytes: int | None,
    on_progress: ProgressCallback | None,
) -> Iterator[tuple[Item, Position]]:
    meter = Meter(on_progress, start.offset if start else 0)
    with open_stream(source, layout.compressed) as (stream, _compressed):
        if layout.format == "jsonl":
            yield from jsonl_records(stream, start, max_record_bytes, gap_bytes, meter)
        else:
            yield from csv_records(
                stream,
                layout,
                start,
                max_record_bytes=max_record_bytes,
                gap_bytes=gap_bytes,
                meter=meter,
            )
