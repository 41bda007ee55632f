"""Claiming a ready file: exactly one monitor gets it (PRODUCT rule 2).

1. ``rename`` into ``processing/`` under a unique name: atomic on one filesystem, so of several
   monitors racing for a file exactly one succeeds; the others see it gone.
2. Hash the content and record the file in PostgreSQL under a unique (content hash,
   generation) key: the same content dropped again is recorded as a duplicate and not sent.
3. Sniff the format; a file that cannot be read at all goes to ``failed/`` with a plain-language
   ``.error.txt`` beside it.
4. Queue the batcher. Nothing is deleted: finished files move to ``done/``.

A crash between steps leaves the file in ``processing/``; :func:`adopt_orphans` finishes the
claim later (after renaming it again, so two monitors cannot both adopt it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import structlog
from psycopg.types.json import Jsonb

from hookdrop.errors import UnreadableFile
from hookdrop.queues import enqueue_read
from hookdrop.settings import Settings
from hookdrop.store import Store
from workers.parsing import sniff

log = structlog.get_logger(__name__)

SEPARATOR = "--"
ORPHAN_GRACE_SECONDS = 60.0


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


def sha256_of(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def safe_name(name: str) -> str:
    """``name`` as valid UTF-8: undecodable bytes of the file system name become ``\\xNN``."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def original_name(processing_name: str) -> str:
    if SEPARATOR in processing_name:
        return processing_name.split(SEPARATOR, 1)[1]
    return processing_name


class Claimer:
    def __init__(self, settings: Settings, store: Store, conn: redis.Redis, owner: str) -> None:
        self.settings = settings
        self.store = store
        self.redis = conn
        self.owner = owner

    def claim(self, path: Path) -> Claimed | None:
        """Take ``path`` from the inbox; None when another monitor got it first."""
        try:
            st = path.lstat()
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return self._refuse_special(path, st)
        # Names that are not valid UTF-8 get their odd bytes escaped (\xe9), so the name can
        # be stored, shown and used for the files hookdrop makes from it.
        name = safe_name(path.name)
        target = self.settings.processing_dir / f"{uuid.uuid4().hex[:12]}{SEPARATOR}{name}"
        try:
            os.rename(path, target)
        except FileNotFoundError:
            log.info("file.claim_lost", name=path.name)
            return None
        log.info("file.claimed", name=name, size=st.st_size)
        return self.register(target, name)

    def register(self, target: Path, name: str, *, generation: int = 0) -> Claimed:
        """Record a file that sits in processing/ and queue it (or set it aside)."""
        sha, size = sha256_of(target)
        base = {"name": name, "sha": sha, "generation": generation, "size": size,
                "chunk_size": self.settings.chunk_size, "claimed_by": self.owner}
        try:
            layout = sniff(target)
        except UnreadableFile as exc:
            return self._unreadable(target, base, str(exc))
        row = self.store.one("insert_file", {
            **base, "layout": Jsonb(dataclasses.asdict(layout)), "status": "claimed",
            "path": str(target),
        })
        if row is None:
            return self._duplicate(target, base)
        file_id = int(row["id"])
        self.redis.set(self.settings.keys.read_queued(file_id), "1", ex=600)
        enqueue_read(self.redis, self.settings.keys, file_id)
        log.info("file.queued", file_id=file_id, name=name, size=size, format=layout.format,
                 compressed=layout.compressed)
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

    def _refuse_special(self, path: Path, st: os.stat_result) -> Claimed | None:
        kind = ("a symbolic link" if stat.S_ISLNK(st.st_mode)
                else "a named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode)
                else "not a regular file")
        name = safe_name(path.name)
        error = f"{name} is {kind}; only regular files are read (links are not followed)"
        final = self.settings.failed_dir / f"{uuid.uuid4().hex[:8]}{SEPARATOR}{name}"
        try:
            os.rename(path, final)
        except FileNotFoundError:
            return None
        row = self.store.one("insert_unreadable", {
            "name": name, "sha": f"special:{uuid.uuid4().hex}", "generation": 0, "size": 0,
            "chunk_size": self.settings.chunk_size, "claimed_by": self.owner, "error": error,
            "final_path": str(final),
        })
        assert row is not None
        write_error_note(final, error)
        log.warning("file.unreadable", file_id=row["id"], name=name, error=error)
        return Claimed(int(row["id"]), "failed", final, error)

    def _move(self, source: Path, folder: Path, tag: str, name: str) -> Path:
        final = folder / f"{tag}{SEPARATOR}{name}"
        os.rename(source, final)
        return final

    def adopt_orphans(self) -> list[Claimed]:
        """Finish claims that a crashed monitor left half done in processing/."""
        adopted: list[Claimed] = []
        now = time.time()
        for entry in os.scandir(self.settings.processing_dir):
            if not entry.is_file(follow_symlinks=False):
                continue
            if now - entry.stat(follow_symlinks=False).st_ctime < ORPHAN_GRACE_SECONDS:
                continue  # another monitor may be registering it right now
            if self.store.one("file_by_processing_path", {"path": entry.path}):
                continue
            name = safe_name(original_name(entry.name))
            target = self.settings.processing_dir / f"{uuid.uuid4().hex[:12]}{SEPARATOR}{name}"
            try:
                os.rename(entry.path, target)
            except FileNotFoundError:
                continue  # adopted by another monitor
            log.warning("file.orphan_adopted", name=name)
            adopted.append(self.register(target, name))
        return adopted


def write_error_note(final: Path, error: str) -> None:
    note = final.with_name(final.name + ".error.txt")
    note.write_text(f"{final.name}: {error}\n", encoding="utf-8")
