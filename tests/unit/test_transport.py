"""The client from ``workers.transport.make_client``: respx mocking and the real transport."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import httpx
import pytest
import respx

from tests.helpers import free_port
from workers.classify import VerdictKind, classify_error
from workers.transport import WebhookClient, WebhookTransport, make_client

T = TypeVar("T")

URL = "https://receiver.example/hooks"
WEBHOOK_HEADERS = {
    "webhook-id": "msg_0001",
    "webhook-timestamp": "1700000000",
    "webhook-signature": "v1,c2lnbmF0dXJl",
}
PAYLOAD = {"user_id": "u-1", "message": "hello"}


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


# --- respx --------------------------------------------------------------------------------


def test_respx_using_httpx_intercepts_and_sees_json_and_headers() -> None:
    async def scenario() -> None:
        async with make_client(timeout=5, concurrency=4, headers={"user-agent": "hookdrop"}) as c:
            with respx.mock(using="httpx") as router:
                route = router.post(URL).respond(200, json={"ok": True})
                response = await c.post(URL, json=PAYLOAD, headers=WEBHOOK_HEADERS)
            assert response.status_code == 200
            assert response.json() == {"ok": True}
            sent = route.calls.last.request
            assert json.loads(sent.content) == PAYLOAD
            assert sent.headers["content-type"] == "application/json"
            assert sent.headers["user-agent"] == "hookdrop"
            for name, value in WEBHOOK_HEADERS.items():
                assert sent.headers[name] == value

    run(scenario())


@pytest.mark.parametrize("status", [429, 500, 503])
def test_error_statuses_surface_with_retry_after(status: int) -> None:
    async def scenario() -> None:
        async with make_client(timeout=5, concurrency=4) as c:
            with respx.mock(using="httpx") as router:
                router.post(URL).respond(status, headers={"Retry-After": "7"}, text="busy")
                response = await c.post(URL, json=PAYLOAD)
            assert response.status_code == status
            assert response.headers["retry-after"] == "7"
            assert response.text == "busy"

    run(scenario())


@pytest.mark.parametrize(
    "error", [httpx.ReadTimeout, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.WriteTimeout]
)
def test_respx_timeouts_surface_as_timeout_exception(error: type[httpx.TimeoutException]) -> None:
    async def scenario() -> None:
        async with make_client(timeout=5, concurrency=4) as c:
            with respx.mock(using="httpx") as router:
                router.post(URL).mock(side_effect=error)
                with pytest.raises(httpx.TimeoutException):
                    await c.post(URL, json=PAYLOAD)

    run(scenario())


def test_respx_router_as_transport_override() -> None:
    async def scenario() -> None:
        router = respx.Router(assert_all_called=True)
        route = router.post(URL).respond(202)
        mock = httpx.MockTransport(router.async_handler)
        async with make_client(timeout=5, concurrency=4, transport=mock) as c:
            response = await c.post(URL, json=PAYLOAD, headers=WEBHOOK_HEADERS)
        assert response.status_code == 202
        assert route.call_count == 1
        router.assert_all_called()

    run(scenario())


def test_cookies_from_responses_are_not_sent_back() -> None:
    async def scenario() -> None:
        async with make_client(timeout=5, concurrency=4) as c:
            assert isinstance(c, WebhookClient)
            with respx.mock(using="httpx") as router:
                route = router.post(URL).respond(200, headers={"Set-Cookie": "session=abc"})
                await c.post(URL, json=PAYLOAD)
                await c.post(URL, json=PAYLOAD)
            assert "cookie" not in route.calls.last.request.headers
            assert not c.cookies

    run(scenario())


# --- the real transport against local sockets ---------------------------------------------


Respond = Callable[[bytes, bytes], Awaitable[bytes | None]]


def http_response(
    status: int = 200, body: bytes = b'{"ok":true}', headers: dict[str, str] | None = None
) -> bytes:
    lines = [f"HTTP/1.1 {status} Whatever", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def ok_response(head: bytes, body: bytes) -> bytes | None:
    return http_response()


class Receiver:
    """A minimal HTTP/1.1 keep-alive server that counts the connections it accepts.

    ``respond`` gets each request's head and body and returns the raw response, or None
    to close the connection without answering.
    """

    def __init__(self, respond: Respond = ok_response) -> None:
        self.respond = respond
        self.connections = 0
        self.requests: list[tuple[bytes, bytes]] = []
        self.tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self.url = ""

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                self.requests.append((head, body))
                answer = await self.respond(head, body)
                if answer is None:
                    return
                writer.write(answer)
                await writer.drain()
                if b"\r\nconnection: close\r\n" in answer.split(b"\r\n\r\n")[0].lower() + b"\r\n":
                    return  # as a server does after an answer that ends with the connection
        finally:
            writer.close()

    async def __aenter__(self) -> Receiver:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self._server.wait_closed()


@contextlib.asynccontextmanager
async def receiver_and_client(
    respond: Respond = ok_response, *, timeout: float = 5, concurrency: int = 4
) -> AsyncIterator[tuple[Receiver, httpx.AsyncClient]]:
    async with (
        Receiver(respond) as receiver,
        make_client(timeout=timeout, concurrency=concurrency) as client,
    ):
        yield receiver, client


def test_real_transport_sends_json_and_headers() -> None:
    async def scenario() -> None:
        async with receiver_and_client() as (receiver, c):
            response = await c.post(receiver.url, json=PAYLOAD, headers=WEBHOOK_HEADERS)
            assert response.status_code == 200
            assert response.json() == {"ok": True}
            assert response.http_version == "HTTP/1.1"
            assert response.reason_phrase == "Whatever"
        head, body = receiver.requests[0]
        assert json.loads(body) == PAYLOAD
        assert head.startswith(b"POST /hook HTTP/1.1\r\n")
        lines = head.decode().split("\r\n")[1:]
        sent = {n.strip().lower(): v.strip() for n, _, v in (x.partition(":") for x in lines if x)}
        assert sent["content-type"] == "application/json"
        for name, value in WEBHOOK_HEADERS.items():
            assert sent[name] == value

    run(scenario())


def test_real_transport_streamed_body_and_url_credentials() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"user_id": '
        yield b'"u-2"}'

    async def scenario() -> None:
        async with receiver_and_client() as (receiver, c):
            url = receiver.url.replace("http://", "http://user:secret@")
            response = await c.post(url, content=chunks())
            assert response.status_code == 200
        head, body = receiver.requests[0]
        assert json.loads(body) == {"user_id": "u-2"}
        assert b"\r\nauthorization: basic " in head.lower()
        assert b"transfer-encoding" not in head.lower()

    run(scenario())


def test_real_transport_reuses_one_connection() -> None:
    async def scenario() -> None:
        async with receiver_and_client(concurrency=4) as (receiver, c):
            for _ in range(50):
                assert (await c.post(receiver.url, json=PAYLOAD)).status_code == 200
            assert receiver.connections == 1
            responses = await asyncio.gather(
                *(c.post(receiver.url, json=PAYLOAD) for _ in range(100))
            )
            assert all(r.status_code == 200 for r in responses)
            assert receiver.connections <= 4
        assert len(receiver.requests) == 150

    run(scenario())


def test_real_transport_surfaces_429_with_retry_after() -> None:
    async def busy(head: bytes, body: bytes) -> bytes | None:
        return http_response(429, b"slow down", {"Retry-After": "30"})

    async def scenario() -> None:
        async with receiver_and_client(busy) as (receiver, c):
            response = await c.post(receiver.url, json=PAYLOAD)
            assert response.status_code == 429
            assert response.headers["Retry-After"] == "30"
            assert response.text == "slow down"

    run(scenario())


def test_real_transport_decodes_gzip_bodies() -> None:
    async def zipped(head: bytes, body: bytes) -> bytes | None:
        return http_response(200, gzip.compress(b'{"ok":1}'), {"Content-Encoding": "gzip"})

    async def scenario() -> None:
        async with receiver_and_client(zipped) as (receiver, c):
            assert (await c.post(receiver.url, json=PAYLOAD)).json() == {"ok": 1}

    run(scenario())


def test_real_transport_read_timeout() -> None:
    async def hang(head: bytes, body: bytes) -> bytes | None:
        await asyncio.Event().wait()  # never answers; cancelled when the receiver stops
        return None

    async def scenario() -> None:
        async with receiver_and_client(hang, timeout=0.2) as (receiver, c):
            with pytest.raises(httpx.ReadTimeout):
                await c.post(receiver.url, json=PAYLOAD)
            # The per-request timeout overrides the client's.
            with pytest.raises(httpx.TimeoutException):
                await c.post(receiver.url, json=PAYLOAD, timeout=0.05)

    run(scenario())


def test_real_transport_pool_timeout_when_all_connections_are_busy() -> None:
    async def hang(head: bytes, body: bytes) -> bytes | None:
        await asyncio.Event().wait()
        return None

    async def scenario() -> None:
        async with receiver_and_client(hang, timeout=5, concurrency=1) as (receiver, c):
            first = asyncio.create_task(c.post(receiver.url, json=PAYLOAD))
            while not receiver.requests:
                await asyncio.sleep(0.01)
            timeout = httpx.Timeout(5, pool=0.1)
            with pytest.raises(httpx.PoolTimeout):
                await c.post(receiver.url, json=PAYLOAD, timeout=timeout)
            first.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await first

    run(scenario())


def test_real_transport_disconnect_is_remote_protocol_error() -> None:
    async def hang_up(head: bytes, body: bytes) -> bytes | None:
        return None

    async def scenario() -> None:
        async with receiver_and_client(hang_up) as (receiver, c):
            with pytest.raises(httpx.RemoteProtocolError):
                await c.post(receiver.url, json=PAYLOAD)

    run(scenario())


def test_real_transport_reads_chunked_and_close_delimited_bodies() -> None:
    chunked = (
        b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{"a"\r\n4\r\n:1}\n\r\n0\r\n\r\n'
    )
    until_close = b'HTTP/1.1 503 Busy\r\nConnection: close\r\n\r\n{"later":true}'

    async def answers(head: bytes, body: bytes) -> bytes | None:
        return chunked if b"chunked" in head else until_close

    async def scenario() -> None:
        async with receiver_and_client(answers) as (receiver, c):
            first = await c.post(receiver.url, json=PAYLOAD, headers={"x-want": "chunked"})
            assert first.json() == {"a": 1}
            second = await c.post(receiver.url, json=PAYLOAD)
            assert second.status_code == 503
            assert second.json() == {"later": True}
            # The close-delimited answer ended its connection; the next call opens another.
            third = await c.post(receiver.url, json=PAYLOAD, headers={"x-want": "chunked"})
            assert third.status_code == 200
            assert receiver.connections == 2

    run(scenario())


def test_real_transport_answer_in_small_pieces() -> None:
    """A response that arrives a few bytes at a time is put together whole."""

    class Trickle(Receiver):
        async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            answer = http_response(201, b'{"slow":"yes"}', {"X-Extra": "1"})
            for start in range(0, len(answer), 3):
                writer.write(answer[start : start + 3])
                await writer.drain()
                await asyncio.sleep(0)
            writer.close()

    async def scenario() -> None:
        async with Trickle() as receiver, make_client(timeout=5, concurrency=1) as c:
            response = await c.post(receiver.url, json=PAYLOAD)
            assert response.status_code == 201
            assert response.json() == {"slow": "yes"}
            assert response.headers["x-extra"] == "1"

    run(scenario())


def test_real_transport_replaces_a_connection_the_server_closed_while_idle() -> None:
    async def answer_then_close(head: bytes, body: bytes) -> bytes | None:
        return http_response()

    async def scenario() -> None:
        async with receiver_and_client(answer_then_close) as (receiver, c):
            assert (await c.post(receiver.url, json=PAYLOAD)).status_code == 200
            for task in receiver.tasks:  # the server drops its idle keep-alive connection
                task.cancel()
            await asyncio.gather(*receiver.tasks, return_exceptions=True)
            await asyncio.sleep(0.05)  # let the FIN reach the client
            assert (await c.post(receiver.url, json=PAYLOAD)).status_code == 200
            assert receiver.connections == 2

    run(scenario())


def test_real_transport_refuses_an_invalid_answer() -> None:
    async def garbage(head: bytes, body: bytes) -> bytes | None:
        return b"HELLO THERE\r\n\r\n"

    async def scenario() -> None:
        async with receiver_and_client(garbage) as (receiver, c):
            with pytest.raises(httpx.RemoteProtocolError):
                await c.post(receiver.url, json=PAYLOAD)

    run(scenario())


def test_real_transport_under_uvloop() -> None:
    """The notifiers run on uvloop, whose transports are not asyncio's own classes."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        async with receiver_and_client() as (receiver, c):
            assert isinstance(c, WebhookClient)
            request = c.build_request("POST", receiver.url, json=PAYLOAD)
            responses = await asyncio.gather(*(c.deliver(request) for _ in range(20)))
            assert all(r.status_code == 200 and r.json() == {"ok": True} for r in responses)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


