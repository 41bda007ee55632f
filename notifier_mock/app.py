"""The raw ASGI application: webhook intake, faults, rate limit, stats and admin endpoints."""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs

import orjson

from notifier_mock._asgi import (
    Receive,
    Response,
    Scope,
    Send,
    error_response,
    json_response,
    read_body,
    wait_disconnect,
)
from notifier_mock.audit import AuditLog
from notifier_mock.config import THROTTLE_BURST, MockConfig, parse_throttle_burst, secret_key
from notifier_mock.faults import Fault, FaultPicker
from notifier_mock.limiter import TokenBucket
from notifier_mock.reset import abort_connection
from notifier_mock.retry_after import retry_after
from notifier_mock.signature import verify
from notifier_mock.stats import Counters

Clock = Callable[[], float]

MAX_BODY_BYTES = 1 << 20

_OK = Response(200, b'{"ok":true}')
_HUNG = error_response(504, "injected timeout")
_BAD_SIGNATURE = error_response(401, "missing or bad webhook-signature")
_FALSE_VALUES = frozenset({"0", "false", "no", "off"})
_ADMIN_PATHS = frozenset({"/stats", "/healthz", "/admin/config", "/admin/reset", "/admin/bodies"})
_WEBHOOK_METHODS = frozenset({"POST", "PUT", "PATCH"})
_MISSING_HEADER = error_response(401, "missing or wrong required header")
# Headers kept with a recorded body.
_RECORDED_HEADERS = (b"content-type", b"authorization", b"webhook-id", b"webhook-signature")
_ERRORS = {status: error_response(status, "injected error") for status in (500, 502, 503)}


class MockState:
    """Live state of one mock receiver, readable by in-process tests.

    ``config`` is replaced (never mutated) on every change; ``counters`` is reset in place.
    """

    __slots__ = ("audit", "bodies", "config", "counters", "limiter", "throttle_remaining")

    def __init__(
        self, config: MockConfig, counters: Counters, limiter: TokenBucket, audit: AuditLog | None
    ) -> None:
        self.config = config
        self.counters = counters
        self.limiter = limiter
        self.audit = audit
        self.throttle_remaining = 0
        self.bodies: list[dict[str, Any]] = []  # recorded requests (record_bodies)

    def config_dict(self) -> dict[str, Any]:
        """The current config as served by ``GET /admin/config``."""
        data = self.config.public_dict()
        data[THROTTLE_BURST] = self.throttle_remaining
        return data


