"""Log lines of processes that share one log file stay whole lines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

LINES = 3000

_WRITER = """
import structlog
from hookdrop import logs
logs.configure("json", "info", process="p")
log = structlog.get_logger("t")
for n in range({lines}):
    log.info("tick", writer={writer}, n=n)
"""


def test_two_processes_writing_one_log_file_never_split_a_line(tmp_path: Path) -> None:
    """A worker pool and its children share one log file (under systemd, one journal
    stream): each line must reach it in one piece, or a reader loses both lines."""
    path = tmp_path / "shared.log"
    with path.open("ab") as out:
        writers = [
            subprocess.Popen(
                [sys.executable, "-c", _WRITER.format(lines=LINES, writer=n)],
                stderr=out,
                stdout=subprocess.DEVNULL,
            )
            for n in (1, 2)
        ]
        for writer in writers:
            assert writer.wait(timeout=120) == 0
    lines = path.read_text().splitlines()
    events = [json.loads(line) for line in lines]  # a split line does not parse
    assert len(events) == 2 * LINES
    for n in (1, 2):
        assert [e["n"] for e in events if e["writer"] == n] == list(range(LINES))
