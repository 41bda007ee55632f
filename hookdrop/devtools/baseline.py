"""The yardstick for the delivery benchmark: a bare, non-durable asyncio webhook sender.

It sends the same shape of request as hookdrop (a ~100-byte JSON body and the three
Standard Webhooks headers, signed) straight from memory with aiohttp: no ledger, no
queue, no retries, no httpx. Whatever hookdrop reaches is judged against this figure.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Final

import aiohttp
import orjson
import uvloop

__all__ = ["BaselineResult", "bare_send", "run_bare_send"]

# A fixed throwaway key: signing is part of the work a real sender does per request.
_SECRET: Final = b"hookdrop-baseline-not-a-secret"
_MESSAGE: Final = "Your export is ready: open the dashboard to download it."
_TIMEOUT: Final = aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=10.0)


@dataclass(frozen=True, slots=True)
class BaselineResult:
    """Outcome of one baseline run; ``per_second`` counts 2xx answers per wall-clock second."""

    sent: int
    ok: int
    seconds: float
    per_second: float


def _request(seq: int) -> tuple[bytes, dict[str, str]]:
    """One webhook: JSON body plus webhook-id/-timestamp/-signature, as hookdrop sends it."""
    msg_id = f"msg_{seq:016d}"
    timestamp = str(int(time.time()))
    body = orjson.dumps({"userId": f"u-{seq:09d}", "alertMessage": _MESSAGE, "seq": seq})
    mac = hmac.new(_SECRET, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    headers = {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": "v1," + base64.b64encode(mac.digest()).decode(),
    }
    return body, headers


async def bare_send(url: str, n: int, concurrency: int) -> BaselineResult:
    """POST ``n`` webhooks to ``url`` with ``concurrency`` workers over keep-alive connections.

    Failed requests (errors, timeouts, non-2xx) are counted in ``sent`` but not in ``ok``;
    nothing is retried or recorded.
    """
    if n < 0:
        raise ValueError("n must not be negative")
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    next_seq = iter(range(n))
    sent = ok = 0
    connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=30.0)

    async with aiohttp.ClientSession(connector=connector, timeout=_TIMEOUT) as session:

        async def worker() -> None:
            nonlocal sent, ok
            # Workers share one iterator, so each sequence number is sent exactly once.
            for seq in next_seq:
                body, headers = _request(seq)
                sent += 1
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        if 200 <= response.status < 300:
                            ok += 1
                except (aiohttp.ClientError, OSError, TimeoutError):
                    pass  # a failed delivery is just not counted as ok

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(min(concurrency, max(n, 1)))))
        seconds = time.perf_counter() - started

    return BaselineResult(
        sent=sent, ok=ok, seconds=seconds, per_second=ok / seconds if seconds > 0 else 0.0
    )


def run_bare_send(url: str, n: int, concurrency: int) -> BaselineResult:
    """Run :func:`bare_send` to completion on a fresh uvloop event loop."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(bare_send(url, n, concurrency))
