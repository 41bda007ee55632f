"""Unit tests for hookdrop.formats: formats, row errors, unreadable files and resuming."""

from __future__ import annotations

import csv
import gzip
import json
import tracemalloc
from pathlib import Path

import pytest

from hookdrop.errors import UnreadableFile
from hookdrop.formats import (
    DEFAULT_MAX_RECORD_BYTES,
    Gap,
    Layout,
    Position,
    Row,
    RowError,
    read_rows,
    sniff,
)

Item = Row | RowError


def write(tmp_path: Path, data: bytes | str, name: str = "drop.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def read_all(
    path: Path, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
) -> list[tuple[Item, Position]]:
    return list(read_rows(path, sniff(path), max_record_bytes=max_record_bytes))


def items(path: Path, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> list[Item]:
    return [item for item, _pos in read_all(path, max_record_bytes)]


def rows(path: Path) -> list[tuple[int, str, str, dict[str, object] | None]]:
    found = items(path)
    assert all(isinstance(item, Row) for item in found), found
    return [(r.line, r.user_id, r.message, r.extra) for r in found if isinstance(r, Row)]


def errors(path: Path) -> list[tuple[int, str]]:
    return [(e.line, e.reason) for e in items(path) if isinstance(e, RowError)]


def unreadable(path: Path) -> str:
    with pytest.raises(UnreadableFile) as caught:
        read_all(path)
    return str(caught.value)


# -- CSV ---------------------------------------------------------------------------------------


def test_csv_with_header(tmp_path: Path) -> None:
    path = write(tmp_path, "user_id,message\nu1,hello\n  u2 ,  spaced message \n")
    assert sniff(path) == Layout("csv", False, ("user_id", "message"), 0, 1, ",")
    # user ids are stripped, messages are kept exactly
    assert rows(path) == [(2, "u1", "hello", None), (3, "u2", "  spaced message ", None)]


@pytest.mark.parametrize(
    ("user", "message"),
    [
        ("userId", "alertMessage"),
        ("USER", "Alert"),
        ("userid", "msg"),
        ("User ID", "MESSAGE"),
        (" user_id ", "alert_message"),
    ],
)
def test_csv_header_names(tmp_path: Path, user: str, message: str) -> None:
    path = write(tmp_path, f"{message},{user}\nhello,u1\n")
    layout = sniff(path)
    assert (layout.user_col, layout.message_col) == (1, 0)
    assert rows(path) == [(2, "u1", "hello", None)]


def test_csv_extra_columns_travel_as_extras(tmp_path: Path) -> None:
    path = write(tmp_path, "priority,userId,team,alertMessage\nhigh,u1,ops,disk full\n,u2,,x\n")
    assert rows(path) == [
        (2, "u1", "disk full", {"priority": "high", "team": "ops"}),
        (3, "u2", "x", {"priority": "", "team": ""}),
    ]


def test_csv_without_header(tmp_path: Path) -> None:
    path = write(tmp_path, "u1,hello\nu2,world\n")
    assert sniff(path) == Layout("csv", False, None, 0, 1, ",")
    assert rows(path) == [(1, "u1", "hello", None), (2, "u2", "world", None)]


def test_quotes_commas_and_newlines(tmp_path: Path) -> None:
    text = (
        "user_id,message\n"
        'u1,"hello, world"\n'
        'u2,"line one\nline two\n\nline four"\n'
        'u3,"she said ""hi"""\n'
        "u4,after\n"
    )
    path = write(tmp_path, text)
    assert rows(path) == [
        (2, "u1", "hello, world", None),
        (3, "u2", "line one\nline two\n\nline four", None),
        (7, "u3", 'she said "hi"', None),
        (8, "u4", "after", None),
    ]


def test_header_spanning_lines(tmp_path: Path) -> None:
    path = write(tmp_path, '"user_id","message","note\nwith newline"\nu1,hi,n\n')
    assert sniff(path).header == ("user_id", "message", "note\nwith newline")
    assert rows(path) == [(3, "u1", "hi", {"note\nwith newline": "n"})]


def test_bom_and_crlf(tmp_path: Path) -> None:
    path = write(tmp_path, b'\xef\xbb\xbfuserId,alertMessage\r\nu1,hello\r\nu2,"a\r\nb"\r\n')
    assert sniff(path).header == ("userId", "alertMessage")
    assert rows(path) == [(2, "u1", "hello", None), (3, "u2", "a\r\nb", None)]


def test_bom_headerless(tmp_path: Path) -> None:
    path = write(tmp_path, b"\xef\xbb\xbfu1,hello\n")
    assert rows(path) == [(1, "u1", "hello", None)]


@pytest.mark.parametrize("delimiter", [";", "\t"])
def test_other_delimiters(tmp_path: Path, delimiter: str) -> None:
    path = write(tmp_path, f"user_id{delimiter}message\nu1{delimiter}hello, world\n")
    assert sniff(path).dialect_delimiter == delimiter
    assert rows(path) == [(2, "u1", "hello, world", None)]


def test_headerless_delimiter_chosen_by_consistency(tmp_path: Path) -> None:
    path = write(tmp_path, "u1\thello, world\nu2\tbye\n")
    assert sniff(path).dialect_delimiter == "\t"


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = write(tmp_path, "\n\nuser_id,message\n\nu1,hi\n   \n,,\n\nu2,yo\n")
    assert rows(path) == [(5, "u1", "hi", None), (9, "u2", "yo", None)]
    assert read_all(path)[-1][1] == Position(path.stat().st_size, 9, 2)


def test_csv_row_errors(tmp_path: Path) -> None:
    text = (
        "user_id,message,team\n"
        "u1,hello,ops\n"
        ",no user,ops\n"
        "u3,,ops\n"
        "u4,   ,ops\n"
        "u5,too,many,columns\n"
        "u6,too few\n"
        f"{'x' * 257},long user,ops\n"
        f"u8,{'m' * (64 * 1024 + 1)},ops\n"
        'u9,"bad"quote,ops\n'
        "u10,fine,ops\n"
    )
    path = write(tmp_path, text)
    assert errors(path) == [
        (3, "empty user id"),
        (4, "empty message"),
        (5, "empty message"),
        (6, "wrong column count: 4 (expected 3)"),
        (7, "wrong column count: 2 (expected 3)"),
        (8, "absurdly long field: user id longer than 256 characters"),
        (9, "absurdly long field: message longer than 65536 characters"),
        (10, "malformed CSV: ',' expected after '\"'"),
    ]
    assert [r.line for r in items(path) if isinstance(r, Row)] == [2, 11]


def test_repeated_header_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "user_id,message\nu1,a\nuser_id,message\nu2,b\n")
    assert errors(path) == [(3, "repeated header line")]


