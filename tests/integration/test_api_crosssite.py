"""What a web page on another site can do to the loopback API: nothing it can read or change.

Real uvicorn thread, real Redis and PostgreSQL. Each request is the one a browser would send
for such a page: its ``Origin``, its Host name after DNS rebinding, or a body type a form or
``fetch(..., {mode: "no-cors"})`` may carry without a preflight.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import redis
from structlog.testing import capture_logs
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect
from websockets.typing import Origin

from daemon.api import ApiServer, run_api_in_thread
from daemon.api.auth import session_value
from hookdrop.intake import ensure_dirs
from hookdrop.ops import Control
from hookdrop.settings import Settings
from hookdrop.store import Store
from tests.helpers import file_rows, free_port
from tests.integration.test_control import make_file

TOKEN = "crosssite-token-0123456789"
REQUEST_HEADER = {"x-hookdrop-request": "1"}
EVIL = Origin("http://evil.example")


@pytest.fixture
def open_settings(settings: Settings) -> Settings:
    """The default deployment: loopback, no token."""
    ensure_dirs(settings)
    return settings.replace(api_listen=("127.0.0.1", 0), api_token=None)


@contextmanager
def serve(settings: Settings) -> Iterator[ApiServer]:
    server = run_api_in_thread(settings)
    try:
        yield server
    finally:
        server.stop()
    assert not server.thread.is_alive()


@pytest.fixture
def open_api(open_settings: Settings) -> Iterator[ApiServer]:
    with serve(open_settings) as api:
        yield api


@pytest.fixture
def token_api(open_settings: Settings) -> Iterator[ApiServer]:
    with serve(open_settings.replace(api_token=TOKEN)) as api:
        yield api


def http(api: ApiServer) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{api.port}", timeout=10)


@pytest.fixture
def page(open_api: ApiServer) -> Iterator[httpx.Client]:
    """A client with no credentials, like a browser sending a page's request."""
    with http(open_api) as client:
        yield client


@pytest.fixture
def control(open_settings: Settings, store: Store, rconn: redis.Redis) -> Control:
    return Control(open_settings, store, rconn)


def own_origin(api: ApiServer) -> Origin:
    return Origin(f"http://127.0.0.1:{api.port}")


def other_local_port(api: ApiServer) -> int:
    port = free_port()
    assert port != api.port
    return port


def inbox_files(settings: Settings) -> list[str]:
    """Every file in the inbox, hidden partial uploads included."""
    return sorted(p.name for p in settings.inbox.iterdir() if p.is_file())


