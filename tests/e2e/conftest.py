"""Fixtures of the end-to-end tests: the mock receiver as a real process of its own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from notifier_mock import MockClient
from tests.helpers import MockProcess, StartMock


@pytest.fixture
def start_mock(tmp_path: Path) -> Iterator[StartMock]:
    """Start a mock receiver (flags as ``name=value``, e.g. ``latency_ms=20``; ``True`` for a
    flag without a value, e.g. ``any_body=True``; ``port`` to take a given one).

    Each mock logs what it accepted to ``accepted-N.tsv`` in the test's folder unless given an
    ``audit_path``; every one is stopped, with its process group, when the test ends, pass or
    fail.
    """
    started: list[MockProcess] = []

    def start(**flags: object) -> MockClient:
        audit = flags.pop("audit_path", tmp_path / f"accepted-{len(started)}.tsv")
        started.append(MockProcess(audit_path=Path(str(audit)), **flags))
        return started[-1].client

    try:
        yield start
    finally:
        for mock in started:
            mock.close()


@pytest.fixture
def mock(start_mock: StartMock) -> MockClient:
    """One mock receiver with its default behaviour (accept everything at once)."""
    return start_mock()
