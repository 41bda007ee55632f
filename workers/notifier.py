"""The notifier: one RQ job delivers one chunk of alerts, concurrently, over persistent
connections that live as long as the worker process.

Per chunk:
1. Claim the alerts in PostgreSQL (a lease): delivered, cancelled or leased-elsewhere alerts
   are left out, so a job that runs twice, or a DLQ entry re-injected twice, sends nothing twice.
2. Send with the global rate limit; every try of an alert carries its stable ``webhook-id``.
3. Record outcomes by group commit: a sender takes its next alert only once its last outcome
   is written, so a ``kill -9`` can re-send at most the requests in flight (``concurrency``
   per process) with their same ids, never outcomes that were only waiting to be written. The
   writer writes once half the running senders wait for it, or ``GATHER_SECONDS`` after the
   first outcome came in: one statement for a round of senders instead of one for the few
   that happened to finish first (each statement is a commit, much of PostgreSQL's cost per
   alert), while the other half keep sending. The lease is renewed meanwhile.

429 holds everybody briefly and cuts the global rate (see workers/adaptive.py); the refused
alert waits for its ``Retry-After`` and is tried again without using the failure budget.
5xx, timeouts and connection errors retry with backoff, then go to the DLQ (or end ``dead``
when the attempt budget is spent); other 4xx are ``rejected`` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import structlog

from hookdrop.errors import QueueUnavailable, StoreUnavailable
from hookdrop.latency import observe_latencies
from hookdrop.retry import compute_backoff, retrying, retrying_async
from hookdrop.signing import secret_key, sign
from hookdrop.store import AlertStatus, AlertToSend, Result
from workers import context
from workers.classify import Verdict, classify_error, classify_response
from workers.ratelimit import GlobalLimiter
from workers.transport import WebhookClient, make_client

log = structlog.get_logger(__name__)

KEEP_EVERY = 0.25  # seconds between lease renewals, pause checks and outcome reports
GATHER_SECONDS = 0.005  # longest an outcome waits for others to be written with it


def deliver_job(file_id: int, ids: list[str]) -> dict[str, Any]:
    """RQ job: deliver one chunk of alerts of one file."""
    ctx = context.current()
    engine = ctx.extras.get("delivery")
    if engine is None:
        engine = ctx.extras["delivery"] = Delivery(ctx)
    return engine.run_chunk(file_id, ids)


@dataclass(slots=True)
class _Alert:
    id: str
    file_id: int
    body: bytes
    attempts: int  # failed tries before this job
    tries: int = 0  # failed tries in this job
    done: bool = False
    not_before: float = 0.0  # a 429 asked to wait: not sent again before this (monotonic)


class Delivery:
    """Per-process delivery engine: one event loop, one HTTP client, one limiter."""

    def __init__(self, ctx: context.WorkerContext) -> None:
        import uvloop

        self.ctx = ctx
        self.settings = ctx.settings
        self.settings.require("webhook_url")
        # Parsed once: httpx would otherwise parse and merge the URL on every request.
        self.url = httpx.URL(self.settings.webhook_url or "")
        timeout = self.settings.request_timeout
        self.timeout = {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
        self.store = ctx.store
        self.owner = ctx.name
        self.loop = uvloop.new_event_loop()
        secret = self.settings.signing_secret
        self.key = secret_key(secret) if secret else None
        self.limiter = GlobalLimiter(
            ctx.redis, self.settings.keys, max_rate=self.settings.rate_limit
        )
        self.client: WebhookClient | None = None
        # One thread writes to PostgreSQL, so the event loop never waits on it.
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="hookdrop-results")

    def close(self) -> None:
        if self.client is not None and not self.loop.is_running():
            # Bounded: after a stop at once, connections may still wait for answers.
            with contextlib.suppress(TimeoutError):
                self.loop.run_until_complete(asyncio.wait_for(self.client.aclose(), 5))
            self.client = None
        for task in asyncio.all_tasks(self.loop):
            task.cancel()  # senders left behind by a stop at once
        self.loop.close()
        self.writer.shutdown(wait=False, cancel_futures=True)

    def run_chunk(self, file_id: int, ids: list[str]) -> dict[str, Any]:
        claimed = retrying(
            lambda: self.store.claim_alerts(ids, self.owner, self.settings.lease_seconds),
            what="claim alerts",
            stop=self.ctx.stopping.is_set,
        )
        if not claimed:
            return {"file_id": file_id, "claimed": 0}
        return self.loop.run_until_complete(_Chunk(self, file_id, claimed).run())

    def get_client(self) -> WebhookClient:
        if self.client is None:
            self.client = make_client(
                timeout=self.settings.request_timeout, concurrency=self.settings.concurrency
            )
        return self.client

    def headers(self, alert_id: str, body: bytes) -> dict[str, str]:
        stamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": alert_id,
            "webhook-timestamp": str(stamp),
        }
        if self.key is not None:
            headers["webhook-signature"] = sign(self.key, alert_id, stamp, body)
        return headers


def body_of(alert: AlertToSend) -> bytes:
    """The JSON body: the extra fields, then ``userId`` and ``alertMessage``."""
    payload = dict(alert.extra or {})
    payload["userId"] = alert.user_id
    payload["alertMessage"] = alert.message
    try:
        return orjson.dumps(payload)
    except TypeError:  # orjson refuses integers beyond 64 bits; the stdlib keeps them exact
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


class _Chunk:
    """The work of one job: send every claimed alert to an end state or to the DLQ."""

    def __init__(self, engine: Delivery, file_id: int, rows: list[AlertToSend]) -> None:
        self.engine = engine
        self.settings = engine.settings
        self.file_id = file_id
        self.alerts: deque[_Alert] = deque()
        unsendable: list[Result] = []
        for row in rows:
            try:
                self.alerts.append(_Alert(row.id, row.file_id, body_of(row), row.attempts))
            except (TypeError, ValueError, RecursionError) as exc:
                # One alert that cannot be encoded never holds up its chunk.
                unsendable.append(
                    Result(
                        row.id,
                        AlertStatus.REJECTED,
                        error=f"cannot build the webhook body: {exc}"[:200],
                    )
                )
        self.open: dict[str, _Alert] = {a.id: a for a in self.alerts}
        # Alerts refused with a 429, by when they may be sent again (ties in arrival order).
        self.waiting: list[tuple[float, int, _Alert]] = []
        self._order = 0
        # Outcomes waiting for the writer, and the future their write completes.
        self.pending: dict[str, Result] = {}
        self.pending_written: asyncio.Future[None] | None = None
        self.has_pending = asyncio.Event()
        self.round_complete = asyncio.Event()  # every running sender waits for the writer
        self.senders_left = 0
        self.db_ok = asyncio.Event()
        self.db_ok.set()
        self.unreported: list[Result] = []  # written, not yet in the Redis counters
        self.unsendable = unsendable
        self.counts = {
            "delivered": 0,
            "rejected": 0,
            "dlq": 0,
            "dead": 0,
            "throttled": 0,
            "retried": 0,
        }
        self.paused = False
        self.lost = False  # our lease was taken over (after an outage): stop sending
        self.finished = False
        self.wake = asyncio.Event()

    async def run(self) -> dict[str, Any]:
        started = time.monotonic()
        client = self.engine.get_client()
        senders = [
            asyncio.create_task(self._sender(client))
            for _ in range(min(self.settings.concurrency, len(self.alerts)))
        ]
        self.senders_left = len(senders)
        writer = asyncio.create_task(self._writer())
        keeper = asyncio.create_task(self._keeper())
        for result in self.unsendable:
            self.counts["rejected"] += 1
            log.warning("alert.rejected", alert_id=result.alert_id, error=result.error)
            self._note(result)
        try:
            await asyncio.gather(*senders)
        finally:
            self.finished = True
            self.has_pending.set()
            self.round_complete.set()
            self.wake.set()  # the keeper ends now rather than at its next tick
            await writer  # it never drops a batch half-written
            await keeper
        self._report()
        leftover = [a.id for a in self.open.values() if not a.done]
        if leftover:  # stop or pause: hand them back to the lease sweep right away
            retrying(
                lambda: self.engine.store.release_alerts(leftover, self.engine.owner),
                what="release alerts",
            )
            reason = "paused" if self.paused else "lease lost" if self.lost else "stopping"
            log.info("chunk.released", file_id=self.file_id, alerts=len(leftover), reason=reason)
        elapsed = time.monotonic() - started
        log.info(
            "chunk.done",
            file_id=self.file_id,
            alerts=len(self.open),
            seconds=round(elapsed, 3),
            **self.counts,
        )
        return {"file_id": self.file_id, "claimed": len(self.open), **self.counts}

    # -- sending ----------------------------------------------------------------------------

    def _should_stop(self) -> bool:
        return self.engine.ctx.stopping.is_set() or self.paused or self.lost

    async def _sender(self, client: WebhookClient) -> None:
        try:
            while (self.alerts or self.waiting) and not self._should_stop():
                if self.waiting and self.waiting[0][0] <= time.monotonic():
                    alert = heapq.heappop(self.waiting)[2]
                elif self.alerts:
                    alert = self.alerts.popleft()
                else:  # only refused alerts are left: wait for the first one's Retry-After
                    await asyncio.sleep(max(0.0, self.waiting[0][0] - time.monotonic()))
                    continue
                await self._deliver(client, alert)
        finally:
            self.senders_left -= 1
            if len(self.pending) >= self._round():
                self.round_complete.set()

    async def _deliver(self, client: WebhookClient, alert: _Alert) -> None:
        limiter = self.engine.limiter
        while True:
            await self.db_ok.wait()
            if self._should_stop():
                return
            try:
                epoch = await limiter.acquire()
            except QueueUnavailable as exc:
                log.warning("redis.unavailable", action="rate limit", error=str(exc))
                await asyncio.sleep(1.0)
                continue
            started = time.perf_counter()
            try:
                request = httpx.Request(
                    "POST",
                    self.engine.url,
                    content=alert.body,
                    headers=self.engine.headers(alert.id, alert.body),
                    extensions={"timeout": self.engine.timeout},
                )
                response = await client.deliver(request)
                verdict = classify_response(response)
            except httpx.HTTPError as exc:
                verdict = classify_error(exc)
            latency = (time.perf_counter() - started) * 1000
            if verdict.kind != "throttled" and verdict.code is not None:
                limiter.answered(epoch)  # a real answer: 429s in this epoch measure our rate
            if verdict.kind == "delivered":
                await self._finish(
                    alert,
                    Result(alert.id, AlertStatus.DELIVERED, code=verdict.code, latency_ms=latency),
                )
                return
            if verdict.kind == "rejected":
                log.warning(
                    "alert.rejected", alert_id=alert.id, code=verdict.code, error=verdict.error
                )
                await self._finish(
                    alert,
                    Result(
                        alert.id,
                        AlertStatus.REJECTED,
                        code=verdict.code,
                        error=verdict.error,
                        latency_ms=latency,
                    ),
                )
                return
            if verdict.kind == "throttled":
                # Set aside until its Retry-After; the sender goes on with other alerts at
                # the rate the controller now allows.
                self._throttled(alert, verdict, latency, epoch)
                return
            if await self._failed(alert, verdict, latency):
                return
            await asyncio.sleep(compute_backoff(alert.tries, base=0.2, cap=10.0))

    def _throttled(self, alert: _Alert, verdict: Verdict, latency: float, epoch: int) -> None:
        pause = verdict.retry_after
        if pause is None:
            pause = self.settings.backpressure_seconds
        pause = min(max(pause, 0.05), self.settings.max_pause_seconds)
        alert.not_before = time.monotonic() + pause
        self._order += 1
        heapq.heappush(self.waiting, (alert.not_before, self._order, alert))
        rate = self.engine.limiter.throttled(pause, epoch)
        self.counts["throttled"] += 1
        self._note(
            Result(
                alert.id,
                AlertStatus.THROTTLED,
                throttled=1,
                code=429,
                error=verdict.error,
                latency_ms=latency,
            )
        )
        log.info(
            "alert.throttled",
            alert_id=alert.id,
            pause=round(pause, 3),
            rate=rate and round(rate, 1),
        )

    async def _failed(self, alert: _Alert, verdict: Verdict, latency: float) -> bool:
        """Count a failed try; True when the alert leaves this job (DLQ or dead)."""
        alert.tries += 1
        total = alert.attempts + alert.tries

        def result(status: AlertStatus, next_at: datetime | None = None) -> Result:
            return Result(
                alert.id,
                status,
                failed=1,
                code=verdict.code,
                error=verdict.error,
                latency_ms=latency,
                next_at=next_at,
            )

        if total >= self.settings.attempt_budget:
            await self._finish(alert, result(AlertStatus.DEAD))
            log.error("alert.dead", alert_id=alert.id, attempts=total, error=verdict.error)
            return True
        if alert.tries >= self.settings.max_tries:
            delay = compute_backoff(
                total, base=self.settings.dlq_interval / 4, cap=self.settings.dlq_interval * 20
            )
            next_at = datetime.now(UTC) + timedelta(seconds=delay)
            await self._finish(alert, result(AlertStatus.DLQ, next_at))
            log.warning("alert.dlq", alert_id=alert.id, attempts=total, error=verdict.error)
            return True
        self.counts["retried"] += 1
        self._note(result(AlertStatus.RETRYING))
        return False

    async def _finish(self, alert: _Alert, result: Result) -> None:
        """The alert's last outcome in this job: return once it is written."""
        alert.done = True
        self.counts[result.status] += 1
        await self._note(result)

    def _note(self, result: Result) -> asyncio.Future[None]:
        """Queue an outcome for the writer, merged with any earlier one of this alert; the
        future completes when it is written."""
        earlier = self.pending.get(result.alert_id)
        if earlier is not None:
            result = Result(
                result.alert_id,
                result.status,
                failed=earlier.failed + result.failed,
                throttled=earlier.throttled + result.throttled,
                code=result.code,
                error=result.error or earlier.error,
                latency_ms=result.latency_ms,
                next_at=result.next_at,
            )
        self.pending[result.alert_id] = result
        if self.pending_written is None:
            self.pending_written = asyncio.get_running_loop().create_future()
        self.has_pending.set()
        if len(self.pending) >= self._round():
            self.round_complete.set()
        return self.pending_written

    def _round(self) -> int:
        """Outcomes worth a write of their own: half the running senders wait for it, the
        other half go on sending meanwhile."""
        return max(1, (self.senders_left + 1) // 2)

    # -- bookkeeping ------------------------------------------------------------------------

    async def _writer(self) -> None:
        """Write outcomes in rounds: once half the running senders wait for their outcomes to
        be written, or ``GATHER_SECONDS`` after the first one came in, whichever is first."""
        loop = asyncio.get_running_loop()
        store, owner = self.engine.store, self.engine.owner
        while True:
            await self.has_pending.wait()
            if not self.finished and len(self.pending) < self._round():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.round_complete.wait(), GATHER_SECONDS)
            self.has_pending.clear()
            self.round_complete.clear()
            if not self.pending:
                if self.finished:
                    return
                continue
            batch, written_future = list(self.pending.values()), self.pending_written
            self.pending, self.pending_written = {}, None
            assert written_future is not None

            async def record(batch: list[Result] = batch) -> int:
                return await loop.run_in_executor(
                    self.engine.writer, store.record_results, batch, owner
                )

            try:
                # While it fails, stop sending: an outcome we cannot record could be sent
                # twice later.
                written = await retrying_async(
                    record,
                    what="record results",
                    retry_on=(StoreUnavailable,),
                    on_failure=self.db_ok.clear,
                )
            except BaseException as exc:
                written_future.set_exception(exc)
                raise
            if written < len(batch) and not self.lost:
                # Our lease ran out (a long PostgreSQL outage) and the sweep handed these
                # alerts to another job: sending the rest too would send them twice.
                self.lost = True
                log.warning(
                    "chunk.lease_lost", file_id=self.file_id, unwritten=len(batch) - written
                )
            self.db_ok.set()
            self.unreported.extend(batch)
            written_future.set_result(None)

    async def _keeper(self) -> None:
        """Renew the lease, watch for a pause and report outcomes, until the chunk is done."""
        loop = asyncio.get_running_loop()
        last_renew = time.monotonic()
        while not self.finished:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), KEEP_EVERY)
            self._report()
            if time.monotonic() - last_renew > self.settings.lease_seconds / 3:
                holding = [a.id for a in self.open.values() if not a.done]
                try:
                    await loop.run_in_executor(
                        self.engine.writer,
                        self.engine.store.renew_leases,
                        holding,
                        self.engine.owner,
                        self.settings.lease_seconds,
                    )
                    last_renew = time.monotonic()
                except StoreUnavailable as exc:
                    log.warning("db.unavailable", action="renew lease", error=str(exc))
            try:
                if self.engine.ctx.redis.exists(self.settings.keys.paused(self.file_id)):
                    self.paused = True
            except QueueUnavailable as exc:  # Redis away: keep sending, PostgreSQL decides
                log.warning("redis.unavailable", action="check pause", error=str(exc))

    def _report(self) -> None:
        """Written outcomes into the shared per-second counters and latency histogram."""
        batch, self.unreported = self.unreported, []
        if not batch:
            return
        ok = sum(1 for r in batch if r.status == AlertStatus.DELIVERED)
        throttled = sum(r.throttled for r in batch)
        try:
            self.engine.limiter.report(ok, throttled)
            observe_latencies(
                self.engine.ctx.redis,
                self.settings.keys,
                [
                    r.latency_ms
                    for r in batch
                    if r.status == AlertStatus.DELIVERED and r.latency_ms is not None
                ],
            )
        except QueueUnavailable as exc:
            log.warning("redis.unavailable", action="report outcomes", error=str(exc))
