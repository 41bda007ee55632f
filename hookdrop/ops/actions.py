"""Operator actions shared by the HTTP API and the CLI.

Status and results of files, pause / resume / cancel, the DLQ and its replay, resending a
finished file, and the system overview.

Reads stay cheap whatever the file size: counts come from the ``files`` row counters, the open
states from ``status_counts`` (the counters, the chunk leases and the small ``alerts_waiting``
partial index), throughput
from the notifiers' per-second outcome counters in Redis. Redis errors come out as
:class:`~hookdrop.errors.QueueUnavailable`, PostgreSQL errors as
:class:`~hookdrop.errors.StoreUnavailable`, and what the operator asked wrongly as the
:class:`~hookdrop.ops.errors.ControlError` family.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import redis
import structlog
from rq import Worker

from hookdrop.endpoints import LiveEndpoints
from hookdrop.inbox import NotRegularFile, disk_name, open_regular, processing_tag
from hookdrop.intake import Intake, ensure_dirs
from hookdrop.keys import Keys
from hookdrop.ops.dropbox import COPY_BLOCK, InboxWriter
from hookdrop.ops.endpoints import endpoints_view
from hookdrop.ops.errors import BadRequest, Conflict, UnknownFile
from hookdrop.ops.rates import RATE_WINDOW, RateTracker
from hookdrop.ops.views import average_rate, counts, jsonable, no_open_alerts, summary
from hookdrop.queues import batcher_queue, by_chunk, enqueue_deliveries, notifier_queue
from hookdrop.ratestate import OUTCOME_HISTORY_SECONDS, Outcome, read_outcomes, read_rate
from hookdrop.settings import Settings
from hookdrop.store import (
    ACTIVE_FILES,
    FINISHED_FILES,
    REPLAYABLE,
    AlertStatus,
    FileRow,
    FileStatus,
    Store,
)

log = structlog.get_logger(__name__)

DEFAULT_REPLAY = (AlertStatus.DLQ, AlertStatus.DEAD)
# A cancelled file's in-flight jobs stop on the paused key; it outlives any job's chunk.
CANCEL_KEY_TTL = 7 * 24 * 3600


def check_statuses(statuses: Iterable[str]) -> list[AlertStatus]:
    wanted = sorted({s.strip() for s in statuses if s.strip()})
    bad = [s for s in wanted if s not in REPLAYABLE]
    if bad or not wanted:
        raise BadRequest(
            f"status must be one or more of {', '.join(sorted(REPLAYABLE))}"
            + (f" (got {', '.join(bad)})" if bad else "")
        )
    return [AlertStatus(s) for s in wanted]


class Control:
    """Operator actions on one Store and one Redis connection (not shared across threads)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        conn: redis.Redis,
        rates: RateTracker | None = None,
        endpoints: LiveEndpoints | None = None,
    ) -> None:
        self.settings = settings
        self.live = endpoints
        self.keys: Keys = settings.keys
        self.store = store
        self.redis = conn
        self.rates = rates or RateTracker()

    # -- reading ----------------------------------------------------------------------------

    def _file(self, file_id: int) -> FileRow:
        row = self.store.get_file(file_id)
        if row is None:
            raise UnknownFile(file_id)
        return row

    def _open_counts(self, row: FileRow) -> dict[AlertStatus, int]:
        # Cancelled and duplicate files hold no open alert; skip counting their leftovers.
        if row.status in (FileStatus.CANCELLED, FileStatus.DUPLICATE):
            return no_open_alerts()
        return {**no_open_alerts(), **self.store.status_counts(row.id)}

    def file_status(self, file_id: int) -> dict[str, Any]:
        """Counts, rate (delivered/s over ~10 s) and ETA of one file."""
        row = self._file(file_id)
        return self._status(row, self._open_counts(row))

    def _status(self, row: FileRow, open_counts: dict[AlertStatus, int]) -> dict[str, Any]:
        status = summary(row)
        rate: float | None = 0.0
        eta: float | None = 0.0
        remaining = max(0, row.alerts_total - row.settled)
        if row.status not in FINISHED_FILES:
            rate = self.rates.observe(row.id, row.delivered)
            if rate is None:
                rate = average_rate(row)
            eta = remaining / rate if row.read_complete and rate else None
            if row.read_complete and remaining == 0:
                eta = 0.0
        status.update(
            counts=counts(row, open_counts),
            rate=None if rate is None else round(rate, 2),
            eta_seconds=None if eta is None else round(eta, 1),
        )
        return status

    def list_files(self, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        """Newest first; active files carry their open counts (they are few)."""
        return [
            self._status(
                row, self._open_counts(row) if row.status in ACTIVE_FILES else no_open_alerts()
            )
            for row in self.store.list_files(limit, offset)
        ]

    def file_result(self, file_id: int, limit: int = 100, offset: int = 0) -> dict[str, Any]:
        """Bad rows and alerts that did not get through, with reasons, one page of each."""
        row = self._file(file_id)
        open_counts = self._open_counts(row)
        return {
            "file": self._status(row, open_counts),
            "limit": limit,
            "offset": offset,
            "row_errors_total": row.rows_invalid,
            "failed_alerts_total": row.rejected
            + row.dead
            + row.cancelled
            + open_counts[AlertStatus.DLQ],
            "row_errors": [jsonable(e) for e in self.store.row_errors_page(file_id, limit, offset)],
            "failed_alerts": [
                jsonable(a) for a in self.store.failed_alerts_page(file_id, limit, offset)
            ],
        }

    # -- pause, resume, cancel --------------------------------------------------------------

    def _refuse_inactive(self, file_id: int, action: str) -> None:
        row = self._file(file_id)  # UnknownFile when it does not exist
        raise Conflict(
            f"file {file_id} is {row.status}: only a file still being read or "
            f"delivered can be {action}"
        )

    def pause(self, file_id: int) -> dict[str, Any]:
        """Stop sending a file's alerts; running notifier jobs hand theirs back in ~0.3 s."""
        if not self.store.set_paused(file_id, True):
            self._refuse_inactive(file_id, "paused")
        self.redis.set(self.keys.paused(file_id), "1")
        log.info("file.paused", file_id=file_id)
        return self.file_status(file_id)

    def resume(self, file_id: int) -> dict[str, Any]:
        """Undo a pause and queue the file's open alerts again (a chunk is leased once)."""
        if not self.store.set_paused(file_id, False):
            self._refuse_inactive(file_id, "resumed")
        self.redis.delete(self.keys.paused(file_id))
        refs = self.store.open_alerts(file_id)
        chunks = by_chunk(refs).get(file_id, [])
        jobs = enqueue_deliveries(self.redis, self.keys, file_id, chunks)
        log.info("file.resumed", file_id=file_id, requeued=len(refs), jobs=jobs)
        return {**self.file_status(file_id), "requeued": len(refs)}

    def cancel(self, file_id: int) -> dict[str, Any]:
        """Mark every alert not yet sent cancelled; in-flight jobs stop on the paused key."""
        if not self.store.cancel_file(file_id):
            self._refuse_inactive(file_id, "cancelled")
        self.redis.set(self.keys.paused(file_id), "cancelled", ex=CANCEL_KEY_TTL)
        status = self.file_status(file_id)
        log.info("file.cancelled", file_id=file_id, alerts=status["counts"]["cancelled"])
        return status

    # -- DLQ --------------------------------------------------------------------------------

    def dlq_list(
        self, statuses: Sequence[str] = DEFAULT_REPLAY, limit: int = 100, offset: int = 0
    ) -> dict[str, Any]:
        wanted = check_statuses(statuses)
        dlq, dead = self.store.dlq_size()
        return {
            "statuses": [str(s) for s in wanted],
            "limit": limit,
            "offset": offset,
            "dlq": dlq,
            "dead": dead,
            "alerts": [jsonable(r) for r in self.store.dlq_page(wanted, limit, offset)],
        }

    def replay(self, file_id: int | None = None, statuses: Sequence[str] = DEFAULT_REPLAY) -> int:
        """Give dead / DLQ / rejected alerts a fresh budget; the monitor sends them within one
        DLQ interval. Returns how many were replayed."""
        wanted = check_statuses(statuses)
        if file_id is not None:
            self._file(file_id)
        count = self.store.replay_alerts(wanted, file_id)
        log.info("dlq.replayed", file_id=file_id, statuses=[str(s) for s in wanted], alerts=count)
        return count

    # -- resend -----------------------------------------------------------------------------

    def resend(self, file_id: int) -> dict[str, Any]:
        """Send a finished file again as a new generation (new alert ids, sent on purpose)."""
        row = self._file(file_id)
        if row.status not in FINISHED_FILES:
            raise Conflict(
                f"file {file_id} is {row.status}: wait until it is finished "
                "(or cancel it) before resending"
            )
        if not row.final_path:
            raise Conflict(f"file {file_id}: no copy of it was kept")
        try:
            # The copy in done/ or failed/ is read without following a link: what was set
            # aside as a link (or replaced by one) is never read through it.
            fd, _st = open_regular(Path(row.final_path))
        except NotRegularFile as exc:
            raise Conflict(f"file {file_id}: {exc}; nothing to resend") from None
        except OSError as exc:
            raise Conflict(
                f"file {file_id}: its copy ({row.final_path}) cannot be read: {exc.strerror or exc}"
            ) from None
        ensure_dirs(self.settings)
        generation = self.store.next_generation(row.content_sha256)
        # Copy beside the inbox under a hidden name (the monitor ignores it, and orphan
        # adoption never sees a half-copied file), then rename into processing/.
        with (
            os.fdopen(fd, "rb") as handle,
            InboxWriter(self.settings.inbox, row.name, check=False) as writer,
        ):
            for block in iter(lambda: handle.read(COPY_BLOCK), b""):
                writer.write(block)
            target = writer.commit_to(
                self.settings.processing_dir
                / disk_name(processing_tag(secrets.token_hex(6), row.endpoint), row.name)
            )
        owner = f"{socket.gethostname()}:{os.getpid()}:resend"
        registered = Intake(self.settings, self.store, self.redis, owner).register(
            target, row.name, generation=generation, endpoint=row.endpoint
        )
        if registered is None:
            raise Conflict(f"file {file_id}: the copy vanished from processing/")
        log.info(
            "file.resent",
            file_id=file_id,
            new_file_id=registered.file_id,
            generation=generation,
            status=registered.status,
        )
        return {
            "file_id": registered.file_id,
            "resent_from": file_id,
            "generation": generation,
            "status": registered.status,
            "detail": registered.detail,
        }

    # -- the whole system -------------------------------------------------------------------

    def endpoints(self) -> list[dict[str, Any]]:
        """Every endpoint: URL (credentials masked), limit, rate in force, back-pressure,
        breaker, counts."""
        if self.live is None:
            self.live = LiveEndpoints(self.settings, {})
        return endpoints_view(self.live.current, self.store, self.redis, self.keys)

    def overview(self) -> dict[str, Any]:
        totals = jsonable(self.store.totals())
        dlq, dead = self.store.dlq_size()
        queues = {
            "batcher": batcher_queue(self.redis, self.keys),
            "notifier": notifier_queue(self.redis, self.keys),
        }
        pttl = int(self.redis.pttl(self.keys.backpressure))
        rate = read_rate(self.redis, self.keys)
        series = self.throughput(seconds=int(RATE_WINDOW))["series"]
        return {
            "files": totals,
            "queues": {name: q.count for name, q in queues.items()},
            "workers": {
                name: Worker.count(connection=self.redis, queue=q) for name, q in queues.items()
            },
            "dlq": dlq,
            "dead": dead,
            "backpressure": {"active": pttl > 0, "seconds_left": round(max(0, pttl) / 1000, 3)},
            "rate_limit": {
                "current": rate,
                "configured": self.settings.rate_limit or None,
            },
            "delivered_per_second": round(sum(p["ok"] for p in series) / max(1, len(series)), 1),
        }

    def throughput(self, seconds: int = OUTCOME_HISTORY_SECONDS) -> dict[str, Any]:
        """Accepted and throttled requests per second over the last ``seconds`` (whole
        seconds only), from the notifiers' shared counters."""
        now = int(self.redis.time()[0])
        found = read_outcomes(self.redis, self.keys)
        start = now - max(1, min(seconds, OUTCOME_HISTORY_SECONDS))
        series = [
            {
                "t": t,
                "ok": found.get((t, Outcome.OK), 0),
                "throttled": found.get((t, Outcome.THROTTLED), 0),
            }
            for t in range(start, now)
        ]
        return {"now": now, "series": series}

    def outcome_totals(self, page: int = 1000) -> dict[str, int]:
        """Alerts by outcome over every file, from the files counters."""
        totals = Counter(
            {"delivered": 0, "rejected": 0, "dead": 0, "cancelled": 0, "invalid_rows": 0}
        )
        offset = 0
        while True:
            rows = self.store.list_files(page, offset)
            for row in rows:
                totals["delivered"] += row.delivered
                totals["rejected"] += row.rejected
                totals["dead"] += row.dead
                totals["cancelled"] += row.cancelled
                totals["invalid_rows"] += row.rows_invalid
            if len(rows) < page:
                return dict(totals)
            offset += page
