"""Re-queuing lost work: Redis rebuilt from PostgreSQL, stalled reads, expired leases, orphans.

PostgreSQL is the source of truth; Redis only holds queues, checkpoints and flags. Each sweep
is idempotent and safe to run from several monitors at once (the jobs it queues are harmless
when doubled: readers lock per file, notifiers lease per chunk).
"""

from __future__ import annotations

import time
import uuid

import structlog

from daemon._duty import BATCH, Duty
from hookdrop.errors import StoreError, StoreUnavailable
from hookdrop.queues import enqueue_read, notifier_queue
from hookdrop.store import FileStatus

log = structlog.get_logger(__name__)

# After an ANALYZE of alerts that failed or was skipped, the next try waits this long.
STATISTICS_RETRY_SECONDS = 600.0


class Sweeps(Duty):
    _statistics_not_before = 0.0

    def ensure_epoch(self) -> bool:
        """Rebuild Redis from PostgreSQL if it lost its data; True when a rebuild ran."""
        if not self.redis.set(self.keys.epoch, uuid.uuid4().hex, nx=True):
            return False
        files = self.store.active_files()
        for file in files:
            self.rebuild_file(file.id, file.read_complete)
        if files:
            log.warning("redis.rebuilt", files=len(files))
        return True

    def rebuild_file(self, file_id: int, read_complete: bool) -> None:
        """Queue everything still open for one file, from PostgreSQL (and processing/)."""
        self._enqueue_grouped(self.store.open_alerts(file_id))
        if not read_complete:
            self.redis.delete(self.keys.checkpoint(file_id))
            self._queue_read(file_id)

    def requeue_stalled_reads(self) -> int:
        """Files waiting to be read with no batcher on them and no read job queued."""
        count = 0
        for file in self.store.active_files():
            if file.read_complete or file.status not in (FileStatus.CLAIMED, FileStatus.READING):
                continue
            file_id = file.id
            if self.redis.exists(self.keys.reading(file_id), self.keys.read_queued(file_id)):
                continue
            log.warning("file.read_requeued", file_id=file_id)
            self._queue_read(file_id)
            count += 1
        return count

    def _queue_read(self, file_id: int) -> None:
        self.redis.set(self.keys.read_queued(file_id), "1", ex=600)
        enqueue_read(self.redis, self.keys, file_id)

    def requeue_expired_leases(self) -> int:
        """Open alerts of chunks whose notifier died or handed them back: queued again."""
        rows = self.store.take_expired_leases(limit=BATCH)
        self._enqueue_grouped(rows)
        if rows:
            log.warning("alert.lease_expired", alerts=len(rows))
        # Those of cancelled files end instead, once no lease row holds any of the file's
        # chunks (the leases just ended included); a summary already written is redone.
        for file_id in self.store.cancel_leftovers():
            self._refresh_summary(file_id)
        return len(rows)

    def refresh_statistics(self) -> None:
        """New planner statistics for alerts once it has grown fourfold since the last ones.

        Never in the way of the other duties: an ANALYZE that fails (a statement timeout
        shorter than it) or that PostgreSQL skips is tried again only after a pause."""
        if time.monotonic() < self._statistics_not_before:
            return
        try:
            refreshed = self.store.refresh_statistics()
        except (StoreError, StoreUnavailable) as exc:
            refreshed, error = None, str(exc)
        else:
            error = "skipped by PostgreSQL: the table is busy, or this role does not own it"
        if refreshed:
            log.info("db.statistics_refreshed", table="alerts")
        elif refreshed is None:
            self._statistics_not_before = time.monotonic() + STATISTICS_RETRY_SECONDS
            log.warning(
                "db.statistics_not_refreshed",
                table="alerts",
                error=error,
                retry_in=STATISTICS_RETRY_SECONDS,
            )

    def requeue_orphaned_pending(self) -> int:
        """Pending alerts whose job died before claiming them, queued again.

        Only while the notifier queue is empty, so no waiting job carries them; a job that is
        doubled this way (one just dequeued, not yet claimed) is harmless: claims are leases.
        """
        if notifier_queue(self.redis, self.keys).count:
            return 0
        rows = self.store.orphaned_pending(age=self.settings.lease_seconds, limit=BATCH)
        self._enqueue_grouped(rows)
        if rows:
            log.warning("alert.orphan_requeued", alerts=len(rows))
        return len(rows)