def test_real_transport_refused_connection_is_connect_error() -> None:
    async def scenario() -> None:
        async with make_client(timeout=2, concurrency=2) as c:
            with pytest.raises(httpx.ConnectError) as caught:
                await c.post(f"http://127.0.0.1:{free_port()}/hook", json=PAYLOAD)
            assert isinstance(caught.value, httpx.TransportError)
            assert caught.value.request.method == "POST"

    run(scenario())


def test_plain_respx_mock_does_not_intercept_the_webhook_transport() -> None:
    """Documents why tests must use ``respx.mock(using="httpx")`` or a transport override."""

    async def scenario() -> None:
        async with receiver_and_client() as (receiver, c):
            with respx.mock(assert_all_called=False) as router:
                route = router.post(receiver.url).respond(418)
                response = await c.post(receiver.url, json=PAYLOAD)
            assert response.status_code == 200
            assert not route.called
            assert len(receiver.requests) == 1

    run(scenario())


def test_aclose_closes_pooled_connections_and_refuses_new_requests() -> None:
    async def scenario() -> None:
        async with Receiver() as receiver:
            c = make_client(timeout=5, concurrency=2)
            await c.post(receiver.url, json=PAYLOAD)
            await c.aclose()
            for _ in range(100):  # the receiver sees EOF and its handler returns
                if not any(not t.done() for t in receiver.tasks):
                    break
                await asyncio.sleep(0.01)
            assert all(t.done() for t in receiver.tasks)
            with pytest.raises(RuntimeError):
                await c.post(receiver.url, json=PAYLOAD)

    run(scenario())


def test_transport_refuses_a_second_event_loop() -> None:
    transport = WebhookTransport(max_connections=1)
    with asyncio.Runner() as first:
        receiver = Receiver()
        first.run(receiver.__aenter__())
        request = httpx.Request("POST", receiver.url, json=PAYLOAD)
        assert first.run(transport.handle_async_request(request)).status_code == 200
        with asyncio.Runner() as second, pytest.raises(RuntimeError, match="event loop"):
            second.run(transport.handle_async_request(request))
        first.run(transport.aclose())
        first.run(receiver.__aexit__())


def test_max_connections_must_be_positive() -> None:
    with pytest.raises(ValueError):
        WebhookTransport(max_connections=0)


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "a\x00b"])
def test_real_transport_refuses_a_header_value_with_a_line_break_or_nul(value: str) -> None:
    async def scenario() -> None:
        async with receiver_and_client() as (receiver, c):
            with pytest.raises(httpx.LocalProtocolError, match="refused to send header"):
                await c.post(receiver.url, content=b"{}", headers={"X-Note": value})
        assert receiver.requests == []
        verdict = classify_error(httpx.LocalProtocolError("refused to send header 'x'"))
        assert verdict.kind == VerdictKind.REJECTED

    run(scenario())
