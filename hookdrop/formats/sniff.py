"""Deciding a file's layout from its start: format, compression, header, delimiter.

Sniffing reads a bounded amount: at most ``SNIFF_BUDGET_BYTES`` of decompressed data, of which
about 64 KiB of content lines are sampled. A file with nothing but blank lines (or one line
that never ends) within that budget cannot be sniffed and is refused as unreadable, so a
gzip bomb of newlines costs a fraction of a second, not the time to inflate it.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import re
import zlib
from collections.abc import Sequence
from typing import Final

from hookdrop.errors import UnreadableFile
from hookdrop.formats._records import (
    DEFAULT_MAX_RECORD_BYTES,
    MESSAGE_NAMES,
    USER_ID_NAMES,
    Layout,
)
from hookdrop.formats._stream import (
    BLANK_RUN,
    BOM,
    ByteStream,
    Meter,
    Source,
    open_stream,
    skip_blank_lines,
    skip_line,
)

SNIFF_BUDGET_BYTES: Final = 16 << 20
#: Columns of a CSV header read at most: every other one travels with each alert.
MAX_COLUMNS: Final = 256
_DELIMITERS: Final = (",", "\t", ";")  # order breaks ties: comma is by far the most common
_BINARY_PROBE_BYTES: Final = 8 * 1024
_SAMPLE_BYTES: Final = 64 * 1024
_SAMPLE_RECORDS: Final = 50
# Control characters that never appear in text, plus the surrogates that stand for
# undecodable bytes after decoding with "surrogateescape".
_NOT_TEXT: Final = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f\udc80-\udcff]")
_BINARY_SHARE: Final = 0.3


def ensure_csv_field_limit(max_record_bytes: int) -> None:
    """csv.field_size_limit is process-wide: only ever raise it, so other users keep theirs."""
    if csv.field_size_limit() <= max_record_bytes:
        csv.field_size_limit(max_record_bytes + 1)


def sniff(source: Source) -> Layout:
    """Decide format, compression, header and delimiter from the start of ``source``.

    Raises UnreadableFile with a plain-language reason when the file cannot be read at all.
    OSError (missing file, no permission) propagates unchanged.
    """
    ensure_csv_field_limit(DEFAULT_MAX_RECORD_BYTES)
    with open_stream(source) as (stream, compressed):
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


class _OverBudget(Exception):  # an internal signal; never leaves this module
    """Sniffing has read as much as it may."""


def _over_budget(offset: int) -> None:
    if offset > SNIFF_BUDGET_BYTES:
        raise _OverBudget


def _read_sample(stream: ByteStream) -> list[bytes]:
    """The first content lines (about 64 KiB), BOM removed; never empty."""
    lines: list[bytes] = []
    consumed = 0  # physical lines
    read = 0  # bytes
    limit = DEFAULT_MAX_RECORD_BYTES + 1
    size = 0
    blanks = 0  # blank lines in a row
    meter = Meter(_over_budget)
    try:
        raw = stream.readline(limit).removeprefix(BOM)
        while raw and size < _SAMPLE_BYTES:
            consumed += 1
            read += len(raw)
            if not raw.isspace():
                lines.append(raw)
                size += len(raw)
                if len(raw) == limit and not raw.endswith(b"\n"):
                    read += skip_line(stream, read, meter)
                blanks = 0
            else:
                blanks += 1
                if lines and blanks <= BLANK_RUN:
                    lines.append(raw)  # a blank line can be part of a quoted field
                    size += len(raw)
                if blanks >= BLANK_RUN and raw.endswith(b"\n"):
                    read += skip_blank_lines(stream, read, SNIFF_BUDGET_BYTES, Meter(None))[0]
                if read >= SNIFF_BUDGET_BYTES:
                    if lines:
                        break
                    raise UnreadableFile(
                        f"no content in the first {SNIFF_BUDGET_BYTES >> 20} MiB (only blank lines)"
                    )
            raw = stream.readline(limit)
    except _OverBudget:
        if not lines:
            raise UnreadableFile(
                f"no line ends within the first {SNIFF_BUDGET_BYTES >> 20} MiB; "
                "not CSV or JSON Lines"
            ) from None
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
    if len(lines) == 1 and b"\r" in lines[0].rstrip(b"\r\n") and b"\n" not in lines[0]:
        raise UnreadableFile(
            "lines end with a carriage return only (old Mac style), which is "
            "not supported; save the file with LF or CRLF line ends"
        )
    texts = [raw.decode("utf-8", "surrogateescape") for raw in lines]
    samples = {delim: _sample_records(texts, delim) for delim in _DELIMITERS}
    firsts = {delim: (records[0] if records else []) for delim, records in samples.items()}
    for delim, first in firsts.items():
        user_col, message_col = find_columns(first)
        if user_col is not None and message_col is not None:
            if len(first) > MAX_COLUMNS:
                raise UnreadableFile(
                    f"the CSV header has {len(first):,} columns; at most {MAX_COLUMNS} are read"
                )
            return Layout("csv", compressed, tuple(first), user_col, message_col, delim)
    for first in firsts.values():
        user_col, message_col = find_columns(first)
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
        if not all(not field or field.isspace() for field in fields):
            records.append(fields)
    return records


def _share_of_two_columns(records: list[list[str]]) -> float:
    return sum(len(record) == 2 for record in records) / len(records)


def find_columns(fields: Sequence[str]) -> tuple[int | None, int | None]:
    """(user id column, message column) named by a header row, each None when missing."""
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
