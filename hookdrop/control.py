"""Operator actions shared by the HTTP API and the CLI.

Status and results of files, pause / resume / cancel, the DLQ and its replay, resending a
finished file, the system overview, and the atomic drop of a file into the inbox.

Reads stay cheap whatever the file size: counts come from the ``files`` row counters, the open
states from ``status_counts`` (served by the small ``alerts_open`` partial index), throughput
from the notifiers' per-second outcome counters in Redis. Redis errors come out as
:class:`~hookdrop.errors.QueueUnavailable`, PostgreSQL errors as
:class:`~hookdrop.errors.StoreUnavailable`, and what the operator asked wrongly as the
:class:`ControlError` family below.
"""

from __future__ import annotations

import functools
import os
import secrets
import socket
import threading
import time
import unicodedata
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO, ParamSpec, TypeVar

import redis
import structlog
from rq import Worker

from hookdrop.errors import HookdropError, QueueUnavailable
from hookdrop.inbox import disk_name, is_ignored
from hookdrop.keys import Keys
from hookdrop.queues import batcher_queue, enqueue_deliveries, notifier_queue
from hookdrop.settings import Settings
from hookdrop.store import Store

log = structlog.get_logger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

ACTIVE = frozenset({"claimed", "reading", "delivering"})
FINISHED = frozenset({"done", "failed", "cancelled", "duplicate"})
OPEN_STATES = ("pending", "sending", "retrying", "throttled", "dlq")
REPLAYABLE = frozenset({"dlq", "dead", "rejected"})
DEFAULT_REPLAY = ("dlq", "dead")
RATE_WINDOW = 10.0  # seconds of progress the current rate is measured over
THROUGHPUT_SECONDS = 120  # the notifiers prune their per-second counters past this
# A cancelled file's in-flight jobs stop on the paused key; it outlives any job's chunk.
CANCEL_KEY_TTL = 7 * 24 * 3600
MAX_NAME_BYTES = 200  # leaves room for the prefixes added in processing/ and done/
COPY_BLOCK = 1 << 20
LATENCY_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class ControlError(HookdropError):
    """The operator asked for something that cannot be done; the message says why."""


class UnknownFile(ControlError):
    def __init__(self, file_id: int) -> None:
        super().__init__(f"no file with id {file_id}")
        self.file_id = file_id


class Conflict(ControlError):
    """The file is not in a state where this action applies."""


class BadRequest(ControlError, ValueError):
    """An argument is malformed (a file name, a status)."""


class TooLarge(ControlError):
    """An upload went past the size limit."""


# -- errors at the Redis boundary ----------------------------------------------------------


def _redis_errors(func: Callable[P, T]) -> Callable[P, T]:
    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return func(*args, **kwargs)
        except redis.RedisError as exc:
            raise QueueUnavailable(f"Redis error: {exc}") from exc

    return wrapper


# -- rate ----------------------------------------------------------------------------------