def test_too_long_user_id(tmp_path: Path) -> None:
    path = write(tmp_path, f"u0,ok\n{'x' * 257},hello\n{'y' * 256},fine\n")
    assert errors(path) == [(2, "absurdly long field: user id longer than 256 characters")]
    assert [r.user_id for r in items(path) if isinstance(r, Row)] == ["u0", "y" * 256]


def test_headerless_wrong_column_count(tmp_path: Path) -> None:
    path = write(tmp_path, "u1,hello\nu2,hello, world\nu3\nu4,ok\n")
    assert errors(path) == [
        (2, "wrong column count: 3 (expected 2)"),
        (3, "wrong column count: 1 (expected 2)"),
    ]


def test_unterminated_quote_at_end(tmp_path: Path) -> None:
    path = write(tmp_path, 'u1,hello\nu2,"never closed\nmore\n')
    assert errors(path) == [
        (2, "malformed CSV: quoted field not closed before the end of the file")
    ]


def test_error_excerpt(tmp_path: Path) -> None:
    path = write(tmp_path, 'user_id,message\n,"' + "é" * 200 + '"\r\n')
    [error] = items(path)
    assert isinstance(error, RowError)
    assert error.excerpt == ',"' + "é" * 118


def test_invalid_utf8_only_breaks_its_row(tmp_path: Path) -> None:
    data = b'user_id,message\nu1,ok\nu2,caf\xe9\nu3,"multi\nline \xff"\nu4,fine \xc3\xa9\n'
    path = write(tmp_path, data)
    found = items(path)
    assert [(i.line, type(i).__name__) for i in found] == [
        (2, "Row"),
        (3, "RowError"),
        (4, "RowError"),
        (6, "Row"),
    ]
    assert isinstance(found[1], RowError)
    assert found[1].reason == "invalid UTF-8"
    assert found[1].excerpt == "u2,caf\ufffd"
    assert isinstance(found[3], Row)
    assert found[3].message == "fine é"


