"""Running worker processes: one RQ ``SimpleWorker`` per process, one queue per worker.

A single queue per worker keeps RQ on its reliable dequeue path (BLMOVE into an intermediate
list). ``SimpleWorker`` runs jobs in the worker process itself, so the notifier's HTTP
connections and event loop outlive each job (no fork per job).

Shutdown: the first SIGTERM asks the current job to finish or checkpoint its chunk and the
worker to stop after it; a second SIGTERM, a second or more later, stops at once. The signal
handlers only set flags (see :mod:`hookdrop.shutdown`); a watcher thread logs the stop.
"""

from __future__ import annotations

import contextvars
import threading

import redis
import structlog
from rq import SimpleWorker
from rq.exceptions import StopRequested
from rq.worker import WorkerStatus

from hookdrop import sdnotify
from hookdrop.connections import connect_redis, connect_store
from hookdrop.endpoints import LiveEndpoints
from hookdrop.errors import QueueUnavailable
from hookdrop.queues import batcher_queue, notifier_queue
from hookdrop.retry import retrying
from hookdrop.settings import Settings, environ_snapshot
from hookdrop.shutdown import StopFlag, StopSignals
from workers import context

log = structlog.get_logger(__name__)

KINDS = ("batcher", "notifier")
WORKER_TTL = 15  # seconds without a heartbeat before RQ treats the worker as dead


class HookdropWorker(SimpleWorker):
    """An RQ worker whose stop signals only set flags, and tell our jobs to wind down."""

    hookdrop_context: context.WorkerContext | None = None

    def _install_signal_handlers(self) -> None:
        flag = self.hookdrop_context.stopping if self.hookdrop_context else StopFlag()
        StopSignals(flag, on_first=self._stop_after_job).install()

    def clean_group_registries(self) -> None:
        """Nothing to do: hookdrop makes no RQ groups. RQ's own would set ``rq:clean_groups``,
        a key outside every deployment's prefix, on a Redis other deployments share."""

    def _stop_after_job(self) -> None:
        """Runs inside the signal handler: flags only, no lock, no I/O."""
        self._stop_requested = True  # RQ's loop stops after the current job
        if self.get_state() != WorkerStatus.BUSY:
            raise StopRequested  # idle: leave the blocking dequeue now, as RQ itself does


def build_context(settings: Settings, name: str | None = None) -> context.WorkerContext:
    settings.require("redis_url", "database_url")
    conn = connect_redis(settings, name="hookdrop-worker")
    store = connect_store(settings, name="hookdrop-worker", keyed=True)
    endpoints = LiveEndpoints(settings, environ_snapshot())
    ctx = context.WorkerContext(settings=settings, redis=conn, store=store, endpoints=endpoints)
    if name:
        ctx.name = name
    return ctx


def make_worker(ctx: context.WorkerContext, kind: str) -> HookdropWorker:
    if kind not in KINDS:
        raise ValueError(f"unknown worker kind {kind!r}: use batcher or notifier")
    keys = ctx.settings.keys
    queue = batcher_queue(ctx.redis, keys) if kind == "batcher" else notifier_queue(ctx.redis, keys)
    worker = HookdropWorker(
        [queue],
        name=keys.new_worker_name(kind),
        connection=ctx.redis,
        worker_ttl=WORKER_TTL,
        maintenance_interval=30,
        job_monitoring_interval=5,
    )
    worker.hookdrop_context = ctx
    return worker


class _StopAnnouncement:
    """Log and tell systemd, once, that a stop was asked for: from a thread as soon as the
    signal came (never inside the signal handler), or by the worker itself on its way out if
    it drained before that thread ran."""

    def __init__(self, ctx: context.WorkerContext, kind: str) -> None:
        self.ctx = ctx
        self.kind = kind
        self._lock = threading.Lock()
        self._made = False

    def when_asked(self) -> None:
        self.ctx.stopping.wait()
        if not self.ctx.closed:  # closed without a stop asked: the worker just ended
            self.make()

    def make(self) -> None:
        with self._lock:
            if self._made:
                return
            self._made = True
        sdnotify.notify("STOPPING=1")
        log.info("worker.stopping", kind=self.kind, worker=self.ctx.name)


def _watchdog_pings(stop: threading.Event) -> None:
    interval = sdnotify.watchdog_interval()
    if interval is None:
        return
    while not stop.wait(interval):
        sdnotify.notify("WATCHDOG=1")


def run_worker(settings: Settings, kind: str, *, burst: bool = False) -> None:
    """Run one worker in this process until stopped (or, with ``burst``, until idle)."""
    ctx = build_context(settings)
    ctx.live.install_sighup()  # at once: SIGHUP's default action would end the process
    ctx.live.watch(ctx.stopping)
    ctx.store.check_schema()
    ctx.redis.ping()
    context.install(ctx)
    worker = make_worker(ctx, kind)
    stop = threading.Event()
    threading.Thread(target=_watchdog_pings, args=(stop,), daemon=True).start()
    announcement = _StopAnnouncement(ctx, kind)
    # With this thread's log context (the process name), copied into the new thread.
    threading.Thread(
        target=contextvars.copy_context().run,
        args=(announcement.when_asked,),
        daemon=True,
        name="hookdrop-stop",
    ).start()
    sdnotify.notify("READY=1", f"STATUS=hookdrop {kind} worker {worker.name}")
    log.info("worker.started", kind=kind, worker=worker.name)
    try:
        while True:
            try:
                worker.work(burst=burst, logging_level="WARNING", with_scheduler=False)
            except (QueueUnavailable, redis.TimeoutError) as exc:
                log.warning("redis.unavailable", action="rq worker", error=str(exc))
            if burst or ctx.stopping.is_set() or not _redis_lost(ctx):
                break
            # RQ gives up when Redis vanishes under it (finishing a job, heartbeats). Our jobs
            # lose nothing (PostgreSQL has it all): wait for Redis and work on with a new worker.
            _wait_for_redis(ctx)
            worker = make_worker(ctx, kind)
            log.warning(
                "worker.restarted", kind=kind, worker=worker.name, reason="Redis was unavailable"
            )
    finally:
        if ctx.stopping.is_set():
            announcement.make()
        stop.set()
        context.install(None)
        ctx.close()
        log.info("worker.stopped", kind=kind, worker=worker.name)


def _redis_lost(ctx: context.WorkerContext) -> bool:
    try:
        ctx.redis.ping()
    except QueueUnavailable:
        return True
    return False


def _wait_for_redis(ctx: context.WorkerContext) -> None:
    """Until Redis answers again, or the worker is asked to stop."""
    try:
        retrying(
            ctx.redis.ping,
            what="worker loop",
            stop=ctx.stopping,
            retry_on=(QueueUnavailable,),
            base=0.5,
            cap=10,
        )
    except QueueUnavailable:
        return  # stopping: nothing is lost, PostgreSQL holds the work
