"""The live status page in a real headless browser, fed by real processes: monitor (serving
the API), batcher and notifier workers, and the mock receiver. Then what pages of other origins
can do to the API in the same browser: nothing.

Needs Debian's chromium (``apt-get install -y chromium``) and the ``playwright`` package
(its bundled driver only; no downloaded browser). Without them the test is skipped locally
and fails under CI.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from structlog.testing import capture_logs

from daemon.api import ApiServer, run_api_in_thread
from hookdrop.intake import ensure_dirs
from hookdrop.settings import Settings
from hookdrop.store import Store
from notifier_mock import MockClient
from tests.helpers import free_port, hookdrop_process, kill_group, wait_for, write_csv
from tests.integration.test_control import make_file

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
REBOUND = "rebound.test"  # a name the browser resolves to 127.0.0.1, as after DNS rebinding
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    f"--host-resolver-rules=MAP {REBOUND} 127.0.0.1",
]
TOKEN = "page-token-42"
ROWS = 3_000


def unavailable(reason: str) -> None:
    message = f"status page test needs a headless browser: {reason}"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


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
            launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        except Error as exc:
            unavailable(f"chromium did not start: {str(exc).splitlines()[0]}")
        try:
            yield launched
        finally:
            launched.close()


def test_the_page_shows_a_dropped_file_reaching_100_percent(
    settings: Settings,
    mock: MockClient,
    browser: Any,
    tmp_path: Path,
) -> None:
    port = free_port()
    settings = settings.replace(
        webhook_url=mock.hook_url,
        api_token=TOKEN,
        api_listen=("127.0.0.1", port),
        rate_limit=1500.0,
        chunk_size=200,
    )
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
        done = page.wait_for_selector(
            '#files tr[data-percent="100"][data-status="done"]', timeout=60_000
        )
        assert done is not None
        cells = done.query_selector_all("td")
        assert cells[1].inner_text() == "drop.csv"
        assert cells[2].inner_text() == "default"  # its endpoint
        assert done.query_selector(".percent").inner_text() == "100%"
        assert cells[5].inner_text().replace(",", "") == f"{ROWS} / {ROWS}"
        assert page.inner_text("#backpressure") == "off"
        assert page.inner_text("#dlq") == "0"
        page.wait_for_function("document.getElementById('chart-ok').getAttribute('d').length > 0")
        page.screenshot(path=str(tmp_path / "status-page.png"), full_page=True)
        page.close()
    finally:
        for process in procs:
            kill_group(process)
    assert mock.stats(per_user=False)["unique"] == ROWS


# -- other origins in the same browser ---------------------------------------------------------


@contextmanager
def api_thread(settings: Settings, token: str | None) -> Iterator[ApiServer]:
    ensure_dirs(settings)
    server = run_api_in_thread(settings.replace(api_listen=("127.0.0.1", 0), api_token=token))
    try:
        yield server
    finally:
        server.stop()


class _Elsewhere(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!doctype html><title>elsewhere</title>"
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


@contextmanager
def elsewhere_site() -> Iterator[str]:
    """Another web site on 127.0.0.1 (another port): the browser sends it the API's cookie."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Elsewhere)
    thread = threading.Thread(target=server.serve_forever, name="elsewhere")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


ATTACKS = """async ([api, fileId]) => {
  const send = (path, init) => fetch(api + path, {method: "POST", mode: "no-cors",
                                                  credentials: "include", ...init});
  await send("/files?name=x.csv", {headers: {"Content-Type": "text/plain"},
                                   body: "user_id,message\\nu1,hi\\n"});
  await send("/dlq/replay?status=dlq,dead");
  const frame = document.createElement("iframe");
  frame.name = "sink";
  document.body.append(frame);
  const form = document.createElement("form");
  Object.assign(form, {method: "post", action: `${api}/files/${fileId}/pause`, target: "sink"});
  document.body.append(form);
  await new Promise((loaded) => { frame.onload = loaded; form.submit(); });
  return await new Promise((done) => {
    const ws = new WebSocket(api.replace("http", "ws") + "/ws");
    ws.onopen = () => done("open");
    ws.onclose = () => done("closed");
  });
}"""

OWN_PAGE = """async ([fileId, token]) => {
  const pause = await fetch(`/files/${fileId}/pause`,
                            {method: "POST", headers: {"Authorization": `Bearer ${token}`}});
  const update = await new Promise((done) => {
    const ws = new WebSocket(`ws://${location.host}/ws`);
    ws.onopen = () => ws.send(JSON.stringify({subscribe: fileId}));
    ws.onmessage = (e) => { done(JSON.parse(e.data)); ws.close(); };
    ws.onclose = () => done(null);
  });
  return [pause.status, update];
}"""


def test_a_page_on_another_local_port_cannot_use_the_cookie_to_change_anything(
    settings: Settings,
    store: Store,
    rconn: redis.Redis,
    browser: Any,
) -> None:
    file_id, _ = make_file(store, 3)
    with api_thread(settings, TOKEN) as api, elsewhere_site() as elsewhere:
        base = f"http://127.0.0.1:{api.port}"
        context = browser.new_context()
        try:
            own = context.new_page()
            own.goto(f"{base}/?token={TOKEN}")  # the cookie, for every port of 127.0.0.1
            own.wait_for_selector("#connection.live", timeout=15_000)
            other = context.new_page()
            other.goto(f"{elsewhere}/")
            with capture_logs() as logs:
                websocket = other.evaluate(ATTACKS, [base, file_id])
            assert sorted(p.name for p in settings.inbox.iterdir() if p.is_file()) == []
            assert not rconn.exists(settings.keys.paused(file_id))
            assert websocket == "closed"
            refused = {(e["path"], e["reason"]) for e in logs if e["event"] == "api.refused"}
            assert refused == {
                ("/files", "origin"),
                ("/dlq/replay", "origin"),
                (f"/files/{file_id}/pause", "origin"),
                ("/ws", "origin"),
            }

            status, update = own.evaluate(OWN_PAGE, [file_id, TOKEN])
            assert status == 200
            assert rconn.exists(settings.keys.paused(file_id))
            assert update["id"] == file_id and update["paused"] is True
        finally:
            context.close()


def test_a_rebound_host_name_cannot_read_the_token_less_api(
    settings: Settings,
    store: Store,
    browser: Any,
) -> None:
    make_file(store, 2, name="secret.csv")
    with api_thread(settings, None) as api:
        page = browser.new_page()
        try:
            rebound = page.goto(f"http://{REBOUND}:{api.port}/files")
            assert rebound is not None and rebound.status == 421
            assert "secret.csv" not in page.content()
            direct = page.goto(f"http://127.0.0.1:{api.port}/files")
            assert direct is not None and direct.status == 200
            assert "secret.csv" in page.content()
        finally:
            page.close()
