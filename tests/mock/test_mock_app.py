"""The mock's ASGI app driven in-process through httpx.ASGITransport."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from notifier_mock import MockApp, MockConfig, create_app
from notifier_mock.reset import ConnectionAborted

SECRET = "whsec_" + base64.b64encode(b"m" * 32).decode()
WALL = 1_750_000_000.25


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self, now: float = 500.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


Scenario = Callable[[httpx.AsyncClient], Awaitable[None]]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_app(clock: FakeClock) -> Iterator[Callable[..., MockApp]]:
    apps: list[MockApp] = []

    def make(**settings: Any) -> MockApp:
        app = create_app(
            MockConfig(**settings), clock=clock, wall_clock=lambda: WALL, rng=random.Random(7)
        )
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


def drive(app: MockApp, scenario: Scenario) -> None:
    async def main() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://mock") as client:
            await scenario(client)

    asyncio.run(main())


def hook(
    client: httpx.AsyncClient, user: object = "u1", msg_id: str | None = "msg_1", **headers: str
) -> Awaitable[httpx.Response]:
    sent = {"webhook-id": msg_id} if msg_id is not None else {}
    sent.update(headers)
    return client.post("/", json={"userId": user, "alertMessage": "hi"}, headers=sent)


def test_accepts_and_counts_duplicates_by_webhook_id(make_app: Callable[..., MockApp]) -> None:
    app = make_app()

    async def scenario(client: httpx.AsyncClient) -> None:
        for msg_id, user in [("a", "u1"), ("b", "u1"), ("a", "u1"), ("c", 42), ("a", "u1")]:
            response = await hook(client, user, msg_id)
            assert response.status_code == 200
            assert response.content == b'{"ok":true}'
        stats = (await client.get("/stats")).json()
        assert {key: stats[key] for key in ("received", "accepted", "unique", "duplicates")} == {
            "received": 5,
            "accepted": 5,
            "unique": 3,
            "duplicates": 2,
        }
        assert stats["per_user"] == {"u1": 4, "42": 1}
        assert stats["in_flight"] == 0
        assert stats["current"]["rate"] == 0.0
        brief = (await client.get("/stats", params={"per_user": "0"})).json()
        assert "per_user" not in brief and brief["accepted"] == 5

    drive(app, scenario)
    assert app.state.counters.accepted == 5
    assert app.state.counters.seen_ids == {"a", "b", "c"}


def test_without_webhook_id_duplicates_are_found_by_body(make_app: Callable[..., MockApp]) -> None:
    app = make_app()

    async def scenario(client: httpx.AsyncClient) -> None:
        for user in ["u1", "u2", "u1"]:
            assert (await hook(client, user, msg_id=None)).status_code == 200

    drive(app, scenario)
    assert (app.state.counters.unique, app.state.counters.duplicates) == (2, 1)


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2]",
        b'{"alertMessage": "x"}',
        b'{"userId": ""}',
        b'{"userId": true}',
        b'{"userId": null}',
    ],
)
def test_bad_request(make_app: Callable[..., MockApp], body: bytes) -> None:
    app = make_app()

    async def scenario(client: httpx.AsyncClient) -> None:
        response = await client.post("/", content=body, headers={"webhook-id": "x"})
        assert response.status_code == 400
        assert response.json()["error"]

    drive(app, scenario)
    assert (app.state.counters.bad_request, app.state.counters.accepted) == (1, 0)


def test_signature_checked_when_a_secret_is_set(make_app: Callable[..., MockApp]) -> None:
    app = make_app(secret=SECRET)
    body = json.dumps({"userId": "u9", "alertMessage": "signed"})
    now = datetime.now(UTC)
    good = {
        "webhook-id": "msg_s",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(SECRET).sign("msg_s", now, body),
    }
    forged = dict(
        good,
        **{
            "webhook-signature": Webhook("whsec_" + base64.b64encode(b"x" * 32).decode()).sign(
                "msg_s", now, body
            )
        },
    )
    missing = {key: value for key, value in good.items() if key != "webhook-signature"}

    async def scenario(client: httpx.AsyncClient) -> None:
        assert (await client.post("/", content=body, headers=good)).status_code == 200
        for headers in (forged, missing):
            response = await client.post("/", content=body, headers=headers)
            assert response.status_code == 401
        tampered = await client.post("/", content=body.replace("u9", "u8"), headers=good)
        assert tampered.status_code == 401

    drive(app, scenario)
    counters = app.state.counters
    assert (counters.accepted, counters.bad_signature) == (1, 3)


def test_error_rate_one_answers_5xx(make_app: Callable[..., MockApp]) -> None:
    app = make_app(error_rate=1.0)
    statuses: list[int] = []

    async def scenario(client: httpx.AsyncClient) -> None:
        for number in range(60):
            statuses.append((await hook(client, msg_id=f"m{number}")).status_code)

    drive(app, scenario)
    assert set(statuses) == {500, 502, 503}
    assert (app.state.counters.errors_5xx, app.state.counters.accepted) == (60, 0)


def test_error_rate_is_the_share_of_requests(make_app: Callable[..., MockApp]) -> None:
    app = make_app(error_rate=0.25)

    async def scenario(client: httpx.AsyncClient) -> None:
        for number in range(400):
            await hook(client, msg_id=f"m{number}")

    drive(app, scenario)
    assert 60 <= app.state.counters.errors_5xx <= 140
    assert app.state.counters.accepted == 400 - app.state.counters.errors_5xx


def test_rate_limit_answers_429_with_retry_after_seconds(
    make_app: Callable[..., MockApp], clock: FakeClock
) -> None:
    app = make_app(rate=2, burst=2)

    async def scenario(client: httpx.AsyncClient) -> None:
        assert [(await hook(client, msg_id=f"m{n}")).status_code for n in range(2)] == [200, 200]
        refused = await hook(client, msg_id="m2")
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"  # 0.5 s rounded up
        clock.now += 0.5
        assert (await hook(client, msg_id="m2")).status_code == 200
        assert (await hook(client, msg_id="m3")).status_code == 429

    drive(app, scenario)
    counters = app.state.counters
    assert (counters.received, counters.accepted, counters.throttled) == (5, 3, 2)


def test_retry_after_as_http_date(make_app: Callable[..., MockApp]) -> None:
    app = make_app(rate=0.25, burst=1, retry_after_mode="date")

    async def scenario(client: httpx.AsyncClient) -> None:
        await hook(client, msg_id="first")
        refused = await hook(client, msg_id="second")
        assert refused.status_code == 429
        when = parsedate_to_datetime(refused.headers["retry-after"])
        assert when.timestamp() == 1_750_000_005  # WALL + 4 s, rounded up to the second
        await client.post("/admin/config", json={"retry_after_mode": "none"})
        assert "retry-after" not in (await hook(client, msg_id="third")).headers

    drive(app, scenario)


def test_changing_rate_while_running(make_app: Callable[..., MockApp], clock: FakeClock) -> None:
    app = make_app()

    async def scenario(client: httpx.AsyncClient) -> None:
        new = (await client.post("/admin/config", json={"rate": 10})).json()
        assert (new["rate"], new["burst"], new["effective_burst"]) == (10.0, None, 1.0)
        codes = [(await hook(client, msg_id=f"m{n}")).status_code for n in range(5)]
        assert codes == [200, 429, 429, 429, 429]
        clock.now += 0.1
        assert (await hook(client, msg_id="m9")).status_code == 200
        await client.post("/admin/config", json={"rate": 0})
        codes = [(await hook(client, msg_id=f"n{n}")).status_code for n in range(20)]
        assert set(codes) == {200}

    drive(app, scenario)


def test_throttle_burst_forces_429s(make_app: Callable[..., MockApp]) -> None:
    app = make_app()

    async def scenario(client: httpx.AsyncClient) -> None:
        config = (await client.post("/admin/config", json={"throttle_burst": 3})).json()
        assert config["throttle_burst"] == 3
        codes = [(await hook(client, msg_id=f"m{n}")).status_code for n in range(5)]
        assert codes == [429, 429, 429, 200, 200]
        assert (await client.get("/admin/config")).json()["throttle_burst"] == 0

    drive(app, scenario)


def test_throttle_burst_leaves_the_limiter_tokens_alone(make_app: Callable[..., MockApp]) -> None:
    app = make_app(rate=1, burst=2)

    async def scenario(client: httpx.AsyncClient) -> None:
        await client.post("/admin/config", json={"throttle_burst": 2})
        codes = [(await hook(client, msg_id=f"m{n}")).status_code for n in range(5)]
        assert codes == [429, 429, 200, 200, 429]

    drive(app, scenario)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rate": -1}, "rate must be 0 or more"),
        ({"error_rate": "lots"}, "error_rate must be a number"),
        ({"retry_after_mode": "later"}, "retry_after_mode must be one of"),
        ({"port": 9}, "port cannot be changed while running"),
        ({"colour": "red"}, "unknown setting 'colour'"),
        ({"throttle_burst": -2}, "throttle_burst must be a whole number"),
        ({"rate": 5, "secret": "nope"}, "starting with whsec_"),
    ],
)
def test_invalid_config_changes_are_400_and_change_nothing(
    make_app: Callable[..., MockApp], changes: dict[str, Any], message: str
) -> None:
    app = make_app()

    async def scenario(client: httpx.AsyncClient) -> None:
        before = (await client.get("/admin/config")).json()
        response = await client.post("/admin/config", json=changes)
        assert response.status_code == 400
        assert message in response.json()["error"]
        assert (await client.get("/admin/config")).json() == before
        not_object = await client.post("/admin/config", content=b"[1]")
        assert not_object.status_code == 400

    drive(app, scenario)


def test_reset_zeroes_counters(make_app: Callable[..., MockApp]) -> None:
    app = make_app()

    async def scenario(client: httpx.AsyncClient) -> None:
        await hook(client)
        await hook(client)
        assert (await client.post("/admin/reset")).status_code == 200
        stats = (await client.get("/stats")).json()
        assert (stats["received"], stats["accepted"], stats["unique"], stats["per_user"]) == (
            0,
            0,
            0,
            {},
        )
        await hook(client)
        assert (await client.get("/stats")).json()["duplicates"] == 0

    drive(app, scenario)


def test_rate_1s_counts_the_last_full_second(
    make_app: Callable[..., MockApp], clock: FakeClock
) -> None:
    app = make_app()

    async def scenario(client: httpx.AsyncClient) -> None:
        clock.now = 1000.2
        for number in range(7):
            await hook(client, msg_id=f"m{number}")
        assert (await client.get("/stats")).json()["rate_1s"] == 0  # second 1000 not over yet
        clock.now = 1001.5
        await hook(client, msg_id="late")
        assert (await client.get("/stats")).json()["rate_1s"] == 7
        clock.now = 1002.0
        assert (await client.get("/stats")).json()["rate_1s"] == 1
        clock.now = 1010.0
        assert (await client.get("/stats")).json()["rate_1s"] == 0

    drive(app, scenario)


def test_latency_delays_the_answer(make_app: Callable[..., MockApp]) -> None:
    app = make_app(latency_ms=60)

    async def scenario(client: httpx.AsyncClient) -> None:
        started = time.monotonic()
        assert (await hook(client)).status_code == 200
        assert time.monotonic() - started >= 0.06

    drive(app, scenario)


def test_timeout_hangs_then_answers_504(make_app: Callable[..., MockApp]) -> None:
    app = make_app(timeout_rate=1.0, timeout_hang_s=0.05)

    async def scenario(client: httpx.AsyncClient) -> None:
        assert (await hook(client)).status_code == 504

    drive(app, scenario)
    assert (app.state.counters.timeouts, app.state.counters.accepted) == (1, 0)


def test_reset_without_a_reachable_transport_raises(make_app: Callable[..., MockApp]) -> None:
    app = make_app(reset_rate=1.0)

    async def scenario(client: httpx.AsyncClient) -> None:
        with pytest.raises(ConnectionAborted):
            await hook(client)

    drive(app, scenario)
    assert app.state.counters.resets == 1


def test_admin_and_method_routing(make_app: Callable[..., MockApp]) -> None:
    app = make_app()

    async def scenario(client: httpx.AsyncClient) -> None:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/")).status_code == 405
        assert (await client.post("/stats")).status_code == 405
        assert (await client.post("/any/path", json={"userId": 1})).status_code == 200
        stats = (await client.get("/stats")).json()
        assert stats["received"] == 1
        assert stats["started_at"].endswith("+00:00")

    drive(app, scenario)


def test_audit_file_has_one_line_per_accepted_request(
    make_app: Callable[..., MockApp], tmp_path: Path
) -> None:
    audit = tmp_path / "audit.tsv"
    app = make_app(audit_path=audit, error_rate=0.5)

    async def scenario(client: httpx.AsyncClient) -> None:
        for number in range(50):
            await hook(client, user=f"user\t{number % 3}", msg_id=f"m{number}")

    drive(app, scenario)
    app.close()
    lines = audit.read_text(encoding="utf-8").splitlines()
    assert len(lines) == app.state.counters.accepted > 0
    assert all(line.count("\t") == 1 for line in lines)
    assert lines[0].split("\t")[1].startswith("user\\t")


def test_any_body_a_required_header_and_recorded_bodies(
    make_app: Callable[..., MockApp],
) -> None:
    app = make_app(any_body=True, require_header="Authorization: Bearer t", record_bodies=2)

    async def scenario(client: httpx.AsyncClient) -> None:
        good = {"authorization": "Bearer t", "webhook-id": "m1"}
        form = await client.put("/", content=b"To=u1&Body=hi", headers=good)
        assert form.status_code == 200
        text = await client.post("/", json={"text": "hi"}, headers={**good, "webhook-id": "m2"})
        assert text.status_code == 200
        again = await client.patch("/", content=b"x", headers={**good, "webhook-id": "m1"})
        assert again.status_code == 200
        missing = await client.post("/", content=b"x", headers={"webhook-id": "m3"})
        assert missing.status_code == 401
        wrong = await client.post("/", content=b"x", headers={**good, "authorization": "no"})
        assert wrong.status_code == 401
        stats = (await client.get("/stats")).json()
        assert (stats["accepted"], stats["unique"], stats["duplicates"]) == (3, 2, 1)
        assert stats["bad_request"] == 2
        assert stats["current"]["require_header"] == "Authorization: ***"
        bodies = (await client.get("/admin/bodies")).json()["bodies"]
        assert [(b["method"], b["body"]) for b in bodies] == [
            ("PUT", "To=u1&Body=hi"),
            ("POST", '{"text":"hi"}'),
        ]
        assert bodies[0]["headers"]["authorization"] == "Bearer t"

    drive(app, scenario)


@pytest.mark.parametrize(
    "settings",
    [{"require_header": "no colon"}, {"require_header": "X: "}, {"record_bodies": -1}],
)
def test_bad_new_flags_are_refused(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        MockConfig(**settings)
