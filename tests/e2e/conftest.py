"""Fixtures of the end-to-end tests: the mock receiver as a real process of its own."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from notifier_mock import MockClient
from tests.helpers import StartMock, free_port, kill_group, wait_for


@pytest.fixture
def start_mock(tmp_path: Path) -> Iterator[StartMock]:
    """Start a mock receiver (flags as ``name=value``, e.g. ``latency_ms=20``; ``True`` for a
    flag without a value, e.g. ``any_body=True``; ``port`` to take a given one).

    Each mock logs what it accepted to ``accepted-N.tsv`` in the test's folder unless given an
    ``audit_path``; every one is stopped, with its process group, when the test ends, pass or
    fail.
    """
    started: list[tuple[subprocess.Popen[bytes], MockClient]] = []

    def start(**flags: object) -> MockClient:
        port = int(flags.pop("port", 0)) or free_port()  # type: ignore[call-overload]
        flags.setdefault("audit_path", tmp_path / f"accepted-{len(started)}.tsv")
        args = [
            f"--{name.replace('_', '-')}" + ("" if value is True else f"={value}")
            for name, value in flags.items()
        ]
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "notifier_mock",
                "--port",
                str(port),
                *args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        client = MockClient(f"http://127.0.0.1:{port}")
        started.append((process, client))
        wait_for(client.healthy, timeout=20, what="mock receiver up")
        return client

    try:
        yield start
    finally:
        for process, client in started:
            client.close()
            kill_group(process)


@pytest.fixture
def mock(start_mock: StartMock) -> MockClient:
    """One mock receiver with its default behaviour (accept everything at once)."""
    return start_mock()
