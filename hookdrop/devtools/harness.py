"""A whole hookdrop stack in child processes, for the demo and the benchmark.

Each run gets its own inbox, Redis key prefix and mock receiver, so it never disturbs a daemon
already running against the same servers; results are read back from PostgreSQL and the mock.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import psutil
import psycopg
import redis
import structlog

from hookdrop.connections import connect_store, database_url, redis_url
from hookdrop.keys import Keys
from hookdrop.ports import free_port
from hookdrop.queues import forget_deployment
from hookdrop.settings import Settings
from hookdrop.store import FileRow, FileStatus, create_schema, drop_schema
from hookdrop.supervise import Supervisor
from notifier_mock import MockClient

log = structlog.get_logger(__name__)

_OWNER = "owner"


def _owner_id(pid: int) -> str:
    """``pid start-time``: a pid alone may be reused by another process."""
    try:
        return f"{pid} {psutil.Process(pid).create_time():.2f}"
    except psutil.NoSuchProcess:
        return f"{pid} gone"


def forget_abandoned_runs(runs: Path, admin_url: str, redis_address: str) -> list[str]:
    """Delete what runs whose process died left (folder, schema, Redis keys); return their ids.

    Runs kept on purpose (a failed demo's logs and ledger) and live ones are left alone.
    """
    abandoned = []
    for root in runs.glob("*") if runs.is_dir() else ():
        owner = root / _OWNER
        try:
            recorded = owner.read_text(encoding="utf-8")
        except OSError:
            continue  # kept on purpose, or not a run
        pid = recorded.split()[0] if recorded.split() else ""
        if not pid.isdigit() or _owner_id(int(pid)) != recorded:
            abandoned.append(root.name)
    for run in abandoned:
        drop_schema(admin_url, f"hookdrop_run_{run}")
        conn = redis.Redis.from_url(redis_address)
        try:
            forget_deployment(conn, Keys(f"run-{run}"))
        finally:
            conn.close()
        shutil.rmtree(runs / run, ignore_errors=True)
    return abandoned


def with_search_path(url: str, schema: str) -> str:
    """The same database, with unqualified names resolved in ``schema`` first."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "options"]
    query.append(("options", f"-csearch_path={schema}"))
    return urlunsplit(parts._replace(query=urlencode(query)))


@dataclass(frozen=True, slots=True)
class Drop:
    path: Path
    rows: int
    unique: int
    complete_at: float  # wall clock when the file was complete in the inbox


def write_alert_file(path: Path, rows: int, *, run: str, fmt: str = "csv") -> int:
    """Write ``rows`` distinct alerts to a hidden temp file, then rename it into place."""
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}.part")
    with temp.open("w", encoding="utf-8", newline="") as handle:
        if fmt == "csv":
            handle.write("user_id,message\n")
            for n in range(rows):
                handle.write(f"user-{n},Your {run} alert number {n} is ready\n")
        else:
            for n in range(rows):
                handle.write(f'{{"userId": "user-{n}", "alertMessage": "Your {run} alert {n}"}}\n')
        handle.flush()
        os.fsync(handle.fileno())
    os.rename(temp, path)
    return rows


FINISHED = (FileStatus.DONE, FileStatus.FAILED, FileStatus.CANCELLED)


