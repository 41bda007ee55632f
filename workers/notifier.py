"""The notifier: one RQ job delivers one chunk of alerts of one file, so of one endpoint,
concurrently, over persistent connections that live as long as the worker process.

Per chunk (the alerts the batcher wrote in one transaction):
1. Lease the chunk in PostgreSQL (one row, renewed while sending) and read its alerts still to
   send: delivered or cancelled alerts are left out, and a chunk leased by a live notifier is
   left to it, so a job that runs twice, or a DLQ entry re-injected twice, sends nothing twice.
2. Ask the endpoint's circuit breaker (workers/breaker.py): closed, send; due a probe, send
   one alert first; open, hand the alerts back as deferred at once.
3. Send with the endpoint's global rate limit; every try of an alert carries its stable
   ``webhook-id``.
4. Record outcomes by group commit (workers/outcomes.py), only while the lease is ours; at the
   end the lease goes, or is handed to the monitor's sweep if alerts of it are still open.

429 holds everybody sending to that endpoint briefly and cuts its rate (workers/adaptive.py);
the refused alert waits for its ``Retry-After`` without using its failure budget. A pause
longer than ``DEFER_AFTER_SECONDS``, nothing but 429s for ``REFUSED_HAND_BACK_SECONDS``, or
a breaker that opens, ends the job: its alerts wait in
PostgreSQL as deferred (no budget spent, no worker held) and the monitor queues them again
once the endpoint is open (daemon/recovery.py), so one endpoint's trouble never holds the
workers other endpoints need. 5xx, timeouts and connection errors retry with backoff, then go
to the DLQ (or end ``dead`` when the endpoint's attempt budget is spent); other 4xx are
``rejected`` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import secrets
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import structlog

from hookdrop.errors import QueueUnavailable
from hookdrop.retry import compute_backoff, retrying
from hookdrop.store import AlertStatus, AlertToSend, Result
from workers import context
from workers.breaker import CLOSED, PROBE
from workers.classify import Verdict, VerdictKind, classify_error, classify_response
from workers.outcomes import KEEP_EVERY, ChunkBook
from workers.ratelimit import STOP_CHECK_SECONDS, AcquireStopped, EndpointPaused
from workers.targets import DEFER_AFTER_SECONDS, Target, body_of
from workers.transport import WebhookClient

log = structlog.get_logger(__name__)

# Only 429s for this long, however short each pause: the chunk's alerts are handed back and
# the endpoint is held (its back-pressure flag) for HOLD_SECONDS.
REFUSED_HAND_BACK_SECONDS = 5.0
HOLD_SECONDS = 10.0


def deliver_job(
    file_id: int, ids: list[str], seq: int | None = None, dlq: bool = False
) -> dict[str, Any]:
    """RQ job: deliver alerts ``ids`` of chunk ``seq`` of one file (DLQ entries with ``dlq``)."""
    ctx = context.current()
    engine = ctx.extras.get("delivery")
    if engine is None:
        engine = ctx.extras["delivery"] = Delivery(ctx)
    if seq is not None:
        return engine.run_chunk(file_id, seq, ids, dlq=dlq)
    return engine.run_alerts(file_id, ids, dlq=dlq)


@dataclass(slots=True)
class _Alert:
    id: str
    file_id: int
    body: bytes
    attempts: int  # failed tries before this job
    tries: int = 0  # failed tries in this job
    done: bool = False
    not_before: float = 0.0  # a 429 asked to wait: not sent again before this (monotonic)
    # Never tried before this job and not yet here: delivered now, only its round is written.
    pristine: bool = False


class Delivery:
    """Per-process delivery engine: one event loop, and per endpoint one HTTP client, one
    limiter and one breaker."""

    def __init__(self, ctx: context.WorkerContext) -> None:
        import uvloop

        self.ctx = ctx
        self.settings = ctx.settings
        self.store = ctx.store
        self.owner = ctx.name  # with a token per job: the holder of a chunk's lease
        self.loop = uvloop.new_event_loop()
        self.targets: dict[str, Target] = {}
        self._generation = -1
        # One thread writes to PostgreSQL, so the event loop never waits on it.
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="hookdrop-results")

    def close(self) -> None:
        for target in self.targets.values():
            self._close_client(target)
        for task in asyncio.all_tasks(self.loop):
            task.cancel()  # senders left behind by a stop at once
        self.loop.close()
        self.writer.shutdown(wait=False, cancel_futures=True)

    def _close_client(self, target: Target) -> None:
        if target.client is not None and not self.loop.is_running():
            # Bounded: after a stop at once, connections may still wait for answers.
            with contextlib.suppress(TimeoutError):
                self.loop.run_until_complete(asyncio.wait_for(target.client.aclose(), 5))
            target.client = None

    def target(self, name: str) -> Target | None:
        """The endpoint as configured now (rebuilt after a reload changed it); None when it
        is not configured."""
        live = self.ctx.live
        endpoints = live.current
        if live.generation != self._generation:
            self._generation = live.generation
            for old in list(self.targets.values()):
                if old.name not in endpoints or endpoints[old.name] != old.endpoint:
                    self._close_client(old)
                    del self.targets[old.name]
        found = self.targets.get(name)
        if found is None and name in endpoints:
            found = self.targets[name] = Target(endpoints[name], self.ctx.redis, self.settings.keys)
        return found

    def run_alerts(self, file_id: int, ids: list[str], *, dlq: bool = False) -> dict[str, Any]:
        """Deliver ``ids`` of a file whatever their chunks, one chunk after the other (a job
        queued before jobs named their chunk)."""
        chunks = retrying(lambda: self.store.chunks_of(file_id, ids), what="find chunks")
        done: dict[str, Any] = {"file_id": file_id, "claimed": 0}
        for seq, chunk_ids in chunks:
            for key, value in self.run_chunk(file_id, seq, chunk_ids, dlq=dlq).items():
                if isinstance(value, int) and not isinstance(value, bool) and key != "file_id":
                    done[key] = done.get(key, 0) + value
        return done

    def run_chunk(
        self, file_id: int, seq: int, ids: list[str], *, dlq: bool = False
    ) -> dict[str, Any]:
        # The lease is this run's alone: a name shared by two processes (pid 1 in containers,
        # hosts of one name) or a second job of the chunk never passes for its holder.
        owner = f"{self.owner}:{secrets.token_hex(6)}"
        leased_at = time.monotonic()  # the lease runs from no earlier than this
        claimed = retrying(
            lambda: self.store.claim_chunk(
                file_id, seq, ids, owner, self.settings.lease_seconds, dlq=dlq
            ),
            what="claim chunk",
            stop=self.ctx.stopping.is_set,
        )
        if claimed is None:
            # Another notifier holds the chunk: our ids joined its lease, it sees to them.
            log.info("chunk.busy", file_id=file_id, chunk=seq, alerts=len(ids))
            return {"file_id": file_id, "claimed": 0, "busy": 1}
        rows, given = claimed
        settled = False
        try:
            done = self._run_claimed(file_id, seq, owner, rows, leased_at)
            settled = not done.get("released")
            return done
        finally:
            retrying(
                lambda: self.store.end_lease(file_id, seq, owner, given=given, settled=settled),
                what="end lease",
                stop=self.ctx.stopping.is_set,
            )

    def _run_claimed(
        self, file_id: int, seq: int, owner: str, claimed: list[AlertToSend], leased_at: float
    ) -> dict[str, Any]:
        if not claimed:
            return {"file_id": file_id, "claimed": 0}
        name = claimed[0].endpoint
        target = self.target(name)
        if target is None:
            log.error("endpoint.unknown", file_id=file_id, endpoint=name, alerts=len(claimed))
            return self._defer(file_id, seq, owner, claimed, "endpoint not configured")
        try:
            decision = target.breaker.admit()
            if decision in (CLOSED, PROBE) and target.limiter.paused_for() > DEFER_AFTER_SECONDS:
                decision = "held by back-pressure"
        except QueueUnavailable as exc:
            log.warning("redis.unavailable", action="breaker", error=str(exc))
            decision = CLOSED
        if decision not in (CLOSED, PROBE):
            return self._defer(file_id, seq, owner, claimed, f"breaker {decision}")
        chunk = _Chunk(
            self,
            target,
            file_id,
            seq,
            claimed,
            owner=owner,
            leased_at=leased_at,
            probe=decision == PROBE,
        )
        return self.loop.run_until_complete(chunk.run())

    def _defer(
        self, file_id: int, seq: int, owner: str, rows: list[AlertToSend], reason: str
    ) -> dict[str, Any]:
        ids = [row.id for row in rows]
        retrying(lambda: self.store.defer_alerts(ids, file_id, seq, owner), what="defer alerts")
        log.info("chunk.deferred", file_id=file_id, alerts=len(ids), reason=reason)
        return {"file_id": file_id, "claimed": len(ids), "deferred": len(ids)}


class _Chunk(ChunkBook):
    """The work of one job: send every claimed alert to an end state, the DLQ or back."""

    def __init__(
        self,
        engine: Delivery,
        target: Target,
        file_id: int,
        seq: int,
        rows: list[AlertToSend],
        *,
        owner: str,
        leased_at: float | None = None,
        probe: bool = False,
    ) -> None:
        super().__init__(engine, target, file_id, seq, owner, leased_at=leased_at)
        self.endpoint = target.endpoint
        self.probe = probe  # send one alert alone first: the breaker's probe
        self.alerts: deque[_Alert] = deque()
        unsendable: list[Result] = []
        for row in rows:
            try:
                self.alerts.append(
                    _Alert(row.id, row.file_id, body_of(row), row.attempts, pristine=row.fresh)
                )
            except (TypeError, ValueError, RecursionError) as exc:
                # One alert that cannot be encoded never holds up its chunk.
                unsendable.append(
                    Result(
                        row.id,
                        AlertStatus.REJECTED,
                        error=f"cannot build the webhook body: {exc}"[:200],
                    )
                )
        self.open = {a.id: a for a in self.alerts}
        # Alerts refused with a 429, by when they may be sent again (ties in arrival order).
        self.waiting: list[tuple[float, int, _Alert]] = []
        self._order = 0
        self.refused_since: float | None = None  # only 429s since then (monotonic)
        self.unsendable = unsendable
        self.counts = {
            "delivered": 0,
            "rejected": 0,
            "dlq": 0,
            "dead": 0,
            "throttled": 0,
            "retried": 0,
        }

    async def run(self) -> dict[str, Any]:
        started = time.monotonic()
        client = self.target.get_client()
        writer = asyncio.create_task(self._writer())
        keeper = asyncio.create_task(self._keeper())
        for result in self.unsendable:
            self.counts["rejected"] += 1
            log.warning("alert.rejected", alert_id=result.alert_id, error=result.error)
            self._note(result)
        try:
            if self.probe and self.alerts:
                self.senders_left = 1
                await self._send_probe(client)
            senders = [
                asyncio.create_task(self._sender(client))
                for _ in range(min(self.endpoint.concurrency, len(self.alerts)))
            ]
            self.senders_left = len(senders)
            await asyncio.gather(*senders)
        finally:
            self.finished = True
            self.has_pending.set()
            self.round_complete.set()
            self.wake.set()  # the keeper ends now rather than at its next tick
            await writer  # it never drops a batch half-written
            await keeper
        self._report()
        self._hand_back()
        elapsed = time.monotonic() - started
        log.info(
            "chunk.done",
            file_id=self.file_id,
            endpoint=self.endpoint.name,
            alerts=len(self.open),
            seconds=round(elapsed, 3),
            **self.counts,
        )
        return {"file_id": self.file_id, "claimed": len(self.open), **self.counts}

    def _hand_back(self) -> None:
        """Alerts not finished here: deferred (endpoint held), or left open for the lease
        sweep once the lease ends (stop, pause, lease lost)."""
        leftover = [a.id for a in self.open.values() if not a.done]
        if not leftover:
            return
        store, owner = self.engine.store, self.owner
        if self.deferring and not self.lost:
            retrying(
                lambda: store.defer_alerts(leftover, self.file_id, self.seq, owner),
                what="defer alerts",
            )
            reason = "endpoint held"
        else:
            reason = "paused" if self.paused else "lease lost" if self.lost else "stopping"
        self.counts["deferred" if self.deferring and not self.lost else "released"] = len(leftover)
        log.info(
            "chunk.released",
            file_id=self.file_id,
            endpoint=self.endpoint.name,
            alerts=len(leftover),
            reason=reason,
        )

    # -- sending ----------------------------------------------------------------------------

    def _should_stop(self) -> bool:
        return self.engine.ctx.stopping.is_set() or self.paused or self.lost or self.deferring

    async def _send_probe(self, client: WebhookClient) -> None:
        """One alert alone: its answer closes the breaker or opens it again."""
        alert = self.alerts.popleft()
        self.target.breaker.dirty = True  # its success must reach Redis
        await self._deliver(client, alert, probe=True)
        if not alert.done and not self.deferring:
            self.alerts.appendleft(alert)  # throttled: sent again with the others

    async def _sender(self, client: WebhookClient) -> None:
        try:
            while (self.alerts or self.waiting) and not self._should_stop():
                if self.waiting and self.waiting[0][0] <= time.monotonic():
                    alert = heapq.heappop(self.waiting)[2]
                elif self.alerts:
                    alert = self.alerts.popleft()
                else:  # only refused alerts are left: wait for the first one's Retry-After
                    # (in short steps: a hand-back or a stop ends the wait)
                    wait = self.waiting[0][0] - time.monotonic()
                    await asyncio.sleep(min(max(0.0, wait), KEEP_EVERY))
                    continue
                await self._deliver(client, alert)
        finally:
            self.senders_left -= 1
            if len(self.pending) >= self._round():
                self.round_complete.set()

    async def _deliver(self, client: WebhookClient, alert: _Alert, *, probe: bool = False) -> None:
        target = self.target
        limiter = target.limiter
        while True:
            await self.db_ok.wait()
            if not await self._lease_held():
                return
            try:
                epoch = await limiter.acquire(stop=self._should_stop)
            except AcquireStopped:
                return  # handed back or stopping: the alert is not sent here
            except EndpointPaused as exc:
                if not self.deferring:
                    log.info("endpoint.held", endpoint=target.name, seconds=round(exc.seconds, 1))
                self.deferring = True
                return
            except QueueUnavailable as exc:
                log.warning("redis.unavailable", action="rate limit", error=str(exc))
                await self._nap(1.0)
                continue
            if not await self._lease_held():
                return  # held, stopped or lost while waiting for the token: send nothing more
            started = time.perf_counter()
            try:
                response = await client.deliver(target.request(alert.id, alert.body))
                verdict = classify_response(response)
            except httpx.HTTPError as exc:
                verdict = classify_error(exc)
            latency = (time.perf_counter() - started) * 1000
            if verdict.kind != VerdictKind.THROTTLED and verdict.code is not None:
                limiter.answered(epoch)  # a real answer: 429s in this epoch measure our rate
            opened = False
            if verdict.kind == VerdictKind.RETRY:
                opened = self._breaker_failed(verdict, probe=probe)
                if probe and opened:
                    return  # the breaker's test failed, not the alert: it waits on, unspent
            elif target.breaker.dirty:
                self._breaker_ok()
            if verdict.kind != VerdictKind.THROTTLED:
                self.refused_since = None
            if verdict.kind == VerdictKind.DELIVERED:
                await self._finish(
                    alert,
                    Result(
                        alert.id,
                        AlertStatus.DELIVERED,
                        code=verdict.code,
                        latency_ms=latency,
                        first_try=alert.pristine,
                    ),
                )
                return
            if verdict.kind == VerdictKind.REJECTED:
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
            if verdict.kind == VerdictKind.THROTTLED:
                # Set aside until its Retry-After; the sender goes on with other alerts at
                # the rate the controller now allows.
                self._throttled(alert, verdict, latency, epoch)
                return
            if await self._failed(alert, verdict, latency) or opened:
                return  # DLQ or dead; or the breaker is open: the alert waits, deferred
            await self._nap(compute_backoff(alert.tries, base=0.2, cap=10.0))

    async def _lease_held(self) -> bool:
        """Whether to go on: True once the lease is surely ours (asking PostgreSQL again every
        ``KEEP_EVERY`` while it cannot say), False when the chunk is lost, handed back (a
        pause, a cancel, a held endpoint: after a freeze read again first) or the worker
        stops; the alert is then not sent here."""
        self._check_flags_if_woken()
        while not self._should_stop():
            if await self._lease_confirmed():
                return True
            await self._nap(KEEP_EVERY)
        return False

    async def _nap(self, seconds: float) -> None:
        """Sleep ``seconds``, waking early for a hand-back or a stop."""
        end = time.monotonic() + seconds
        while not self._should_stop():
            left = end - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(left, STOP_CHECK_SECONDS))

    def _breaker_failed(self, verdict: Verdict, *, probe: bool) -> bool:
        """Count a failure at the breaker; True when it is open now: the chunk hands its
        alerts back (deferred), and they wait without spending their budget."""
        try:
            state = self.target.breaker.failed(verdict.error, probe=probe)
        except QueueUnavailable as exc:
            log.warning("redis.unavailable", action="breaker", error=str(exc))
            return False
        if state == CLOSED:
            return False
        self.deferring = True
        return True

    def _breaker_ok(self) -> None:
        try:
            self.target.breaker.succeeded()
        except QueueUnavailable as exc:
            log.warning("redis.unavailable", action="breaker", error=str(exc))

    def _throttled(self, alert: _Alert, verdict: Verdict, latency: float, epoch: int) -> None:
        pause = verdict.retry_after
        if pause is None:
            pause = self.settings.backpressure_seconds
        pause = min(max(pause, 0.05), self.settings.max_pause_seconds)
        alert.not_before = time.monotonic() + pause
        alert.pristine = False  # its row records the 429
        self._order += 1
        heapq.heappush(self.waiting, (alert.not_before, self._order, alert))
        rate = self.target.limiter.throttled(pause, epoch)
        self.counts["throttled"] += 1
        now = time.monotonic()
        if self.refused_since is None:
            self.refused_since = now
        elif now - self.refused_since > REFUSED_HAND_BACK_SECONDS and not self.deferring:
            # Nothing but 429s for a while, in short pauses: the receiver refuses everything;
            # hand the chunk back rather than keep a worker other endpoints need.
            self.deferring = True
            self.target.limiter.hold(HOLD_SECONDS)
            log.info(
                "endpoint.held",
                endpoint=self.target.name,
                seconds=round(now - self.refused_since, 1),
                hold=HOLD_SECONDS,
            )
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
            endpoint=self.endpoint.name,
            pause=round(pause, 3),
            rate=rate and round(rate, 1),
        )

    async def _failed(self, alert: _Alert, verdict: Verdict, latency: float) -> bool:
        """Count a failed try; True when the alert leaves this job (DLQ or dead)."""
        alert.tries += 1
        alert.pristine = False  # its row records the failure
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

        if total >= self.endpoint.attempt_budget:
            await self._finish(alert, result(AlertStatus.DEAD))
            log.error("alert.dead", alert_id=alert.id, attempts=total, error=verdict.error)
            return True
        if alert.tries >= self.endpoint.max_tries:
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
