"""The bookkeeping of one notifier job: outcomes written to PostgreSQL in rounds, the lease
renewed, pauses and open breakers noticed, counters reported to Redis.

Outcomes are written by group commit: a sender takes its next alert only once its last
outcome is written, so a ``kill -9`` can re-send at most the requests in flight, never
outcomes that were only waiting to be written. The writer writes once half the running
senders wait for it, or ``GATHER_SECONDS`` after the first outcome came in: one statement for
a round of senders instead of one for the few that happened to finish first (each statement
is a commit, much of PostgreSQL's cost per alert), while the other half keep sending.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

import structlog

from hookdrop.errors import QueueUnavailable, StoreUnavailable
from hookdrop.latency import observe_latencies
from hookdrop.retry import retrying_async
from hookdrop.settings import Settings
from hookdrop.store import AlertStatus, Result
from workers.targets import DEFER_AFTER_SECONDS

if TYPE_CHECKING:
    from workers.notifier import Delivery, _Alert
    from workers.targets import Target

log = structlog.get_logger(__name__)

KEEP_EVERY = 0.25  # seconds between lease renewals, pause checks and outcome reports
GATHER_SECONDS = 0.005  # longest an outcome waits for others to be written with it
FLAGS_STALE_SECONDS = 4 * KEEP_EVERY  # a longer gap since the keeper read them: the process slept


class ChunkBook:
    """Outcomes waiting to be written, and the keeper of one job's lease and flags."""

    def __init__(
        self,
        engine: Delivery,
        target: Target,
        file_id: int,
        seq: int,
        owner: str,
        *,
        leased_at: float | None = None,
    ) -> None:
        self.engine = engine
        self.target = target
        self.settings: Settings = engine.settings
        self.file_id = file_id
        self.seq = seq  # the chunk whose lease this job holds
        self.owner = owner  # the lease's holder: this job alone
        self.open: dict[str, _Alert] = {}
        # Outcomes waiting for the writer, and the future their write completes.
        self.pending: dict[str, Result] = {}
        self.pending_written: asyncio.Future[None] | None = None
        self.has_pending = asyncio.Event()
        self.round_complete = asyncio.Event()  # every running sender waits for the writer
        self.senders_left = 0
        self.db_ok = asyncio.Event()
        self.db_ok.set()
        self.unreported: list[Result] = []  # written, not yet in the Redis counters
        self.paused = False
        self.deferring = False  # endpoint held (long 429 pause, open breaker): hand back
        self.lost = False  # our lease was taken over (after an outage): stop sending
        self.finished = False
        self.wake = asyncio.Event()
        # When the lease was last taken or renewed by this process's clock: taken before the
        # statement went out, so never late.
        self.renewed_at = time.monotonic() if leased_at is None else leased_at
        self._renewing = asyncio.Lock()
        self._renew_tried_at = float("-inf")
        self.flags_checked_at = time.monotonic()

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
                first_try=False,  # an earlier outcome of it is in the same write
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
        store, owner = self.engine.store, self.owner
        while True:
            if self.finished and not self.pending:
                return  # the job's end may have been signalled while a round was written
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
                    self.engine.writer, store.record_results, batch, self.file_id, self.seq, owner
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
                # Our lease ran out (a long PostgreSQL outage) and the sweep handed the chunk
                # to another job, or the file was cancelled: sending the rest could send them
                # twice.
                self.lost = True
                log.warning(
                    "chunk.lease_lost", file_id=self.file_id, unwritten=len(batch) - written
                )
            self.db_ok.set()
            self.unreported.extend(batch)
            written_future.set_result(None)

    @property
    def held_until(self) -> float:
        """Until when the lease is surely ours: its length from the last renewal, less a
        margin for the time the statement took to reach PostgreSQL. Past it (the process was
        stopped or starved, or renewals failed) nothing is sent until a renewal says the
        chunk is still ours."""
        lease = self.settings.lease_seconds
        return self.renewed_at + lease - min(1.0, lease / 10)

    async def _renew(self, *, unless_tried_since: float | None = None) -> None:
        """Renew the lease (one renewal at a time; none if one was tried since
        ``unless_tried_since``); a refusal means the sweep took the chunk."""
        async with self._renewing:
            if self.lost or (
                unless_tried_since is not None and self._renew_tried_at >= unless_tried_since
            ):
                return
            started = self._renew_tried_at = time.monotonic()
            try:
                ours = await asyncio.get_running_loop().run_in_executor(
                    self.engine.writer,
                    self.engine.store.renew_lease,
                    self.file_id,
                    self.seq,
                    self.owner,
                    self.settings.lease_seconds,
                )
            except StoreUnavailable as exc:
                log.warning("db.unavailable", action="renew lease", error=str(exc))
                return
            if ours:
                self.renewed_at = max(self.renewed_at, started)
            elif not self.lost:
                # The sweep took the chunk (our lease ran out): stop sending.
                self.lost = True
                log.warning("chunk.lease_lost", file_id=self.file_id, chunk=self.seq)

    async def _lease_confirmed(self) -> bool:
        """Whether a request may go out now: the lease is surely ours. Past its deadline
        (after a SIGSTOP, a starved process, failed renewals) it is renewed first, so a
        chunk the sweep handed to another notifier meanwhile is never sent from here."""
        asked = time.monotonic()
        if asked < self.held_until:
            return not self.lost
        await self._renew(unless_tried_since=asked)  # senders waiting together ask once
        return not self.lost and time.monotonic() < self.held_until

    async def _keeper(self) -> None:
        """Renew the lease, watch for a pause and report outcomes, until the chunk is done."""
        while not self.finished:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), KEEP_EVERY)
            self._report()
            if time.monotonic() - self.renewed_at > self.settings.lease_seconds / 3:
                await self._renew()
            self._check_flags()

    def _check_flags(self) -> None:
        """Read what operators and other notifiers set in Redis: a pause or cancel of the
        file, an open breaker, an endpoint held."""
        self.flags_checked_at = time.monotonic()
        try:
            if self.engine.ctx.redis.exists(self.settings.keys.paused(self.file_id)):
                self.paused = True
            if not self.deferring and (
                self.target.breaker.is_open()
                or self.target.limiter.paused_for() > DEFER_AFTER_SECONDS
            ):
                # another notifier opened the breaker or holds the endpoint: hand back
                self.deferring = True
        except QueueUnavailable as exc:  # Redis away: keep sending, PostgreSQL decides
            log.warning("redis.unavailable", action="check pause", error=str(exc))

    def _check_flags_if_woken(self) -> None:
        """The keeper reads the flags every ``KEEP_EVERY``; after a longer gap (the process
        was stopped or starved) a sender reads them before its next request, so a pause or
        cancel made meanwhile holds it."""
        if time.monotonic() - self.flags_checked_at > FLAGS_STALE_SECONDS:
            self._check_flags()

    def _report(self) -> None:
        """Written outcomes into the shared per-second counters and latency histogram."""
        batch, self.unreported = self.unreported, []
        if not batch:
            return
        ok = sum(1 for r in batch if r.status == AlertStatus.DELIVERED)
        throttled = sum(r.throttled for r in batch)
        try:
            self.target.limiter.report(ok, throttled)
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
