"""Claiming a ready file: exactly one monitor gets it, and what is read is what was claimed.

1. The file is opened once, without following a link and without blocking on a pipe, and must
   be a regular file on the inbox's file system; links, pipes, sockets, devices and files that
   cannot be opened go to ``failed/`` with a note.
2. ``rename`` into ``processing/`` under a unique name: atomic on one file system, so of
   several monitors racing for a file exactly one succeeds. If what landed there is not the
   file that was opened (swapped in between), it is set aside unread.
3. Hash and sniff through the open descriptor; record the file in PostgreSQL under a unique
   (content hash, generation) key together with its identity (device and inode, size, mtime),
   which the batcher checks before it reads. The same content dropped again is a duplicate.
4. Queue the batcher. Nothing is deleted: finished files move to ``done/``.

A crash between steps leaves the file in ``processing/``; :meth:`Claimer.adopt_orphans`
finishes the claim later (after renaming it again, so two monitors cannot both adopt it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import structlog
from psycopg.types.json import Jsonb

from hookdrop.errors import UnreadableFile
from hookdrop.formats import sniff
from hookdrop.inbox import (
    ChangedFile,
    FileIdentity,
    NotRegularFile,
    describe_change,
    disk_name,
    kind_of,
    note_path,
    open_regular,
    original_name,
    safe_name,
)
from hookdrop.queues import enqueue_read
from hookdrop.settings import Settings
from hookdrop.store import Store

log = structlog.get_logger(__name__)

ORPHAN_GRACE_SECONDS = 60.0
_HASH_BLOCK = 1 << 20


class ClaimInterrupted(Exception):
    """A stop was requested while a file was being hashed; it stays in processing/."""


@dataclass(frozen=True, slots=True)
class Claimed:
    file_id: int
    status: str  # claimed, duplicate, failed
    path: Path
    detail: str | None = None


def ensure_dirs(settings: Settings) -> None:
    for folder in (settings.inbox, settings.processing_dir, settings.done_dir,
                   settings.failed_dir):
        folder.mkdir(parents=True, exist_ok=True)
        if folder.is_symlink() or not folder.is_dir():
            raise NotADirectoryError(f"{folder} must be a directory, not a link or a file")


def sha256_of(fd: int, size: int, stopping: Callable[[], bool]) -> str:
    """SHA-256 of the first ``size`` bytes behind ``fd``; ChangedFile if it has fewer."""
    digest = hashlib.sha256()
    offset = 0
    while offset < size:
        if stopping():
            raise ClaimInterrupted
        block = os.pread(fd, min(_HASH_BLOCK, size - offset), offset)
        if not block:
            raise ChangedFile(f"shrank while it was being claimed ({offset} of {size} bytes)")
        digest.update(block)
        offset += len(block)
    return digest.hexdigest()


class Claimer:
    """Claims files for one monitor; one per thread (it holds a PostgreSQL connection)."""

    def __init__(self, settings: Settings, store: Store, conn: redis.Redis, owner: str,
                 *, stopping: Callable[[], bool] = lambda: False) -> None:
        self.settings = settings
        self.store = store
        self.redis = conn
        self.owner = owner
        self.stopping = stopping
        self.inbox_device = os.stat(settings.inbox).st_dev

    def claim(self, path: Path) -> Claimed | None:
        """Take ``path`` from the inbox; None when it is gone (another monitor got it)."""
        # Names that are not valid UTF-8 get their odd bytes escaped (\xe9), so the name can
        # be stored, shown and used for the files hookdrop makes from it.
        name = safe_name(path.name)
        try:
            seen = os.lstat(path)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(seen.st_mode):
            # Not even opened: opening a device or socket can do things; a link leads out.
            return self._set_aside(path, name, f"{name} is {kind_of(seen.st_mode)}; only "
                                               "regular files are read (links are not followed)")
        try:
            fd, opened = open_regular(path)
        except FileNotFoundError:
            return None
        except NotRegularFile as exc:
            return self._set_aside(path, name, f"{exc}; only regular files are read "
                                               "(links are not followed)")
        except PermissionError:
            return self._set_aside(path, name, f"{name} cannot be read: permission denied "
                                               "(the hookdrop user needs read access)")
        except OSError as exc:
            return self._set_aside(path, name, f"{name} cannot be opened: {exc.strerror}")
        try:
            if opened.st_dev != self.inbox_device:
                return self._set_aside(path, name, f"{name} is on another file system "
                                                   "(a mount inside the inbox); not read")
            target = self.settings.processing_dir / disk_name(uuid.uuid4().hex[:12], name)
            try:
                os.rename(path, target)
            except FileNotFoundError:
                log.info("file.claim_lost", name=name)
                return None
            if not self._landed(target, opened):
                return self._set_aside(target, name, f"{name} was replaced while it was "
                                                     "being claimed; not read")
            log.info("file.claimed", name=name, size=opened.st_size)
            return self._register_fd(fd, opened, target, name)
        finally:
            os.close(fd)

    @staticmethod
    def _landed(target: Path, opened: os.stat_result) -> bool:
        """True when the entry now at ``target`` is the file that was opened."""
        try:
            landed = os.lstat(target)
        except FileNotFoundError:
            return False
        return (landed.st_dev, landed.st_ino) == (opened.st_dev, opened.st_ino)

    def register(self, target: Path, name: str, *, generation: int = 0) -> Claimed:
        """Record a file that sits in processing/ and queue it (or set it aside)."""
        try:
            fd, opened = open_regular(target)
        except OSError as exc:
            return self._set_aside(target, name, f"{name} cannot be read in processing/: {exc}")
        try:
            return self._register_fd(fd, opened, target, name, generation=generation)
        finally:
            os.close(fd)

    def _register_fd(self, fd: int, opened: os.stat_result, target: Path, name: str, *,
                     generation: int = 0) -> Claimed:
        identity = FileIdentity.of(opened)
        base: dict[str, Any] = {"name": name, "generation": generation, "size": opened.st_size,
                                "chunk_size": self.settings.chunk_size,
                                "claimed_by": self.owner}
        try:
            sha = sha256_of(fd, opened.st_size, self.stopping)
            base["sha"] = sha
            now = FileIdentity.of(os.fstat(fd))
            if now != identity:
                raise ChangedFile(f"written to while it was being claimed "
                                  f"({describe_change(identity, now)})")
            layout = sniff(fd)
        except ClaimInterrupted:
            log.info("file.claim_interrupted", name=name, path=str(target))
            raise
        except UnreadableFile as exc:
            return self._unreadable(target, base, str(exc))
        except ChangedFile as exc:
            return self._set_aside(target, name, f"{name} changed: {exc}; not read")
        except OSError as exc:
            return self._set_aside(target, name, f"{name} cannot be read: {exc.strerror or exc}")
        row = self.store.one("insert_file", {
            **base, "layout": Jsonb(dataclasses.asdict(layout)), "status": "claimed",
            "path": str(target), "file_key": identity.key, "mtime_ns": identity.mtime_ns,
        })
        if row is None:
            return self._duplicate(target, base)
        file_id = int(row["id"])
        self.redis.set(self.settings.keys.read_queued(file_id), "1", ex=600)
        enqueue_read(self.redis, self.settings.keys, file_id)
        log.info("file.queued", file_id=file_id, name=name, size=opened.st_size,
                 format=layout.format, compressed=layout.compressed)
        return Claimed(file_id, "claimed", target)

    def _duplicate(self, target: Path, base: dict[str, Any]) -> Claimed:
        first = self.store.one("find_file_by_content", base)
        assert first is not None  # the insert just conflicted with it
        final = self._move(target, self.settings.done_dir, f"dup{first['id']}", base["name"])
        row = self.store.one("insert_duplicate", {**base, "duplicate_of": first["id"],
                                                  "final_path": str(final)})
        assert row is not None
        detail = (f"same content as file {first['id']} ({first['name']}, {first['status']}); "
                  "not sent again — use `hookdrop resend` to send it anyway")
        log.warning("file.duplicate", file_id=row["id"], duplicate_of=first["id"],
                    name=base["name"])
        return Claimed(int(row["id"]), "duplicate", final, detail)

    def _unreadable(self, target: Path, base: dict[str, Any], error: str) -> Claimed:
        final = self._move(target, self.settings.failed_dir, uuid.uuid4().hex[:8], base["name"])
        row = self.store.one("insert_unreadable", {**base, "error": error,
                                                   "final_path": str(final)})
        if row is None:  # the same unreadable content was seen before
            first = self.store.one("find_file_by_content", base)
            assert first is not None
            file_id = int(first["id"])
            error = f"{error} (same content as file {file_id})"
        else:
            file_id = int(row["id"])
        write_error_note(final, error)
        log.warning("file.unreadable", file_id=file_id, name=base["name"], error=error)
        return Claimed(file_id, "failed", final, error)

    def _set_aside(self, path: Path, name: str, error: str) -> Claimed | None:
        """Move something that will not be read to failed/ (or leave it) and record why.

        Keyed by what the entry is (device, inode, size, mtime), so seeing the same entry
        again after a restart does not record it twice.
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
        row = self.store.one("insert_unreadable", {
            "name": name, "sha": key, "generation": 0, "size": st.st_size,
            "chunk_size": self.settings.chunk_size, "claimed_by": self.owner, "error": error,
            "final_path": str(final) if final else None,
        })
        if row is None:
            first = self.store.one("find_file_by_content", {"sha": key, "generation": 0})
            file_id = int(first["id"]) if first else 0
        else:
            file_id = int(row["id"])
        if final is not None:
            write_error_note(final, error)
        log.warning("file.unreadable", file_id=file_id, name=name, error=error,
                    kind="file" if stat.S_ISREG(st.st_mode) else kind_of(st.st_mode),
                    left_in_place=final is None)
        return Claimed(file_id, "failed", final or path, error)

    def _move(self, source: Path, folder: Path, tag: str, name: str) -> Path:
        final = folder / disk_name(tag, name)
        os.rename(source, final)
        return final

    def adopt_orphans(self) -> list[Claimed]:
        """Finish claims that a crashed monitor left half done in processing/."""
        adopted: list[Claimed] = []
        now = time.time()
        for entry in os.scandir(self.settings.processing_dir):
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if now - st.st_ctime < ORPHAN_GRACE_SECONDS:
                continue  # another monitor may be registering it right now
            if self.store.one("file_by_processing_path", {"path": entry.path}):
                continue
            name = original_name(entry.name)
            target = self.settings.processing_dir / disk_name(uuid.uuid4().hex[:12], name)
            try:
                os.rename(entry.path, target)
            except FileNotFoundError:
                continue  # adopted by another monitor
            log.warning("file.orphan_adopted", name=name)
            claimed = self.register(target, name)
            adopted.append(claimed)
        return adopted


def write_error_note(final: Path, error: str) -> None:
    """``<name>.error.txt`` beside a failed file; a note that cannot be written is logged."""
    note = note_path(final)
    try:
        note.write_text(f"{final.name}: {error}\n", encoding="utf-8")
    except OSError as exc:
        log.error("file.note_failed", path=str(note), error=str(exc))
