"""What a notifier process keeps per endpoint: its URL, headers, signing key, HTTP client,
rate limiter and circuit breaker, built once and rebuilt only when a reload changes it."""

from __future__ import annotations

import base64
import json
import time

import httpx
import orjson
import redis

from hookdrop.endpoints import Endpoint
from hookdrop.keys import Keys
from hookdrop.signing import secret_key, sign
from hookdrop.store import AlertToSend
from workers.breaker import Breaker, BreakerPolicy
from workers.ratelimit import GlobalLimiter
from workers.transport import WebhookClient, make_client

# Held by a 429 pause longer than this, a chunk hands its alerts back (deferred) rather than
# keep a worker waiting while other endpoints have work.
DEFER_AFTER_SECONDS = 2.0


class Target:
    """One endpoint as this process calls it."""

    def __init__(self, endpoint: Endpoint, conn: redis.Redis, keys: Keys) -> None:
        self.endpoint = endpoint
        self.name = endpoint.name
        # Parsed once: httpx would otherwise parse and merge the URL on every request.
        self.url = httpx.URL(endpoint.url)
        self.method = endpoint.method
        timeout = endpoint.timeout
        self.timeout = {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
        secret = endpoint.signing_secret
        self.key = secret_key(secret) if secret else None
        scoped = keys.scoped(endpoint.name)
        self.limiter = GlobalLimiter(
            conn, scoped, max_rate=endpoint.rate_limit, defer_after=DEFER_AFTER_SECONDS
        )
        self.breaker = Breaker(
            conn,
            scoped,
            BreakerPolicy(
                failures=endpoint.breaker_failures,
                probe_seconds=endpoint.probe_seconds,
                probe_max_seconds=endpoint.probe_max_seconds,
                probe_lease=max(30.0, endpoint.timeout * 2),
            ),
        )
        base = {"content-type": endpoint.content_type}
        base.update({name.lower(): value for name, value in endpoint.headers})
        if endpoint.basic_auth is not None:
            # WebhookClient.deliver skips httpx's auth layer: the header is built here.
            pair = ":".join(endpoint.basic_auth).encode()
            base["authorization"] = "Basic " + base64.b64encode(pair).decode()
        self.base_headers = base
        self.client: WebhookClient | None = None

    def get_client(self) -> WebhookClient:
        if self.client is None:
            self.client = make_client(
                timeout=self.endpoint.timeout, concurrency=self.endpoint.concurrency
            )
        return self.client

    def headers(self, alert_id: str, body: bytes) -> dict[str, str]:
        stamp = int(time.time())
        headers = dict(self.base_headers)
        headers["webhook-id"] = alert_id
        headers["webhook-timestamp"] = str(stamp)
        if self.key is not None:
            headers["webhook-signature"] = sign(self.key, alert_id, stamp, body)
        return headers

    def request(self, alert_id: str, body: bytes) -> httpx.Request:
        return httpx.Request(
            self.method,
            self.url,
            content=body,
            headers=self.headers(alert_id, body),
            extensions={"timeout": self.timeout},
        )


def body_of(alert: AlertToSend) -> bytes:
    """The rendered body, or the default JSON: the extra fields, then ``userId`` and
    ``alertMessage``."""
    if alert.body is not None:
        return bytes(alert.body)
    payload = dict(alert.extra or {})
    payload["userId"] = alert.user_id
    payload["alertMessage"] = alert.message
    try:
        return orjson.dumps(payload)
    except TypeError:  # orjson refuses integers beyond 64 bits; the stdlib keeps them exact
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
