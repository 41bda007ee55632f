"""The monitor: inbox events and scans in, claimed files and recovery duties out."""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
from collections.abc import Callable
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

from daemon.claim import Claimer, ensure_dirs
from daemon.readiness import ReadinessTracker, is_ignored
from daemon.recovery import Recovery
from hookdrop.errors import QueueUnavailable, StoreUnavailable
from hookdrop.settings import Settings
from hookdrop.store import Store

log = structlog.get_logger(__name__)

TICK = 0.2


class _Hints(FileSystemEventHandler):
    """Turns watchdog events into path hints; the main loop decides what they mean."""

    def __init__(self, inbox: Path, sink: queue.SimpleQueue[Path]) -> None:
        self.inbox = inbox
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
        if path.parent == self.inbox:
            self.sink.put(path)


class Monitor:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        conn: redis.Redis,
        *,
        name: str | None = None,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.redis = conn
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.tracker = ReadinessTracker(settings.settle_seconds)
        self.claimer = Claimer(settings, store, conn, self.name)
        self.recovery = Recovery(settings, store, conn)
        self.hints: queue.SimpleQueue[Path] = queue.SimpleQueue()
        self.stopping = threading.Event()
        self.on_tick = on_tick
        self._last: dict[str, float] = {}

    def scan(self) -> None:
        """Find files whose events were missed (daemon down, overflow, network filesystems)."""
        for entry in os.scandir(self.settings.inbox):
            if entry.is_dir(follow_symlinks=False) or is_ignored(entry.name):
                continue
            self.tracker.hint(Path(entry.path))

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

    def step(self) -> None:
        """One pass of the loop: hints, readiness, claims, due duties."""
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
                self.claimer.adopt_orphans()
        for path in self.tracker.ready():
            if self.stopping.is_set():
                break
            self.claimer.claim(path)
        if self._due("finish", 1.0):
            self.recovery.finish_files()
        if self._due("dlq", self.settings.dlq_interval) and self._leader(
            "dlq", self.settings.dlq_interval
        ):
            self.recovery.reinject_dlq()

    def run(self) -> None:
        """Watch and claim until asked to stop; outages pause the loop, never end it."""
        ensure_dirs(self.settings)
        observer = Observer()
        observer.schedule(_Hints(self.settings.inbox, self.hints), str(self.settings.inbox),
                          recursive=False)
        observer.start()
        log.info("monitor.started", inbox=str(self.settings.inbox), name=self.name)
        failures = 0
        try:
            while not self.stopping.is_set():
                try:
                    self.step()
                    failures = 0
                except (StoreUnavailable, QueueUnavailable, redis.ConnectionError,
                        redis.TimeoutError) as exc:
                    failures += 1
                    log.warning("monitor.dependency_unavailable", error=str(exc),
                                failures=failures)
                    self.stopping.wait(min(10.0, 0.5 * failures))
                    continue
                if self.on_tick is not None:
                    self.on_tick()
                self.stopping.wait(TICK)
        finally:
            observer.stop()
            observer.join(timeout=5)
            log.info("monitor.stopped", name=self.name)
