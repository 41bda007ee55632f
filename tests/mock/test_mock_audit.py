"""The audit file is written by a timer, without waiting for shutdown."""

from __future__ import annotations

import asyncio
from pathlib import Path

from notifier_mock.audit import AuditLog


def test_lines_reach_the_file_within_the_flush_interval(tmp_path: Path) -> None:
    path = tmp_path / "audit.tsv"
    audit = AuditLog(path, flush_interval=0.02)

    async def scenario() -> str:
        audit.write("msg_1", "u1")
        audit.write("msg_2", "u2")
        assert path.read_text() == ""  # buffered, not written per request
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while not path.read_text() and loop.time() < deadline:
            await asyncio.sleep(0.01)
        return path.read_text()

    try:
        assert asyncio.run(scenario()) == "msg_1\tu1\nmsg_2\tu2\n"
    finally:
        audit.close()
    audit.close()  # idempotent


def test_close_flushes_and_appends(tmp_path: Path) -> None:
    path = tmp_path / "audit.tsv"
    path.write_text("old\tline\n")
    audit = AuditLog(path)

    async def scenario() -> None:
        audit.write("id\nwith newline", "u")

    asyncio.run(scenario())
    audit.close()
    assert path.read_text() == "old\tline\nid\\nwith newline\tu\n"
