"""Property tests for hookdrop.formats: one Row or RowError per record the generator wrote.

A complement to tests/unit/test_parsing_fuzz.py, which checks clean round trips and that
arbitrary bytes keep the position accounting straight. Here the generator writes files that
mix good and bad records (invalid bytes, wrong column counts, empty fields, repeated headers,
broken JSON, blank lines, embedded newlines) and keeps its own list of what each record is;
``read_rows`` must give back exactly one item per record, of the expected kind, at the
expected line, and raise nothing but UnreadableFile.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hookdrop.errors import UnreadableFile
from hookdrop.formats import Layout, Row, RowError, read_rows

SETTINGS = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

# Field text: no letter that could spell a header name (user, message, msg, alert), so a
# headerless first row never reads as a header; plus a few non-ASCII characters.
PLAIN = st.text(st.sampled_from("abcdxyz0123456789-_.é中 "), min_size=1, max_size=10)
# Inside quotes anything CSV-special may appear.
QUOTED = st.lists(st.sampled_from([*'abxyz09é ",;\t\n\r', "\r\n", '""']), max_size=14).map("".join)
# Bytes that never occur in UTF-8, wherever they are put.
INVALID = st.sampled_from([b"\xff", b"\xfe", b"\xc0", b"\xc1", b"\xf5"])
LINE_ENDS = st.sampled_from([b"\n", b"\r\n"])
BLANK_LINES = st.lists(st.sampled_from([b"\n", b"\r\n", b"   \n", b" \t \r\n"]), max_size=2)

HEADER = ("user_id", "message", "plan")


@dataclass(frozen=True)
class Expected:
    """What the reader must return for one record."""

    line: int
    kind: str  # "row" or "error"
    user: str = ""
    message: str = ""
    extra: dict[str, object] | None = None
    reason: str = ""  # a word the RowError reason must contain


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Module-scoped: hypothesis runs many examples per test call, each rewrites the one file.
    return tmp_path_factory.mktemp("parser-property")


def write(folder: Path, data: bytes, compressed: bool) -> Path:
    path = folder / "drop"
    path.write_bytes(gzip.compress(data) if compressed else data)
    return path


def read_all(path: Path, layout: Layout) -> list[Row | RowError]:
    try:
        return [item for item, _pos in read_rows(path, layout)]
    except UnreadableFile as exc:  # only for damaged .gz, which these tests never write
        pytest.fail(f"UnreadableFile on a file the generator wrote intact: {exc}")


def check(got: list[Row | RowError], expected: list[Expected]) -> None:
    assert len(got) == len(expected), (
        f"{len(expected)} records written, {len(got)} items read: {got!r}"
    )
    for item, want in zip(got, expected, strict=True):
        assert item.line == want.line, (item, want)
        if want.kind == "row":
            assert isinstance(item, Row), (item, want)
            assert (item.user_id, item.message, item.extra) == (want.user, want.message, want.extra)
        else:
            assert isinstance(item, RowError), (item, want)
            assert want.reason in item.reason.lower(), (item, want)


# -- CSV ---------------------------------------------------------------------------------------


def csv_field(text: str, quote: bool) -> bytes:
    if quote:
        return b'"' + text.replace('"', '""').encode() + b'"'
    return text.encode()


@st.composite
def csv_record(draw: st.DrawFn, width: int, header: bool) -> tuple[bytes, Expected]:
    """One record (without its line end) and what it must read as; line filled in later."""
    kind = draw(
        st.sampled_from(
            ["row", "row", "row", "invalid", "columns", "no-user", "no-message", "long-user"]
            + (["header"] if header else [])
        )
    )
    if kind == "header":
        fields = [(name, draw(st.booleans())) for name in HEADER[:width]]
        want = Expected(0, "error", reason="repeated header")
    elif kind == "columns":
        count = draw(st.sampled_from([n for n in (1, 2, 3, 4) if n != width]))
        fields = [(draw(PLAIN).strip() or "x", draw(st.booleans())) for _ in range(count)]
        want = Expected(0, "error", reason="column count")
    else:
        quoted = [draw(st.booleans()) for _ in range(width)]
        user = draw(PLAIN)
        message = draw(QUOTED) if quoted[1] else draw(PLAIN)
        extras = [draw(QUOTED) if q else draw(PLAIN) for q in quoted[2:]]
        reason = ""
        if kind == "no-user":
            user, quoted[0] = draw(st.sampled_from(["", " ", "  "])), draw(st.booleans())
            message = message if message.strip() else "m"  # a record, not a blank line
            reason = "empty user id"
        elif kind == "no-message":
            message = draw(st.sampled_from(["", " ", "\t"]))
            user = user.strip() or "x"
            reason = "empty message"
        elif kind == "long-user":
            user = "x" * draw(st.integers(257, 400))
            reason = "absurdly long"
        elif not message.strip():
            message += "m"
        user = user if kind in ("no-user", "long-user") or user.strip() else user + "0"
        fields = [(user, quoted[0]), (message, quoted[1]), *zip(extras, quoted[2:], strict=True)]
        if kind == "invalid":
            want = Expected(0, "error", reason="invalid utf-8")
        elif reason:
            want = Expected(0, "error", reason=reason)
        else:
            extra = dict(zip(HEADER[2:width], extras, strict=True)) if header else None
            want = Expected(0, "row", user=user.strip(), message=message, extra=extra or None)
    if kind == "invalid":
        # Into the content of one field, between two characters (so never inside a "" pair
        # or between a field and its quotes); NUL marks the spot, as it never occurs here.
        index = draw(st.integers(0, len(fields) - 1))
        text, quote = fields[index]
        at = draw(st.integers(0, len(text)))
        fields[index] = (text[:at] + "\0" + text[at:], quote)
    encoded = [csv_field(text, quote).replace(b"\0", draw(INVALID)) for text, quote in fields]
    return b",".join(encoded), want


@st.composite
def csv_files(draw: st.DrawFn) -> tuple[bytes, Layout, list[Expected]]:
    header = draw(st.booleans())
    width = draw(st.sampled_from([2, 3])) if header else 2
    out = bytearray(b"\xef\xbb\xbf" if draw(st.booleans()) else b"")
    for blank in draw(BLANK_LINES):  # blank lines before the header are skipped too
        out += blank
    if header:
        out += b",".join(csv_field(name, draw(st.booleans())) for name in HEADER[:width])
        out += draw(LINE_ENDS)
    expected: list[Expected] = []
    records = draw(st.lists(csv_record(width, header), min_size=1, max_size=15))
    for index, (raw, want) in enumerate(records):
        for blank in draw(BLANK_LINES):
            out += blank
        line = out.count(b"\n") + 1
        expected.append(Expected(line, want.kind, want.user, want.message, want.extra, want.reason))
        out += raw
        if index < len(records) - 1 or draw(st.booleans()):
            out += draw(LINE_ENDS)
    layout = Layout("csv", False, HEADER[:width] if header else None, 0, 1, ",")
    return bytes(out), layout, expected


@SETTINGS
@given(generated=csv_files(), compressed=st.booleans())
def test_every_csv_record_becomes_exactly_one_row_or_row_error(
    folder: Path, generated: tuple[bytes, Layout, list[Expected]], compressed: bool
) -> None:
    data, layout, expected = generated
    path = write(folder, data, compressed)
    layout = Layout(
        layout.format,
        compressed,
        layout.header,
        layout.user_col,
        layout.message_col,
        layout.dialect_delimiter,
    )
    check(read_all(path, layout), expected)


# -- JSON Lines --------------------------------------------------------------------------------

JSON_TEXT = st.text(st.sampled_from('abxyz09é中 "\\,:{}\t'), max_size=12)


@st.composite
def jsonl_record(draw: st.DrawFn) -> tuple[bytes, Expected]:
    kind = draw(
        st.sampled_from(
            ["row", "row", "row", "broken", "not-object", "no-user", "no-message", "invalid"]
        )
    )
    user: str | int = draw(st.one_of(PLAIN.filter(lambda u: u.strip()), st.integers(0, 10**20)))
    message = draw(JSON_TEXT.filter(lambda m: m.strip()))
    extra = draw(st.dictionaries(st.sampled_from(["team", "x-tag"]), JSON_TEXT, max_size=2))
    user_key = draw(st.sampled_from(["userId", "user_id", "User"]))
    message_key = draw(st.sampled_from(["alertMessage", "message", "msg"]))
    obj: dict[str, object] = {user_key: user, message_key: message, **extra}
    if kind == "no-user":
        del obj[user_key]
    elif kind == "no-message":
        del obj[message_key]
    text = json.dumps(obj, ensure_ascii=draw(st.booleans()))
    if kind == "broken":
        text = text[: draw(st.integers(1, len(text) - 1))]
    elif kind == "not-object":
        text = draw(st.sampled_from(["[1, 2]", "42", '"text"', "null", "[]"]))
    raw = text.encode()
    if kind == "invalid":
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(INVALID) + raw[at:]
    reasons = {
        "broken": "broken json",
        "not-object": "not a json object",
        "no-user": "no user id",
        "no-message": "no message",
        "invalid": "invalid utf-8",
    }
    if kind == "row":
        want = Expected(
            0, "row", user=str(user).strip(), message=message, extra=dict(extra) or None
        )
    else:
        want = Expected(0, "error", reason=reasons[kind])
    return raw, want


@st.composite
def jsonl_files(draw: st.DrawFn) -> tuple[bytes, list[Expected]]:
    out = bytearray(b"\xef\xbb\xbf" if draw(st.booleans()) else b"")
    expected: list[Expected] = []
    records = draw(st.lists(jsonl_record(), min_size=1, max_size=15))
    for index, (raw, want) in enumerate(records):
        for blank in draw(BLANK_LINES):
            out += blank
        expected.append(
            Expected(
                out.count(b"\n") + 1, want.kind, want.user, want.message, want.extra, want.reason
            )
        )
        out += raw
        if index < len(records) - 1 or draw(st.booleans()):
            out += draw(LINE_ENDS)
    return bytes(out), expected


@SETTINGS
@given(generated=jsonl_files(), compressed=st.booleans())
def test_every_json_line_becomes_exactly_one_row_or_row_error(
    folder: Path, generated: tuple[bytes, list[Expected]], compressed: bool
) -> None:
    data, expected = generated
    path = write(folder, data, compressed)
    check(read_all(path, Layout("jsonl", compressed, None, None, None, ",")), expected)