# -- long records ------------------------------------------------------------------------------


def test_long_line_is_one_error_in_bounded_memory(tmp_path: Path) -> None:
    long_line = b"u2," + b"x" * (20 << 20)
    path = write(tmp_path, b"u1,before\n" + long_line + b"\nu3,after\n")
    layout = sniff(path)
    tracemalloc.start()
    try:
        found = [item for item, _pos in read_rows(path, layout)]
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * DEFAULT_MAX_RECORD_BYTES
    assert [(i.line, type(i).__name__) for i in found] == [(1, "Row"), (2, "RowError"), (3, "Row")]
    assert isinstance(found[1], RowError)
    assert found[1].reason == f"record longer than {DEFAULT_MAX_RECORD_BYTES} bytes"
    assert found[1].excerpt == "u2," + "x" * 117


def test_two_megabyte_line_without_newline_at_end(tmp_path: Path) -> None:
    path = write(tmp_path, b"u1,before\nu2," + b"x" * (2 << 20))
    found = items(path)
    assert [(i.line, type(i).__name__) for i in found] == [(1, "Row"), (2, "RowError")]


def test_long_multiline_record_is_one_error(tmp_path: Path) -> None:
    body = "\n".join(["y" * 50] * 10)
    path = write(tmp_path, f'user_id,message\nu1,ok\nu2,"{body}"\nu3,ok\n')
    found = items(path, max_record_bytes=200)
    assert found[0] == Row(2, "u1", "ok", None)
    assert found[1] == RowError(
        3, "record longer than 200 bytes", 'u2,"' + "y" * 50 + "\n" + "y" * 50 + "\n" + "y" * 14
    )
    # after a too-long record the reader resumes at the next newline, inside the quotes
    assert found[-1] == Row(13, "u3", "ok", None)


def test_long_jsonl_line(tmp_path: Path) -> None:
    line = json.dumps({"userId": "u2", "message": "x" * 5000}).encode()
    data = b'{"userId":"u1","message":"a"}\n' + line + b'\n{"userId":3,"message":"c"}\n'
    path = write(tmp_path, data, "drop.jsonl")
    assert [(i.line, type(i).__name__) for i in items(path, max_record_bytes=1000)] == [
        (1, "Row"),
        (2, "RowError"),
        (3, "Row"),
    ]


# -- JSON Lines --------------------------------------------------------------------------------


def test_jsonl(tmp_path: Path) -> None:
    lines = [
        '{"userId": "u1", "alertMessage": "hello"}',
        "",
        '{"user_id": 42, "message": " keep spaces ", "priority": 3, "tags": ["a"]}',
        "   ",
        '{"userId": "u3" "message": "x"}',
        '{"Alert": "no user"}',
        '{"userId": "u5"}',
        '{"userId": "u6", "message": 7}',
        '{"userId": true, "message": "m"}',
        '{"userId": 1.5, "message": "m"}',
        '{"userId": " ", "message": "m"}',
        '{"userId": null, "message": "m"}',
        '{"userId": "u7", "message": ""}',
        '["not", "an object"]',
        '{"userId": "u8", "message": NaN}',
        '{"userId": "u9", "message": "\\ud800"}',
        '{"User ID": 123456789012345678901234567890, "MSG": "big int"}',
        '{"userId": "u11", "message": "last"}',
    ]
    path = write(tmp_path, "\r\n".join(lines) + "\r\n", "drop.jsonl")
    assert sniff(path) == Layout("jsonl", False, None, None, None, ",")
    found = items(path)
    assert [(i.line, i.user_id, i.message, i.extra) for i in found if isinstance(i, Row)] == [
        (1, "u1", "hello", None),
        (3, "42", " keep spaces ", {"priority": 3, "tags": ["a"]}),
        (17, "123456789012345678901234567890", "big int", None),
        (18, "u11", "last", None),
    ]
    assert [(e.line, e.reason) for e in found if isinstance(e, RowError)] == [
        (5, "broken JSON: Expecting ',' delimiter"),
        (6, "no user id"),
        (7, "no message"),
        (8, "message must be a string"),
        (9, "user id must be a string or an integer"),
        (10, "user id must be a string or an integer"),
        (11, "empty user id"),
        (12, "no user id"),
        (13, "empty message"),
        (14, "not a JSON object"),
        (15, "broken JSON: NaN is not valid JSON"),
        (16, "broken JSON: invalid unicode escape (lone surrogate)"),
    ]
    assert found[2] == RowError(
        5, "broken JSON: Expecting ',' delimiter", '{"userId": "u3" "message": "x"}'
    )


