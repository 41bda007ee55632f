"""Helpers shared by the integration and end-to-end tests."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import redis
from rq import Queue
from rq.job import Job

from daemon.monitor import Monitor
from hookdrop import connections, ports
from hookdrop.endpoints import LiveEndpoints
from hookdrop.settings import Settings
from hookdrop.store import Store
from notifier_mock import MockClient
from workers import context
from workers.runner import build_context, make_worker

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    return ports.free_port()


def wait_for(
    predicate: Callable[[], T],
    *,
    timeout: float = 20.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll until ``predicate()`` is truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@contextmanager
def running_monitor(
    settings: Settings, name: str = "test-monitor", environ: dict[str, str] | None = None
) -> Iterator[Monitor]:
    """A real Monitor (watchdog and all) in a thread, stopped on exit; ``environ`` holds the
    variables the endpoints file names."""
    conn = redis.Redis.from_url(connections.redis_url(settings))
    store = Store(connections.database_url(settings))
    endpoints = LiveEndpoints(settings, environ or {})
    monitor = Monitor(settings, store, conn, name=name, endpoints=endpoints)
    failure: list[BaseException] = []

    def target() -> None:
        try:
            monitor.run()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread below
            failure.append(exc)

    thread = threading.Thread(target=target, name=f"monitor-{name}")
    thread.start()
    try:
        wait_for(settings.processing_dir.exists, what="monitor start")
        yield monitor
    finally:
        monitor.stopping.set()
        thread.join(timeout=10)
        store.close()
        conn.close()
    if failure:
        raise failure[0]


def run_burst(settings: Settings, kind: str) -> None:
    """Run a worker in this process until its queue is empty."""
    ctx = build_context(settings, name=f"burst-{kind}")
    context.install(ctx)
    try:
        make_worker(ctx, kind).work(burst=True, logging_level="WARNING")
    finally:
        context.install(None)
        ctx.close()


def queued_alert_ids(conn: redis.Redis, settings: Settings) -> Counter[str]:
    """Every alert id in the notifier queue's jobs, with how often it appears."""
    queue = Queue(settings.keys.notifier_queue, connection=conn)
    found: Counter[str] = Counter()
    for job_id in queue.get_job_ids():
        job = Job.fetch(job_id, connection=conn)
        found.update(job.args[1])
    return found


def run_queued_deliveries(engine: Any, conn: redis.Redis, settings: Settings) -> list[Any]:
    """Run every job of the notifier queue in ``engine`` (a workers.notifier.Delivery), as a
    notifier would, and empty the queue; returns their results."""
    queue = Queue(settings.keys.notifier_queue, connection=conn)
    results = []
    for job_id in queue.get_job_ids():
        job = Job.fetch(job_id, connection=conn)
        file_id, ids = job.args
        kwargs = job.kwargs
        if kwargs.get("seq") is None:
            results.append(engine.run_alerts(file_id, ids, dlq=kwargs.get("dlq", False)))
        else:
            results.append(
                engine.run_chunk(file_id, kwargs["seq"], ids, dlq=kwargs.get("dlq", False))
            )
    queue.empty()
    return results


def file_rows(store: Store) -> list[dict[str, Any]]:
    with store.transaction() as conn:
        return conn.execute("SELECT * FROM files ORDER BY id").fetchall()


_STARTED: list[subprocess.Popen[bytes]] = []
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
_TEST_RUN = os.getpid()


def dies_with_tests() -> None:
    """``preexec_fn`` of every process a test starts: SIGKILL when the test run dies.

    So a test run killed with SIGKILL or SIGTERM leaves nothing behind; hookdrop's own
    processes pass the rule on to theirs (``hookdrop.lifeline``).
    """
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != _TEST_RUN:
            os._exit(1)  # started by a test run's child after the run died


