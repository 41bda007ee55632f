"""Streaming, resumable reader for dropped files: CSV or JSON Lines, optionally gzipped.

:func:`sniff` looks at the start of a file once and returns a :class:`Layout`;
:func:`read_rows` streams the records as :class:`Row` or :class:`RowError`, each paired with
the :class:`Position` just after it, and can start again from any such position.

Memory stays bounded whatever the file: lines are read with ``readline(limit)``, a record
longer than ``max_record_bytes`` is skipped to the next newline and reported as one row error.
Offsets are byte offsets in the decompressed stream, so a resume after a crash continues with
exactly the next record.

Known limits: CR-only (old Mac) line ends are not supported; a record that starts with ``{``
on the first non-blank line makes the file JSON Lines; after a record that is too long, the
reader continues after the next newline even if that newline was inside quotes.
"""

from __future__ import annotations

import codecs
import csv
import functools
import gzip
import json
import re
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NoReturn, Protocol

from hookdrop.errors import UnreadableFile

DEFAULT_MAX_RECORD_BYTES: Final = 1 << 20
MAX_USER_ID_CHARS: Final = 256
MAX_MESSAGE_CHARS: Final = 64 * 1024

#: Header names (compared stripped and lower-cased) that mark the two required columns.
USER_ID_NAMES: Final = frozenset({"user_id", "userid", "user", "user id"})
MESSAGE_NAMES: Final = frozenset({"message", "alertmessage", "alert_message", "alert", "msg"})

_DELIMITERS: Final = (",", "\t", ";")  # order breaks ties: comma is by far the most common
_BINARY_PROBE_BYTES: Final = 8 * 1024
_SAMPLE_BYTES: Final = 64 * 1024
_SAMPLE_RECORDS: Final = 50
_EXCERPT_CHARS: Final = 120
_EXCERPT_BYTES: Final = 4 * _EXCERPT_CHARS  # a UTF-8 character is at most 4 bytes
_SKIP_CHUNK: Final = 64 * 1024
_SEEK_CHUNK: Final = 1 << 20
_READ_BUFFER: Final = 256 * 1024
_GZIP_MAGIC: Final = b"\x1f\x8b"
_BOM: Final = codecs.BOM_UTF8
# Control characters that never appear in text, plus the surrogates that stand for
# undecodable bytes after decoding with "surrogateescape".
_NOT_TEXT: Final = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f\udc80-\udcff]")
_BINARY_SHARE: Final = 0.3
_COMPRESSION_ERRORS: Final = (EOFError, gzip.BadGzipFile, zlib.error)

_USER: Final = 1
_MESSAGE: Final = 2


@dataclass(frozen=True, slots=True)
class Row:
    """A good record."""

    line: int  # 1-based physical line where the record starts
    user_id: str
    message: str
    extra: dict[str, object] | None  # None when there are no extra fields


@dataclass(frozen=True, slots=True)
class RowError:
    """A record that cannot become an alert, and why."""

    line: int
    reason: str
    excerpt: str  # first 120 characters of the raw record, decoded with errors="replace"


@dataclass(frozen=True, slots=True)
class Position:
    """Where to resume: just after the last record returned."""

    offset: int  # byte offset in the decompressed stream
    line: int  # physical lines consumed so far
    records: int  # rows + row errors consumed so far (not the header, not blank lines)


@dataclass(frozen=True, slots=True)
class Layout:
    """What :func:`sniff` decided; stored by the caller and passed back to :func:`read_rows`."""

    format: str  # "csv" or "jsonl"
    compressed: bool
    header: tuple[str, ...] | None  # CSV header as read; None if headerless or jsonl
    user_col: int | None
    message_col: int | None
    dialect_delimiter: str


class _ByteStream(Protocol):
    def readline(self, size: int = -1, /) -> bytes: ...
    def read(self, size: int = -1, /) -> bytes: ...
    def seek(self, offset: int, /) -> int: ...


class _Overlong(Exception):  # an internal signal; never leaves this module
    """The current record exceeds max_record_bytes; the rest of its line was skipped."""


# --------------------------------------------------------------------------------------------
# sniffing


