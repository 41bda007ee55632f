"""The batcher: streams one claimed file into chunks of alerts on the notifier queue.

Crash safety:

- Chunk boundaries are fixed per file (every ``chunk_size`` records), so a replay after a crash
  cuts the file exactly as before.
- For each chunk the alerts and row errors are written to PostgreSQL first; the write returns
  the alerts this chunk owns (a repeated row belongs to the chunk that read it first).
- Then one Redis MULTI/EXEC enqueues those alerts and moves the checkpoint (byte offset, line,
  record count) past the chunk. A crash before EXEC replays the chunk: PostgreSQL hands back the
  same owned ids and they are enqueued once; a crash after EXEC resumes after the chunk.
- A long run of blank lines ends a chunk too (at a place the reader fixes, the same on a
  replay), so the checkpoint advances on bytes as well as rows.
- Only one batcher reads a file at a time (a lock key with a token, renewed while reading
  makes progress, whether rows or bytes); the checkpoint transaction WATCHes that lock, so a
  batcher that lost it cannot write.
- The file read is the one that was claimed: opened without following links and checked
  against the identity (inode, size, mtime) recorded at the claim.
- Reading pauses while the notifier queue holds more than ``queue_high_water`` jobs.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import redis
import structlog

from hookdrop.alerts import alert_id
from hookdrop.endpoints import Renderer, RenderError
from hookdrop.errors import QueueUnavailable, UnreadableFile
from hookdrop.formats import Gap, Item, Layout, Position, RowError, read_rows
from hookdrop.inbox import (
    ChangedFile,
    FileIdentity,
    NotRegularFile,
    describe_change,
    open_regular,
)
from hookdrop.queues import notifier_jobs, notifier_queue
from hookdrop.retry import retrying
from hookdrop.store import TERMINAL, AlertInput, FileRow, FileStatus
from workers import context

log = structlog.get_logger(__name__)

# A run of this many bytes of blank lines ends a chunk, so the checkpoint moves past it.
GAP_BYTES = 8 << 20
# A chunk also ends once it spans this many bytes of the file, so one chunk's write stays
# small whatever the rows (up to 1 MiB each) carry.
CHUNK_BYTES = 8 << 20


class LostLock(Exception):
    """Another batcher took over this file (our lock expired)."""


class FileCancelled(Exception):
    """The operator cancelled the file: stop reading it."""


class UnknownEndpoint(Exception):
    """The file's endpoint is not configured (any more): its rows cannot be rendered."""