class Stack:
    """Mock receiver + monitor + batcher + notifiers, started and stopped together."""

    def __init__(
        self,
        base: Settings,
        *,
        notifiers: int = 2,
        mock_args: tuple[str, ...] = (),
        with_mock: bool = True,
        environ: dict[str, str] | None = None,
        keep: bool = False,
    ) -> None:
        run = uuid.uuid4().hex[:8]
        self.run_id = run
        self.mock_port = free_port()
        self.mock = MockClient(f"http://127.0.0.1:{self.mock_port}")
        root = base.state_dir / "runs" / run
        webhook = self.mock.hook_url if with_mock else base.webhook_url
        # A run owns its Redis prefix and its PostgreSQL schema: one deployment per ledger.
        self.schema = f"hookdrop_run_{run}"
        self.admin_url = database_url(base)
        self.settings = base.replace(
            inbox=root / "inbox",
            key_prefix=f"run-{run}",
            webhook_url=webhook,
            api_listen=("127.0.0.1", free_port()),
            database_url=with_search_path(self.admin_url, self.schema),
        )
        self.keep = keep
        self.root = root
        self.with_mock = with_mock
        self.supervisor = Supervisor(
            {**(environ or os.environ), **self.settings.to_environ()}, stop_timeout=30
        )
        self.logs = root / "logs"
        if with_mock:
            self.supervisor.add(
                "mock",
                [
                    "mock",
                    "--port",
                    str(self.mock_port),
                    "--audit-path",
                    str(root / "accepted.tsv"),
                    *mock_args,
                ],
            )
        self.supervisor.add("monitor", ["monitor"])
        self.supervisor.add("batcher", ["worker", "batcher"])
        self.supervisor.add("notifier", ["worker", "notifier", "--processes", str(notifiers)])
        self.store = connect_store(self.settings, name="hookdrop-harness")

    def start(self, *, timeout: float = 60) -> None:
        forget_abandoned_runs(self.root.parent, self.admin_url, redis_url(self.settings))
        self.logs.mkdir(parents=True, exist_ok=True)
        # Who runs this: a run whose owner died (killed) is cleaned up by the next one.
        (self.root / _OWNER).write_text(_owner_id(os.getpid()), encoding="utf-8")
        create_schema(self.admin_url, self.schema)
        self.store.migrate()
        self.supervisor.start(log_dir=self.logs)
        deadline = time.monotonic() + timeout
        while not self.settings.processing_dir.exists() or (
            self.with_mock and not self.mock.healthy()
        ):
            self.supervisor.check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"stack did not start; see logs in {self.logs}")
            time.sleep(0.1)

    def stop(self) -> None:
        self.supervisor.stop()
        self.supervisor.wait()
        self.mock.close()
        self.store.close()
        if self.keep:
            (self.root / _OWNER).unlink(missing_ok=True)  # kept to look at: not abandoned
        else:
            shutil.rmtree(self.root, ignore_errors=True)
            # The servers may be gone (stopped under the run): then so is what it made there,
            # and the error that ends the run says why.
            try:
                drop_schema(self.admin_url, self.schema)
            except psycopg.OperationalError as exc:
                log.warning("harness.schema_not_dropped", schema=self.schema, error=str(exc))
            conn = redis.Redis.from_url(redis_url(self.settings))
            try:
                forget_deployment(conn, self.settings.keys)
            except redis.exceptions.ConnectionError as exc:
                log.warning(
                    "harness.keys_not_deleted", prefix=self.settings.key_prefix, error=str(exc)
                )
            finally:
                conn.close()

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()  # a Ctrl-C or SIGTERM while starting stops what did start
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def drop(self, rows: int, *, name: str = "alerts.csv", fmt: str = "csv") -> Drop:
        staging = self.root / "staging"
        staging.mkdir(parents=True, exist_ok=True)
        temp = staging / name
        # The content names the run and the file: each drop is new content, never a duplicate.
        write_alert_file(temp, rows, run=f"{self.run_id}/{name}", fmt=fmt)
        final = self.settings.inbox / name
        os.rename(temp, final)  # same filesystem: an atomic appearance in the inbox
        return Drop(final, rows, rows, time.time())

    def file_row(self, name: str) -> FileRow | None:
        return self.store.latest_file_named(name, self.settings.processing_dir)

    def wait_done(
        self,
        name: str,
        *,
        timeout: float,
        progress: Callable[[FileRow | None, dict[str, Any] | None], None] | None = None,
        every: float = 0.25,
    ) -> FileRow:
        """Wait until the file is finished; ``progress(file_row, mock_stats)`` on each poll."""
        deadline = time.monotonic() + timeout
        while True:
            self.supervisor.check()
            row = self.file_row(name)
            stats = self.mock_stats() if self.with_mock else None
            if progress is not None:
                progress(row, stats)
            if row is not None and row.status in FINISHED:
                return row
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not finished after {timeout}s; see {self.logs}")
            time.sleep(every)

    def mock_stats(self) -> dict[str, Any] | None:
        try:
            return self.mock.stats(per_user=False)
        except httpx.HTTPError:
            return None
