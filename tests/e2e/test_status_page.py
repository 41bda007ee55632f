"""The live status page in a real headless browser, fed by real processes: monitor (serving
the API), batcher and notifier workers, and the mock receiver.

Needs Debian's chromium (``apt-get install -y chromium``) and the ``playwright`` package
(its bundled driver only; no downloaded browser). Without them the test is skipped locally
and fails under CI.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hookdrop.settings import Settings
from notifier_mock import MockClient
from tests.helpers import hookdrop_process, kill_group, wait_for, write_csv

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TOKEN = "page-token-42"
SCREENSHOT = Path("/tmp/hookdrop-status-page.png")
ROWS = 3_000


def unavailable(reason: str) -> None:
    message = f"status page test needs a headless browser: {reason}"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        unavailable("the playwright package is not installed (pip install playwright)")
    if not CHROMIUM.exists():
        unavailable(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    with sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                                  args=CHROMIUM_ARGS)
        except Error as exc:
            unavailable(f"chromium did not start: {str(exc).splitlines()[0]}")
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def mock() -> Iterator[MockClient]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "notifier_mock", "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        with MockClient(f"http://127.0.0.1:{port}") as client:
            wait_for(client.healthy, timeout=20, what="mock receiver up")
            yield client
    finally:
        kill_group(process)  # type: ignore[arg-type]


def test_the_page_shows_a_dropped_file_reaching_100_percent(
    settings: Settings, mock: MockClient, browser: Any, tmp_path: Path,
) -> None:
    port = free_port()
    settings = settings.replace(
        webhook_url=f"{str(mock._http.base_url).rstrip('/')}/hook", api_token=TOKEN,
        api_listen=("127.0.0.1", port), rate_limit=1500.0, chunk_size=200)
    base = f"http://127.0.0.1:{port}"
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = [
        hookdrop_process(settings, "monitor", log_path=logs / "monitor.log"),
        hookdrop_process(settings, "worker", "batcher", log_path=logs / "batcher.log"),
        hookdrop_process(settings, "worker", "notifier", log_path=logs / "notifier.log"),
    ]
    try:
        def api_up() -> bool:
            try:
                return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(api_up, timeout=30, what="monitor API up")
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"{base}/?token={TOKEN}")  # sets the cookie, then redirects to /
        assert page.url == f"{base}/"
        page.wait_for_selector("#connection.live", timeout=15_000)

        write_csv(settings.inbox / "drop.csv", ROWS)
        row = page.wait_for_selector('#files tr[data-status="delivering"]', timeout=30_000)
        assert row is not None
        done = page.wait_for_selector('#files tr[data-percent="100"][data-status="done"]',
                                      timeout=60_000)
        assert done is not None
        cells = done.query_selector_all("td")
        assert cells[1].inner_text() == "drop.csv"
        assert done.query_selector(".percent").inner_text() == "100%"
        assert cells[4].inner_text().replace(",", "") == f"{ROWS} / {ROWS}"
        assert page.inner_text("#backpressure") == "off"
        assert page.inner_text("#dlq") == "0"
        page.wait_for_function(
            "document.getElementById('chart-ok').getAttribute('d').length > 0")
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        page.close()
    finally:
        for process in procs:
            kill_group(process)
    assert mock.stats(per_user=False)["unique"] == ROWS
