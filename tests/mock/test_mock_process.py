"""``python -m notifier_mock`` as a real process: counts, rate limit, faults, clean exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from notifier_mock import MockClient
from tests.helpers import dies_with_tests, free_port

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 20.0
EXIT_TIMEOUT_S = 15.0


@dataclass
class Mock:
    url: str
    process: subprocess.Popen[bytes]
    client: MockClient
    audit: Path

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the process and return its exit code."""
        self.process.send_signal(sig)
        return self.process.wait(timeout=EXIT_TIMEOUT_S)


@pytest.fixture
def mock(tmp_path: Path) -> Iterator[Mock]:
    port = free_port()
    audit = tmp_path / "audit.tsv"
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "notifier_mock",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--audit-path",
            str(audit),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=dies_with_tests,  # noqa: PLW1509 - one system call
    )
    url = f"http://127.0.0.1:{port}"
    client = MockClient(url, timeout=5.0)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not client.healthy():
            if process.poll() is not None:
                _, err = process.communicate()
                pytest.fail(f"mock exited with {process.returncode}: {err.decode()}")
            if time.monotonic() > deadline:
                pytest.fail(f"mock not healthy within {START_TIMEOUT_S} s")
            time.sleep(0.05)
        yield Mock(url, process, client, audit)
    finally:
        client.close()
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=EXIT_TIMEOUT_S)


def payload(number: int) -> dict[str, str]:
    return {"userId": f"user-{number % 7}", "alertMessage": f"alert {number}"}


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_counts_then_clean_exit_with_complete_audit(mock: Mock, stop_signal: int) -> None:
    sent: list[str] = []
    with httpx.Client(base_url=mock.url, timeout=5.0) as http:
        for number in range(300):
            msg_id = f"msg_{number}"
            response = http.post("/", json=payload(number), headers={"webhook-id": msg_id})
            assert response.status_code == 200
            sent.append(msg_id)
        for number in range(0, 300, 15):  # 20 redeliveries of already accepted ids
            response = http.post("/", json=payload(number), headers={"webhook-id": f"msg_{number}"})
            assert response.status_code == 200
            sent.append(f"msg_{number}")

    stats = mock.client.stats()
    assert {
        key: stats[key]
        for key in (
            "received",
            "accepted",
            "unique",
            "duplicates",
            "throttled",
            "errors_5xx",
            "in_flight",
        )
    } == {
        "received": 320,
        "accepted": 320,
        "unique": 300,
        "duplicates": 20,
        "throttled": 0,
        "errors_5xx": 0,
        "in_flight": 0,
    }
    assert sum(stats["per_user"].values()) == 320
    assert "per_user" not in mock.client.stats(per_user=False)

    assert mock.stop(stop_signal) == 0
    lines = mock.audit.read_text(encoding="utf-8").splitlines()
    assert [line.split("\t")[0] for line in lines] == sent
    assert lines[0] == "msg_0\tuser-0"


def test_rate_change_gives_429_with_retry_after(mock: Mock) -> None:
    config = mock.client.configure(rate=5, burst=2)
    assert (config["rate"], config["effective_burst"]) == (5.0, 2.0)
    codes: list[int] = []
    retry_after: set[str] = set()
    with httpx.Client(base_url=mock.url, timeout=5.0) as http:
        for number in range(40):
            response = http.post("/", json=payload(number), headers={"webhook-id": f"r{number}"})
            codes.append(response.status_code)
            if response.status_code == 429:
                retry_after.add(response.headers["retry-after"])
    assert set(codes) == {200, 429}
    # 2 from the burst plus at most 5/s for however long the loop took.
    assert codes.count(429) >= 25
    assert retry_after == {"1"}
    stats = mock.client.stats(per_user=False)
    assert (stats["throttled"], stats["accepted"]) == (codes.count(429), codes.count(200))

    mock.client.configure(rate=0)
    mock.client.reset()
    with httpx.Client(base_url=mock.url, timeout=5.0) as http:
        assert {http.post("/", json=payload(n)).status_code for n in range(20)} == {200}
    assert mock.client.stats(per_user=False)["throttled"] == 0


def test_reset_rate_drops_the_connection(mock: Mock) -> None:
    mock.client.configure(reset_rate=1.0)
    with httpx.Client(base_url=mock.url, timeout=5.0) as http:
        for number in range(3):
            with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
                http.post("/", json=payload(number))
    stats = mock.client.wait_until(lambda s: s["resets"] == 3, timeout=10, per_user=False)
    assert (stats["accepted"], stats["in_flight"]) == (0, 0)

    mock.client.configure(reset_rate=0.0)
    with httpx.Client(base_url=mock.url, timeout=5.0) as http:
        assert http.post("/", json=payload(1)).status_code == 200


def test_timeout_rate_makes_the_client_time_out(mock: Mock) -> None:
    mock.client.configure(timeout_rate=1.0, timeout_hang_s=60)
    with httpx.Client(base_url=mock.url, timeout=0.3) as http, pytest.raises(httpx.ReadTimeout):
        http.post("/", json=payload(1))
    stats = mock.client.wait_until(lambda s: s["timeouts"] == 1, timeout=10, per_user=False)
    assert stats["accepted"] == 0

    # A request still hanging must not hold up the shutdown for the whole 60 s.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(httpx.post, mock.url + "/", json=payload(2), timeout=30)
        mock.client.wait_until(lambda s: s["timeouts"] == 2, timeout=10, per_user=False)
        started = time.monotonic()
        assert mock.stop() == 0
        assert time.monotonic() - started < 10
        assert pending.result(timeout=10).status_code == 504


def test_wait_until_raises_timeout_with_last_stats(mock: Mock) -> None:
    with pytest.raises(TimeoutError) as raised:
        mock.client.wait_until(lambda s: s["accepted"] > 0, timeout=0.3, per_user=False)
    assert "last stats" in str(raised.value)
    assert getattr(raised.value, "last_stats", None) is not None