def hookdrop_process(
    settings: Settings,
    *args: str,
    extra_env: dict[str, str] | None = None,
    log_path: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a real ``hookdrop`` command in its own process group.

    The group is killed when the test ends, pass or fail (see :func:`reap_processes`).
    """
    env = {**os.environ, **settings.to_environ(), **(extra_env or {})}
    command = [sys.executable, "-m", "hookdrop", *args]
    if log_path is None:
        process = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=dies_with_tests,  # noqa: PLW1509 - one system call
        )
    else:
        with log_path.open("ab") as out:  # the child keeps its own copy of the handle
            process = subprocess.Popen(
                command,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=dies_with_tests,  # noqa: PLW1509
            )
    _STARTED.append(process)
    return process


def run_hookdrop(
    *args: str, env: dict[str, str], cwd: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run ``hookdrop ARGS`` to its end in its own process group; on a timeout, or if the
    test is interrupted, the whole group (servers, workers, mock) is killed."""
    process = subprocess.Popen(
        [sys.executable, "-m", "hookdrop", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=dies_with_tests,  # noqa: PLW1509 - one system call
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        kill_group(process)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@contextmanager
def hookdrop_stack(
    settings: Settings, logs: Path, *, notifiers: int = 2
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Monitor, batcher and a pool of notifiers, each in its own process group, logging to
    ``logs``; running once the monitor made its folders, killed on exit."""
    logs.mkdir(exist_ok=True)
    procs = [
        hookdrop_process(settings, "monitor", log_path=logs / "monitor.log"),
        hookdrop_process(settings, "worker", "batcher", log_path=logs / "batcher.log"),
        hookdrop_process(
            settings,
            "worker",
            "notifier",
            "--processes",
            str(notifiers),
            log_path=logs / "notifier.log",
        ),
    ]
    try:
        wait_for(settings.processing_dir.exists, what="monitor ready")
        yield procs
    finally:
        for process in procs:
            kill_group(process)


def reap_processes() -> None:
    """Kill the process group of every ``hookdrop_process`` started so far, and wait."""
    while _STARTED:
        kill_group(_STARTED.pop())


def kill_group(process: subprocess.Popen[Any], sig: int = signal.SIGKILL) -> None:
    """Kill a process and everything it started, as a machine crash would."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    process.wait(timeout=30)


def write_csv(
    path: Path, rows: int, *, header: bool = True, start: int = 0
) -> set[tuple[str, str]]:
    """A CSV of ``rows`` distinct alerts; returns the (user, message) pairs written."""
    pairs = set()
    tmp = path.with_name("." + path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as handle:
        if header:
            handle.write("user_id,message\n")
        for n in range(start, start + rows):
            user, message = f"u{n}", f"alert number {n}"
            pairs.add((user, message))
            handle.write(f"{user},{message}\n")
    os.rename(tmp, path)
    return pairs


#: Alert rows with the status the ledger gives them: an alert delivered at its first try
#: keeps its row as inserted (status 'pending') and is delivered by a row of ``deliveries``.
ALERT_ROWS = """
SELECT a.*,
       CASE WHEN d.id IS NOT NULL THEN 'delivered' ELSE a.status END AS ledger_status,
       coalesce(d.code, a.last_status_code) AS ledger_code
FROM alerts AS a
LEFT JOIN round_deliveries AS d ON d.id = a.id
"""


def alert_rows(store: Store, file_id: int) -> list[dict[str, Any]]:
    """A file's alert rows in line order, each with its status as the ledger defines it."""
    with store.transaction() as conn:
        rows = conn.execute(
            f"SELECT * FROM ({ALERT_ROWS}) AS a WHERE a.file_id = %s ORDER BY a.line_no",
            (file_id,),
        ).fetchall()
    return [
        {**row, "status": row["ledger_status"], "last_status_code": row["ledger_code"]}
        for row in rows
    ]


def ledger_file(
    store: Store,
    count: int,
    *,
    name: str = "t.csv",
    sha: str | None = None,
    status: str = "reading",
    chunk_size: int = 100,
    extra: dict[str, Any] | None = None,
    errors: list[tuple[int, str, str]] | None = None,
    endpoint: str = "default",
    bodies: list[bytes | None] | None = None,
) -> tuple[int, list[str]]:
    """A file row whose ``count`` alerts are in the ledger and fully read (no file on disk);
    ``bodies`` are their rendered bodies (None: the default body)."""
    from hookdrop.alerts import alert_id

    sha = sha or f"sha-{name}-{count}"
    file_id = store.insert_file(
        name=name,
        sha=sha,
        generation=0,
        size=1,
        layout={},
        chunk_size=chunk_size,
        path="/nonexistent",
        claimed_by="t",
        identity=None,
        endpoint=endpoint,
    )
    assert file_id is not None
    if status != "claimed":
        with store.transaction() as conn:
            conn.execute("UPDATE files SET status = %s WHERE id = %s", (status, file_id))
    alerts = [
        (
            alert_id(sha, 0, f"u{n}", f"m{n}", endpoint),
            n + 2,
            f"u{n}",
            f"m{n}",
            extra,
            bodies[n] if bodies else None,
        )
        for n in range(count)
    ]
    errors = errors or []
    written = store.write_chunk(
        file_id=file_id,
        seq=1,
        alerts=alerts,
        errors=errors,
        rows=count + len(errors),
        invalid_before=0,
        alerts_before=0,
    )
    store.finish_read(
        file_id, rows=count + len(errors), invalid=len(errors), alerts=count, error=None
    )
    return file_id, [aid for aid, _ in written.owned]


class MockProcess:
    """The mock receiver as a process of its own (in its own process group) and its client."""

    def __init__(self, *, audit_path: Path | None = None, port: int = 0, **flags: object) -> None:
        """Start it with ``--name=value`` flags (``latency_ms=20``; ``True`` for a bare
        ``--name``), on ``port`` (a free one if 0), and wait until it answers."""
        self.port = port or free_port()
        self.audit = audit_path
        if audit_path is not None:
            flags["audit_path"] = audit_path
        args = [
            f"--{name.replace('_', '-')}" + ("" if value is True else f"={value}")
            for name, value in flags.items()
        ]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "notifier_mock", "--port", str(self.port), *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=dies_with_tests,  # noqa: PLW1509 - one system call
        )
        _STARTED.append(self.process)
        self.client = MockClient(self.url)
        try:
            wait_for(self.client.healthy, timeout=30, what="mock receiver up")
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        """The receiver's base URL; webhooks go to ``url + "/hook"``."""
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.client.close()
        kill_group(self.process)


StartMock = Callable[..., MockClient]
"""The ``start_mock`` fixture of the end-to-end tests: flags as ``name=value``."""