def test_jsonl_invalid_utf8_and_bom(tmp_path: Path) -> None:
    data = b'\xef\xbb\xbf{"userId":"u1","message":"a"}\n{"userId":"u2","message":"\xff"}\n'
    path = write(tmp_path, data + b'{"userId":"u3","message":"c"}', "drop.jsonl")
    assert [(i.line, type(i).__name__) for i in items(path)] == [
        (1, "Row"),
        (2, "RowError"),
        (3, "Row"),
    ]
    assert errors(path) == [(2, "invalid UTF-8")]


# -- gzip --------------------------------------------------------------------------------------


CSV_TEXT = "user_id,message\n" + "".join(f"u{i},message number {i}\n" for i in range(2000))
JSONL_TEXT = "".join(json.dumps({"userId": i, "message": f"m{i}"}) + "\n" for i in range(2000))


@pytest.mark.parametrize(("text", "fmt"), [(CSV_TEXT, "csv"), (JSONL_TEXT, "jsonl")])
def test_gzip_detected_by_content(tmp_path: Path, text: str, fmt: str) -> None:
    path = write(tmp_path, gzip.compress(text.encode()), "no-gz-suffix.txt")
    layout = sniff(path)
    assert (layout.format, layout.compressed) == (fmt, True)
    found = items(path)
    assert len(found) == 2000
    assert all(isinstance(i, Row) for i in found)
    assert isinstance(found[-1], Row)
    assert found[-1].user_id == ("u1999" if fmt == "csv" else "1999")
    plain = write(tmp_path, text, "looks.gz")
    assert sniff(plain).compressed is False


