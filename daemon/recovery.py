"""Keeping work moving after crashes, Redis loss and failures.

PostgreSQL is the source of truth; Redis only holds queues, checkpoints and flags. Each duty
here is idempotent and safe to run from several monitors at once (the jobs it queues are
harmless when doubled: readers lock per file, notifiers lease per alert).
"""

from __future__ import annotations

import os
import uuid
from collections import defaultdict
from pathlib import Path

import redis
import structlog

from hookdrop.endpoints import DEFAULT, LiveEndpoints
from hookdrop.endpoints.state import CLOSED, read_state
from hookdrop.inbox import disk_name
from hookdrop.intake import write_error_note
from hookdrop.queues import enqueue_deliveries, enqueue_read, notifier_queue
from hookdrop.settings import Settings
from hookdrop.store import AlertRef, FileStatus, Store

log = structlog.get_logger(__name__)

BATCH = 5000


class Recovery:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        conn: redis.Redis,
        endpoints: LiveEndpoints | None = None,
    ) -> None:
        self.settings = settings
        self.endpoints = endpoints or LiveEndpoints(settings, {})
        self.keys = settings.keys
        self.store = store
        self.redis = conn

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
        ids = self.store.open_alert_ids(file_id)
        enqueue_deliveries(self.redis, self.keys, file_id, ids, self.settings.chunk_size)
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
        """Alerts held by a notifier that died: hand them to the queue again."""
        self.store.cancel_leftovers()  # those of cancelled files end here instead
        rows = self.store.take_expired_leases(lease=self.settings.lease_seconds, limit=BATCH)
        self._enqueue_grouped(rows)
        if rows:
            log.warning("alert.lease_expired", alerts=len(rows))
        return len(rows)

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

    def _names(self) -> list[str]:
        return sorted({DEFAULT, *self.endpoints.current.names})

    def reinject_dlq(self) -> int:
        """Send DLQ entries whose time has come, but not to an endpoint that asked us to hold
        off or whose circuit breaker is open."""
        held = [
            name
            for name in self._names()
            if not read_state(self.redis, self.keys.scoped(name)).accepting
        ]
        rows = self.store.take_due_dlq(interval=self.settings.dlq_interval, limit=BATCH, held=held)
        self._enqueue_grouped(rows)
        if rows:
            log.info("dlq.reinjected", alerts=len(rows))
        return len(rows)

    def requeue_deferred(self) -> int:
        """Deferred alerts of endpoints open again, queued; while a breaker waits for its
        probe, one alert at a time (it is the probe)."""
        count = 0
        for name in self._names():
            state = read_state(self.redis, self.keys.scoped(name))
            if not state.accepting:
                continue
            limit = BATCH if state.breaker == CLOSED else 1
            rows = self.store.take_deferred(name, limit=limit)
            self._enqueue_grouped(rows)
            if rows:
                log.info("alert.deferred_requeued", endpoint=name, alerts=len(rows))
            count += len(rows)
        return count

    def _enqueue_grouped(self, rows: list[AlertRef]) -> None:
        by_file: dict[int, list[str]] = defaultdict(list)
        for row in rows:
            by_file[row.file_id].append(row.id)
        for file_id, ids in by_file.items():
            enqueue_deliveries(self.redis, self.keys, file_id, ids, self.settings.chunk_size)

    def finish_files(self) -> int:
        """Files whose alerts all reached an end state: mark them and move them out."""
        finished = self.store.finish_files()
        for row in finished:
            self.redis.delete(self.keys.checkpoint(row.id))
            log.info("file.finished", file_id=row.id, name=row.name)
        self.move_finished()
        return len(finished)

    def move_finished(self) -> None:
        for row in self.store.files_to_move():
            source = Path(row.processing_path)
            folder = (
                self.settings.done_dir
                if row.status == FileStatus.DONE
                else self.settings.failed_dir
            )
            final = folder / disk_name(str(row.id), row.name)
            try:
                os.rename(source, final)
            except FileNotFoundError:
                if not final.exists():
                    # Gone from processing/ (removed by hand): say so once, and stop looking.
                    log.error("file.missing", file_id=row.id, path=str(source))
                    self.store.set_final_path(row.id, "")
                    continue
            if row.status == FileStatus.FAILED:
                file = self.store.get_file(row.id)
                write_error_note(final, str(file and file.error))
            self.store.set_final_path(row.id, str(final))
            log.info("file.moved", file_id=row.id, to=str(final))
