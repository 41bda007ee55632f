"""The monitor: inbox events and scans in, claimed files and recovery duties out.

The loop itself only does cheap things (readiness checks, short PostgreSQL and Redis calls);
claiming a file (hashing it, sniffing it) runs on a small thread pool, so one large or hostile
file never holds up the others or a stop request.
"""

from __future__ import annotations

import contextvars
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import redis
import structlog
from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from daemon.claim import Claimer
from daemon.readiness import ReadinessTracker
from daemon.recovery import Recovery
from hookdrop.connections import connect_store
from hookdrop.endpoints import LiveEndpoints
from hookdrop.errors import QueueUnavailable, StoreUnavailable
from hookdrop.inbox import WORK_FOLDERS, is_ignored
from hookdrop.intake import ClaimInterrupted, ensure_dirs, make_dir
from hookdrop.retry import compute_backoff
from hookdrop.settings import Settings
from hookdrop.shutdown import StopFlag
from hookdrop.store import Store

log = structlog.get_logger(__name__)

TICK = 0.2
SMALL_CLAIM_THREADS = 2
# Files this large are claimed on a lane of their own: hashing them takes a while, and a few
# huge files (or sparse ones) must not hold up every small one behind them.
LARGE_FILE_BYTES = 64 << 20
MAX_NOTED = 1000  # ignored entries logged one by one
UNCONFIGURED_EVERY = 60.0  # seconds between warnings of alerts waiting for a removed endpoint
DEFERRED_EVERY = 1.0  # seconds between looks for deferred alerts whose endpoint is open again


class _Hints(FileSystemEventHandler):
    """Turns watchdog events into path hints; the main loop decides what they mean."""

    def __init__(self, folders: set[Path], sink: queue.SimpleQueue[Path]) -> None:
        self.folders = folders  # the inbox and the endpoints' folders (changed on reload)
        self.sink = sink

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        if isinstance(event, FileMovedEvent):
            path = Path(os.fsdecode(event.dest_path))
        elif isinstance(event, (FileCreatedEvent, FileClosedEvent, FileModifiedEvent)):
            path = Path(os.fsdecode(event.src_path))
        else:
            return
        if path.parent in self.folders:
            self.sink.put(path)