def test_truncated_gzip(tmp_path: Path) -> None:
    blob = gzip.compress(CSV_TEXT.encode())
    path = write(tmp_path, blob[: len(blob) // 2], "drop.csv.gz")
    layout = sniff(path)
    got: list[tuple[Item, Position]] = []
    with pytest.raises(UnreadableFile, match=r"truncated \.gz\) after line (\d+)") as caught:
        got.extend(read_rows(path, layout))
    assert got
    assert all(isinstance(item, Row) for item, _pos in got)
    assert [item.line for item, _pos in got] == list(range(2, len(got) + 2))
    assert str(caught.value) == (
        f"compressed stream ends early (truncated .gz) after line {got[-1][1].line}"
    )
    # resuming from the last good position hits the same truncation without repeating rows
    again: list[tuple[Item, Position]] = []
    with pytest.raises(UnreadableFile, match="truncated"):
        again.extend(read_rows(path, layout, got[-1][1]))
    assert again == []


def test_gzip_truncated_before_any_data(tmp_path: Path) -> None:
    path = write(tmp_path, gzip.compress(b"u1,hi\n")[:12], "drop.gz")
    assert "truncated .gz" in unreadable(path)


def test_invalid_gzip(tmp_path: Path) -> None:
    path = write(tmp_path, b"\x1f\x8b" + b"this is not deflate data at all" * 10, "drop.gz")
    assert unreadable(path).startswith("not a valid gzip file")


def test_corrupt_gzip_trailer(tmp_path: Path) -> None:
    blob = bytearray(gzip.compress(b"u1,hi\nu2,yo\n"))
    blob[-8] ^= 0xFF  # break the CRC
    path = write(tmp_path, bytes(blob), "drop.gz")
    layout = sniff(path)
    got: list[tuple[Item, Position]] = []
    with pytest.raises(UnreadableFile, match="corrupt after line 2"):
        got.extend(read_rows(path, layout))
    assert len(got) == 2


# -- unreadable files --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data", [b"", b"   \n\r\n\t\n", b"\xef\xbb\xbf", b"\xef\xbb\xbf\n\n", gzip.compress(b"")]
)
def test_empty_file(tmp_path: Path, data: bytes) -> None:
    assert unreadable(write(tmp_path, data)).startswith("empty file")


def test_binary_files(tmp_path: Path) -> None:
    assert "NUL" in unreadable(write(tmp_path, b"u1,hello\n\x00\x01\x02", "a.csv"))
    noise = bytes((i * 7919 + 13) % 256 for i in range(1, 4096)).replace(b"\x00", b"\x80")
    assert "undecodable" in unreadable(write(tmp_path, noise, "b.csv"))
    utf16 = "user_id,message\nu1,hi\n".encode("utf-16")
    assert "UTF-16" in unreadable(write(tmp_path, utf16, "c.csv"))
    assert "NUL" in unreadable(write(tmp_path, gzip.compress(b"\x00" * 100), "d.gz"))


def test_header_without_user_column_names_the_columns(tmp_path: Path) -> None:
    message = unreadable(write(tmp_path, "name,text,priority\nbob,hi,1\n"))
    assert "no user id column" in message
    assert "'name', 'text', 'priority'" in message


def test_header_without_message_column(tmp_path: Path) -> None:
    message = unreadable(write(tmp_path, "userId,text\nbob,hi\n"))
    assert (
        message == "unknown format: the CSV header has no message column (columns found: "
        "'userId', 'text')"
    )


def test_one_column(tmp_path: Path) -> None:
    assert "only one column" in unreadable(write(tmp_path, "bob\nalice\n"))


def test_json_array(tmp_path: Path) -> None:
    assert "JSON array" in unreadable(write(tmp_path, '[{"userId": 1, "message": "x"}]\n'))


# -- positions and resuming --------------------------------------------------------------------


def test_positions(tmp_path: Path) -> None:
    path = write(tmp_path, b'\xef\xbb\xbfuser_id,message\nu1,a\n\nu2,"b\nc"\n')
    got = read_all(path)
    assert [pos for _item, pos in got] == [Position(24, 2, 1), Position(34, 5, 2)]
    assert got[-1][1].offset == path.stat().st_size


def test_field_size_limit_is_raised_not_lowered(tmp_path: Path) -> None:
    path = write(tmp_path, "u1," + "x" * 200_000 + "\n")
    before = csv.field_size_limit()
    try:
        csv.field_size_limit(10)
        assert errors(path) == [(1, "absurdly long field: message longer than 65536 characters")]
        assert csv.field_size_limit() == DEFAULT_MAX_RECORD_BYTES + 1
        csv.field_size_limit(1 << 30)
        read_all(path)
        assert csv.field_size_limit() == 1 << 30
    finally:
        csv.field_size_limit(before)


def test_bad_arguments(tmp_path: Path) -> None:
    path = write(tmp_path, "u1,hi\n")
    with pytest.raises(ValueError, match="max_record_bytes"):
        read_rows(path, sniff(path), max_record_bytes=0)
    with pytest.raises(ValueError, match="format"):
        read_rows(path, Layout("xml", False, None, None, None, ","))


MIXED_CSV = (
    b"\xef\xbb\xbf\r\nuser_id,message,team\r\n"
    b"u1,hello,ops\r\n"
    b"\r\n"
    b'u2,"multi\r\nline, with comma",dev\r\n'
    b",no user,x\r\n"
    b"u4,caf\xe9,x\r\n"
    b"u5," + b"z" * 300 + b",x\r\n"
    b'u6,"a ""quoted"" word",x\r\n'
    b"u7,short\r\n"
    b"u8,last,x"
)
MIXED_HEADERLESS = b'u1,a\n\nu2,"b\nc"\nu3\n' + b"x" * 500 + b'\nu4,"d"\n'
MIXED_JSONL = (
    b'{"userId":"u1","message":"a"}\n\n{"userId":2,"message":"b","x":1}\r\n'
    b'{broken\n{"userId":"u4","message":"\xff"}\n'
    + b'{"userId":"u5","message":"'
    + b"y" * 500
    + b'"}\n   \n{"userId":"u6","message":"end"}'
)


@pytest.mark.parametrize("data", [MIXED_CSV, MIXED_HEADERLESS, MIXED_JSONL])
@pytest.mark.parametrize("compressed", [False, True])
def test_resume_from_every_position(tmp_path: Path, data: bytes, compressed: bool) -> None:
    path = write(tmp_path, gzip.compress(data) if compressed else data)
    layout = sniff(path)
    full = list(read_rows(path, layout, max_record_bytes=256))
    assert len(full) >= 5
    assert any(isinstance(item, RowError) for item, _pos in full)
    records = [pos.records for _item, pos in full]
    assert records == list(range(1, len(full) + 1))
    for k, (_item, pos) in enumerate(full):
        assert list(read_rows(path, layout, pos, max_record_bytes=256)) == full[k + 1 :]
    assert full[-1][1].offset == len(data)


def test_resume_from_zero_position_means_beginning(tmp_path: Path) -> None:
    path = write(tmp_path, "user_id,message\nu1,a\n")
    layout = sniff(path)
    assert list(read_rows(path, layout, Position(0, 0, 0))) == list(read_rows(path, layout))


def test_resume_beyond_end_yields_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, "u1,a\n")
    layout = sniff(path)
    assert list(read_rows(path, layout, Position(1000, 10, 10))) == []
    gz = write(tmp_path, gzip.compress(b"u1,a\n"), "a.gz")
    assert list(read_rows(gz, sniff(gz), Position(1000, 10, 10))) == []


