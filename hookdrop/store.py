"""The PostgreSQL store: migrations, named queries and the ledger writes.

PostgreSQL is the source of truth for what was read and delivered. Every statement lives in
``sql/queries.sql``; this module loads them by name and translates psycopg's errors into
:class:`~hookdrop.errors.StoreUnavailable` so callers never handle driver exceptions.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any, TypeVar

import psycopg
import structlog
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from hookdrop.errors import ConfigError, StoreError, StoreUnavailable

log = structlog.get_logger(__name__)

T = TypeVar("T")

# Alert states in which nothing more will happen without an operator.
TERMINAL = frozenset({"delivered", "rejected", "dead", "cancelled"})
# Alert states held under a notifier's lease.
LEASED = frozenset({"sending", "retrying", "throttled"})

_MIGRATION_LOCK = 0x686F6F6B  # advisory lock id: "hook"


@cache
def queries() -> dict[str, str]:
    """All named queries from sql/queries.sql."""
    text = resources.files("hookdrop").joinpath("sql/queries.sql").read_text("utf-8")
    named: dict[str, str] = {}
    for block in re.split(r"^-- name: ", text, flags=re.MULTILINE)[1:]:
        name, _, body = block.partition("\n")
        named[name.strip()] = body.strip().rstrip(";")
    return named


def migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every migration, in order."""
    folder = resources.files("hookdrop").joinpath("sql/migrations")
    found = []
    for entry in folder.iterdir():
        match = re.fullmatch(r"(\d+)_.*\.sql", entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text("utf-8")))
    return sorted(found)


@dataclass(frozen=True, slots=True)
class ChunkWritten:
    """What writing one chunk did."""

    owned: list[tuple[str, str]]  # (alert id, status) of the alerts this chunk owns
    refused: int  # rows PostgreSQL could not store, recorded as row errors
    file_status: str


@dataclass(frozen=True, slots=True)
class Result:
    """One delivery outcome to record."""

    alert_id: str
    status: str
    failed: int = 0  # 1 when this try counts against the attempt budget
    throttled: int = 0  # 1 when the receiver answered 429
    code: int | None = None
    error: str | None = None
    latency_ms: float | None = None
    next_at: datetime | None = None