def _entry_key(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class ClaimPool:
    """Claims files on a few threads, each with its own Claimer and PostgreSQL connection:
    two for small files, one for large ones."""

    def __init__(
        self,
        settings: Settings,
        conn: redis.Redis,
        owner: str,
        stopping: StopFlag,
        store_factory: Callable[[], Store],
    ) -> None:
        self.settings = settings
        self.redis = conn
        self.owner = owner
        self.stopping = stopping
        self.store_factory = store_factory
        self._local = threading.local()
        self._stores: list[Store] = []
        self._lock = threading.Lock()
        self._small = ThreadPoolExecutor(SMALL_CLAIM_THREADS, thread_name_prefix="hookdrop-claim")
        self._large = ThreadPoolExecutor(1, thread_name_prefix="hookdrop-claim-large")

    def claimer(self) -> Claimer:
        found: Claimer | None = getattr(self._local, "claimer", None)
        if found is None:
            store = self.store_factory()
            with self._lock:
                self._stores.append(store)
            found = Claimer(
                self.settings, store, self.redis, self.owner, stopping=self.stopping.is_set
            )
            self._local.claimer = found
        return found

    def submit(self, work: Callable[[Claimer], object], *, large: bool = False) -> Future[object]:
        executor = self._large if large else self._small
        # In this thread's log context (the process name), copied for the claim's thread.
        context = contextvars.copy_context()
        return executor.submit(context.run, lambda: work(self.claimer()))

    def close(self) -> None:
        self._small.shutdown(wait=True, cancel_futures=True)
        self._large.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for store in self._stores:
                store.close()
            self._stores.clear()


class Monitor:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        conn: redis.Redis,
        *,
        name: str | None = None,
        on_tick: Callable[[], None] | None = None,
        on_stopping: Callable[[], None] | None = None,
        stopping: StopFlag | None = None,
        store_factory: Callable[[], Store] | None = None,
        endpoints: LiveEndpoints | None = None,
    ) -> None:
        self.settings = settings
        self.endpoints = endpoints or LiveEndpoints(settings, {})
        self._endpoints_seen = -1  # the reload generation the folders were made for
        self._bad_folders: set[Path] = set()  # endpoint folders with something else in place
        self.folders: set[Path] = {settings.inbox}
        self._observer: BaseObserver | None = None
        self.store = store
        self.redis = conn
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.tracker = ReadinessTracker(settings.settle_seconds)
        self.recovery = Recovery(settings, store, conn, self.endpoints)
        self.hints: queue.SimpleQueue[Path] = queue.SimpleQueue()
        self.stopping = stopping or StopFlag()
        self.on_tick = on_tick
        self.on_stopping = on_stopping
        self.claims = ClaimPool(
            settings,
            conn,
            self.name,
            self.stopping,
            store_factory or (lambda: connect_store(settings, name="hookdrop-monitor")),
        )
        self._last: dict[str, float] = {}
        self._claims: dict[Path, Future[object]] = {}
        self._adoption: Future[object] | None = None
        # Entries that were looked at and will not be read (left in place, or failing to
        # claim), by what they were then: skipped until they change.
        self._set_aside: dict[Path, tuple[int, int, int, int] | None] = {}
        self._noted: set[str] = set()
        self._handler = _Hints(self.folders, self.hints)

    def scan(self) -> None:
        """Find files whose events were missed (daemon down, overflow, network filesystems)."""
        self._scan_folder(self.settings.inbox, top=True)
        for folder in sorted(self.folders - {self.settings.inbox}):
            self._scan_folder(folder, top=False)

    def _scan_folder(self, folder: Path, *, top: bool) -> None:
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            return  # an endpoint's folder removed by hand: made again on the next reload
        for entry in entries:
            shown = entry.name if top else f"{folder.name}/{entry.name}"
            if entry.is_dir(follow_symlinks=False):
                if not (
                    top and (entry.name in WORK_FOLDERS or folder / entry.name in self.folders)
                ):
                    self._note_ignored(
                        shown,
                        "a folder that is no endpoint's (only files at the top of the inbox "
                        "and in the endpoints' folders are read)",
                    )
                continue
            if is_ignored(entry.name):
                self._note_ignored(shown, "a hidden or temporary name", level="debug")
                continue
            self.tracker.hint(Path(entry.path))

    def _note_ignored(self, name: str, reason: str, *, level: str = "info") -> None:
        if name in self._noted:
            return
        if len(self._noted) >= MAX_NOTED:
            if len(self._noted) == MAX_NOTED:
                self._noted.add("")  # said once: the log is not the place for the rest
                log.warning(
                    "inbox.ignored_many",
                    count=MAX_NOTED,
                    reason="more ignored entries than this are not logged one by one",
                )
            return
        self._noted.add(name)
        getattr(log, level)("inbox.ignored", name=name, reason=reason)

    def _due(self, duty: str, every: float) -> bool:
        now = time.monotonic()
        if now - self._last.get(duty, float("-inf")) < every:
            return False
        self._last[duty] = now
        return True

    def _leader(self, duty: str, every: float) -> bool:
        """One monitor of many runs each periodic duty per round."""
        key = self.settings.keys.lock(duty)
        return bool(self.redis.set(key, self.name, nx=True, px=max(1, int(every * 900))))

    def sync_folders(self) -> None:
        """A folder per endpoint, watched; again after a reload changed the endpoints (or a
        refused folder may have become a real one: looked at again on each reload)."""
        live = self.endpoints.current
        if self.endpoints.generation == self._endpoints_seen:
            return
        ensure_dirs(self.settings)
        wanted: set[Path] = set()
        for name in live.folders:
            folder = self.settings.inbox / name
            try:
                make_dir(folder)
            except OSError as exc:
                # Something else is in its place: this endpoint has no folder (its files
                # cannot be dropped) until it is moved away; the others go on.
                if folder not in self._bad_folders:
                    self._bad_folders.add(folder)
                    log.error("inbox.endpoint_folder_unusable", path=str(folder), error=str(exc))
                continue
            self._bad_folders.discard(folder)
            wanted.add(folder)
        if not self._bad_folders & {self.settings.inbox / name for name in live.folders}:
            self._endpoints_seen = self.endpoints.generation  # else: try again next pass
        for folder in sorted(wanted - self.folders):
            if self._observer is not None:
                self._observer.schedule(self._handler, str(folder), recursive=False)
            log.info("inbox.endpoint_folder", folder=folder.name)
        # A folder of an endpoint no longer configured is left alone (and no longer read).
        self.folders.clear()
        self.folders.update({self.settings.inbox, *wanted})

    def step(self) -> None:
        """One pass of the loop: hints, readiness, claims, due duties."""
        self.sync_folders()
        self._collect()
        while True:
            try:
                self.tracker.hint(self.hints.get_nowait())
            except queue.Empty:
                break
        if self._due("scan", self.settings.scan_interval):
            self.scan()
            self.recovery.ensure_epoch()
            if self._leader("recover", self.settings.scan_interval):
                self.recovery.requeue_stalled_reads()
                self.recovery.requeue_expired_leases()
                self.recovery.requeue_orphaned_pending()
                self._adopt_orphans()
                self.recovery.refresh_statistics()
        for path in self.tracker.ready():
            if self.stopping.is_set():
                break
            self._start_claim(path)
        if self._due("finish", 1.0):
            self.recovery.finish_files()
        if self._due("deferred", DEFERRED_EVERY) and self._leader("deferred", DEFERRED_EVERY):
            self.recovery.requeue_deferred()
        if self._due("unconfigured", UNCONFIGURED_EVERY) and self._leader(
            "unconfigured", UNCONFIGURED_EVERY
        ):
            self.recovery.warn_unconfigured()
        if self._due("dlq", self.settings.dlq_interval) and self._leader(
            "dlq", self.settings.dlq_interval
        ):
            self.recovery.reinject_dlq()

    def _start_claim(self, path: Path) -> None:
        if path in self._claims:
            return
        if path in self._set_aside:
            if _entry_key(path) == self._set_aside[path]:
                return
            del self._set_aside[path]  # it changed: look at it again
        key = _entry_key(path)
        large = key is not None and key[2] >= LARGE_FILE_BYTES
        self._claims[path] = self.claims.submit(lambda claimer: claimer.claim(path), large=large)

    def _collect(self) -> None:
        """Look at the claims that finished since the last pass."""
        for path, future in list(self._claims.items()):
            if future.done():
                del self._claims[path]
                self._claim_finished(path, future)
        if self._adoption is not None and self._adoption.done():
            error = None if self._adoption.cancelled() else self._adoption.exception()
            if error is not None and not isinstance(error, ClaimInterrupted):
                log.warning("file.adoption_failed", error=repr(error))
            self._adoption = None

    def _claim_finished(self, path: Path, done: Future[object]) -> None:
        if done.cancelled():
            return
        error = done.exception()
        if error is None:
            if getattr(done.result(), "path", None) == path:
                self._set_aside[path] = _entry_key(path)  # recorded, but left in place
            return
        if isinstance(error, ClaimInterrupted):
            return
        if isinstance(error, (StoreUnavailable, QueueUnavailable)):
            log.warning("monitor.dependency_unavailable", error=str(error), name=path.name)
            return  # still in the inbox (or in processing/, adopted later): tried again
        # A fault of ours with this one file: say so loudly, and do not retry it until it
        # changes, rather than take the monitor down with it.
        log.error(
            "file.claim_failed",
            name=path.name,
            error=repr(error),
            exc_info=(type(error), error, error.__traceback__),
        )
        self._set_aside[path] = _entry_key(path)

    def _adopt_orphans(self) -> None:
        if self._adoption is None:
            self._adoption = self.claims.submit(lambda claimer: claimer.adopt_orphans(), large=True)

    def run(self) -> None:
        """Watch and claim until asked to stop; outages pause the loop, never end it."""
        ensure_dirs(self.settings)
        observer = Observer()
        self._observer = observer
        observer.schedule(self._handler, str(self.settings.inbox), recursive=False)
        self.sync_folders()
        observer.start()
        log.info("monitor.started", inbox=str(self.settings.inbox), name=self.name)
        failures = 0
        try:
            while not self.stopping.is_set():
                try:
                    self.step()
                    failures = 0
                except (StoreUnavailable, QueueUnavailable) as exc:
                    failures += 1
                    delay = compute_backoff(failures, base=0.5, cap=10.0)
                    log.warning(
                        "monitor.dependency_unavailable",
                        error=str(exc),
                        failures=failures,
                        retry_in=round(delay, 2),
                    )
                    self.stopping.wait(delay)
                    continue
                if self.on_tick is not None:
                    self.on_tick()
                self.stopping.wait(TICK)
            log.info("monitor.stopping", name=self.name)
            if self.on_stopping is not None:
                self.on_stopping()
        finally:
            observer.stop()
            self.claims.close()
            observer.join(timeout=5)
            log.info("monitor.stopped", name=self.name)