def test_closing_early_closes_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, CSV_TEXT)
    reader = read_rows(path, sniff(path))
    first, pos = next(iter(reader))
    assert isinstance(first, Row)
    assert pos.records == 1
    reader.close()  # type: ignore[attr-defined]


# -- hostile input: NULs, blank-line floods, endless lines --------------------------------------


def test_nul_deep_in_a_csv_is_one_row_error_and_the_rest_goes_on(tmp_path: Path) -> None:
    head = "user_id,message\n" + "".join(f"u{n},row {n}\n" for n in range(1000))
    assert len(head) > 8192  # past the part that sniffing probes for binary content
    path = write(tmp_path, head + "nul-user,bad\x00message\nlast,after the nul\n")
    found = items(path)
    assert len(found) == 1002
    bad = found[1000]
    assert isinstance(bad, RowError)
    assert (bad.line, bad.reason) == (1002, "contains a NUL character")
    assert "\x00" not in bad.excerpt
    assert found[1001] == Row(1003, "last", "after the nul", None)


@pytest.mark.parametrize("value", ['"bad\\u0000message"', '"ok", "extra": "x\\u0000"'])
def test_nul_escape_in_json_lines_is_a_row_error(tmp_path: Path, value: str) -> None:
    path = write(
        tmp_path,
        '{"userId": "a", "message": "fine"}\n'
        f'{{"userId": "b", "message": {value}}}\n'
        '{"userId": "c", "message": "also fine"}\n',
    )
    assert [(i.line, getattr(i, "reason", None)) for i in items(path)] == [
        (1, None),
        (2, "contains a NUL character"),
        (3, None),
    ]


def test_a_run_of_blank_lines_is_skipped_in_bulk_and_reports_progress(tmp_path: Path) -> None:
    path = write(tmp_path, b"user_id,message\nu1,first\n" + b"\n" * (40 << 20) + b"u2,last\n")
    seen: list[int] = []
    found = list(read_rows(path, sniff(path), on_progress=seen.append))
    assert [(i.line, i.user_id) for i, _ in found if isinstance(i, Row)] == [
        (2, "u1"),
        ((40 << 20) + 3, "u2"),
    ]
    assert len(seen) >= 9  # every 4 MiB of the 40 MiB of newlines
    assert seen == sorted(seen)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_gaps_mark_blank_runs_at_places_that_do_not_depend_on_buffering(
    tmp_path: Path, fmt: str
) -> None:
    def record(n: int) -> str:
        return f"u{n},row {n}\n" if fmt == "csv" else f'{{"userId": "u{n}", "message": "r{n}"}}\n'

    blanks = "\r\n" * 700_000 + "  \n" * 300_000  # about 2.3 MB of blank lines
    text = record(0) + blanks + record(1) + blanks + blanks + record(2)
    path = write(tmp_path, text, f"drop.{fmt}")
    layout = sniff(path)
    full = list(read_rows(path, layout, gap_bytes=1 << 20))
    gaps = [pos for item, pos in full if isinstance(item, Gap)]
    assert len(gaps) >= 4
    assert [i.user_id for i, _ in full if isinstance(i, Row)] == ["u0", "u1", "u2"]
    # Resuming from any item gives exactly the rest, gaps included: a checkpoint taken at a
    # gap replays the same chunks.
    for k in range(len(full) - 1):
        assert list(read_rows(path, layout, full[k][1], gap_bytes=1 << 20)) == full[k + 1 :]


