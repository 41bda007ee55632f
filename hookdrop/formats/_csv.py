"""Reading CSV records, with exact byte positions to resume from."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence

from hookdrop.errors import UnreadableFile
from hookdrop.formats._records import (
    NUL_REASON,
    Gap,
    Item,
    Layout,
    Position,
    Row,
    RowError,
    field_problem,
)
from hookdrop.formats._stream import (
    BLANK_RUN,
    COMPRESSION_ERRORS,
    ByteStream,
    Meter,
    begin,
    excerpt,
    skip_blank_lines,
    skip_line,
    stream_failure,
)


class _Overlong(Exception):  # an internal signal; never leaves this module
    """The current record exceeds max_record_bytes; the rest of its line was skipped."""


class _LineSource:
    """Physical lines as str for csv.reader, with byte, line and record-size accounting.

    csv.reader pulls exactly the lines of one record and never reads ahead, so right after
    it returns a record, ``offset`` and ``lines`` are the position just after that record.
    Lines are decoded strictly; a line with invalid UTF-8 is decoded with surrogateescape
    (so the record still splits correctly) and sets ``bad`` for the caller to report; a NUL
    byte sets ``nul``. A blank line at the start of a record takes the blank lines after it
    along in bulk. Unlike a generator, this iterator survives raising _Overlong.
    """

    __slots__ = (
        "_blanks",
        "_limit",
        "_max",
        "_meter",
        "_readline",
        "_stream",
        "bad",
        "head",
        "lines",
        "mark",
        "nul",
        "offset",
        "stop_at",
    )

    def __init__(self, stream: ByteStream, max_record_bytes: int, meter: Meter) -> None:
        self._stream = stream
        self._readline = stream.readline
        self._max = max_record_bytes
        self._limit = max_record_bytes + 1
        self._meter = meter
        self.offset = 0
        self.lines = 0
        self.mark = 0  # where the current record started; the caller moves it
        self.head = b""  # the current record's first bytes, for excerpts
        self.bad = False
        self.nul = False
        self.stop_at: int | None = None  # where a blank run must pause (see Gap)
        self._blanks = 0  # blank lines in a row at record starts

    def __iter__(self) -> _LineSource:
        return self

    def __next__(self) -> str:
        raw = self._readline(self._limit)
        if not raw:
            raise StopIteration
        at_start = self.offset == self.mark
        if at_start:
            self.head = raw
        elif len(self.head) < 512:
            self.head += raw
        self.offset += len(raw)
        self.lines += 1
        self._meter.tick(self.offset)
        if self.offset - self.mark > self._max:
            if not raw.endswith(b"\n"):
                self.offset += skip_line(self._stream, self.offset, self._meter)
            raise _Overlong
        if at_start and raw.isspace():
            self._blanks += 1
            if (
                self._blanks >= BLANK_RUN
                and raw.endswith(b"\n")
                and (self.stop_at is None or self.offset < self.stop_at)
            ):
                skipped, lines = skip_blank_lines(
                    self._stream, self.offset, self.stop_at, self._meter
                )
                self.offset += skipped
                self.lines += lines
            return "\n"
        self._blanks = 0
        if b"\x00" in raw:
            self.nul = True
        try:
            return raw.decode()
        except UnicodeDecodeError:
            self.bad = True
            return raw.decode("utf-8", "surrogateescape")

    def next_record(self) -> None:
        """Mark the start of the next record."""
        self.mark = self.offset
        self.bad = self.nul = False


def csv_records(
    stream: ByteStream,
    layout: Layout,
    start: Position | None,
    *,
    max_record_bytes: int,
    gap_bytes: int | None,
    meter: Meter,
) -> Iterator[tuple[Item, Position]]:
    src = _LineSource(stream, max_record_bytes, meter)
    reader = csv.reader(src, delimiter=layout.dialect_delimiter, strict=True)
    done = start.line if start is not None else 0  # physical lines of finished records
    records = start.records if start is not None else 0
    header = layout.header
    width = len(header) if header is not None else 2
    user_col = layout.user_col if layout.user_col is not None else 0
    message_col = layout.message_col if layout.message_col is not None else 1
    extras = _extra_columns(header, user_col, message_col)
    header_fields = list(header) if header is not None else None
    too_long = f"record longer than {max_record_bytes} bytes"
    try:
        src.offset = src.mark = begin(stream, start.offset if start else None, meter)
        src.lines = done
        if start is None and header is not None:
            _skip_header(reader, src)
            done = src.lines
        last_yield = src.offset
        src.stop_at = last_yield + gap_bytes if gap_bytes else None
        while True:
            try:
                for fields in reader:
                    line = done + 1
                    done = src.lines
                    offset = src.mark = src.offset
                    item: Item
                    if src.bad:
                        item = RowError(line, "invalid UTF-8", excerpt(src.head))
                    elif src.nul:
                        item = RowError(line, NUL_REASON, excerpt(src.head))
                    elif fields == header_fields:
                        # Concatenated exports repeat the header; never send it as an alert.
                        item = RowError(line, "repeated header line", excerpt(src.head))
                    elif len(fields) == width:
                        user = fields[user_col].strip()
                        message = fields[message_col]
                        problem = field_problem(user, message)
                        if problem is None:
                            extra: dict[str, object] | None = (
                                {key: fields[i] for i, key in extras} if extras else None
                            )
                            item = Row(line, user, message, extra)
                        elif _is_blank(fields):
                            item = Gap()
                        else:
                            item = RowError(line, problem, excerpt(src.head))
                    elif _is_blank(fields):
                        item = Gap()
                    else:
                        reason = f"wrong column count: {len(fields)} (expected {width})"
                        item = RowError(line, reason, excerpt(src.head))
                    src.bad = src.nul = False
                    if isinstance(item, Gap):
                        if src.stop_at is None or offset < src.stop_at:
                            continue  # blank line: skipped
                    else:
                        records += 1
                    last_yield = offset
                    src.stop_at = last_yield + gap_bytes if gap_bytes else None
                    yield item, Position(offset, done, records)
                return
            except _Overlong:
                item = RowError(done + 1, too_long, excerpt(src.head))
            except csv.Error as exc:
                item = RowError(done + 1, _csv_reason(exc), excerpt(src.head))
            # The reader resets itself on the next call; carry on after the bad record.
            done = src.lines
            src.next_record()
            records += 1
            last_yield = src.offset
            src.stop_at = last_yield + gap_bytes if gap_bytes else None
            yield item, Position(src.offset, done, records)
    except COMPRESSION_ERRORS as exc:
        raise stream_failure(exc, done) from exc


def _skip_header(reader: Iterator[list[str]], src: _LineSource) -> None:
    """Consume leading blank lines and the header record (which may span several lines)."""
    try:
        for fields in reader:
            src.next_record()
            if not _is_blank(fields):
                return
    except _Overlong:
        raise UnreadableFile("the CSV header is too long to read") from None
    except csv.Error as exc:
        raise UnreadableFile(f"the CSV header cannot be read ({_csv_reason(exc)})") from None


def _extra_columns(
    header: tuple[str, ...] | None, user_col: int, message_col: int
) -> tuple[tuple[int, str], ...]:
    """(column index, payload key) of every column other than user id and message."""
    if header is None:
        return ()
    columns: list[tuple[int, str]] = []
    taken: set[str] = set()
    for index, name in enumerate(header):
        if index in (user_col, message_col):
            continue
        key = name.strip() or f"column_{index + 1}"
        if key in taken:  # duplicate header names must not overwrite each other
            key = f"{key}_{index + 1}"
        taken.add(key)
        columns.append((index, key))
    return tuple(columns)


def _is_blank(fields: Sequence[str]) -> bool:
    return all(not field or field.isspace() for field in fields)


def _csv_reason(exc: csv.Error) -> str:
    text = str(exc)
    if text.startswith("new-line character seen"):
        return "malformed CSV: stray carriage return inside a field"
    if text == "unexpected end of data":
        return "malformed CSV: quoted field not closed before the end of the file"
    return f"malformed CSV: {text}"
