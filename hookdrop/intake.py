"""Recording a file that sits in ``processing/``: hash, sniff, ledger row, read job.

Used by the monitor for the files it claims from the inbox and by the operator's resend. The
file is read through the descriptor opened for the claim (or opened here without following
links), so what is hashed, sniffed and recorded, with its identity (device and inode, size,
mtime), is the file that was claimed. A file that cannot be read goes to ``failed/`` with a
plain-language note beside it; the same content dropped again is recorded as a duplicate and
moved to ``done/`` unsent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import stat
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import redis
import structlog

from hookdrop.errors import UnreadableFile
from hookdrop.formats import sniff
from hookdrop.inbox import (
    DEFAULT_ENDPOINT,
    ChangedFile,
    FileIdentity,
    describe_change,
    disk_name,
    kind_of,
    note_path,
    open_regular,
    write_note,
)
from hookdrop.queues import enqueue_read
from hookdrop.settings import Settings
from hookdrop.store import FileStatus, Store

log = structlog.get_logger(__name__)

_HASH_BLOCK = 1 << 20
CLAIM_BEAT_SECONDS = 5.0  # a claim in progress says so this often (see Keys.claiming)


class ClaimInterrupted(Exception):
    """A stop was requested while a file was being hashed; it stays in processing/."""


@dataclass(frozen=True, slots=True)
class Registered:
    file_id: int
    status: FileStatus  # claimed, duplicate or failed
    path: Path  # where the file is now
    detail: str | None = None


def ensure_dirs(settings: Settings, endpoints: Iterable[str] = ()) -> None:
    """The inbox, its three work folders and a folder per endpoint (but ``default``), which
    must be folders and not links."""
    work = (settings.inbox, settings.processing_dir, settings.done_dir, settings.failed_dir)
    for folder in (*work, *(settings.inbox / name for name in endpoints)):
        make_dir(folder)


def make_dir(folder: Path) -> None:
    """Make ``folder`` (and its parents); OSError when something else is in its place."""
    with contextlib.suppress(FileExistsError):  # a file or a dangling link: said below
        folder.mkdir(parents=True, exist_ok=True)
    if folder.is_symlink() or not folder.is_dir():
        raise NotADirectoryError(f"{folder} must be a directory, not a link or a file")


def sha256_of(
    fd: int, size: int, stopping: Callable[[], bool], alive: Callable[[], None] = lambda: None
) -> str:
    """SHA-256 of the first ``size`` bytes behind ``fd``; ChangedFile if it has fewer.

    ``alive`` is called every few seconds of hashing.
    """
    digest = hashlib.sha256()
    offset = 0
    beat = time.monotonic()
    while offset < size:
        if stopping():
            raise ClaimInterrupted
        if time.monotonic() - beat > CLAIM_BEAT_SECONDS:
            alive()
            beat = time.monotonic()
        block = os.pread(fd, min(_HASH_BLOCK, size - offset), offset)
        if not block:
            raise ChangedFile(f"shrank while it was being claimed ({offset} of {size} bytes)")
        digest.update(block)
        offset += len(block)
    return digest.hexdigest()


def write_error_note(final: Path, error: str) -> None:
    """``<name>.error.txt`` beside a failed file; a note that cannot be written is logged."""
    note = note_path(final)
    try:
        write_note(note, f"{final.name}: {error}\n".encode())
    except OSError as exc:
        log.error("file.note_failed", path=str(note), error=str(exc))


class Intake:
    """Records files in processing/ for one owner; one per thread (it holds a Store)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        conn: redis.Redis,
        owner: str,
        *,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.settings = settings
        self.store = store
        self.redis = conn
        self.owner = owner
        self.stopping = stopping

    def register(
        self, target: Path, name: str, *, generation: int = 0, endpoint: str = DEFAULT_ENDPOINT
    ) -> Registered | None:
        """Record a file that sits in processing/ and queue it (or set it aside)."""
        try:
            fd, opened = open_regular(target)
        except OSError as exc:
            return self.set_aside(target, name, f"{name} cannot be read in processing/: {exc}")
        try:
            return self.register_open(
                fd, opened, target, name, generation=generation, endpoint=endpoint
            )
        finally:
            os.close(fd)

    def register_open(
        self,
        fd: int,
        opened: os.stat_result,
        target: Path,
        name: str,
        *,
        generation: int = 0,
        endpoint: str = DEFAULT_ENDPOINT,
    ) -> Registered | None:
        """Record the file behind ``fd`` (now at ``target``) and queue it, or set it aside."""
        claiming = self.settings.keys.claiming(target.name)
        ttl = int(CLAIM_BEAT_SECONDS * 6)

        def alive() -> None:
            self.redis.set(claiming, self.owner, ex=ttl)

        alive()
        try:
            return self._register_open(
                fd, opened, target, name, generation=generation, endpoint=endpoint, alive=alive
            )
        finally:
            self.redis.delete(claiming)

    def _register_open(
        self,
        fd: int,
        opened: os.stat_result,
        target: Path,
        name: str,
        *,
        generation: int,
        endpoint: str,
        alive: Callable[[], None],
    ) -> Registered | None:
        identity = FileIdentity.of(opened)
        try:
            sha = sha256_of(fd, opened.st_size, self.stopping, alive)
            now = FileIdentity.of(os.fstat(fd))
            if now != identity:
                raise ChangedFile(
                    f"written to while it was being claimed ({describe_change(identity, now)})"
                )
            layout = sniff(fd)
        except ClaimInterrupted:
            log.info("file.claim_interrupted", name=name, path=str(target))
            raise
        except UnreadableFile as exc:
            return self._unreadable(
                target, name, sha, generation, endpoint, size=opened.st_size, error=str(exc)
            )
        except ChangedFile as exc:
            return self.set_aside(target, name, f"{name} changed: {exc}; not read")
        except OSError as exc:
            return self.set_aside(target, name, f"{name} cannot be read: {exc.strerror or exc}")
        file_id = self.store.insert_file(
            name=name,
            sha=sha,
            generation=generation,
            size=opened.st_size,
            layout=dataclasses.asdict(layout),
            chunk_size=self.settings.chunk_size,
            path=str(target),
            claimed_by=self.owner,
            identity=identity,
            endpoint=endpoint,
        )
        if file_id is None:
            return self._duplicate(target, name, sha, generation, endpoint, size=opened.st_size)
        self.redis.set(self.settings.keys.read_queued(file_id), "1", ex=600)
        enqueue_read(self.redis, self.settings.keys, file_id)
        log.info(
            "file.queued",
            file_id=file_id,
            name=name,
            size=opened.st_size,
            format=layout.format,
            compressed=layout.compressed,
            endpoint=endpoint,
        )
        return Registered(file_id, FileStatus.CLAIMED, target)

    def _duplicate(
        self, target: Path, name: str, sha: str, generation: int, endpoint: str, *, size: int
    ) -> Registered:
        first = self.store.find_file_by_content(sha, generation, endpoint)
        assert first is not None  # the insert just conflicted with it
        final = self._move(target, self.settings.done_dir, f"dup{first.id}", name)
        file_id = self.store.insert_duplicate(
            name=name,
            sha=sha,
            generation=generation,
            size=size,
            chunk_size=self.settings.chunk_size,
            claimed_by=self.owner,
            duplicate_of=first.id,
            final_path=str(final),
            endpoint=endpoint,
        )
        detail = (
            f"same content as file {first.id} ({first.name}, {first.status}); "
            "not sent again — use `hookdrop resend` to send it anyway"
        )
        log.warning("file.duplicate", file_id=file_id, duplicate_of=first.id, name=name)
        return Registered(file_id, FileStatus.DUPLICATE, final, detail)

    def _unreadable(
        self,
        target: Path,
        name: str,
        sha: str,
        generation: int,
        endpoint: str,
        *,
        size: int,
        error: str,
    ) -> Registered:
        final = self._move(target, self.settings.failed_dir, uuid.uuid4().hex[:8], name)
        file_id = self.store.insert_unreadable(
            name=name,
            sha=sha,
            generation=generation,
            size=size,
            chunk_size=self.settings.chunk_size,
            claimed_by=self.owner,
            error=error,
            final_path=str(final),
            endpoint=endpoint,
        )
        if file_id is None:  # the same unreadable content was seen before
            first = self.store.find_file_by_content(sha, generation, endpoint)
            assert first is not None
            file_id = first.id
            error = f"{error} (same content as file {file_id})"
        write_error_note(final, error)
        log.warning("file.unreadable", file_id=file_id, name=name, error=error)
        return Registered(file_id, FileStatus.FAILED, final, error)

    def set_aside(self, path: Path, name: str, error: str) -> Registered | None:
        """Move something that will not be read to failed/ (or leave it) and record why.

        Keyed by what the entry is (device, inode, size, mtime), so seeing the same entry
        again after a restart does not record it twice. None when it is gone already.
        """
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        key = f"unreadable:{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
        final: Path | None = self.settings.failed_dir / disk_name(uuid.uuid4().hex[:8], name)
        try:
            os.rename(path, final)  # type: ignore[arg-type]
        except FileNotFoundError:
            return None
        except OSError as exc:
            error = f"{error} (left in the inbox: cannot move it to failed/: {exc.strerror})"
            final = None
        file_id = self.store.insert_unreadable(
            name=name,
            sha=key,
            generation=0,
            size=st.st_size,
            chunk_size=self.settings.chunk_size,
            claimed_by=self.owner,
            error=error,
            final_path=str(final) if final else None,
        )
        if file_id is None:
            first = self.store.find_file_by_content(key, 0)
            file_id = first.id if first else 0
        if final is not None:
            write_error_note(final, error)
        log.warning(
            "file.unreadable",
            file_id=file_id,
            name=name,
            error=error,
            kind="file" if stat.S_ISREG(st.st_mode) else kind_of(st.st_mode),
            left_in_place=final is None,
        )
        return Registered(file_id, FileStatus.FAILED, final or path, error)

    def _move(self, source: Path, folder: Path, tag: str, name: str) -> Path:
        final = folder / disk_name(tag, name)
        os.rename(source, final)
        return final
