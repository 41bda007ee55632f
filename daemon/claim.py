"""Claiming a ready file: exactly one monitor gets it, and what is read is what was claimed.

1. The file is opened once, without following a link and without blocking on a pipe, and must
   be a regular file on the inbox's file system; links, pipes, sockets, devices and files that
   cannot be opened go to ``failed/`` with a note.
   A file in an endpoint's folder is opened and renamed relative to that folder, itself
   opened without following a link, so a folder swapped for a link leads nowhere.
2. ``rename`` into ``processing/`` under a unique name (carrying the endpoint): atomic on one
   file system, so of several monitors racing for a file exactly one succeeds. If what
   landed there is not the file that was opened (swapped in between), it is set aside unread.
3. :class:`~hookdrop.intake.Intake` hashes and sniffs it through the open descriptor, records
   it (with its identity, which the batcher checks before it reads) and queues it.

A crash between steps leaves the file in ``processing/``; :meth:`Claimer.adopt_orphans`
finishes the claim later (after renaming it again, so two monitors cannot both adopt it).
"""

from __future__ import annotations

import os
import stat
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import redis
import structlog

from hookdrop.inbox import (
    DEFAULT_ENDPOINT,
    NotRegularFile,
    disk_name,
    endpoint_of,
    kind_of,
    open_folder,
    open_regular,
    original_name,
    processing_tag,
    safe_name,
)
from hookdrop.intake import Intake, Registered, ensure_dirs
from hookdrop.settings import Settings
from hookdrop.store import Store

log = structlog.get_logger(__name__)

ORPHAN_GRACE_SECONDS = 60.0


class Claimer:
    """Claims files for one monitor; one per thread (it holds a PostgreSQL connection)."""

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
        self.intake = Intake(settings, store, conn, owner, stopping=stopping)
        self.inbox_device = os.stat(settings.inbox).st_dev

    def claim(self, path: Path) -> Registered | None:
        """Take ``path`` from the inbox (its top: endpoint ``default``, or an endpoint's
        folder); None when it is gone (another monitor got it)."""
        if path.parent == self.settings.inbox:
            return self._claim(path, DEFAULT_ENDPOINT, None)
        try:
            folder = open_folder(path.parent)
        except FileNotFoundError:
            return None
        except NotRegularFile as exc:
            log.warning("inbox.folder_refused", folder=path.parent.name, error=str(exc))
            return None
        try:
            if os.fstat(folder).st_dev != self.inbox_device:
                log.warning("inbox.folder_refused", folder=path.parent.name, error="a mount")
                return None
            return self._claim(path, path.parent.name, folder)
        finally:
            os.close(folder)

    def _claim(self, path: Path, endpoint: str, folder: int | None) -> Registered | None:
        # Names that are not valid UTF-8 get their odd bytes escaped (\xe9), so the name can
        # be stored, shown and used for the files hookdrop makes from it.
        name = safe_name(path.name)
        try:
            if folder is None:
                seen = os.lstat(path)
            else:
                seen = os.stat(path.name, dir_fd=folder, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(seen.st_mode):
            # Not even opened: opening a device or socket can do things; a link leads out.
            return self.intake.set_aside(
                path,
                name,
                f"{name} is {kind_of(seen.st_mode)}; "
                "only regular files are read (links are not followed)",
            )
        try:
            fd, opened = open_regular(path, dir_fd=folder)
        except FileNotFoundError:
            return None
        except NotRegularFile as exc:
            return self.intake.set_aside(
                path, name, f"{exc}; only regular files are read (links are not followed)"
            )
        except PermissionError:
            return self.intake.set_aside(
                path,
                name,
                f"{name} cannot be read: permission denied (the hookdrop user needs read access)",
            )
        except OSError as exc:
            return self.intake.set_aside(path, name, f"{name} cannot be opened: {exc.strerror}")
        try:
            if opened.st_dev != self.inbox_device:
                return self.intake.set_aside(
                    path,
                    name,
                    f"{name} is on another file system (a mount inside the inbox); not read",
                )
            tag = processing_tag(uuid.uuid4().hex[:12], endpoint)
            target = self.settings.processing_dir / disk_name(tag, name)
            try:
                self._rename_into_processing(path, target, folder)
            except FileNotFoundError:
                log.info("file.claim_lost", name=name)
                return None
            if not _landed(target, opened):
                return self.intake.set_aside(
                    target, name, f"{name} was replaced while it was being claimed; not read"
                )
            log.info("file.claimed", name=name, size=opened.st_size, endpoint=endpoint)
            # After the rename, which moves the change time: the identity the batcher checks.
            return self.intake.register_open(fd, os.fstat(fd), target, name, endpoint=endpoint)
        finally:
            os.close(fd)

    def _rename_into_processing(self, path: Path, target: Path, folder: int | None) -> None:
        if folder is not None:  # relative to the endpoint's folder as opened
            os.rename(path.name, target, src_dir_fd=folder)
            return
        try:
            os.rename(path, target)
        except FileNotFoundError:
            if not os.path.lexists(path) or self.settings.processing_dir.is_dir():
                raise  # the file is gone: another monitor got it
            # processing/ itself went (renamed or removed by hand): make it again, loudly.
            log.error("inbox.folder_recreated", folder=str(self.settings.processing_dir))
            ensure_dirs(self.settings)
            os.rename(path, target)

    def adopt_orphans(self) -> list[Registered]:
        """Finish claims that a crashed monitor left half done in processing/."""
        adopted: list[Registered] = []
        now = time.time()
        for entry in os.scandir(self.settings.processing_dir):
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if now - st.st_ctime < ORPHAN_GRACE_SECONDS:
                continue  # another monitor may be registering it right now
            if self.store.is_registered(entry.path):
                continue
            if self.intake.redis.exists(self.settings.keys.claiming(entry.name)):
                continue  # still being hashed by the monitor that claimed it
            name = original_name(entry.name)
            endpoint = endpoint_of(entry.name)
            tag = processing_tag(uuid.uuid4().hex[:12], endpoint)
            target = self.settings.processing_dir / disk_name(tag, name)
            try:
                os.rename(entry.path, target)
            except FileNotFoundError:
                continue  # adopted by another monitor
            log.warning("file.orphan_adopted", name=name)
            registered = self.intake.register(target, name, endpoint=endpoint)
            if registered is not None:
                adopted.append(registered)
        return adopted


def _landed(target: Path, opened: os.stat_result) -> bool:
    """True when the entry now at ``target`` is the file that was opened."""
    try:
        landed = os.lstat(target)
    except FileNotFoundError:
        return False
    return (landed.st_dev, landed.st_ino) == (opened.st_dev, opened.st_ino)