def assert_refused(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"}
    assert "access-control-allow-origin" not in response.headers


# -- Host ------------------------------------------------------------------------------------


def test_a_foreign_host_gets_421_and_no_data(page: httpx.Client, store: Store) -> None:
    make_file(store, 3, name="secret.csv")
    refused = page.get("/files", headers={"host": "evil.example"})
    assert_refused(refused, 421)
    assert "secret.csv" not in refused.text
    assert page.get("/files").json()["files"][0]["name"] == "secret.csv"


def test_a_dns_rebound_name_on_the_api_port_is_refused(
    open_api: ApiServer,
    page: httpx.Client,
    store: Store,
) -> None:
    make_file(store, 3, name="secret.csv")
    rebound = f"evil.example:{open_api.port}"
    for path in ("/files", "/overview", "/", "/static/app.js", "/openapi.json"):
        assert_refused(page.get(path, headers={"host": rebound}), 421)
    for host in (f"127.0.0.1:{open_api.port}", f"localhost:{open_api.port}", "localhost:9000"):
        assert page.get("/files", headers={"host": host}).status_code == 200, host


def test_a_foreign_host_is_refused_even_with_the_token(token_api: ApiServer) -> None:
    with http(token_api) as client:
        response = client.get(
            "/files",
            headers={"host": f"evil.example:{token_api.port}", "authorization": f"Bearer {TOKEN}"},
        )
    assert_refused(response, 421)


def test_healthz_answers_any_host(page: httpx.Client) -> None:
    assert page.get("/healthz", headers={"host": "evil.example"}).json() == {"status": "ok"}


def test_an_allowed_host_name_is_answered(open_settings: Settings) -> None:
    allowed = open_settings.replace(api_allowed_hosts=("hookdrop.internal", "proxy.example:8443"))
    with serve(allowed) as api, http(api) as client:
        assert client.get("/files", headers={"host": "hookdrop.internal"}).status_code == 200
        assert client.get("/files", headers={"host": "proxy.example:8443"}).status_code == 200
        assert client.get("/files", headers={"host": "localhost"}).status_code == 200
        assert_refused(client.get("/files", headers={"host": "proxy.example:443"}), 421)
        assert_refused(client.get("/files", headers={"host": "evil.example"}), 421)


def test_behind_a_tls_proxy_on_loopback_its_https_origin_is_the_own_one(
    open_settings: Settings,
) -> None:
    proxied = open_settings.replace(api_allowed_hosts=("hookdrop.example.com",))
    headers = {
        "host": "hookdrop.example.com",
        "origin": "https://hookdrop.example.com",
        **REQUEST_HEADER,
    }
    with serve(proxied) as api, http(api) as proxy:
        replay = proxy.post("/dlq/replay", headers={**headers, "x-forwarded-proto": "https"})
        assert replay.json() == {"replayed": 0, "file_id": None}
        assert_refused(proxy.post("/dlq/replay", headers=headers), 403)  # seen as http


# -- state changes from a page ---------------------------------------------------------------


@pytest.mark.parametrize("origin", [None, EVIL])
def test_a_text_plain_upload_is_refused_and_nothing_lands_in_the_inbox(
    page: httpx.Client,
    open_settings: Settings,
    origin: str | None,
) -> None:
    headers = {"content-type": "text/plain"} | ({"origin": origin} if origin else {})
    response = page.post(
        "/files", params={"name": "x.csv"}, content=b"user_id,message\nu1,hi\n", headers=headers
    )
    assert_refused(response, 403)
    assert inbox_files(open_settings) == []


def test_an_octet_stream_upload_needs_no_extra_header(
    page: httpx.Client,
    open_settings: Settings,
) -> None:
    response = page.post(
        "/files",
        params={"name": "x.csv"},
        content=b"user_id,message\nu1,hi\n",
        headers={"content-type": "application/octet-stream"},
    )
    assert response.status_code == 201, response.text
    assert inbox_files(open_settings) == ["x.csv"]


def resendable_file(store: Store, control: Control, settings: Settings) -> int:
    """A finished file whose copy is still in done/, so a resend would succeed."""
    file_id, _ = make_file(store, 3, name="monday.csv")
    control.cancel(file_id)
    copy = settings.done_dir / "monday.csv"
    copy.write_text("user_id,message\nu0,m0\nu1,m1\nu2,m2\n")
    with store.transaction() as conn:
        conn.execute("UPDATE files SET final_path = %s WHERE id = %s", (str(copy), file_id))
    return file_id


def test_a_form_posted_resend_is_refused_and_no_file_is_added(
    page: httpx.Client,
    store: Store,
    control: Control,
    open_settings: Settings,
) -> None:
    file_id = resendable_file(store, control, open_settings)
    form = page.post(f"/files/{file_id}/resend", data={"x": "1"})  # what a <form> sends
    assert form.request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert_refused(form, 403)
    assert "X-Hookdrop-Request" in form.json()["error"]
    assert [row["id"] for row in file_rows(store)] == [file_id]
    wanted = page.post(f"/files/{file_id}/resend", headers=REQUEST_HEADER)
    assert wanted.status_code == 201, wanted.text
    assert len(file_rows(store)) == 2


def test_dlq_replay_with_a_foreign_origin_is_refused(
    open_api: ApiServer,
    page: httpx.Client,
    store: Store,
) -> None:
    file_id, ids = make_file(store, 3)
    with store.transaction() as conn:
        conn.execute("UPDATE alerts SET status = 'dead', attempts = 12 WHERE id = ANY(%s)", (ids,))
        conn.execute("UPDATE files SET dead = 3 WHERE id = %s", (file_id,))
    for headers in (
        {"origin": EVIL},
        {"origin": "null"},
        {"origin": f"http://127.0.0.1:{other_local_port(open_api)}"},
        {"origin": f"https://127.0.0.1:{open_api.port}"},
        {"sec-fetch-site": "cross-site"},
        {"sec-fetch-site": "same-site"},
    ):
        refused = page.post(
            "/dlq/replay", params={"status": "dead"}, headers={**REQUEST_HEADER, **headers}
        )
        assert_refused(refused, 403)
    assert page.get("/dlq", params={"status": "dead"}).json()["dead"] == 3
    own = page.post(
        "/dlq/replay",
        params={"status": "dead"},
        headers={**REQUEST_HEADER, "origin": own_origin(open_api), "sec-fetch-site": "same-origin"},
    )
    assert own.json() == {"replayed": 3, "file_id": None}


def test_the_cookie_with_another_local_port_as_origin_is_refused(
    token_api: ApiServer,
    store: Store,
    rconn: redis.Redis,
    open_settings: Settings,
) -> None:
    file_id, _ = make_file(store, 4)
    paused_key = open_settings.keys.paused(file_id)
    with http(token_api) as browser:
        assert browser.get("/", params={"token": TOKEN}).status_code == 303  # keeps the cookie
        other = f"http://127.0.0.1:{other_local_port(token_api)}"
        refused = browser.post(
            f"/files/{file_id}/pause", headers={**REQUEST_HEADER, "origin": other}
        )
        assert_refused(refused, 403)
        assert not rconn.exists(paused_key)
        # The cookie only reads, even from the API's own origin: changes take the token.
        own = browser.post(
            f"/files/{file_id}/pause", headers={**REQUEST_HEADER, "origin": own_origin(token_api)}
        )
        assert own.status_code == 401
        assert not rconn.exists(paused_key)
        assert browser.get(f"/files/{file_id}").status_code == 200
        with_token = browser.post(
            f"/files/{file_id}/pause",
            headers={"authorization": f"Bearer {TOKEN}", "origin": own_origin(token_api)},
        )
        assert with_token.status_code == 200, with_token.text
        assert rconn.exists(paused_key)


def test_the_cookie_holds_no_token_and_no_answer_may_be_framed(token_api: ApiServer) -> None:
    with http(token_api) as browser:
        first = browser.get("/", params={"token": TOKEN})
        assert TOKEN not in first.headers["set-cookie"]
        for path in ("/", "/docs", "/files"):
            answer = browser.get(path)
            assert answer.status_code == 200
            assert answer.headers["x-frame-options"] == "DENY"
            assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]


