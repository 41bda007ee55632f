"""Running worker processes: one RQ ``SimpleWorker`` per process, one queue per worker.

A single queue per worker keeps RQ on its reliable dequeue path (BLMOVE into an intermediate
list). ``SimpleWorker`` runs jobs in the worker process itself, so the notifier's HTTP
connections and event loop outlive each job (no fork per job).

Shutdown: the first SIGTERM asks the current job to finish or checkpoint its chunk and the
worker to stop after it; a second SIGTERM stops at once (RQ raises SystemExit).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from types import FrameType

import redis
import structlog
from rq import SimpleWorker

from hookdrop import sdnotify
from hookdrop.backoff import compute_backoff
from hookdrop.queues import batcher_queue, notifier_queue
from hookdrop.settings import Settings
from hookdrop.store import Store
from workers import context

log = structlog.get_logger(__name__)

KINDS = ("batcher", "notifier")
WORKER_TTL = 15  # seconds without a heartbeat before RQ treats the worker as dead


class HookdropWorker(SimpleWorker):
    """An RQ worker that also tells our jobs when a graceful stop was asked for."""

    hookdrop_context: context.WorkerContext | None = None

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        if self.hookdrop_context is not None:
            self.hookdrop_context.stopping.set()
        sdnotify.notify("STOPPING=1")
        log.info("worker.stopping", worker=self.name, signal=signum)
        super().request_stop(signum, frame)


def build_context(settings: Settings, name: str | None = None) -> context.WorkerContext:
    settings.require("redis_url", "database_url")
    conn = redis.Redis.from_url(settings.redis_url, health_check_interval=30)  # type: ignore[arg-type]
    store = Store(settings.database_url, application_name="hookdrop-worker")  # type: ignore[arg-type]
    ctx = context.WorkerContext(settings=settings, redis=conn, store=store)
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


def _watchdog_pings(stop: threading.Event) -> None:
    interval = sdnotify.watchdog_interval()
    if interval is None:
        return
    while not stop.wait(interval):
        sdnotify.notify("WATCHDOG=1")


def run_worker(settings: Settings, kind: str, *, burst: bool = False) -> None:
    """Run one worker in this process until stopped (or, with ``burst``, until idle)."""
    ctx = build_context(settings)
    ctx.store.check_schema()
    ctx.redis.ping()
    context.install(ctx)
    worker = make_worker(ctx, kind)
    stop = threading.Event()
    threading.Thread(target=_watchdog_pings, args=(stop,), daemon=True).start()
    sdnotify.notify("READY=1", f"STATUS=hookdrop {kind} worker {worker.name}")
    log.info("worker.started", kind=kind, worker=worker.name)
    try:
        while True:
            try:
                worker.work(burst=burst, logging_level="WARNING", with_scheduler=False)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
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
        stop.set()
        context.install(None)
        ctx.close()
        log.info("worker.stopped", kind=kind, worker=worker.name)


def _redis_lost(ctx: context.WorkerContext) -> bool:
    try:
        ctx.redis.ping()
    except (redis.ConnectionError, redis.TimeoutError):
        return True
    return False


def _wait_for_redis(ctx: context.WorkerContext) -> None:
    attempt = 0
    while _redis_lost(ctx):
        if ctx.stopping.is_set():
            return
        attempt += 1
        delay = compute_backoff(attempt, base=0.5, cap=10)
        log.warning("redis.unavailable", action="worker loop", retry_in=round(delay, 2))
        ctx.stopping.wait(delay)


def run_pool(settings: Settings, kind: str, processes: int, env: Mapping[str, str]) -> int:
    """Run ``processes`` worker processes, restart any that die, forward stop signals."""
    if processes == 1:
        run_worker(settings, kind)
        return 0
    # Only this process talks to systemd (NotifyAccess=main): children get no NOTIFY_SOCKET.
    child_env = sdnotify.child_environ({**env, **settings.to_environ()})
    command = [sys.executable, "-m", "hookdrop", "worker", kind, "--processes", "1"]
    children: dict[int, subprocess.Popen[bytes]] = {}
    stopping = {"signals": 0}

    def start(slot: int) -> None:
        children[slot] = subprocess.Popen(command, env=child_env)

    def forward(signum: int, _frame: FrameType | None) -> None:
        stopping["signals"] += 1
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for slot in range(processes):
        start(slot)
    sdnotify.notify("READY=1", f"STATUS=hookdrop {kind} pool of {processes}")
    stop = threading.Event()
    threading.Thread(target=_watchdog_pings, args=(stop,), daemon=True).start()
    restarts: dict[int, float] = {}
    try:
        while True:
            alive = 0
            for slot, child in list(children.items()):
                code = child.poll()
                if code is None:
                    alive += 1
                    continue
                if stopping["signals"]:
                    continue
                delay = min(30.0, restarts.get(slot, 0.5) * 2)
                restarts[slot] = delay
                log.error("worker.died", kind=kind, slot=slot, exit_code=code, restart_in=delay)
                time.sleep(delay)
                start(slot)
                alive += 1
            if stopping["signals"] and alive == 0:
                # a child that failed while draining must not look like a clean stop
                codes = [child.returncode for child in children.values()]
                failed = [c for c in codes if c not in (0, -signal.SIGTERM, -signal.SIGINT)]
                return failed[0] if failed else 0
            time.sleep(0.2)
    finally:
        stop.set()
