"""Property tests for hookdrop.formats: round trips, arbitrary bytes, and resuming anywhere."""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hookdrop.errors import UnreadableFile
from hookdrop.formats import Layout, Position, Row, RowError, read_rows, sniff

SETTINGS = settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

# Printable text plus the characters that stress CSV: quotes, delimiters and line ends.
# NUL and other control characters are left out because they make a file "binary".
CHARS = st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufeff") | (
    st.sampled_from(list('\n\r\t,;" '))
)
USER_IDS = st.text(CHARS, min_size=1, max_size=12).filter(lambda u: u == u.strip())
MESSAGES = st.text(CHARS, min_size=1, max_size=30).filter(lambda m: not m.isspace())
EXTRA_NAMES = ("team", "priority", "x-tag")
# A first data row that reads like a header (or JSON) is refused on purpose; keep clear of it.
HEADER_WORDS = ("user", "msg", "alert", "message")

Item = Row | RowError


@dataclass(frozen=True)
class Table:
    rows: list[tuple[str, str, dict[str, str]]]
    extra_names: tuple[str, ...]


@st.composite
def tables(draw: st.DrawFn, *, with_extras: bool) -> Table:
    names = draw(st.lists(st.sampled_from(EXTRA_NAMES), unique=True)) if with_extras else []
    extra_values = st.fixed_dictionaries({name: st.text(CHARS, max_size=8) for name in names})
    rows = draw(st.lists(st.tuples(USER_IDS, MESSAGES, extra_values), min_size=1, max_size=12))
    return Table(rows, tuple(names))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Module-scoped: hypothesis runs many examples per test call, each rewrites the one file.
    return tmp_path_factory.mktemp("parsing-fuzz")


def write_file(folder: Path, data: bytes, compressed: bool) -> Path:
    path = folder / "drop"
    path.write_bytes(gzip.compress(data) if compressed else data)
    return path


def collect(
    path: Path, layout: Layout, start: Position | None = None, max_record_bytes: int = 1 << 20
) -> tuple[list[tuple[Item, Position]], str | None]:
    """Everything read_rows yields, and the UnreadableFile message it ends with (if any)."""
    got: list[tuple[Item, Position]] = []
    try:
        got.extend(read_rows(path, layout, start, max_record_bytes=max_record_bytes))
    except UnreadableFile as exc:
        return got, str(exc)
    return got, None


def check_resume(path: Path, layout: Layout, max_record_bytes: int = 1 << 20) -> None:
    full, error = collect(path, layout, None, max_record_bytes)
    for k, (_item, pos) in enumerate(full):
        assert collect(path, layout, pos, max_record_bytes) == (full[k + 1 :], error)


# -- (a) generated tables come back exactly ----------------------------------------------------


@SETTINGS
@given(
    table=st.data(),
    header=st.booleans(),
    delimiter=st.sampled_from([",", ";", "\t"]),
    terminator=st.sampled_from(["\n", "\r\n"]),
    quote_all=st.booleans(),
    bom=st.booleans(),
    blank_lines=st.integers(0, 2),
    compressed=st.booleans(),
)
def test_csv_round_trip(
    folder: Path,
    *,
    table: st.DataObject,
    header: bool,
    delimiter: str,
    terminator: str,
    quote_all: bool,
    bom: bool,
    blank_lines: int,
    compressed: bool,
) -> None:
    data = table.draw(tables(with_extras=header))
    if not header:
        delimiter = ","  # without a header other delimiters are a guess; see sniff()
        first = " ".join(data.rows[0][:2]).lower()
        assume(not any(word in first for word in HEADER_WORDS))
        assume(not data.rows[0][0].startswith(("{", "[")))
    if terminator == "\n" and any(
        "\r" in "".join(r[:2]) + "".join(r[2].values()) for r in data.rows
    ):
        quote_all = True  # csv.writer leaves a bare \r unquoted when lines end in \n
    out = io.StringIO()
    out.write(terminator * blank_lines)
    writer = csv.writer(
        out,
        delimiter=delimiter,
        lineterminator=terminator,
        quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL,
    )
    width = 2 + len(data.extra_names)
    order = table.draw(st.permutations(range(width))) if header else list(range(2))
    if header:
        user_name = table.draw(st.sampled_from(["user_id", "userId", "USER", "user id"]))
        message_name = table.draw(st.sampled_from(["message", "alertMessage", "msg", "Alert"]))
        names = [user_name, message_name, *data.extra_names]
        writer.writerow([names[i] for i in order])
    expected = []
    for user, message, extra in data.rows:
        line = out.getvalue().count("\n") + 1
        values = [user, message, *(extra[name] for name in data.extra_names)]
        writer.writerow([values[i] for i in order])
        expected.append((line, user, message, dict(extra) if extra else None))
    raw = (b"\xef\xbb\xbf" if bom else b"") + out.getvalue().encode()
    path = write_file(folder, raw, compressed)
    layout = sniff(path)
    assert (layout.format, layout.compressed, layout.dialect_delimiter) == (
        "csv",
        compressed,
        delimiter,
    )
    got, error = collect(path, layout)
    assert error is None
    assert [(r.line, r.user_id, r.message, r.extra) for r, _pos in got if isinstance(r, Row)] == (
        expected
    )
    assert got[-1][1] == Position(len(raw), raw.count(b"\n"), len(expected))
    check_resume(path, layout)


