"""The outcome writer of a notifier job ends with the job, whatever it was doing then."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from hookdrop.settings import Settings
from hookdrop.store import AlertStatus, Result
from workers import outcomes
from workers.outcomes import ChunkBook


class _Ledger:
    def __init__(self) -> None:
        self.written: list[str] = []

    def record_results(self, batch: list[Result], file_id: int, seq: int, owner: str) -> int:
        self.written.extend(result.alert_id for result in batch)
        return len(batch)


def test_the_writer_ends_when_the_job_ends_while_it_gathers_a_round(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The job's end (finished, both events set) arriving while the writer waits to gather a
    round must not leave the writer waiting for outcomes that will never come: the job would
    wait for its writer for ever and hold its worker."""
    monkeypatch.setattr(outcomes, "GATHER_SECONDS", 30.0)  # the writer is surely gathering
    ledger = _Ledger()
    engine: Any = SimpleNamespace(settings=Settings(), store=ledger, owner="o", writer=None)

    async def scenario() -> None:
        book = ChunkBook(engine, target=None, file_id=1, seq=1, owner="o:1")  # type: ignore[arg-type]
        book.senders_left = 8  # a round is 4 outcomes: one is not enough
        writer = asyncio.create_task(book._writer())
        written = book._note(Result("msg_a", AlertStatus.DELIVERED, code=200))
        for _ in range(5):  # let the writer take the outcome and start gathering
            await asyncio.sleep(0)
        book.finished = True  # what the job does at its end
        book.has_pending.set()
        book.round_complete.set()
        await asyncio.wait_for(writer, timeout=10)
        assert written.done()

    asyncio.run(scenario())
    assert ledger.written == ["msg_a"]