def sniff(path: Path) -> Layout:
    """Decide format, compression, header and delimiter from the start of ``path``.

    Raises UnreadableFile with a plain-language reason when the file cannot be read at all.
    OSError (missing file, no permission) propagates unchanged.
    """
    _ensure_csv_field_limit(DEFAULT_MAX_RECORD_BYTES)
    compressed = _is_gzip(path)
    with _open_stream(path, compressed) as stream:
        lines = _read_sample(stream)
    _reject_binary(b"".join(lines)[:_BINARY_PROBE_BYTES])
    first = lines[0].decode("utf-8", "replace").lstrip()
    if first.startswith("{"):
        return Layout("jsonl", compressed, None, None, None, ",")
    if _looks_like_json_array(first):
        raise UnreadableFile(
            "unknown format: this is a JSON array; write JSON Lines instead (one object per line)"
        )
    return _sniff_csv(lines, compressed)


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(2) == _GZIP_MAGIC


def _read_sample(stream: _ByteStream) -> list[bytes]:
    """The first non-blank physical lines (about 64 KiB), BOM removed; never empty."""
    lines: list[bytes] = []
    consumed = 0
    limit = DEFAULT_MAX_RECORD_BYTES + 1
    size = 0
    try:
        raw = stream.readline(limit).removeprefix(_BOM)
        while raw and size < _SAMPLE_BYTES:
            consumed += 1
            if lines or not raw.isspace():
                lines.append(raw)
                size += len(raw)
                if len(raw) == limit and not raw.endswith(b"\n"):
                    _skip_line(stream)
            raw = stream.readline(limit)
    except EOFError:
        # A truncated .gz with rows before the cut is readable; read_rows reports the cut.
        if not lines:
            raise UnreadableFile(
                f"compressed stream ends early (truncated .gz) after line {consumed}"
            ) from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        # Data already decoded is worth sniffing; read_rows reports the damage later.
        if not lines:
            raise UnreadableFile(f"not a valid gzip file ({exc})") from None
    if not lines:
        raise UnreadableFile("empty file (no content, or only blank lines)")
    return lines


def _reject_binary(probe: bytes) -> None:
    if probe.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise UnreadableFile("UTF-16 text is not supported; save the file as UTF-8")
    if b"\x00" in probe:
        raise UnreadableFile("binary file (contains NUL bytes), not CSV or JSON Lines")
    text = codecs.getincrementaldecoder("utf-8")("surrogateescape").decode(probe, final=False)
    if len(_NOT_TEXT.findall(text)) > _BINARY_SHARE * len(probe):
        raise UnreadableFile("binary file (mostly undecodable bytes), not CSV or JSON Lines")


def _looks_like_json_array(text: str) -> bool:
    if not text.startswith("["):
        return False
    rest = text[1:].lstrip()
    return not rest or rest.startswith(("{", "[", '"'))


def _sniff_csv(lines: list[bytes], compressed: bool) -> Layout:
    texts = [raw.decode("utf-8", "surrogateescape") for raw in lines]
    samples = {delim: _sample_records(texts, delim) for delim in _DELIMITERS}
    firsts = {delim: (records[0] if records else []) for delim, records in samples.items()}
    for delim, first in firsts.items():
        user_col, message_col = _find_columns(first)
        if user_col is not None and message_col is not None:
            return Layout("csv", compressed, tuple(first), user_col, message_col, delim)
    for first in firsts.values():
        user_col, message_col = _find_columns(first)
        if len(first) >= 2 and (user_col is not None or message_col is not None):
            missing = "message" if message_col is None else "user id"
            raise UnreadableFile(
                f"unknown format: the CSV header has no {missing} column "
                f"(columns found: {_list_columns(first)})"
            )
    two = [delim for delim in _DELIMITERS if len(firsts[delim]) == 2]
    if two:
        # Several delimiters can split the first row in two: trust the one that fits most rows.
        best = max(two, key=lambda d: _share_of_two_columns(samples[d]))
        return Layout("csv", compressed, None, 0, 1, best)
    widest = max(firsts.values(), key=len)
    if len(widest) <= 1:
        raise UnreadableFile(
            "unknown format: the first row has only one column; expected CSV with a user id "
            "and a message column, or JSON Lines"
        )
    raise UnreadableFile(
        f"unknown format: the first row has {len(widest)} columns but no user id column "
        f"(columns found: {_list_columns(widest)}); expected a header naming user_id and "
        "message, or exactly two columns without a header"
    )


def _sample_records(texts: list[str], delimiter: str) -> list[list[str]]:
    """Up to 50 non-blank records, parsed leniently (malformed ones are left out)."""
    reader = csv.reader(texts, delimiter=delimiter)
    records: list[list[str]] = []
    while len(records) < _SAMPLE_RECORDS:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error:
            continue  # the reader has consumed the bad line; the next call starts afresh
        if not _is_blank(fields):
            records.append(fields)
    return records