def test_curl_like_requests_with_the_request_header_work(
    page: httpx.Client,
    store: Store,
    rconn: redis.Redis,
    open_settings: Settings,
) -> None:
    file_id, _ = make_file(store, 4)
    multipart = page.post(
        "/files",
        headers=REQUEST_HEADER,
        files={"file": ("tuesday.csv", b"user_id,message\nu1,hi\n")},
    )
    assert multipart.status_code == 201, multipart.text
    assert inbox_files(open_settings) == ["tuesday.csv"]
    assert page.post(f"/files/{file_id}/pause", headers=REQUEST_HEADER).json()["paused"] is True
    assert_refused(page.post(f"/files/{file_id}/resume"), 403)  # no header, no body type
    assert rconn.exists(open_settings.keys.paused(file_id))
    assert page.post(f"/files/{file_id}/resume", json={}).status_code == 200  # a JSON body


def test_a_refusal_is_logged_with_its_reason(page: httpx.Client) -> None:
    with capture_logs() as logs:
        page.get("/files", headers={"host": "evil.example"})
        page.post("/dlq/replay", headers={"origin": EVIL})
        page.post("/dlq/replay")
    refused = [(e["reason"], e["path"]) for e in logs if e["event"] == "api.refused"]
    assert refused == [
        ("host", "/files"),
        ("origin", "/dlq/replay"),
        ("simple_request", "/dlq/replay"),
    ]
    assert all(e["log_level"] == "info" for e in logs if e["event"] == "api.refused")


# -- WebSocket -------------------------------------------------------------------------------


def subscribe(ws: ClientConnection, file_id: int) -> dict[str, object]:
    ws.send(json.dumps({"subscribe": file_id}))
    message: dict[str, object] = json.loads(ws.recv(timeout=10))
    return message


def test_a_websocket_from_a_foreign_origin_is_refused_and_the_own_origin_accepted(
    open_api: ApiServer,
    store: Store,
) -> None:
    file_id, _ = make_file(store, 2)
    url = f"ws://127.0.0.1:{open_api.port}/ws"
    for origin in (EVIL, "null", f"http://127.0.0.1:{other_local_port(open_api)}"):
        with pytest.raises(InvalidStatus) as refused, ws_connect(url, origin=Origin(origin)):
            pass
        assert refused.value.response.status_code == 403
    with ws_connect(url, origin=own_origin(open_api)) as ws:
        assert subscribe(ws, file_id)["id"] == file_id
    with ws_connect(url) as ws:  # a script: no Origin at all
        assert subscribe(ws, file_id)["id"] == file_id


def test_a_websocket_with_the_cookie_and_another_origin_is_refused(
    token_api: ApiServer,
    store: Store,
) -> None:
    file_id, _ = make_file(store, 2)
    url = f"ws://127.0.0.1:{token_api.port}/ws"
    cookie = {"cookie": f"hookdrop_token={session_value(TOKEN)}"}
    other = Origin(f"http://127.0.0.1:{other_local_port(token_api)}")
    with (
        pytest.raises(InvalidStatus) as refused,
        ws_connect(url, origin=other, additional_headers=cookie),
    ):
        pass
    assert refused.value.response.status_code == 403
    with ws_connect(url, origin=own_origin(token_api), additional_headers=cookie) as ws:
        assert subscribe(ws, file_id)["id"] == file_id


def test_a_websocket_to_a_rebound_host_name_is_refused(open_api: ApiServer) -> None:
    sock = socket.create_connection(("127.0.0.1", open_api.port), timeout=10)
    with (
        pytest.raises(InvalidStatus) as refused,
        ws_connect(f"ws://evil.example:{open_api.port}/ws", sock=sock),
    ):
        pass
    assert refused.value.response.status_code == 403


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain;charset=UTF-8",
        "TEXT/Plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ],
)
def test_every_body_type_a_form_can_send_is_refused_for_an_upload(
    page: httpx.Client,
    open_settings: Settings,
    content_type: str,
) -> None:
    response = page.post(
        "/files", params={"name": "y.csv"}, content=b"u,m\n", headers={"content-type": content_type}
    )
    assert_refused(response, 403)
    assert inbox_files(open_settings) == []