class MockApp:
    """ASGI 3 application of the mock webhook receiver; build it with :func:`create_app`."""

    def __init__(
        self,
        config: MockConfig,
        *,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._wall_clock = wall_clock
        self._rng = rng if rng is not None else random.Random()
        audit = AuditLog(config.audit_path) if config.audit_path is not None else None
        self.state = MockState(
            config,
            Counters(clock, wall_clock),
            TokenBucket(config.rate, config.burst, clock),
            audit,
        )
        self._counters = self.state.counters
        self._hung: set[asyncio.Future[None]] = set()
        self._apply(config)

    def _apply(self, config: MockConfig) -> None:
        # Copies of the config on self keep the per-request path free of attribute chains.
        state = self.state
        if (config.rate, config.burst) != (state.config.rate, state.config.burst):
            state.limiter.reconfigure(config.rate, config.burst)
        state.config = config
        self._limited = config.rate > 0
        self._retry_mode = config.retry_after_mode
        self._faults = FaultPicker(config, self._rng)
        self._key = secret_key(config.secret) if config.secret is not None else None
        self._hang_s = config.timeout_hang_s
        self._any_body = config.any_body
        self._required: tuple[bytes, bytes] | None = None
        if config.require_header:
            name, _, value = config.require_header.partition(":")
            self._required = (name.strip().lower().encode(), value.strip().encode())
        self._record = config.record_bodies

    def configure(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Apply live changes (as ``POST /admin/config``); all-or-nothing, ValueError if invalid."""
        rest = dict(changes)
        throttle = None
        if THROTTLE_BURST in rest:
            throttle = parse_throttle_burst(rest.pop(THROTTLE_BURST))
        self._apply(self.state.config.with_changes(rest))
        if throttle is not None:
            self.state.throttle_remaining = throttle
        return self.state.config_dict()

    def begin_shutdown(self) -> None:
        """Cut injected hangs short so a graceful shutdown does not wait for them."""
        for waiter in self._hung:
            if not waiter.done():
                waiter.set_result(None)

    def flush(self) -> None:
        """Write buffered audit lines now."""
        if self.state.audit is not None:
            self.state.audit.flush()

    def close(self) -> None:
        """Flush and close the audit file; safe to call more than once."""
        if self.state.audit is not None:
            self.state.audit.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if scope["path"] in _ADMIN_PATHS:
                await self._admin(scope, receive, send)
            elif scope["method"] in _WEBHOOK_METHODS:
                await self._webhook(scope, receive, send)
            else:
                await error_response(405, "webhooks are POSTed").send(send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1003})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.flush()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _throttle(self, send: Send, wait_s: float) -> None:
        self._counters.throttled += 1
        value = retry_after(self._retry_mode, wait_s, self._wall_clock())
        extra = ((b"retry-after", value.encode()),) if value is not None else ()
        await Response(429, b'{"error":"rate limited"}', extra).send(send)

    async def _webhook(self, scope: Scope, receive: Receive, send: Send) -> None:
        counters = self._counters
        counters.receive()
        if self.state.throttle_remaining > 0:
            self.state.throttle_remaining -= 1
            # Forced refusals must not eat the limiter's tokens; they say "come back in 1 s".
            wait_s = max(1.0, self.state.limiter.wait_time())
            await self._throttle(send, wait_s)
            return
        if self._limited:
            wait_s = self.state.limiter.acquire()
            if wait_s > 0:
                await self._throttle(send, wait_s)
                return
        try:
            body = await read_body(receive, MAX_BODY_BYTES)
        except ValueError as exc:
            counters.bad_request += 1
            await error_response(413, str(exc)).send(send)
            return
        if body is None:
            # The client left before sending its body; nobody is there to answer.
            counters.client_gone += 1
            return
        faults = self._faults
        fault = faults.pick()
        if fault is Fault.RESET:
            counters.resets += 1
            await abort_connection(receive)
            return
        if fault is Fault.TIMEOUT:
            counters.timeouts += 1
            await self._hang(receive, send)
            return
        delay = faults.delay()
        if delay > 0:
            await asyncio.sleep(delay)
        if fault is Fault.ERROR:
            counters.errors_5xx += 1
            await _ERRORS[faults.error_status()].send(send)
            return
        await self._accept(scope, body, send)

    async def _accept(self, scope: Scope, body: bytes, send: Send) -> None:
        counters = self._counters
        msg_id = timestamp = signature = None
        if self._required is not None and self._required not in scope["headers"]:
            counters.bad_request += 1
            await _MISSING_HEADER.send(send)
            return
        if len(self.state.bodies) < self._record:
            self._keep(scope, body)
        for name, value in scope["headers"]:
            if name.startswith(b"webhook-"):
                if name == b"webhook-id":
                    msg_id = value
                elif name == b"webhook-timestamp":
                    timestamp = value
                elif name == b"webhook-signature":
                    signature = value
        if self._key is not None and not (
            msg_id
            and timestamp
            and signature
            and verify(self._key, msg_id, timestamp, body, signature)
        ):
            counters.bad_signature += 1
            await _BAD_SIGNATURE.send(send)
            return
        if self._any_body:
            user = msg_id.decode("utf-8", "replace") if msg_id else body.decode("utf-8", "replace")
        else:
            try:
                payload = orjson.loads(body)
            except orjson.JSONDecodeError:
                counters.bad_request += 1
                await error_response(400, "body is not valid JSON").send(send)
                return
            user = payload.get("userId") if isinstance(payload, dict) else None
        if isinstance(user, bool) or not isinstance(user, str | int) or user == "":
            counters.bad_request += 1
            await error_response(
                400, "body must be a JSON object with a userId (non-empty string or integer)"
            ).send(send)
            return
        user_key = user if isinstance(user, str) else str(user)
        key = (
            msg_id.decode("utf-8", "surrogateescape")
            if msg_id
            else "body:" + hashlib.blake2b(body, digest_size=16).hexdigest()
        )
        counters.accept(key, user_key)
        if self.state.audit is not None:
            self.state.audit.write(key, user_key)
        await _OK.send(send)

    def _keep(self, scope: Scope, body: bytes) -> None:
        headers = {
            name.decode(): value.decode("utf-8", "replace")
            for name, value in scope["headers"]
            if name in _RECORDED_HEADERS
        }
        self.state.bodies.append(
            {"method": scope["method"], "headers": headers, "body": body.decode("utf-8", "replace")}
        )

    async def _hang(self, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        wake: asyncio.Future[None] = loop.create_future()
        gone = loop.create_task(wait_disconnect(receive))
        self._hung.add(wake)
        try:
            await asyncio.wait(
                (wake, gone), timeout=self._hang_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            self._hung.discard(wake)
            client_left = gone.done()
            gone.cancel()
            wake.cancel()
        if not client_left:
            await _HUNG.send(send)

    async def _admin(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        state = self.state
        if path == "/healthz" and method in {"GET", "HEAD"}:
            await _OK.send(send)
        elif path == "/stats" and method == "GET":
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            per_user = query.get("per_user", ["1"])[-1].lower() not in _FALSE_VALUES
            data = state.counters.snapshot(per_user=per_user)
            data["current"] = state.config_dict()
            await json_response(200, data).send(send)
        elif path == "/admin/bodies" and method == "GET":
            await json_response(200, {"bodies": state.bodies}).send(send)
        elif path == "/admin/reset" and method == "POST":
            state.counters.reset()
            state.bodies.clear()
            await _OK.send(send)
        elif path == "/admin/config" and method == "GET":
            await json_response(200, state.config_dict()).send(send)
        elif path == "/admin/config" and method == "POST":
            await self._admin_configure(receive, send)
        else:
            await error_response(405, f"{method} is not allowed on {path}").send(send)

    async def _admin_configure(self, receive: Receive, send: Send) -> None:
        try:
            body = await read_body(receive, MAX_BODY_BYTES)
            changes = orjson.loads(body) if body else {}
            if not isinstance(changes, dict):
                raise ValueError("the body must be a JSON object of settings to change")
            result = self.configure(changes)
        except orjson.JSONDecodeError:
            await error_response(400, "the body must be a JSON object of settings").send(send)
        except ValueError as exc:
            await error_response(400, str(exc)).send(send)
        else:
            await json_response(200, result).send(send)


def create_app(
    config: MockConfig,
    *,
    clock: Clock = time.monotonic,
    wall_clock: Clock = time.time,
    rng: random.Random | None = None,
) -> MockApp:
    """Build the ASGI app for ``config``; ``clock``/``wall_clock``/``rng`` are for tests.

    ``clock`` must be monotonic (limiter, rate_1s); ``wall_clock`` gives Unix time (Retry-After
    dates, started_at). The app's ``state`` exposes config, counters and limiter.
    """
    return MockApp(config, clock=clock, wall_clock=wall_clock, rng=rng)