def _share_of_two_columns(records: list[list[str]]) -> float:
    return sum(len(record) == 2 for record in records) / len(records)


def _find_columns(fields: Sequence[str]) -> tuple[int | None, int | None]:
    user_col: int | None = None
    message_col: int | None = None
    for index, name in enumerate(fields):
        key = name.strip().lower()
        if user_col is None and key in USER_ID_NAMES:
            user_col = index
        elif message_col is None and key in MESSAGE_NAMES:
            message_col = index
    return user_col, message_col


def _list_columns(fields: Sequence[str]) -> str:
    shown = ", ".join(repr(name.strip()[:40]) for name in fields[:12])
    return shown + (f" and {len(fields) - 12} more" if len(fields) > 12 else "")


# --------------------------------------------------------------------------------------------
# reading


def read_rows(
    path: Path,
    layout: Layout,
    start: Position | None = None,
    *,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> Iterator[tuple[Row | RowError, Position]]:
    """Yield every record of ``path`` with the Position just after it.

    ``start`` (a Position yielded earlier) continues with exactly the next record; None
    starts at the beginning, after the BOM and the CSV header. Raises UnreadableFile when a
    compressed stream is truncated or corrupt, after yielding the records before the damage.
    A record is too long when its raw bytes, line endings included, exceed max_record_bytes.
    Raises csv.field_size_limit (process-wide) to at least max_record_bytes + 1; never lowers it.
    """
    if max_record_bytes < 1:
        raise ValueError("max_record_bytes must be positive")
    if layout.format not in ("csv", "jsonl"):
        raise ValueError(f"unknown layout format {layout.format!r}")
    if start is not None and start.offset <= 0:
        start = None  # nothing consumed yet: same as the beginning
    _ensure_csv_field_limit(max_record_bytes)
    return _records(path, layout, start, max_record_bytes)


def _records(
    path: Path, layout: Layout, start: Position | None, max_record_bytes: int
) -> Iterator[tuple[Row | RowError, Position]]:
    with _open_stream(path, layout.compressed) as stream:
        if layout.format == "jsonl":
            yield from _jsonl_records(stream, start, max_record_bytes)
        else:
            yield from _csv_records(stream, layout, start, max_record_bytes)


@contextmanager
def _open_stream(path: Path, compressed: bool) -> Iterator[_ByteStream]:
    with path.open("rb", buffering=_READ_BUFFER) as handle:
        if not compressed:
            yield handle
            return
        with gzip.GzipFile(fileobj=handle, mode="rb") as unzipped:
            yield unzipped


def _ensure_csv_field_limit(max_record_bytes: int) -> None:
    """csv.field_size_limit is process-wide: only ever raise it, so other users keep theirs."""
    if csv.field_size_limit() <= max_record_bytes:
        csv.field_size_limit(max_record_bytes + 1)


def _begin(stream: _ByteStream, start: Position | None) -> int:
    """Move to where reading starts; return that byte offset."""
    if start is None:
        if stream.read(len(_BOM)) == _BOM:
            return len(_BOM)
        stream.seek(0)
        return 0
    if isinstance(stream, gzip.GzipFile):
        # GzipFile.seek would re-decompress in 8 KiB steps; bigger steps, same bounded memory.
        remaining = start.offset
        while remaining > 0:
            chunk = stream.read(min(remaining, _SEEK_CHUNK))
            if not chunk:
                break  # shorter than before: nothing left to read
            remaining -= len(chunk)
    else:
        stream.seek(start.offset)
    return start.offset


def _skip_line(stream: _ByteStream) -> int:
    """Read to just after the next newline (or the end) in bounded steps; return bytes read."""
    skipped = 0
    while True:
        chunk = stream.readline(_SKIP_CHUNK)
        skipped += len(chunk)
        if not chunk or chunk.endswith(b"\n"):
            return skipped


def _stream_failure(exc: BaseException, after_line: int) -> UnreadableFile:
    if isinstance(exc, EOFError):
        return UnreadableFile(
            f"compressed stream ends early (truncated .gz) after line {after_line}"
        )
    return UnreadableFile(f"compressed stream is corrupt after line {after_line} ({exc})")


def _excerpt(raw: bytes) -> str:
    return raw[:_EXCERPT_BYTES].decode("utf-8", "replace").rstrip("\r\n")[:_EXCERPT_CHARS]


def _is_blank(fields: Sequence[str]) -> bool:
    return all(not field or field.isspace() for field in fields)


def _too_long(max_record_bytes: int) -> str:
    return f"record longer than {max_record_bytes} bytes"


# --------------------------------------------------------------------------------------------
# CSV


class _LineSource:
    """Physical lines as str for csv.reader, with byte, line and record-size accounting.

    csv.reader pulls exactly the lines of one record and never reads ahead, so right after
    it returns a record, ``offset`` and ``lines`` are the position just after that record.
    Lines are decoded strictly; a line with invalid UTF-8 is decoded with surrogateescape
    (so the record still splits correctly) and sets ``bad`` for the caller to report.
    Unlike a generator, this iterator survives raising _Overlong, so the reader can go on.
    """

    __slots__ = ("_limit", "_max", "_readline", "_stream", "bad", "head", "lines", "mark",
                 "offset")

    def __init__(self, stream: _ByteStream, max_record_bytes: int, offset: int, lines: int):
        self._stream = stream
        self._readline = stream.readline
        self._max = max_record_bytes
        self._limit = max_record_bytes + 1
        self.offset = offset
        self.lines = lines
        self.mark = offset  # where the current record started; the caller moves it
        self.head = b""  # the current record's first bytes, for excerpts
        self.bad = False

    def __iter__(self) -> _LineSource:
        return self

    def __next__(self) -> str:
        raw = self._readline(self._limit)
        if not raw:
            raise StopIteration
        if self.offset == self.mark:
            self.head = raw
        elif len(self.head) < _EXCERPT_BYTES:
            self.head += raw
        self.offset += len(raw)
        self.lines += 1
        if self.offset - self.mark > self._max:
            if not raw.endswith(b"\n"):
                self.offset += _skip_line(self._stream)
            raise _Overlong
        try:
            return raw.decode()
        except UnicodeDecodeError:
            self.bad = True
            return raw.decode("utf-8", "surrogateescape")

    def next_record(self) -> None:
        """Mark the start of the next record."""
        self.mark = self.offset
        self.bad = False


def _csv_records(
    stream: _ByteStream, layout: Layout, start: Position | None, max_record_bytes: int
) -> Iterator[tuple[Row | RowError, Position]]:
    src = _LineSource(stream, max_record_bytes, 0, 0)
    reader = csv.reader(src, delimiter=layout.dialect_delimiter, strict=True)
    done = start.line if start is not None else 0  # physical lines of finished records
    records = start.records if start is not None else 0
    header = layout.header
    width = len(header) if header is not None else 2
    user_col = layout.user_col if layout.user_col is not None else 0
    message_col = layout.message_col if layout.message_col is not None else 1
    extras = _extra_columns(header, user_col, message_col)
    header_fields = list(header) if header is not None else None
    try:
        src.offset = src.mark = _begin(stream, start)
        src.lines = done
        if start is None and header is not None:
            _skip_header(reader, src)
            done = src.lines
        while True:
            try:
                for fields in reader:
                    line = done + 1
                    done = src.lines
                    offset = src.mark = src.offset
                    item: Row | RowError
                    if src.bad:
                        src.bad = False
                        item = RowError(line, "invalid UTF-8", _excerpt(src.head))
                    elif fields == header_fields:
                        # Concatenated exports repeat the header; never send it as an alert.
                        item = RowError(line, "repeated header line", _excerpt(src.head))
                    elif len(fields) == width:
                        user = fields[user_col].strip()
                        message = fields[message_col]
                        if (
                            user
                            and len(user) <= MAX_USER_ID_CHARS
                            and message
                            and len(message) <= MAX_MESSAGE_CHARS
                            and not message.isspace()
                        ):
                            extra: dict[str, object] | None = (
                                {key: fields[i] for i, key in extras} if extras else None
                            )
                            item = Row(line, user, message, extra)
                        elif _is_blank(fields):
                            continue
                        else:
                            item = RowError(line, _field_problem(user, message),
                                            _excerpt(src.head))
                    elif _is_blank(fields):
                        continue
                    else:
                        reason = f"wrong column count: {len(fields)} (expected {width})"
                        item = RowError(line, reason, _excerpt(src.head))
                    records += 1
                    yield item, Position(offset, done, records)
                return
            except _Overlong:
                item = RowError(done + 1, _too_long(max_record_bytes), _excerpt(src.head))
            except csv.Error as exc:
                item = RowError(done + 1, _csv_reason(exc), _excerpt(src.head))
            # The reader resets itself on the next call; carry on after the bad record.
            done = src.lines
            src.next_record()
            records += 1
            yield item, Position(src.offset, done, records)
    except _COMPRESSION_ERRORS as exc:
        raise _stream_failure(exc, done) from exc


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


def _field_problem(user: str, message: str) -> str:
    if not user:
        return "empty user id"
    if len(user) > MAX_USER_ID_CHARS:
        return f"absurdly long field: user id longer than {MAX_USER_ID_CHARS} characters"
    if not message or message.isspace():
        return "empty message"
    return f"absurdly long field: message longer than {MAX_MESSAGE_CHARS} characters"


def _csv_reason(exc: csv.Error) -> str:
    text = str(exc)
    if text.startswith("new-line character seen"):
        return "malformed CSV: stray carriage return inside a field"
    if text == "unexpected end of data":
        return "malformed CSV: quoted field not closed before the end of the file"
    return f"malformed CSV: {text}"


# --------------------------------------------------------------------------------------------
# JSON Lines


def _jsonl_records(
    stream: _ByteStream, start: Position | None, max_record_bytes: int
) -> Iterator[tuple[Row | RowError, Position]]:
    readline = stream.readline
    limit = max_record_bytes + 1
    lines = start.line if start is not None else 0
    records = start.records if start is not None else 0
    try:
        offset = _begin(stream, start)
        while raw := readline(limit):
            lines += 1
            offset += len(raw)
            if len(raw) > max_record_bytes:
                if not raw.endswith(b"\n"):
                    offset += _skip_line(stream)
                item: Row | RowError = RowError(lines, _too_long(max_record_bytes),
                                                _excerpt(raw))
            elif raw.isspace():
                continue
            else:
                item = _json_item(raw, lines)
            records += 1
            yield item, Position(offset, lines, records)
    except _COMPRESSION_ERRORS as exc:
        raise _stream_failure(exc, lines) from exc


def _json_item(raw: bytes, line: int) -> Row | RowError:
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return RowError(line, "invalid UTF-8", _excerpt(raw))
    value, problem = _parse_json(text)
    if problem is None:
        if not isinstance(value, dict):
            return RowError(line, "not a JSON object", _excerpt(raw))
        result = _row_from_object(value, line)
        if isinstance(result, Row):
            return result
        problem = result
    return RowError(line, problem, _excerpt(raw))


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


# The stdlib parser, not orjson: orjson turns integers beyond 64 bits into floats, which
# would silently change big numeric user ids. NaN/Infinity are not JSON, so they are refused.
_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant)