class ReadInterrupted(Exception):
    """A stop was asked for in the middle of a long stretch (a long line, blank lines)."""


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
        except QueueUnavailable as exc:
            # the checkpoint transaction will wait for Redis and check the lock itself
            log.warning("redis.unavailable", action="renew read lock", error=str(exc))
            return
        self._renewed = time.monotonic()

    def _release(self, file_id: int) -> None:
        key = self.keys.reading(file_id)
        try:
            with self.redis.pipeline() as pipe:
                pipe.watch(key)  # type: ignore[no-untyped-call]
                if pipe.get(key) == self.token.encode():
                    pipe.multi()
                    pipe.delete(key)
                    pipe.execute()
        except redis.WatchError:
            pass  # someone else holds it now: nothing of ours to release
        except QueueUnavailable as exc:
            # the lock expires by itself; recovery then re-queues the file if it is unfinished
            log.warning("redis.unavailable", action="release read lock", error=str(exc))

    # -- main loop --------------------------------------------------------------------------

    def run(self, file_id: int) -> dict[str, Any]:
        bound = log.bind(file_id=file_id)
        if not self._acquire(file_id):
            bound.info("batch.already_reading")
            return {"file_id": file_id, "skipped": "another batcher is reading this file"}
        try:
            file = retrying(
                lambda: self.store.get_file(file_id),
                what="load file",
                stop=self.ctx.stopping.is_set,
            )
            if file is None or file.status not in (FileStatus.CLAIMED, FileStatus.READING):
                bound.info("batch.nothing_to_read", status=file and file.status)
                return {"file_id": file_id, "skipped": "not waiting to be read"}
            return self._read(file, bound)
        except LostLock:
            bound.warning("batch.lock_lost")
            return {"file_id": file_id, "skipped": "lock lost to another batcher"}
        except FileCancelled:
            bound.info("batch.cancelled")
            return {"file_id": file_id, "skipped": "cancelled"}
        except ReadInterrupted:
            bound.info("batch.interrupted")
            return {"file_id": file_id, "interrupted": True}
        except Exception as exc:  # noqa: BLE001 - logged with its traceback, then recorded
            # A fault of ours with this file: end its reading with the error (what was read
            # goes out), rather than fail the job and be re-queued into the same fault forever.
            bound.error("batch.failed", error=repr(exc), exc_info=True)
            error = f"internal error while reading this file: {exc!r}"[:500]
            retrying(
                lambda: self.store.finish_read(file_id, rows=0, invalid=0, alerts=0, error=error),
                what="finish file",
            )
            return {"file_id": file_id, "error": error}
        finally:
            self._release(file_id)

    def _read(self, file: FileRow, bound: Any) -> dict[str, Any]:
        file_id = file.id
        saved = cast(
            dict[bytes, bytes],
            retrying(
                lambda: self.redis.hgetall(self.keys.checkpoint(file_id)),
                what="load checkpoint",
                stop=self.ctx.stopping.is_set,
            ),
        )
        ckpt = Checkpoint.load(saved)
        layout = layout_from_json(file.layout or {})
        path = Path(file.processing_path or "")
        started = time.monotonic()
        bound.info("batch.started", resume_at=ckpt.records, offset=ckpt.offset)
        error: str | None = None
        try:
            self._renderer(file)  # an endpoint no longer configured: nothing is read
            fd = _open_claimed(path, file)
            try:
                for records in self._chunks(fd, layout, ckpt.position(), file.chunk_size, file_id):
                    if self.ctx.stopping.is_set():
                        bound.info("batch.interrupted", records=ckpt.records)
                        return {"file_id": file_id, "interrupted": True, "records": ckpt.records}
                    self._wait_for_room(file_id)
                    # Rows read after a write to the file are never committed.
                    _check_unchanged(fd, file)
                    ckpt = self._commit_chunk(file, records, ckpt)
            finally:
                os.close(fd)
        except UnreadableFile as exc:
            error = str(exc)
            bound.warning("batch.unreadable", error=error, records=ckpt.records)
        except UnknownEndpoint as exc:
            # Never rendered with another endpoint's (or the default) body: the file ends
            # with the reason, and can be dropped again once the endpoint is configured.
            error = f"endpoint {str(exc)!r} is not configured: configure it, drop the file again"
            bound.error("endpoint.unknown", endpoint=str(exc), records=ckpt.records)
        except FileNotFoundError:
            error = "the file disappeared from processing/ while it was being read"
            bound.error("batch.file_vanished", path=str(path))
        except OSError as exc:
            error = f"the file cannot be read: {exc.strerror or exc}"
            bound.error("batch.read_failed", path=str(path), error=error)
        retrying(
            lambda: self.store.finish_read(
                file_id, rows=ckpt.records, invalid=ckpt.invalid, alerts=ckpt.alerts, error=error
            ),
            what="finish file",
        )
        elapsed = time.monotonic() - started
        bound.info(
            "batch.read_complete",
            records=ckpt.records,
            alerts=ckpt.alerts,
            invalid=ckpt.invalid,
            seconds=round(elapsed, 3),
        )
        return {
            "file_id": file_id,
            "records": ckpt.records,
            "alerts": ckpt.alerts,
            "invalid": ckpt.invalid,
            "error": error,
        }

    def _chunks(
        self, fd: int, layout: Layout, start: Position | None, size: int, file_id: int
    ) -> Iterator[list[tuple[Item, Position]]]:
        """Chunks of ``size`` records, ended early by a Gap (possibly an empty chunk) or by
        CHUNK_BYTES of the file: both depend only on the file, so a replay cuts it the same."""
        batch: list[tuple[Item, Position]] = []
        chunk_start = start.offset if start is not None else 0

        def progress(_offset: int) -> None:
            if self.ctx.stopping.is_set():
                raise ReadInterrupted(file_id)
            self._renew(file_id)

        try:
            for item, position in read_rows(
                fd, layout, start, gap_bytes=GAP_BYTES, on_progress=progress
            ):
                batch.append((item, position))
                if (
                    isinstance(item, Gap)
                    or len(batch) >= size
                    or position.offset - chunk_start >= CHUNK_BYTES
                ):
                    yield batch
                    batch = []
                    chunk_start = position.offset
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

    def _renderer(self, file: FileRow) -> Renderer:
        """The endpoint's templates; UnknownEndpoint when it is not configured."""
        endpoints = self.ctx.live.current
        if file.endpoint not in endpoints:
            raise UnknownEndpoint(file.endpoint)
        return endpoints[file.endpoint].renderer

    def _queued(self) -> int:
        """Notifier jobs waiting; while Redis is away, wait for it rather than fail."""
        return retrying(lambda: int(self.queue.count), what="queue depth")

    def _commit_chunk(
        self,
        file: FileRow,
        items: list[tuple[Item, Position]],
        ckpt: Checkpoint,
    ) -> Checkpoint:
        file_id = file.id
        sha, generation = file.content_sha256, file.generation
        alerts: dict[str, AlertInput] = {}
        errors: list[tuple[int, str, str]] = []
        renderer = self._renderer(file)
        records = 0
        for record, _pos in items:
            if isinstance(record, Gap):
                continue
            records += 1
            if isinstance(record, RowError):
                errors.append((record.line, record.reason, record.excerpt))
                continue
            aid = alert_id(sha, generation, record.user_id, record.message, file.endpoint)
            if aid in alerts:
                continue
            try:
                body = renderer.render(
                    user_id=record.user_id,
                    message=record.message,
                    extra=record.extra,
                    alert_id=aid,
                    file=file.name,
                    line=record.line,
                )
            except RenderError as exc:
                errors.append((record.line, str(exc), f"{record.user_id},{record.message}"[:120]))
                continue
            alerts[aid] = (aid, record.line, record.user_id, record.message, record.extra, body)
        last = items[-1][1]
        if not records:
            # Only blank lines since the last chunk: move the checkpoint past them.
            new = dataclasses.replace(ckpt, offset=last.offset, line=last.line)
            self._enqueue_with_checkpoint(file_id, seq=None, ids=[], new=new)
            return new
        seq = ckpt.seq + 1
        written = retrying(
            lambda: self.store.write_chunk(
                file_id=file_id,
                seq=seq,
                alerts=list(alerts.values()),
                errors=errors,
                rows=ckpt.records + records,
                invalid_before=ckpt.invalid,
                alerts_before=ckpt.alerts,
            ),
            what="write chunk",
        )
        if written.refused:
            log.warning("batch.rows_refused", file_id=file_id, rows=written.refused)
        new = Checkpoint(
            offset=last.offset,
            line=last.line,
            records=last.records,
            seq=seq,
            alerts=ckpt.alerts + len(written.owned),
            invalid=ckpt.invalid + len(errors) + written.refused,
        )
        if written.file_status == FileStatus.CANCELLED:
            raise FileCancelled(file_id)
        to_send = [aid for aid, state in written.owned if state not in TERMINAL]
        self._enqueue_with_checkpoint(file_id, seq=seq, ids=to_send, new=new)
        return new

    def _enqueue_with_checkpoint(
        self, file_id: int, *, seq: int | None, ids: list[str], new: Checkpoint
    ) -> None:
        """One MULTI/EXEC: the chunk's notifier job and the checkpoint past it."""
        lock_key = self.keys.reading(file_id)

        def commit() -> None:
            try:
                with self.redis.pipeline(transaction=True) as pipe:
                    pipe.watch(lock_key)  # type: ignore[no-untyped-call]
                    if pipe.get(lock_key) != self.token.encode():
                        raise LostLock(file_id)
                    pipe.multi()
                    if ids and seq is not None:
                        self.queue.enqueue_many(
                            notifier_jobs(self.keys, file_id, [(seq, ids)]), pipeline=pipe
                        )
                    pipe.hset(
                        self.keys.checkpoint(file_id), mapping=cast(dict[Any, Any], new.mapping())
                    )
                    pipe.pexpire(lock_key, self.lock_ttl_ms)
                    pipe.execute()
            except redis.WatchError:
                raise LostLock(file_id) from None

        retrying(commit, what="checkpoint")
        self._renewed = time.monotonic()


def _check_unchanged(fd: int, file: FileRow) -> None:
    expected = file.identity
    if expected is None:
        return
    st = os.fstat(fd)
    found = FileIdentity.of(st)
    if st.st_nlink == 0:
        # Deleted from processing/ while read: the unlink moved the change time, and with no
        # name left nobody can open it to write; the content is what was claimed.
        found = FileIdentity(found.key, found.size, found.mtime_ns, expected.ctime_ns)
    if found != expected:
        raise UnreadableFile(
            f"the file in processing/ changed while it was being read "
            f"({describe_change(expected, found)}); it was not read further"
        )


def _open_claimed(path: Path, file: FileRow) -> int:
    """A descriptor of the claimed file, or UnreadableFile if something else is there now."""
    try:
        fd, st = open_regular(path, file.identity)
    except (ChangedFile, NotRegularFile) as exc:
        raise UnreadableFile(
            f"the file in processing/ changed after it was claimed ({exc}); it was not read further"
        ) from None
    if st.st_size != file.size_bytes:  # files claimed before identities were recorded
        os.close(fd)
        raise UnreadableFile(
            f"the file in processing/ changed after it was claimed ({st.st_size} bytes, "
            f"claimed with {file.size_bytes}); it was not read further"
        )
    return fd