def test_gzip_of_newlines_is_refused_by_sniffing_without_inflating_it(tmp_path: Path) -> None:
    import time

    member = gzip.compress(b"\n" * (1 << 20), compresslevel=9, mtime=0)
    path = write(tmp_path, member * 2048, "bomb.csv.gz")  # 2 GiB of newlines, 2 MB as .gz
    started = time.process_time()
    assert "no content in the first 16 MiB" in unreadable(path)
    assert time.process_time() - started < 2.0


def test_a_line_that_never_ends_is_refused_by_sniffing_within_its_budget(tmp_path: Path) -> None:
    path = write(tmp_path, b"x" * (40 << 20), "endless.csv")
    assert "only one column" in unreadable(path)


@pytest.mark.parametrize("depth", [40, 600, 5000])
def test_deeply_nested_json_is_one_row_error_whatever_the_depth(tmp_path: Path, depth: int) -> None:
    nested = "[" * depth + "]" * depth
    path = write(
        tmp_path,
        '{"userId": "a", "message": "ok"}\n'
        f'{{"userId": "b", "message": "m", "x": {nested}, "w": "\\u0000"}}\n'
        '{"userId": "c", "message": "ok"}\n',
    )
    found = items(path)
    assert [i.line for i in found] == [1, 2, 3]
    assert isinstance(found[1], RowError)
    assert "nested" in found[1].reason or "NUL" in found[1].reason


def test_a_big_integer_in_json_lines_travels_unchanged(tmp_path: Path) -> None:
    big = 123456789012345678901234567890
    path = write(tmp_path, f'{{"userId": "a", "message": "m", "ref": {big}}}\n')
    (row,) = rows(path)
    assert row[3] == {"ref": big}


def test_carriage_return_only_line_ends_are_named_as_such(tmp_path: Path) -> None:
    assert "carriage return only" in unreadable(write(tmp_path, b"user_id,message\ru1,hi\r"))


def test_a_csv_header_of_too_many_columns_is_refused(tmp_path: Path) -> None:
    header = "user_id,message," + ",".join(f"c{n}" for n in range(300))
    assert "at most 256 are read" in unreadable(write(tmp_path, header + "\nu1,hi" + "," * 300))


def test_a_line_that_never_ends_is_followed_only_so_far(tmp_path: Path) -> None:
    path = write(tmp_path, b"user_id,message\nu1,before\nu2," + b"x" * (80 << 20))
    got: list[Item] = []
    with pytest.raises(UnreadableFile, match=r"a line longer than 64 MiB"):
        got.extend(item for item, _pos in read_rows(path, sniff(path)))
    assert [(i.line, type(i).__name__) for i in got] == [(2, "Row")]


def test_rows_before_damage_in_the_middle_of_a_gzip_stream_are_read(tmp_path: Path) -> None:
    body = "user_id,message\n" + "".join(f"u{n},row {n}\n" for n in range(40_000))
    blob = bytearray(gzip.compress(body.encode(), compresslevel=1, mtime=0))
    blob[len(blob) // 2] ^= 0xFF  # one flipped byte, mid-stream
    path = write(tmp_path, bytes(blob), "drop.csv.gz")
    got: list[Item] = []
    with pytest.raises(UnreadableFile, match=r"corrupt|truncated"):
        got.extend(item for item, _pos in read_rows(path, sniff(path)))
    assert len(got) > 10_000