def _parse_json(text: str) -> tuple[object, str | None]:
    """Return (value, None) or (None, reason)."""
    try:
        value = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        return None, f"broken JSON: {exc.msg}"
    except ValueError as exc:  # NaN/Infinity, integers too long to convert
        return None, f"broken JSON: {exc}"
    except RecursionError:
        return None, "broken JSON: nested too deeply"
    if "\\u" in text and _has_lone_surrogate(value):
        # A \ud800 escape decodes to a lone surrogate that no UTF-8 payload can carry.
        return None, "broken JSON: invalid unicode escape (lone surrogate)"
    return value, None


def _has_lone_surrogate(value: object) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return True
    return False


@functools.lru_cache(maxsize=1024)  # keys repeat on every line; bounded for odd files
def _json_role(key: str) -> int:
    name = key.strip().lower()
    if name in USER_ID_NAMES:
        return _USER
    if name in MESSAGE_NAMES:
        return _MESSAGE
    return 0


def _row_from_object(obj: dict[str, object], line: int) -> Row | str:
    """Build a Row from a JSON object, or return the reason it is not one."""
    user: object = None
    message: object = None
    have_user = have_message = False
    extra: dict[str, object] = {}
    for key, value in obj.items():
        role = _json_role(key)
        if role == _USER and not have_user:
            user, have_user = value, True
        elif role == _MESSAGE and not have_message:
            message, have_message = value, True
        else:
            extra[key] = value
    if user is None:
        return "no user id"
    if isinstance(user, bool) or not isinstance(user, str | int):
        return "user id must be a string or an integer"
    user_id = str(user).strip()
    if message is None:
        return "no message"
    if not isinstance(message, str):
        return "message must be a string"
    if not _field_ok(user_id, message):
        return _field_problem(user_id, message)
    return Row(line, user_id, message, extra or None)


def _field_ok(user: str, message: str) -> bool:
    return (
        bool(user)
        and len(user) <= MAX_USER_ID_CHARS
        and bool(message)
        and len(message) <= MAX_MESSAGE_CHARS
        and not message.isspace()
    )