class RateTracker:
    """Delivered/s of each file over the last ``window`` seconds, from sampled counters.

    Lives as long as the API (or a ``status --watch``): every status read adds a sample.
    Thread-safe; forgets files not looked at for a while.
    """

    def __init__(self, window: float = RATE_WINDOW,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self._samples: dict[int, deque[tuple[float, int]]] = {}
        self._lock = threading.Lock()

    def observe(self, file_id: int, delivered: int) -> float | None:
        """Record a sample; the rate over the window, or None until it spans a second."""
        now = self.clock()
        with self._lock:
            samples = self._samples.setdefault(file_id, deque())
            samples.append((now, delivered))
            # Keep one sample at or before the window start so the span covers it all.
            while len(samples) > 2 and samples[1][0] <= now - self.window:
                samples.popleft()
            for other in [f for f, s in self._samples.items() if s[-1][0] < now - 30 * self.window]:
                del self._samples[other]
            first_at, first = samples[0]
        span = now - first_at
        if span < 1.0:
            return None
        return max(0.0, (delivered - first) / span)


# -- the operations ------------------------------------------------------------------------


class Control:
    """Operator actions on one Store and one Redis connection (not shared across threads)."""

    def __init__(self, settings: Settings, store: Store, conn: redis.Redis,
                 rates: RateTracker | None = None) -> None:
        self.settings = settings
        self.keys: Keys = settings.keys
        self.store = store
        self.redis = conn
        self.rates = rates or RateTracker()

    # -- reading ----------------------------------------------------------------------------

    def _file(self, file_id: int) -> dict[str, Any]:
        row = self.store.one("get_file", {"id": file_id})
        if row is None:
            raise UnknownFile(file_id)
        return row

    def _open_counts(self, row: dict[str, Any]) -> dict[str, int]:
        counts = dict.fromkeys(OPEN_STATES, 0)
        # Cancelled and duplicate files hold no open alert; skip counting their leftovers.
        if row["status"] in ("cancelled", "duplicate"):
            return counts
        for item in self.store.run("status_counts", {"file_id": row["id"]}):
            if item["status"] in counts:
                counts[item["status"]] = int(item["n"])
        return counts

    def file_status(self, file_id: int) -> dict[str, Any]:
        """Counts, rate (delivered/s over ~10 s) and ETA of one file."""
        row = self._file(file_id)
        return self._status(row, self._open_counts(row))

    def _status(self, row: dict[str, Any], open_counts: dict[str, int]) -> dict[str, Any]:
        status = summary(row)
        delivered = int(row["delivered"])
        settled = delivered + int(row["rejected"]) + int(row["dead"]) + int(row["cancelled"])
        remaining = max(0, int(row["alerts_total"]) - settled)
        counts = {
            "rows": int(row["rows_total"]),
            "invalid": int(row["rows_invalid"]),
            "alerts": int(row["alerts_total"]),
            "queued": open_counts["pending"],
            "sending": open_counts["sending"],
            "delivered": delivered,
            "throttled": open_counts["throttled"],
            "retrying": open_counts["retrying"],
            "dlq": open_counts["dlq"],
            "dead": int(row["dead"]),
            "rejected": int(row["rejected"]),
            "cancelled": int(row["cancelled"]),
            "remaining": remaining,
        }
        rate: float | None = 0.0
        eta: float | None = 0.0
        if row["status"] not in FINISHED:
            rate = self.rates.observe(int(row["id"]), delivered)
            if rate is None:
                rate = _average_rate(row)
            eta = remaining / rate if row["read_complete"] and rate else None
            if row["read_complete"] and remaining == 0:
                eta = 0.0
        status.update(counts=counts, rate=None if rate is None else round(rate, 2),
                      eta_seconds=None if eta is None else round(eta, 1))
        return status

    def list_files(self, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        """Newest first; active files carry their open counts (they are few)."""
        rows = self.store.run("list_files", {"limit": limit, "offset": offset})
        out = []
        for row in rows:
            if row["status"] in ACTIVE:
                out.append(self._status(row, self._open_counts(row)))
            else:
                out.append(self._status(row, dict.fromkeys(OPEN_STATES, 0)))
        return out

    def file_result(self, file_id: int, limit: int = 100, offset: int = 0) -> dict[str, Any]:
        """Bad rows and alerts that did not get through, with reasons, one page of each."""
        row = self._file(file_id)
        open_counts = self._open_counts(row)
        page = {"file_id": file_id, "limit": limit, "offset": offset}
        errors = self.store.run("row_errors_page", page)
        failed = self.store.run("failed_alerts_page", page)
        return {
            "file": self._status(row, open_counts),
            "limit": limit,
            "offset": offset,
            "row_errors_total": int(row["rows_invalid"]),
            "failed_alerts_total": int(row["rejected"]) + int(row["dead"])
            + int(row["cancelled"]) + open_counts["dlq"],
            "row_errors": [jsonable(e) for e in errors],
            "failed_alerts": [jsonable(a) for a in failed],
        }

    # -- pause, resume, cancel --------------------------------------------------------------

    def _refuse_inactive(self, file_id: int, action: str) -> None:
        row = self._file(file_id)  # UnknownFile when it does not exist
        raise Conflict(f"file {file_id} is {row['status']}: only a file still being read or "
                       f"delivered can be {action}")

    @_redis_errors
    def pause(self, file_id: int) -> dict[str, Any]:
        """Stop sending a file's alerts; running notifier jobs hand theirs back in ~0.3 s."""
        if self.store.one("set_paused", {"id": file_id, "paused": True}) is None:
            self._refuse_inactive(file_id, "paused")
        self.redis.set(self.keys.paused(file_id), "1")
        log.info("file.paused", file_id=file_id)
        return self.file_status(file_id)

    @_redis_errors
    def resume(self, file_id: int) -> dict[str, Any]:
        """Undo a pause and queue the file's open alerts again (notifiers lease each once)."""
        if self.store.one("set_paused", {"id": file_id, "paused": False}) is None:
            self._refuse_inactive(file_id, "resumed")
        self.redis.delete(self.keys.paused(file_id))
        ids = [r["id"] for r in self.store.run("open_alert_ids", {"file_id": file_id})]
        jobs = enqueue_deliveries(self.redis, self.keys, file_id, ids, self.settings.chunk_size)
        log.info("file.resumed", file_id=file_id, requeued=len(ids), jobs=jobs)
        return {**self.file_status(file_id), "requeued": len(ids)}

    @_redis_errors
    def cancel(self, file_id: int) -> dict[str, Any]:
        """Mark every alert not yet sent cancelled; in-flight jobs stop on the paused key."""
        if self.store.one("cancel_file", {"id": file_id}) is None:
            self._refuse_inactive(file_id, "cancelled")
        self.redis.set(self.keys.paused(file_id), "cancelled", ex=CANCEL_KEY_TTL)
        status = self.file_status(file_id)
        log.info("file.cancelled", file_id=file_id, alerts=status["counts"]["cancelled"])
        return status

    # -- DLQ --------------------------------------------------------------------------------

    def dlq_list(self, statuses: Sequence[str] = DEFAULT_REPLAY, limit: int = 100,
                 offset: int = 0) -> dict[str, Any]:
        wanted = check_statuses(statuses)
        rows = self.store.run("dlq_page", {"statuses": wanted, "limit": limit,
                                           "offset": offset})
        sizes = self.store.one("dlq_size") or {}
        return {"statuses": wanted, "limit": limit, "offset": offset,
                "dlq": int(sizes.get("dlq") or 0), "dead": int(sizes.get("dead") or 0),
                "alerts": [jsonable(r) for r in rows]}

    def replay(self, file_id: int | None = None,
               statuses: Sequence[str] = DEFAULT_REPLAY) -> int:
        """Give dead / DLQ / rejected alerts a fresh budget; the monitor sends them within one
        DLQ interval. Returns how many were replayed."""
        wanted = check_statuses(statuses)
        if file_id is not None:
            self._file(file_id)
        row = self.store.one("replay_alerts", {"statuses": wanted, "file_id": file_id})
        count = int(row["n"]) if row else 0
        log.info("dlq.replayed", file_id=file_id, statuses=wanted, alerts=count)
        return count

    # -- resend -----------------------------------------------------------------------------

    @_redis_errors
    def resend(self, file_id: int) -> dict[str, Any]:
        """Send a finished file again as a new generation (new alert ids, sent on purpose)."""
        from daemon.claim import Claimer, ensure_dirs

        row = self._file(file_id)
        if row["status"] not in FINISHED:
            raise Conflict(f"file {file_id} is {row['status']}: wait until it is finished "
                           "(or cancel it) before resending")
        if not row["final_path"] or not Path(row["final_path"]).is_file():
            raise Conflict(f"file {file_id}: its copy ({row['final_path'] or 'none'}) is no "
                           "longer on disk")
        ensure_dirs(self.settings)
        source = Path(row["final_path"])
        generation = int((self.store.one("next_generation", {"sha": row["content_sha256"]})
                          or {"generation": 1})["generation"])
        # Copy beside the inbox under a hidden name (the monitor ignores it, and orphan
        # adoption never sees a half-copied file), then rename into processing/.
        with source.open("rb") as handle, InboxWriter(self.settings.inbox, row["name"],
                                                      check=False) as writer:
            for block in iter(lambda: handle.read(COPY_BLOCK), b""):
                writer.write(block)
            target = writer.commit_to(self.settings.processing_dir
                                      / disk_name(secrets.token_hex(6), row["name"]))
        owner = f"{socket.gethostname()}:{os.getpid()}:resend"
        claimed = Claimer(self.settings, self.store, self.redis, owner).register(
            target, row["name"], generation=generation)
        log.info("file.resent", file_id=file_id, new_file_id=claimed.file_id,
                 generation=generation, status=claimed.status)
        return {"file_id": claimed.file_id, "resent_from": file_id, "generation": generation,
                "status": claimed.status, "detail": claimed.detail}

    # -- the whole system -------------------------------------------------------------------

    @_redis_errors
    def overview(self) -> dict[str, Any]:
        totals = jsonable(self.store.one("totals") or {})
        sizes = self.store.one("dlq_size") or {}
        queues = {"batcher": batcher_queue(self.redis, self.keys),
                  "notifier": notifier_queue(self.redis, self.keys)}
        pttl = int(self.redis.pttl(self.keys.backpressure))
        rate = self.redis.hget(self.keys.ratecontrol, "rate")
        series = self.throughput(seconds=int(RATE_WINDOW))["series"]
        return {
            "files": totals,
            "queues": {name: q.count for name, q in queues.items()},
            "workers": {name: Worker.count(connection=self.redis, queue=q)
                        for name, q in queues.items()},
            "dlq": int(sizes.get("dlq") or 0),
            "dead": int(sizes.get("dead") or 0),
            "backpressure": {"active": pttl > 0,
                             "seconds_left": round(max(0, pttl) / 1000, 3)},
            "rate_limit": {"current": float(rate) if rate else None,
                           "configured": self.settings.rate_limit or None},
            "delivered_per_second": round(sum(p["ok"] for p in series) / max(1, len(series)), 1),
        }

    @_redis_errors
    def throughput(self, seconds: int = THROUGHPUT_SECONDS) -> dict[str, Any]:
        """Accepted and throttled requests per second over the last ``seconds`` (whole
        seconds only), from the notifiers' shared counters."""
        now = int(self.redis.time()[0])
        raw: dict[bytes, bytes] = self.redis.hgetall(self.keys.outcomes)  # type: ignore[assignment]
        counts: dict[tuple[int, str], int] = {}
        for field, value in raw.items():
            second, _, kind = field.decode().partition(":")
            if second.isdigit():
                counts[(int(second), kind)] = int(value)
        start = now - max(1, min(seconds, THROUGHPUT_SECONDS))
        series = [{"t": t, "ok": counts.get((t, "ok"), 0),
                   "throttled": counts.get((t, "throttled"), 0)} for t in range(start, now)]
        return {"now": now, "series": series}

    def outcome_totals(self, page: int = 1000) -> dict[str, int]:
        """Alerts by outcome over every file, from the files counters."""
        totals = Counter({"delivered": 0, "rejected": 0, "dead": 0, "cancelled": 0,
                          "invalid_rows": 0})
        offset = 0
        while True:
            rows = self.store.run("list_files", {"limit": page, "offset": offset})
            for row in rows:
                for name in ("delivered", "rejected", "dead", "cancelled"):
                    totals[name] += int(row[name])
                totals["invalid_rows"] += int(row["rows_invalid"])
            if len(rows) < page:
                return dict(totals)
            offset += page


def _average_rate(row: dict[str, Any]) -> float | None:
    started = row.get("first_delivery_at")
    if not started or not row["delivered"]:
        return None
    elapsed = (datetime.now(UTC) - started).total_seconds()
    return int(row["delivered"]) / elapsed if elapsed >= 1.0 else None


def summary(row: dict[str, Any]) -> dict[str, Any]:
    """The JSON shape of one file row (no per-alert counting)."""
    alerts = int(row["alerts_total"])
    settled = (int(row["delivered"]) + int(row["rejected"]) + int(row["dead"])
               + int(row["cancelled"]))
    finished = row["status"] in FINISHED
    if finished:
        percent = 100
    elif alerts == 0:
        percent = 0
    else:  # never 100 before it is finished: alerts_total still grows while reading
        percent = min(99, settled * 100 // alerts)
    return {
        "id": int(row["id"]),
        "name": row["name"],
        "status": row["status"],
        "finished": finished,
        "paused": bool(row["paused"]),
        "generation": int(row["generation"]),
        "size_bytes": int(row["size_bytes"]),
        "read_complete": bool(row["read_complete"]),
        "duplicate_of": row["duplicate_of"],
        "error": row["error"],
        "final_path": row["final_path"],
        "percent": percent,
        "created_at": _iso(row["created_at"]),
        "first_delivery_at": _iso(row["first_delivery_at"]),
        "finished_at": _iso(row["finished_at"]),
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def jsonable(row: dict[str, Any]) -> dict[str, Any]:
    def plain(value: Any) -> Any:
        if isinstance(value, datetime):
            return value.isoformat()
        if isinstance(value, Decimal):
            return int(value)
        return value

    return {key: plain(value) for key, value in row.items()}


def check_statuses(statuses: Iterable[str]) -> list[str]:
    wanted = sorted({s.strip() for s in statuses if s.strip()})
    bad = [s for s in wanted if s not in REPLAYABLE]
    if bad or not wanted:
        raise BadRequest(f"status must be one or more of {', '.join(sorted(REPLAYABLE))}"
                         + (f" (got {', '.join(bad)})" if bad else ""))
    return wanted


# -- atomic drop into the inbox ------------------------------------------------------------


def check_name(name: str) -> str:
    """A name a file may have in the inbox, or BadRequest saying why not."""
    if not name or name in {".", ".."}:
        raise BadRequest("a file name is required")
    if "/" in name or "\\" in name or os.sep in name:
        raise BadRequest(f"{name!r}: a file name, not a path (no '/' or '\\')")
    if ".." in name:
        raise BadRequest(f"{name!r}: '..' is not allowed in a name")
    if any(unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Zl", "Zp"} for ch in name):
        raise BadRequest(f"{name!r}: control characters are not allowed in a name")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise BadRequest(f"name too long (at most {MAX_NAME_BYTES} bytes)")
    if is_ignored(name):
        raise BadRequest(f"{name!r}: hidden and temporary names (.*, *.part, *.tmp, ...) are "
                         "ignored by the monitor; choose another name")
    return name


class InboxWriter:
    """Writes a file into a folder atomically: a hidden ``.name.XXXX.part`` temp file, fsync,
    then one link/rename to the final name. Readers never see a partial file under the final
    name, and an existing file of that name is never overwritten."""

    def __init__(self, folder: Path, name: str, *, limit: int | None = None,
                 check: bool = True) -> None:
        self.folder = folder
        self.name = check_name(name) if check else name
        self.limit = limit
        self.size = 0
        while True:
            temp = folder / f".{self.name}.{secrets.token_hex(4)}.part"
            try:
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
                break
            except FileExistsError:
                continue
        self.temp = temp
        self._file: BinaryIO | None = os.fdopen(fd, "wb")

    def __enter__(self) -> InboxWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.abort()

    def write(self, data: bytes) -> None:
        if self._file is None:
            raise ValueError("writer already closed")
        if self.limit is not None and self.size + len(data) > self.limit:
            raise TooLarge(f"{self.name}: larger than the {self.limit} bytes allowed")
        self._file.write(data)
        self.size += len(data)

    def _close_synced(self) -> None:
        if self._file is None:
            raise ValueError("writer already closed")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None

    def commit(self) -> Path:
        """Publish under the final name; :class:`Conflict` if that name is taken."""
        return self.commit_to(self.folder / self.name)

    def commit_to(self, final: Path) -> Path:
        self._close_synced()
        try:
            os.link(self.temp, final)  # atomic, and never replaces an existing file
        except FileExistsError:
            raise Conflict(f"{final.name} already exists in {final.parent.name}/; "
                           "choose another name") from None
        except OSError:  # a filesystem without hard links
            if final.exists():
                raise Conflict(f"{final.name} already exists in {final.parent.name}/; "
                               "choose another name") from None
            os.rename(self.temp, final)
        self.temp.unlink(missing_ok=True)
        _fsync_dir(final.parent)
        return final

    def abort(self) -> None:
        """Drop the temp file (no-op after a commit)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self.temp.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def send_chunks(chunks: Iterable[bytes], inbox: Path, name: str, *,
                limit: int | None = None) -> Path:
    """Drop a stream of bytes into the inbox atomically under ``name``."""
    with InboxWriter(inbox, name, limit=limit) as writer:
        for chunk in chunks:
            writer.write(chunk)
        final = writer.commit()
    log.info("file.sent", name=final.name, size=writer.size)
    return final


def send(path: Path, inbox: Path, name: str | None = None) -> Path:
    """Copy a local file into the inbox atomically (``hookdrop send``); needs no servers."""
    target = check_name(name if name is not None else path.name)
    with path.open("rb") as handle:
        return send_chunks(iter(lambda: handle.read(COPY_BLOCK), b""), inbox, target)


# -- delivery latency histogram ------------------------------------------------------------


def latency_key(keys: Keys) -> str:
    return keys.latency


def observe_latencies(conn: redis.Redis, keys: Keys, latencies_ms: Iterable[float]) -> None:
    """Add delivery latencies (ms) to the shared histogram: one round trip per batch.

    Called by notifiers with the latencies of the alerts they just recorded delivered.
    """
    buckets: Counter[str] = Counter()
    total = 0.0
    for ms in latencies_ms:
        bucket = next((f"le:{b}" for b in LATENCY_BUCKETS_MS if ms <= b), "le:inf")
        buckets[bucket] += 1
        total += ms
    count = sum(buckets.values())
    if not count:
        return
    pipe = conn.pipeline(transaction=False)
    key = latency_key(keys)
    for bucket, n in buckets.items():
        pipe.hincrby(key, bucket, n)
    pipe.hincrbyfloat(key, "sum_ms", total)
    pipe.hincrby(key, "count", count)
    pipe.execute()


def latency_histogram(conn: redis.Redis, keys: Keys) -> tuple[list[tuple[str, float]], float]:
    """Cumulative (le seconds, count) buckets ending with +Inf, and the sum in seconds."""
    stored: dict[bytes, bytes] = conn.hgetall(latency_key(keys))  # type: ignore[assignment]
    raw = {k.decode(): v.decode() for k, v in stored.items()}
    cumulative: list[tuple[str, float]] = []
    running = 0
    for bound in LATENCY_BUCKETS_MS:
        running += int(raw.get(f"le:{bound}", 0))
        cumulative.append((repr(bound / 1000), float(running)))
    running += int(raw.get("le:inf", 0))
    cumulative.append(("+Inf", float(running)))
    return cumulative, float(raw.get("sum_ms", 0.0)) / 1000