JSON_VALUES = st.one_of(
    st.text(CHARS, max_size=8),
    st.integers(),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
)


@SETTINGS
@given(
    rows=st.lists(
        st.tuples(
            USER_IDS | st.integers(),
            MESSAGES,
            st.dictionaries(st.sampled_from(EXTRA_NAMES), JSON_VALUES, max_size=3),
            st.sampled_from(["userId", "user_id", "User"]),
            st.sampled_from(["alertMessage", "message", "MSG"]),
        ),
        min_size=1,
        max_size=12,
    ),
    blank_every=st.integers(0, 3),
    ascii_only=st.booleans(),
    terminator=st.sampled_from(["\n", "\r\n"]),
    compressed=st.booleans(),
)
def test_jsonl_round_trip(
    folder: Path,
    *,
    rows: list[tuple[str | int, str, dict[str, object], str, str]],
    blank_every: int,
    ascii_only: bool,
    terminator: str,
    compressed: bool,
) -> None:
    lines: list[str] = []
    expected = []
    for index, (user, message, extra, user_key, message_key) in enumerate(rows):
        if blank_every and index % blank_every == 0:
            lines.append("  ")
        obj = {user_key: user, **extra, message_key: message}
        lines.append(json.dumps(obj, ensure_ascii=ascii_only))
        expected.append((len(lines), str(user), message, extra or None))
    raw = terminator.join(lines).encode()
    path = write_file(folder, raw, compressed)
    layout = sniff(path)
    assert (layout.format, layout.compressed) == ("jsonl", compressed)
    got, error = collect(path, layout)
    assert error is None
    assert [(r.line, r.user_id, r.message, r.extra) for r, _pos in got if isinstance(r, Row)] == (
        expected
    )
    assert got[-1][1].offset == len(raw)
    check_resume(path, layout)


# -- (b) arbitrary bytes: only UnreadableFile, one item per record -----------------------------

FRAGMENTS = st.sampled_from(
    [
        b",",
        b";",
        b"\t",
        b'"',
        b'""',
        b"\n",
        b"\r\n",
        b"\r",
        b" ",
        b"\xff",
        b"\xc3",
        b"\xa9",
        b"\xef\xbb\xbf",
        b"\x00",
        b"{",
        b"}",
        b"[",
        b":",
        b"u1",
        b"hello",
        b"user_id",
        b"message",
        b'"userId"',
        b'"message"',
        b"12",
        b"null",
        b"\\ud800",
        # whole records, so that good rows are mixed in with the damage
        b"u1,hello\n",
        b'u2,"multi\nline, quoted"\r\n',
        b"x;u3;hi\n",
        b'{"userId": "u1", "message": "hi"}\n',
        b'{"user_id": 7, "msg": "yo", "x": [1]}\r\n',
    ]
)
NOISE = st.one_of(
    st.binary(max_size=300),
    st.lists(FRAGMENTS, max_size=80).map(b"".join),
    st.lists(st.one_of(FRAGMENTS, st.binary(max_size=4)), max_size=80).map(b"".join),
)


def forced_layouts(compressed: bool) -> list[Layout]:
    return [
        Layout("csv", compressed, None, 0, 1, ","),
        Layout("csv", compressed, ("extra", "user_id", "message"), 1, 2, ";"),
        Layout("jsonl", compressed, None, None, None, ","),
    ]


def check_accounting(got: list[tuple[Item, Position]], start: Position, size: int) -> None:
    previous = start
    for item, pos in got:
        assert isinstance(item, Row | RowError)
        assert pos.records == previous.records + 1
        assert pos.offset > previous.offset
        assert previous.line < item.line <= pos.line
        previous = pos
    assert previous.offset <= size


@SETTINGS
@given(
    data=NOISE,
    compressed=st.booleans(),
    cut=st.integers(0, 40),
    max_record_bytes=st.sampled_from([8, 40, 1 << 20]),
)
def test_arbitrary_bytes(
    folder: Path, data: bytes, compressed: bool, cut: int, max_record_bytes: int
) -> None:
    path = write_file(folder, data, compressed)
    if compressed and cut:
        blob = path.read_bytes()
        path.write_bytes(blob[: max(2, len(blob) - cut)])  # a truncated (or broken) .gz
    layouts = forced_layouts(compressed)
    with contextlib.suppress(UnreadableFile):  # unreadable: the forced layouts still run
        layouts.append(sniff(path))
    for layout in layouts:
        got, _error = collect(path, layout, None, max_record_bytes)
        check_accounting(got, Position(0, 0, 0), len(data))


# -- (c) resume from any yielded position ------------------------------------------------------


@SETTINGS
@given(
    data=NOISE,
    compressed=st.booleans(),
    cut=st.integers(0, 40),
    max_record_bytes=st.sampled_from([8, 40, 1 << 20]),
)
def test_resume_anywhere(
    folder: Path, data: bytes, compressed: bool, cut: int, max_record_bytes: int
) -> None:
    path = write_file(folder, data, compressed)
    if compressed and cut:
        blob = path.read_bytes()
        path.write_bytes(blob[: max(2, len(blob) - cut)])
    for layout in forced_layouts(compressed):
        check_resume(path, layout, max_record_bytes)
