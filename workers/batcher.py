"""The batcher: streams one claimed file into chunks of alerts on the notifier queue.

Crash safety (PRODUCT rules 3, 5, 6):

- Chunk boundaries are fixed per file (every ``chunk_size`` records), so a replay after a crash
  cuts the file exactly as before.
- For each chunk the alerts and row errors are written to PostgreSQL first; the write returns
  the alerts this chunk owns (a repeated row belongs to the chunk that read it first).
- Then one Redis MULTI/EXEC enqueues those alerts and moves the checkpoint (byte offset, line,
  record count) past the chunk. A crash before EXEC replays the chunk: PostgreSQL hands back the
  same owned ids and they are enqueued once; a crash after EXEC resumes after the chunk.
- Only one batcher reads a file at a time (a lock key with a token, renewed while reading);
  the checkpoint transaction WATCHes that lock, so a batcher that lost it cannot write.
- Reading pauses while the notifier queue holds more than ``queue_high_water`` jobs.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import structlog

from hookdrop.alerts import alert_id
from hookdrop.backoff import compute_backoff
from hookdrop.errors import UnreadableFile
from hookdrop.queues import notifier_jobs, notifier_queue
from hookdrop.store import TERMINAL, retry_while_unavailable
from workers import context
from workers.parsing import Layout, Position, Row, RowError, read_rows

log = structlog.get_logger(__name__)



class LostLock(Exception):
    """Another batcher took over this file (our lock expired)."""


class FileCancelled(Exception):
    """The operator cancelled the file: stop reading it."""


@dataclass(slots=True)
class Checkpoint:
    """Where reading resumes, and the running totals up to there."""

    offset: int = 0
    line: int = 0
    records: int = 0
    seq: int = 0  # chunks committed
    alerts: int = 0  # unique alerts owned by committed chunks
    invalid: int = 0

    @classmethod
    def load(cls, raw: dict[bytes, bytes]) -> Checkpoint:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k.decode(): int(v) for k, v in raw.items() if k.decode() in fields})

    def position(self) -> Position | None:
        if self.records == 0 and self.offset == 0:
            return None
        return Position(offset=self.offset, line=self.line, records=self.records)

    def mapping(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def layout_from_json(data: dict[str, Any]) -> Layout:
    header = data.get("header")
    return Layout(**{**data, "header": tuple(header) if header is not None else None})


def read_file_job(file_id: int) -> dict[str, Any]:
    """RQ job: read one file (resuming from its checkpoint)."""
    ctx = context.current()
    return Batcher(ctx).run(file_id)


class Batcher:
    def __init__(self, ctx: context.WorkerContext) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.keys = ctx.settings.keys
        self.redis = ctx.redis
        self.store = ctx.store
        self.queue = notifier_queue(ctx.redis, self.keys)
        self.token = secrets.token_hex(8)
        self._renewed = 0.0
        # The lock outlives a stall of a few seconds; a dead batcher's runs out within a lease.
        self.lock_ttl_ms = int(ctx.settings.lease_seconds * 1000)
        self.renew_every = ctx.settings.lease_seconds / 4

    # -- locking ----------------------------------------------------------------------------

    def _acquire(self, file_id: int) -> bool:
        got = self.redis.set(self.keys.reading(file_id), self.token, nx=True, px=self.lock_ttl_ms)
        self.redis.delete(self.keys.read_queued(file_id))
        self._renewed = time.monotonic()
        return bool(got)

    def _renew(self, file_id: int) -> None:
        if time.monotonic() - self._renewed < self.renew_every:
            return
        key = self.keys.reading(file_id)
        try:
            if self.redis.get(key) != self.token.encode():
                raise LostLock(file_id)
            self.redis.pexpire(key, self.lock_ttl_ms)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # the checkpoint transaction will wait for Redis and check the lock itself
            log.warning("redis.unavailable", action="renew read lock", error=str(exc))
            return
        self._renewed = time.monotonic()

    def _release(self, file_id: int) -> None:
        key = self.keys.reading(file_id)
        try:
            with self.redis.pipeline() as pipe:
                pipe.watch(key)
                if pipe.get(key) == self.token.encode():
                    pipe.multi()
                    pipe.delete(key)
                    pipe.execute()
        except redis.WatchError:
            pass  # someone else holds it now: nothing of ours to release
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # the lock expires by itself; recovery then re-queues the file if it is unfinished
            log.warning("redis.unavailable", action="release read lock", error=str(exc))

    # -- main loop --------------------------------------------------------------------------

    def run(self, file_id: int) -> dict[str, Any]:
        bound = log.bind(file_id=file_id)
        if not self._acquire(file_id):
            bound.info("batch.already_reading")
            return {"file_id": file_id, "skipped": "another batcher is reading this file"}
        try:
            file = retry_while_unavailable(
                lambda: self.store.one("get_file", {"id": file_id}), what="load file",
                stop=self.ctx.stopping.is_set,
            )
            if file is None or file["status"] not in ("claimed", "reading"):
                bound.info("batch.nothing_to_read", status=file and file["status"])
                return {"file_id": file_id, "skipped": "not waiting to be read"}
            return self._read(file, bound)
        except LostLock:
            bound.warning("batch.lock_lost")
            return {"file_id": file_id, "skipped": "lock lost to another batcher"}
        except FileCancelled:
            bound.info("batch.cancelled")
            return {"file_id": file_id, "skipped": "cancelled"}
        finally:
            self._release(file_id)

    def _read(self, file: dict[str, Any], bound: Any) -> dict[str, Any]:
        file_id = int(file["id"])
        ckpt = Checkpoint.load(self.redis.hgetall(self.keys.checkpoint(file_id)))  # type: ignore[arg-type]
        layout = layout_from_json(file["layout"])
        path = Path(file["processing_path"])
        started = time.monotonic()
        bound.info("batch.started", resume_at=ckpt.records, offset=ckpt.offset)
        error: str | None = None
        try:
            size = path.stat().st_size
            if size != file["size_bytes"]:
                # The claimed content was hashed and recorded; something else is there now.
                raise UnreadableFile(
                    f"the file in processing/ changed after it was claimed ({size} bytes, "
                    f"claimed with {file['size_bytes']}); it was not read further")
            for records in self._chunks(path, layout, ckpt.position(), file["chunk_size"]):
                if self.ctx.stopping.is_set():
                    bound.info("batch.interrupted", records=ckpt.records)
                    return {"file_id": file_id, "interrupted": True, "records": ckpt.records}
                self._wait_for_room(file_id)
                ckpt = self._commit_chunk(file, records, ckpt)
        except UnreadableFile as exc:
            error = str(exc)
            bound.warning("batch.unreadable", error=error, records=ckpt.records)
        except FileNotFoundError:
            error = "the file disappeared from processing/ while it was being read"
            bound.error("batch.file_vanished", path=str(path))
        retry_while_unavailable(
            lambda: self.store.run("file_read_complete", {
                "id": file_id, "rows": ckpt.records, "invalid": ckpt.invalid,
                "alerts": ckpt.alerts, "error": error,
            }),
            what="finish file",
        )
        elapsed = time.monotonic() - started
        bound.info("batch.read_complete", records=ckpt.records, alerts=ckpt.alerts,
                   invalid=ckpt.invalid, seconds=round(elapsed, 3))
        return {"file_id": file_id, "records": ckpt.records, "alerts": ckpt.alerts,
                "invalid": ckpt.invalid, "error": error}

    def _chunks(
        self, path: Path, layout: Layout, start: Position | None, size: int
    ) -> Iterator[list[tuple[Row | RowError, Position]]]:
        batch: list[tuple[Row | RowError, Position]] = []
        try:
            for item in read_rows(path, layout, start):
                batch.append(item)
                if len(batch) >= size:
                    yield batch
                    batch = []
        except UnreadableFile:
            if batch:  # what was read before the damage still goes out
                yield batch
            raise
        if batch:
            yield batch

    def _wait_for_room(self, file_id: int) -> None:
        """Back-pressure: hold off while the notifier queue is above its high-water mark."""
        waited = False
        while self._queued() >= self.settings.queue_high_water:
            if not waited:
                log.debug("batch.waiting_for_queue", file_id=file_id, queued=self.queue.count)
                waited = True
            if self.ctx.stopping.is_set():
                return
            self._renew(file_id)
            time.sleep(0.05)
        self._renew(file_id)

    def _queued(self) -> int:
        """Notifier jobs waiting; while Redis is away, wait for it rather than fail."""
        attempt = 0
        while True:
            try:
                return int(self.queue.count)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                attempt += 1
                delay = compute_backoff(attempt, base=0.5, cap=10)
                log.warning("redis.unavailable", action="queue depth", error=str(exc),
                            retry_in=round(delay, 2))
                time.sleep(delay)

    def _commit_chunk(
        self,
        file: dict[str, Any],
        records: list[tuple[Row | RowError, Position]],
        ckpt: Checkpoint,
    ) -> Checkpoint:
        file_id = int(file["id"])
        sha, generation = file["content_sha256"], file["generation"]
        alerts: dict[str, tuple[str, int, str, str, dict[str, object] | None]] = {}
        errors: list[tuple[int, str, str]] = []
        for record, _pos in records:
            if isinstance(record, RowError):
                errors.append((record.line, record.reason, record.excerpt))
                continue
            aid = alert_id(sha, generation, record.user_id, record.message)
            if aid not in alerts:
                alerts[aid] = (aid, record.line, record.user_id, record.message, record.extra)
        seq = ckpt.seq + 1
        owned, status = retry_while_unavailable(
            lambda: self.store.write_chunk(
                file_id=file_id, seq=seq, alerts=list(alerts.values()), errors=errors,
                rows=ckpt.records + len(records), invalid=ckpt.invalid + len(errors),
                alerts_before=ckpt.alerts,
            ),
            what="write chunk",
        )
        last = records[-1][1]
        new = Checkpoint(offset=last.offset, line=last.line, records=last.records, seq=seq,
                         alerts=ckpt.alerts + len(owned), invalid=ckpt.invalid + len(errors))
        if status == "cancelled":
            raise FileCancelled(file_id)
        to_send = [aid for aid, state in owned if state not in TERMINAL]
        self._enqueue_with_checkpoint(file_id, to_send, new)
        return new

    def _enqueue_with_checkpoint(self, file_id: int, ids: list[str], new: Checkpoint) -> None:
        """One MULTI/EXEC: the chunk's notifier jobs and the checkpoint past it."""
        lock_key = self.keys.reading(file_id)
        attempt = 0
        while True:
            try:
                with self.redis.pipeline(transaction=True) as pipe:
                    pipe.watch(lock_key)
                    if pipe.get(lock_key) != self.token.encode():
                        raise LostLock(file_id)
                    pipe.multi()
                    if ids:
                        self.queue.enqueue_many(
                            notifier_jobs(self.keys, file_id, ids, self.settings.chunk_size),
                            pipeline=pipe,
                        )
                    pipe.hset(self.keys.checkpoint(file_id), mapping=new.mapping())
                    pipe.pexpire(lock_key, self.lock_ttl_ms)
                    pipe.execute()
                    self._renewed = time.monotonic()
                    return
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                attempt += 1
                delay = compute_backoff(attempt, base=0.5, cap=10)
                log.warning("redis.unavailable", action="checkpoint", error=str(exc),
                            retry_in=round(delay, 2))
                time.sleep(delay)
            except redis.WatchError:
                raise LostLock(file_id) from None
