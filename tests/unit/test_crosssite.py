"""The cross-site rules of the API, request by request, through the real ASGI app.

No server is needed: every request here is refused before a handler runs, or reaches
``/openapi.json`` (GET answers, POST is 405), which touches neither Redis nor PostgreSQL.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import redis

from daemon.api import create_app
from hookdrop.settings import Settings
from hookdrop.store import Store

OWN = "http://127.0.0.1:8425"
PASS = {"x-hookdrop-request": "1"}


def request(settings: Settings, method: str, headers: dict[str, str], **kwargs: Any) -> int:
    app = create_app(settings, lambda: Store("postgresql://unused"), redis.Redis())

    async def send() -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=OWN) as client:
            response = await client.request(method, "/openapi.json", headers=headers, **kwargs)
            return response.status_code

    return asyncio.run(send())


LOOPBACK = Settings()


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:8425",
        "127.0.0.1",
        "localhost:8425",
        "LOCALHOST",
        "localhost:9000",
        "[::1]:8425",
        "[::1]",
    ],
)
def test_a_loopback_listen_answers_loopback_names_on_any_port(host: str) -> None:
    assert request(LOOPBACK, "GET", {"host": host}) == 200


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "evil.example:8425",
        "127.0.0.1.nip.io:8425",
        "localhost.evil.example",
        "",
        "127.0.0.1:8425:1",
        "user@127.0.0.1",
        "127.0.0.1:99999",
        "::1",
    ],
)
def test_a_loopback_listen_refuses_any_other_host(host: str) -> None:
    assert request(LOOPBACK, "GET", {"host": host}) == 421


@pytest.mark.parametrize(
    ("listen", "allowed", "host", "status"),
    [
        (("0.0.0.0", 8425), (), "evil.example", 200),  # the token protects
        (("10.1.2.3", 8425), (), "anything.example:1", 200),
        (("0.0.0.0", 8425), ("hookdrop.example.com",), "hookdrop.example.com", 200),
        (("0.0.0.0", 8425), ("hookdrop.example.com",), "localhost:8425", 200),
        (("0.0.0.0", 8425), ("hookdrop.example.com",), "evil.example", 421),
        (("10.1.2.3", 8425), ("proxy.example:8443",), "10.1.2.3:8425", 200),
        (("10.1.2.3", 8425), ("proxy.example:8443",), "proxy.example:8443", 200),
        (("10.1.2.3", 8425), ("proxy.example:8443",), "proxy.example", 421),
        (("10.1.2.3", 8425), ("proxy.example:8443",), "localhost:8425", 421),
        (("127.0.0.1", 8425), ("proxy.example",), "proxy.example:443", 200),
    ],
)
def test_beyond_loopback_only_an_allow_list_narrows_the_hosts(
    listen: tuple[str, int],
    allowed: tuple[str, ...],
    host: str,
    status: int,
) -> None:
    settings = Settings(api_listen=listen, api_token="t", api_allowed_hosts=allowed)
    assert request(settings, "GET", {"host": host, "authorization": "Bearer t"}) == status


@pytest.mark.parametrize(
    ("host", "origin"),
    [
        ("127.0.0.1:8425", OWN),
        ("localhost", "http://localhost"),
        ("localhost", "http://localhost:80"),
        ("[::1]:8425", "http://[::1]:8425"),
    ],
)
def test_a_state_change_from_the_own_origin_passes(host: str, origin: str) -> None:
    assert request(LOOPBACK, "POST", {"host": host, "origin": origin, **PASS}) == 405


@pytest.mark.parametrize(
    "origin",
    [
        "null",
        "",
        "http://127.0.0.1:8426",
        "https://127.0.0.1:8425",
        "http://localhost:8425",
        "http://evil.example",
        f"{OWN}/",
        "file://",
        "ws://127.0.0.1:8425",
    ],
)
def test_a_state_change_from_another_origin_is_403(origin: str) -> None:
    assert request(LOOPBACK, "POST", {"host": "127.0.0.1:8425", "origin": origin, **PASS}) == 403


@pytest.mark.parametrize("site", ["cross-site", "same-site"])
def test_a_state_change_fetched_from_another_site_is_403(site: str) -> None:
    assert request(LOOPBACK, "POST", {"sec-fetch-site": site, **PASS}) == 403


def test_a_read_from_another_origin_passes() -> None:
    # The browser hides the answer from the page (no CORS headers); only the Host matters.
    assert (
        request(LOOPBACK, "GET", {"origin": "http://evil.example", "sec-fetch-site": "cross-site"})
        == 200
    )


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"content-type": "text/plain"},
        {"content-type": "application/x-www-form-urlencoded"},
        {"content-type": "multipart/form-data; boundary=x"},
        {"content-type": "Text/Plain; x=y"},
    ],
)
def test_a_state_change_a_form_could_send_is_403(headers: dict[str, str]) -> None:
    assert request(LOOPBACK, "POST", headers, content=b"x") == 403


@pytest.mark.parametrize(
    "headers",
    [
        PASS,
        {"x-hookdrop-request": ""},
        {"authorization": "Bearer anything"},
        {"content-type": "application/json"},
        {"content-type": "application/octet-stream"},
        {"content-type": "text/csv"},
    ],
)
def test_a_state_change_no_page_could_send_without_a_preflight_passes(
    headers: dict[str, str],
) -> None:
    assert request(LOOPBACK, "POST", headers, content=b"x") == 405