class Store:
    """A connection to PostgreSQL with hookdrop's queries.

    One per process (or per thread); reconnects after the server comes back.
    """

    def __init__(self, url: str, *, application_name: str = "hookdrop") -> None:
        self.url = url
        self.application_name = application_name
        self._conn: psycopg.Connection[dict[str, Any]] | None = None

    # -- connection -------------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[dict[str, Any]]:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(
                    self.url,
                    autocommit=True,
                    row_factory=dict_row,
                    connect_timeout=5,
                    application_name=self.application_name,
                )
            except psycopg.OperationalError as exc:
                raise StoreUnavailable(f"PostgreSQL unreachable: {_first_line(exc)}") from exc
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        """A transaction; a lost or refused connection comes out as StoreUnavailable, any
        other driver error as StoreError."""
        conn = self._connect()
        try:
            with conn.transaction():
                yield conn
        except psycopg.Error as exc:
            if _is_outage(exc, conn):
                self.close()
                raise StoreUnavailable(f"PostgreSQL error: {_first_line(exc)}") from exc
            raise StoreError(f"PostgreSQL refused a statement: {_first_line(exc)}") from exc

    def run(self, name: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run a named query in its own transaction and return its rows."""
        with self.transaction() as conn:
            return _execute(conn, name, params)

    def one(self, name: str, params: dict[str, Any] | None = None) -> dict[str, Any] | None:
        rows = self.run(name, params)
        return rows[0] if rows else None

    def ping(self) -> None:
        with self.transaction() as conn:
            conn.execute("SELECT 1")

    # -- schema -----------------------------------------------------------------------------

    def migrate(self) -> list[str]:
        """Apply pending migrations, once, whichever process gets there first."""
        applied: list[str] = []
        with self.transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS hookdrop_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {
                row["version"]
                for row in conn.execute("SELECT version FROM hookdrop_migrations").fetchall()
            }
            for version, name, sql in migrations():
                if version in done:
                    continue
                conn.execute(sql)  # type: ignore[arg-type]  # our own trusted file
                conn.execute(
                    "INSERT INTO hookdrop_migrations (version, name) VALUES (%s, %s)",
                    (version, name),
                )
                applied.append(name)
        for name in applied:
            log.info("db.migrated", migration=name)
        return applied

    def check_schema(self) -> None:
        """Refuse to run against a database that has not been migrated."""
        latest = migrations()[-1][0]
        version = None
        with self.transaction() as conn:
            if _has_table(conn, "hookdrop_migrations"):
                row = conn.execute("SELECT max(version) AS v FROM hookdrop_migrations").fetchone()
                version = row["v"] if row else None
        if version is None or version < latest:
            raise ConfigError("DATABASE_URL: schema not up to date; run `hookdrop db migrate`")

    # -- batcher ----------------------------------------------------------------------------

    def write_chunk(
        self,
        *,
        file_id: int,
        seq: int,
        alerts: Sequence[tuple[str, int, str, str, dict[str, object] | None]],
        errors: Sequence[tuple[int, str, str]],
        rows: int,
        invalid_before: int,
        alerts_before: int,
    ) -> ChunkWritten:
        """Insert one chunk's alerts and row errors; return the alerts it owns, how many rows
        the ledger refused, and the file's status (a batcher stops reading a cancelled file).

        ``alerts`` holds (id, line, user_id, message, extra) with ids unique within the chunk.
        Replaying the same chunk returns the same owned ids, so a batcher that crashed between
        this write and its Redis checkpoint enqueues exactly what it would have. A row that
        PostgreSQL refuses (a value it cannot store) becomes a row error; it never fails the
        chunk, and the same row is refused the same way on a replay.
        """
        with self.transaction() as conn:
            owned, refused = _upsert_alerts(conn, file_id, seq, list(alerts))
            all_errors = list(errors) + [
                (row[1], f"cannot be stored: {reason}", _excerpt_of(row)) for row, reason in refused
            ]
            if all_errors:
                _execute(conn, "insert_row_errors", {
                    "file_id": file_id,
                    "lines": [e[0] for e in all_errors],
                    "reasons": [_storable(e[1]) for e in all_errors],
                    "excerpts": [_storable(e[2]) for e in all_errors],
                })
            progress = _execute(conn, "file_progress", {
                "id": file_id, "rows": rows, "invalid": invalid_before + len(all_errors),
                "alerts": alerts_before + len(owned),
            })
        status = progress[0]["status"] if progress else "missing"
        return ChunkWritten([(row["id"], row["status"]) for row in owned], len(refused), status)

    # -- notifier ---------------------------------------------------------------------------

    def claim(self, ids: Sequence[str], owner: str, lease: float) -> list[dict[str, Any]]:
        return self.run("claim_alerts", {"ids": list(ids), "owner": owner, "lease": lease})

    def renew(self, ids: Sequence[str], owner: str, lease: float) -> None:
        if ids:
            self.run("renew_leases", {"ids": list(ids), "owner": owner, "lease": lease})

    def release(self, ids: Sequence[str], owner: str) -> None:
        if ids:
            self.run("release_alerts", {"ids": list(ids), "owner": owner})

    def record(self, results: Sequence[Result], owner: str) -> int:
        """Write outcomes in one statement; returns how many were still ours to write."""
        if not results:
            return 0
        row = self.one("record_results", {
            "owner": owner,
            "ids": [r.alert_id for r in results],
            "statuses": [r.status for r in results],
            "failed": [r.failed for r in results],
            "throttled": [r.throttled for r in results],
            "codes": [r.code for r in results],
            "errors": [r.error for r in results],
            "latencies": [r.latency_ms for r in results],
            "next_at": [r.next_at for r in results],
        })
        return int(row["written"]) if row else 0


_AlertRow = tuple[str, int, str, str, dict[str, object] | None]
# Errors that one row can cause: a value PostgreSQL cannot hold, or a size it cannot index.
_ROW_FAULTS = (psycopg.DataError, psycopg.errors.ProgramLimitExceeded, UnicodeEncodeError)


def _upsert_alerts(
    conn: psycopg.Connection[dict[str, Any]], file_id: int, seq: int, alerts: list[_AlertRow]
) -> tuple[list[dict[str, Any]], list[tuple[_AlertRow, str]]]:
    """Insert alerts in one statement; if PostgreSQL refuses it, find the rows to blame by
    halving, each try in its own savepoint. Returns (owned rows, refused rows with reasons)."""
    if not alerts:
        return [], []
    try:
        with conn.transaction():
            return _execute(conn, "upsert_alerts", {
                "file_id": file_id,
                "seq": seq,
                "ids": [a[0] for a in alerts],
                "lines": [a[1] for a in alerts],
                "users": [a[2] for a in alerts],
                "messages": [a[3] for a in alerts],
                "extras": [Jsonb(a[4]) if a[4] else None for a in alerts],
            }), []
    except _ROW_FAULTS as exc:
        if len(alerts) == 1:
            return [], [(alerts[0], _first_line(exc))]
    half = len(alerts) // 2
    owned, refused = _upsert_alerts(conn, file_id, seq, alerts[:half])
    more_owned, more_refused = _upsert_alerts(conn, file_id, seq, alerts[half:])
    return owned + more_owned, refused + more_refused


def _excerpt_of(row: _AlertRow) -> str:
    return f"{row[2]},{row[3]}"[:120]


def _storable(text: str) -> str:
    """Text PostgreSQL accepts: no NUL, no lone surrogates."""
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


# SQLSTATE classes of a server that cannot serve now: connection exceptions, insufficient
# resources, operator intervention (shutdown, starting up).
_OUTAGE_CLASSES = ("08", "53", "57")


def _is_outage(exc: psycopg.Error, conn: psycopg.Connection[dict[str, Any]]) -> bool:
    if conn.broken or conn.closed:
        return True
    if exc.sqlstate:
        return exc.sqlstate[:2] in _OUTAGE_CLASSES
    # Raised by the driver itself: lost connections are these; bad values are DataError.
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


def _has_table(conn: psycopg.Connection[dict[str, Any]], name: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL AS ok", (name,)).fetchone()
    return bool(row and row["ok"])


def _execute(
    conn: psycopg.Connection[dict[str, Any]], name: str, params: dict[str, Any] | None
) -> list[dict[str, Any]]:
    cur = conn.execute(queries()[name], params)  # type: ignore[arg-type]  # named, trusted SQL
    return cur.fetchall() if cur.description else []


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def retry_while_unavailable(
    action: Callable[[], T],
    *,
    what: str,
    stop: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], None] = time.sleep,
    base: float = 0.5,
    cap: float = 10.0,
) -> T:
    """Run ``action`` until PostgreSQL answers: the worker pauses, nothing is dropped.

    ``stop`` lets a shutting-down worker give up (the caller then leaves its work to be
    recovered); the last StoreUnavailable is raised in that case.
    """
    from hookdrop.backoff import compute_backoff

    attempt = 0
    while True:
        try:
            return action()
        except StoreUnavailable as exc:
            attempt += 1
            if stop():
                raise
            delay = compute_backoff(attempt, base=base, cap=cap)
            log.warning("db.unavailable", action=what, error=str(exc), retry_in=round(delay, 2))
            sleep(delay)
