"""Reading JSON Lines records, with exact byte positions to resume from."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from typing import Final, NoReturn

from hookdrop.formats._records import (
    MESSAGE_NAMES,
    NUL_REASON,
    USER_ID_NAMES,
    Gap,
    Item,
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

_USER: Final = 1
_MESSAGE: Final = 2
#: Deeper JSON is refused per row: alert payloads are shallow, and every encoder has a limit.
MAX_JSON_DEPTH: Final = 32


def jsonl_records(
    stream: ByteStream,
    start: Position | None,
    max_record_bytes: int,
    gap_bytes: int | None,
    meter: Meter,
) -> Iterator[tuple[Item, Position]]:
    readline = stream.readline
    limit = max_record_bytes + 1
    lines = start.line if start is not None else 0
    records = start.records if start is not None else 0
    too_long = f"record longer than {max_record_bytes} bytes"
    try:
        offset = begin(stream, start.offset if start else None, meter)
        stop_at = offset + gap_bytes if gap_bytes else None
        blanks = 0  # blank lines in a row
        while raw := readline(limit):
            lines += 1
            offset += len(raw)
            meter.tick(offset)
            item: Item
            if len(raw) > max_record_bytes:
                if not raw.endswith(b"\n"):
                    offset += skip_line(stream, offset, meter)
                item = RowError(lines, too_long, excerpt(raw))
            elif raw.isspace():
                blanks += 1
                if stop_at is None or offset < stop_at:
                    if blanks >= BLANK_RUN and raw.endswith(b"\n"):
                        skipped, skipped_lines = skip_blank_lines(stream, offset, stop_at, meter)
                        offset += skipped
                        lines += skipped_lines
                    if stop_at is None or offset < stop_at:
                        continue
                item = Gap()
            else:
                item = json_item(raw, lines)
            blanks = 0
            if not isinstance(item, Gap):
                records += 1
            stop_at = offset + gap_bytes if gap_bytes else None
            yield item, Position(offset, lines, records)
    except COMPRESSION_ERRORS as exc:
        raise stream_failure(exc, lines) from exc


def json_item(raw: bytes, line: int) -> Row | RowError:
    if b"\x00" in raw:
        return RowError(line, NUL_REASON, excerpt(raw))
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return RowError(line, "invalid UTF-8", excerpt(raw))
    value, problem = _parse_json(text)
    if problem is None:
        if not isinstance(value, dict):
            return RowError(line, "not a JSON object", excerpt(raw))
        problem = _unsendable(value)
        if problem is None:
            result = _row_from_object(value, line)
            if isinstance(result, Row):
                return result
            problem = result
    return RowError(line, problem, excerpt(raw))


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
    return value, None


def _unsendable(value: object) -> str | None:
    """Why a decoded object cannot travel as an alert, or None.

    Walks it without recursion (nesting is bounded here, not by the interpreter's stack): too
    deep, a NUL character (no store holds it), a lone surrogate from a ``\\ud800`` escape (no
    UTF-8 payload carries it), in keys or values.
    """
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return f"broken JSON: nested more than {MAX_JSON_DEPTH} levels deep"
        if isinstance(item, str):
            problem = _string_problem(item)
            if problem is not None:
                return problem
        elif isinstance(item, dict):
            for key, member in item.items():
                problem = _string_problem(key)
                if problem is not None:
                    return problem
                stack.append((member, depth + 1))
        elif isinstance(item, list):
            stack.extend((member, depth + 1) for member in item)
    return None


def _string_problem(text: str) -> str | None:
    if "\x00" in text:
        return NUL_REASON
    if text.isascii():
        return None
    try:
        text.encode()
    except UnicodeEncodeError:
        return "broken JSON: invalid unicode escape (lone surrogate)"
    return None


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
    problem = field_problem(user_id, message)
    if problem is not None:
        return problem
    return Row(line, user_id, message, extra or None)
