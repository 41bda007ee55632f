"""Notes written beside files in done/ and failed/ never write through a planted link."""

from __future__ import annotations

from pathlib import Path

import pytest

from hookdrop.inbox import write_note
from hookdrop.intake import write_error_note


def test_a_note_replaces_a_link_planted_at_its_name(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me\n")
    failed = tmp_path / "failed"
    failed.mkdir()
    final = failed / "x.csv"
    (failed / "x.csv.error.txt").symlink_to(outside)

    write_error_note(final, "the reason")

    note = failed / "x.csv.error.txt"
    assert not note.is_symlink()
    assert note.read_text() == "x.csv: the reason\n"
    assert outside.read_text() == "keep me\n"
    assert sorted(p.name for p in failed.iterdir()) == ["x.csv.error.txt"]


def test_a_note_that_cannot_be_written_leaves_no_temporary_file(tmp_path: Path) -> None:
    (tmp_path / "note").mkdir()  # a folder in the way: the rename fails
    with pytest.raises(OSError):
        write_note(tmp_path / "note", b"data")
    assert [p.name for p in tmp_path.iterdir()] == ["note"]
