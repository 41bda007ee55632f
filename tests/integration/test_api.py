"""The HTTP API on a real uvicorn thread (and in-process over ASGI), real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from daemon.api import ApiServer, create_app, run_api_in_thread
from hookdrop import connections
from hookdrop.errors import ConfigError
from hookdrop.intake import ensure_dirs
from hookdrop.latency import observe_latencies
from hookdrop.ops import Control
from hookdrop.queues import enqueue_deliveries
from hookdrop.settings import Settings
from hookdrop.store import Store
from tests.helpers import free_port
from tests.integration.test_control import make_file

TOKEN = "test-token-0123456789"
REQUEST_HEADER = {"x-hookdrop-request": "1"}


@pytest.fixture
def asettings(settings: Settings) -> Settings:
    ensure_dirs(settings)
    return settings.replace(api_listen=("127.0.0.1", 0), api_token=TOKEN)


@pytest.fixture
def api(asettings: Settings) -> Iterator[ApiServer]:
    server = run_api_in_thread(asettings)
    yield server
    server.stop()
    assert not server.thread.is_alive()


@pytest.fixture
def client(api: ApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=f"http://127.0.0.1:{api.port}",
        headers={"authorization": f"Bearer {TOKEN}"},
        timeout=10,
    ) as c:
        yield c


@pytest.fixture
def anonymous(api: ApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{api.port}", timeout=10) as c:
        yield c


@pytest.fixture
def control(asettings: Settings, store: Store, rconn: redis.Redis) -> Control:
    return Control(asettings, store, rconn)


# -- auth, docs, health --------------------------------------------------------------------


def test_every_path_but_healthz_needs_the_token(anonymous: httpx.Client) -> None:
    assert anonymous.get("/healthz").json() == {"status": "ok"}
    for path in (
        "/files",
        "/overview",
        "/metrics",
        "/readyz",
        "/openapi.json",
        "/docs",
        "/",
        "/static/app.js",
        "/dlq",
    ):
        response = anonymous.get(path)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"] == "Bearer"
    wrong = anonymous.get("/files", headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert anonymous.post("/files/1/pause", headers=REQUEST_HEADER).status_code == 401


def test_status_page_takes_the_token_once_and_keeps_a_cookie(anonymous: httpx.Client) -> None:
    first = anonymous.get("/", params={"token": TOKEN})
    assert first.status_code == 303 and first.headers["location"] == "/"
    assert "httponly" in first.headers["set-cookie"].lower()
    page = anonymous.get("/")  # the client kept the cookie
    assert page.status_code == 200
    assert "<title>hookdrop status</title>" in page.text
    assert anonymous.get("/static/app.js").status_code == 200
    assert anonymous.get("/overview").status_code == 200
    assert anonymous.get("/", params={"token": "wrong"}).status_code == 200  # cookie still ok
    anonymous.cookies.clear()
    assert anonymous.get("/", params={"token": "wrong"}).status_code == 401


def test_openapi_and_offline_docs(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    for path in (
        "/files",
        "/files/{file_id}",
        "/files/{file_id}/result",
        "/files/{file_id}/events",
        "/files/{file_id}/pause",
        "/dlq",
        "/dlq/replay",
        "/metrics",
        "/readyz",
        "/healthz",
        "/overview",
        "/throughput",
    ):
        assert path in spec["paths"], path
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "/docs-static/swagger-ui-bundle.js" in docs.text  # no CDN needed
    assert client.get("/docs-static/swagger-ui-bundle.js").status_code == 200


def test_readyz_checks_both_servers(client: httpx.Client) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"ready": True, "redis": "ok", "postgres": "ok"}


def test_readyz_is_503_naming_redis_when_redis_is_down(asettings: Settings) -> None:
    dead = redis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    app = create_app(asettings, lambda: Store(connections.database_url(asettings)), dead)

    async def probe() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            return await c.get("/readyz", headers={"authorization": f"Bearer {TOKEN}"})

    try:
        response = asyncio.run(probe())
    finally:
        app.state.hub.pool.close()
        dead.close()
    assert response.status_code == 503
    body = response.json()
    assert body["ready"] is False
    assert body["redis"].startswith("failed")
    assert body["postgres"] == "ok"


def test_a_port_in_use_is_a_config_error(asettings: Settings) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match="HOOKDROP_API_LISTEN"):
            run_api_in_thread(asettings.replace(api_listen=("127.0.0.1", port)))


# -- files ---------------------------------------------------------------------------------


def test_files_status_and_result(client: httpx.Client, store: Store) -> None:
    file_id, _ = make_file(store, 12)
    listed = client.get("/files").json()
    assert [f["id"] for f in listed["files"]] == [file_id]
    status = client.get(f"/files/{file_id}").json()
    assert status["counts"]["alerts"] == 12
    assert status["counts"]["queued"] == 12
    assert status["counts"]["invalid"] == 1
    assert status["status"] == "delivering" and status["finished"] is False
    result = client.get(f"/files/{file_id}/result", params={"limit": 5}).json()
    assert result["row_errors"] == [{"line_no": 14, "reason": "no user id", "excerpt": ",oops"}]
    assert result["row_errors_total"] == 1
    missing = client.get("/files/987654")
    assert missing.status_code == 404
    assert missing.json() == {"error": "no file with id 987654"}
    assert client.get("/files/abc").status_code == 422
    assert client.get("/files", params={"limit": 0}).status_code == 422


def test_pause_resume_cancel_and_their_conflicts(
    client: httpx.Client,
    store: Store,
    rconn: redis.Redis,
    asettings: Settings,
) -> None:
    file_id, _ = make_file(store, 10)
    paused = client.post(f"/files/{file_id}/pause")
    assert paused.status_code == 200 and paused.json()["paused"] is True
    assert rconn.exists(asettings.keys.paused(file_id))
    resumed = client.post(f"/files/{file_id}/resume").json()
    assert resumed["paused"] is False and resumed["requeued"] == 10
    assert rconn.llen(f"rq:queue:{asettings.keys.notifier_queue}") == 1
    cancelled = client.post(f"/files/{file_id}/cancel").json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["counts"]["cancelled"] == 10
    again = client.post(f"/files/{file_id}/pause")
    assert again.status_code == 409 and "cancelled" in again.json()["error"]
    assert client.post("/files/55555/cancel").status_code == 404
    assert client.post(f"/files/{file_id}/resend").status_code == 409  # its copy is gone


def test_dlq_list_and_replay(client: httpx.Client, store: Store) -> None:
    file_id, ids = make_file(store, 4)
    with store.transaction() as conn:
        conn.execute(
            "UPDATE alerts SET status = 'dead', attempts = 12, last_error = 'HTTP 503'"
            " WHERE id = ANY(%s)",
            (ids[:3],),
        )
        conn.execute("UPDATE files SET dead = 3 WHERE id = %s", (file_id,))
    listed = client.get("/dlq", params={"status": "dead"}).json()
    assert listed["dead"] == 3
    assert sorted(a["id"] for a in listed["alerts"]) == sorted(ids[:3])
    assert client.get("/dlq", params={"status": "delivered"}).status_code == 400
    replayed = client.post("/dlq/replay", params={"file_id": file_id, "status": "dead"})
    assert replayed.json() == {"replayed": 3, "file_id": file_id}
    assert client.get("/dlq", params={"status": "dlq"}).json()["dlq"] == 3
    assert client.post("/dlq/replay", params={"file_id": 999}).status_code == 404


def test_overview_and_throughput(
    client: httpx.Client,
    store: Store,
    rconn: redis.Redis,
    asettings: Settings,
) -> None:
    make_file(store, 3)
    now = int(rconn.time()[0])
    rconn.hset(
        asettings.keys.outcomes,
        mapping={f"{now - 5}:ok": 70, f"{now - 5}:throttled": 2, f"{now - 200}:ok": 9},
    )
    rconn.set(asettings.keys.backpressure, "1", px=4000)
    series = client.get("/throughput").json()["series"]
    assert len(series) == 120
    assert {"t": now - 5, "ok": 70, "throttled": 2} in series
    assert all(point["t"] != now - 200 for point in series)
    overview = client.get("/overview").json()
    assert overview["files"]["active"] == 1
    assert overview["backpressure"]["active"] is True
    assert 0 < overview["backpressure"]["seconds_left"] <= 4
    assert overview["delivered_per_second"] == 7.0  # 70 in the last 10 s
    assert overview["queues"] == {"batcher": 0, "notifier": 0}


def test_metrics_parse_and_carry_the_numbers(
    client: httpx.Client,
    store: Store,
    rconn: redis.Redis,
    asettings: Settings,
    control: Control,
) -> None:
    file_id, ids = make_file(store, 6)
    enqueue_deliveries(rconn, asettings.keys, file_id, [(1, ids)])
    control.cancel(file_id)
    observe_latencies(rconn, asettings.keys, [3.0, 40.0, 2000.0])
    rconn.set(asettings.keys.backpressure, "1", px=3000)
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    assert samples[("hookdrop_alerts_total", (("status", "cancelled"),))] == 6
    assert samples[("hookdrop_alerts_total", (("status", "delivered"),))] == 0
    assert samples[("hookdrop_invalid_rows_total", ())] == 1
    assert samples[("hookdrop_queue_depth", (("queue", "notifier"),))] == 1
    assert samples[("hookdrop_backpressure_active", ())] == 1
    assert 0 < samples[("hookdrop_backpressure_seconds_left", ())] <= 3
    assert samples[("hookdrop_dlq_size", ())] == 0
    assert samples[("hookdrop_active_files", ())] == 0
    assert samples[("hookdrop_delivery_latency_seconds_count", ())] == 3
    assert samples[("hookdrop_delivery_latency_seconds_bucket", (("le", "0.005"),))] == 1
    assert samples[("hookdrop_delivery_latency_seconds_bucket", (("le", "0.05"),))] == 2
    assert samples[("hookdrop_delivery_latency_seconds_bucket", (("le", "+Inf"),))] == 3
    assert samples[("hookdrop_delivery_latency_seconds_sum", ())] == pytest.approx(2.043)


# -- live updates --------------------------------------------------------------------------


def test_events_stream_status_until_the_file_is_finished(
    client: httpx.Client,
    store: Store,
    control: Control,
) -> None:
    file_id, _ = make_file(store, 5)
    events: list[tuple[str, dict[str, object]]] = []
    with client.stream("GET", f"/files/{file_id}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        kind = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((kind, json.loads(line.removeprefix("data: "))))
                if len(events) == 1:
                    control.cancel(file_id)  # the stream reports it, then ends
    assert events[0][0] == "status" and events[0][1]["status"] == "delivering"
    assert events[-2][0] == "status" and events[-2][1]["status"] == "cancelled"
    assert events[-1] == ("end", {})
    assert client.get("/files/31337/events").status_code == 404


def test_websocket_subscribe_gets_status_on_change(
    api: ApiServer,
    store: Store,
    control: Control,
) -> None:
    file_id, _ = make_file(store, 5)
    url = f"ws://127.0.0.1:{api.port}/ws"
    with ws_connect(url, additional_headers={"authorization": f"Bearer {TOKEN}"}) as ws:
        ws.send(json.dumps({"subscribe": file_id}))
        first = json.loads(ws.recv(timeout=10))
        assert (first["id"], first["status"]) == (file_id, "delivering")
        control.cancel(file_id)
        second = json.loads(ws.recv(timeout=10))
        assert (second["id"], second["status"]) == (file_id, "cancelled")
        ws.send(json.dumps({"fileId": 424242}))
        assert json.loads(ws.recv(timeout=10)) == {
            "error": "no file with id 424242",
            "fileId": 424242,
        }
        ws.send("not json")
        assert "error" in json.loads(ws.recv(timeout=10))
    with pytest.raises(InvalidStatus), ws_connect(url):
        pass


# -- uploads -------------------------------------------------------------------------------


def inbox_files(settings: Settings) -> list[str]:
    return sorted(p.name for p in settings.inbox.iterdir() if p.is_file())


def test_raw_upload_is_streamed_into_the_inbox(client: httpx.Client, asettings: Settings) -> None:
    def body() -> Iterator[bytes]:
        yield b"user_id,message\n"
        for n in range(2000):
            yield f"u{n},alert {n}\n".encode()

    response = client.post("/files", params={"name": "big.csv"}, content=body())
    assert response.status_code == 201
    assert response.json()["name"] == "big.csv"
    written = (asettings.inbox / "big.csv").read_text().splitlines()
    assert len(written) == 2001 and written[-1] == "u1999,alert 1999"
    assert inbox_files(asettings) == ["big.csv"]
    taken = client.post("/files", params={"name": "big.csv"}, content=b"x,y\n")
    assert taken.status_code == 409
    assert inbox_files(asettings) == ["big.csv"]


def test_multipart_upload_uses_the_file_name(client: httpx.Client, asettings: Settings) -> None:
    response = client.post(
        "/files",
        data={"note": "hi"},
        files={"file": ("tuesday.csv", b"user_id,message\nu1,hello\n", "text/csv")},
    )
    assert response.status_code == 201, response.text
    assert (asettings.inbox / "tuesday.csv").read_bytes() == b"user_id,message\nu1,hello\n"
    renamed = client.post(
        "/files", params={"name": "wed.csv"}, files={"upload": ("ignored.csv", b"a,b\n")}
    )
    assert renamed.json()["name"] == "wed.csv"
    no_file = client.post("/files", files={"note": (None, "only a field")})
    assert no_file.status_code == 400
    assert "no file part" in no_file.json()["error"]


@pytest.mark.parametrize("name", ["../up.csv", "a/b.csv", ".hidden", "x.part", "nul\x00.csv"])
def test_upload_refuses_bad_names(client: httpx.Client, asettings: Settings, name: str) -> None:
    response = client.post("/files", params={"name": name}, content=b"u,m\n")
    assert response.status_code == 400
    assert "error" in response.json()
    assert inbox_files(asettings) == []
    assert [p for p in asettings.inbox.iterdir() if p.name.endswith(".part")] == []


def test_upload_without_a_name_is_400(client: httpx.Client) -> None:
    assert client.post("/files", content=b"u,m\n").status_code == 400


def test_upload_past_the_size_limit_is_413_and_leaves_nothing(asettings: Settings) -> None:
    conn = redis.Redis.from_url(connections.redis_url(asettings))
    app = create_app(
        asettings, lambda: Store(connections.database_url(asettings)), conn, max_upload_bytes=1000
    )

    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b"x" * 300

    async def upload() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        headers = {"authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://localhost", headers=headers
        ) as c:

            async def streamed() -> Iterator[bytes]:  # type: ignore[misc]
                for chunk in chunks():
                    yield chunk

            declared = await c.post("/files", params={"name": "a.csv"}, content=b"y" * 1001)
            chunked = await c.post("/files", params={"name": "b.csv"}, content=streamed())
            fits = await c.post("/files", params={"name": "c.csv"}, content=b"z" * 1000)
            return [declared, chunked, fits]

    try:
        declared, chunked, fits = asyncio.run(upload())
    finally:
        app.state.hub.pool.close()
        conn.close()
    assert declared.status_code == 413
    assert chunked.status_code == 413 and "1000 bytes" in chunked.json()["error"]
    assert fits.status_code == 201
    assert inbox_files(asettings) == ["c.csv"]
    assert not any(p.name.startswith(".") for p in Path(asettings.inbox).iterdir())
