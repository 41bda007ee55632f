"""The ledger in PostgreSQL: one method per named query, each returning typed rows.

PostgreSQL is the source of truth for what was read and delivered. Every statement lives in
``sql/queries.sql``; the methods here run them and translate psycopg's errors: a server that
cannot serve now becomes :class:`~hookdrop.errors.StoreUnavailable` (callers pause and retry),
anything else :class:`~hookdrop.errors.StoreError`. Callers never handle driver exceptions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import structlog
from psycopg.rows import class_row, dict_row
from psycopg.types.json import Jsonb

from hookdrop.errors import ConfigError, StoreError, StoreUnavailable
from hookdrop.inbox import FileIdentity
from hookdrop.store._sql import migrations, queries
from hookdrop.store.rows import (
    ActiveFile,
    AlertRef,
    AlertToSend,
    ChunkWritten,
    DlqEntry,
    FailedAlert,
    FileRef,
    FileRow,
    FileToMove,
    Result,
    RowErrorRow,
    Totals,
)
from hookdrop.store.statuses import AlertStatus, FileStatus

log = structlog.get_logger(__name__)

R = TypeVar("R")
Conn = psycopg.Connection[dict[str, Any]]
AlertInput = tuple[str, int, str, str, dict[str, object] | None]  # id, line, user, message, extra

# SQLSTATE classes of a server that cannot serve now: connection exceptions, insufficient
# resources, operator intervention (shutdown, starting up).
_OUTAGE_CLASSES = ("08", "53", "57")
# Errors that one row can cause: a value PostgreSQL cannot hold, or a size it cannot index.
_ROW_FAULTS = (psycopg.DataError, psycopg.errors.ProgramLimitExceeded, UnicodeEncodeError)
_EXCERPT = 120


class Store:
    """A connection to PostgreSQL with hookdrop's queries.

    One per process (or per thread); reconnects after the server comes back.
    """

    def __init__(self, url: str, *, application_name: str = "hookdrop") -> None:
        self.url = url
        self.application_name = application_name
        self._conn: Conn | None = None

    # -- connection -------------------------------------------------------------------------

    def _connect(self) -> Conn:
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
    def transaction(self) -> Iterator[Conn]:
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

    def _rows(self, name: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        with self.transaction() as conn:
            return _execute(conn, name, params)

    def _typed(self, row_type: type[R], name: str, params: dict[str, Any] | None = None) -> list[R]:
        with self.transaction() as conn:
            cur = conn.cursor(row_factory=class_row(row_type))
            cur.execute(queries()[name], params)
            return cur.fetchall() if cur.description else []

    def _first(
        self, row_type: type[R], name: str, params: dict[str, Any] | None = None
    ) -> R | None:
        rows = self._typed(row_type, name, params)
        return rows[0] if rows else None

    def _value(self, name: str, params: dict[str, Any] | None = None) -> Any:
        """The first column of the first row, or None."""
        rows = self._rows(name, params)
        return next(iter(rows[0].values())) if rows else None

    def ping(self) -> None:
        self._rows("ping")

    # -- schema -----------------------------------------------------------------------------

    def migrate(self) -> list[str]:
        """Apply pending migrations, once, whichever process gets there first."""
        applied: list[str] = []
        with self.transaction() as conn:
            _execute(conn, "migration_lock", None)
            _execute(conn, "create_migrations_table", None)
            done = {row["version"] for row in _execute(conn, "applied_migrations", None)}
            for version, name, sql in migrations():
                if version not in done:
                    conn.execute(sql)
                    _execute(conn, "record_migration", {"version": version, "name": name})
                    applied.append(name)
        for name in applied:
            log.info("db.migrated", migration=name)
        return applied

    def check_schema(self) -> None:
        """Refuse to run against a database that has not been migrated."""
        version = None
        if self._value("has_migrations_table"):
            version = self._value("schema_version")
        if version is None or version < migrations()[-1][0]:
            raise ConfigError("DATABASE_URL: schema not up to date; run `hookdrop db migrate`")

    # -- files ------------------------------------------------------------------------------

    def insert_file(
        self,
        *,
        name: str,
        sha: str,
        generation: int,
        size: int,
        layout: dict[str, Any],
        chunk_size: int,
        path: str,
        claimed_by: str,
        identity: FileIdentity | None,
    ) -> int | None:
        """Record a claimed file; None when this content (and generation) is known already."""
        return _optional_int(
            self._value(
                "insert_file",
                {
                    "name": name,
                    "sha": sha,
                    "generation": generation,
                    "size": size,
                    "layout": Jsonb(layout),
                    "chunk_size": chunk_size,
                    "status": FileStatus.CLAIMED,
                    "path": path,
                    "claimed_by": claimed_by,
                    "file_key": identity.key if identity else None,
                    "mtime_ns": identity.mtime_ns if identity else None,
                    "ctime_ns": identity.ctime_ns if identity else None,
                },
            )
        )

    def find_file_by_content(self, sha: str, generation: int) -> FileRef | None:
        return self._first(FileRef, "find_file_by_content", {"sha": sha, "generation": generation})

    def insert_duplicate(
        self,
        *,
        name: str,
        sha: str,
        generation: int,
        size: int,
        chunk_size: int,
        claimed_by: str,
        duplicate_of: int,
        final_path: str,
    ) -> int:
        file_id = self._value(
            "insert_duplicate",
            {
                "name": name,
                "sha": sha,
                "generation": generation,
                "size": size,
                "chunk_size": chunk_size,
                "claimed_by": claimed_by,
                "duplicate_of": duplicate_of,
                "final_path": final_path,
            },
        )
        return int(file_id)

    def insert_unreadable(
        self,
        *,
        name: str,
        sha: str,
        generation: int,
        size: int,
        chunk_size: int,
        claimed_by: str,
        error: str,
        final_path: str | None,
    ) -> int | None:
        """Record a file that cannot be read; None when this key was recorded before."""
        return _optional_int(
            self._value(
                "insert_unreadable",
                {
                    "name": name,
                    "sha": sha,
                    "generation": generation,
                    "size": size,
                    "chunk_size": chunk_size,
                    "claimed_by": claimed_by,
                    "error": error,
                    "final_path": final_path,
                },
            )
        )

    def get_file(self, file_id: int) -> FileRow | None:
        return self._first(FileRow, "get_file", {"id": file_id})

    def list_files(self, limit: int, offset: int = 0) -> list[FileRow]:
        """Newest first."""
        return self._typed(FileRow, "list_files", {"limit": limit, "offset": offset})

    def latest_file_named(self, name: str, under: Path) -> FileRow | None:
        """The newest file of that name claimed into folder ``under``."""
        return self._first(FileRow, "latest_file_named", {"name": name, "under": f"{under}/%"})

    def is_registered(self, processing_path: str) -> bool:
        return self._value("file_by_processing_path", {"path": processing_path}) is not None

    def next_generation(self, sha: str) -> int:
        return int(self._value("next_generation", {"sha": sha}) or 1)

    def active_files(self) -> list[ActiveFile]:
        return self._typed(ActiveFile, "active_files")

    def finish_read(
        self, file_id: int, *, rows: int, invalid: int, alerts: int, error: str | None
    ) -> None:
        """The batcher read the whole file (or gave up on it with ``error``)."""
        self._rows(
            "file_read_complete",
            {"id": file_id, "rows": rows, "invalid": invalid, "alerts": alerts, "error": error},
        )

    def finish_files(self) -> list[FileToMove]:
        """Mark done (or failed) the files whose alerts all reached an end state."""
        return self._typed(FileToMove, "finish_files")

    def files_to_move(self) -> list[FileToMove]:
        return self._typed(FileToMove, "files_to_move")

    def set_final_path(self, file_id: int, final_path: str) -> None:
        self._rows("set_final_path", {"id": file_id, "final_path": final_path})

    def set_paused(self, file_id: int, paused: bool) -> bool:
        """False when the file is not active (nothing to pause or resume)."""
        return bool(self._rows("set_paused", {"id": file_id, "paused": paused}))

    def cancel_file(self, file_id: int) -> bool:
        """False when the file is not active."""
        return bool(self._rows("cancel_file", {"id": file_id}))

    def cancel_leftovers(self) -> int:
        return len(self._rows("cancel_leftovers"))

    def totals(self) -> Totals:
        found = self._first(Totals, "totals")
        return found or Totals(0, 0, 0, 0, 0)

    # -- batcher ----------------------------------------------------------------------------

    def write_chunk(
        self,
        *,
        file_id: int,
        seq: int,
        alerts: Sequence[AlertInput],
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
                (row[1], f"cannot be stored: {reason}", f"{row[2]},{row[3]}"[:_EXCERPT])
                for row, reason in refused
            ]
            if all_errors:
                _execute(
                    conn,
                    "insert_row_errors",
                    {
                        "file_id": file_id,
                        "lines": [e[0] for e in all_errors],
                        "reasons": [_storable(e[1]) for e in all_errors],
                        "excerpts": [_storable(e[2]) for e in all_errors],
                    },
                )
            progress = _execute(
                conn,
                "file_progress",
                {
                    "id": file_id,
                    "rows": rows,
                    "invalid": invalid_before + len(all_errors),
                    "alerts": alerts_before + len(owned),
                },
            )
        status = FileStatus(progress[0]["status"]) if progress else None
        return ChunkWritten(
            [(row["id"], AlertStatus(row["status"])) for row in owned], len(refused), status
        )

    # -- notifier ---------------------------------------------------------------------------

    def claim_alerts(self, ids: Sequence[str], owner: str, lease: float) -> list[AlertToSend]:
        """Lease the alerts among ``ids`` that still need sending to ``owner``."""
        return self._typed(
            AlertToSend, "claim_alerts", {"ids": list(ids), "owner": owner, "lease": lease}
        )

    def renew_leases(self, ids: Sequence[str], owner: str, lease: float) -> None:
        if ids:
            self._rows("renew_leases", {"ids": list(ids), "owner": owner, "lease": lease})

    def release_alerts(self, ids: Sequence[str], owner: str) -> None:
        """Give back leased alerts that were not tried; the lease sweep queues them again."""
        if ids:
            self._rows("release_alerts", {"ids": list(ids), "owner": owner})

    def record_results(self, results: Sequence[Result], owner: str) -> int:
        """Write outcomes in one statement; returns how many were still ours to write."""
        if not results:
            return 0
        written = self._value(
            "record_results",
            {
                "owner": owner,
                "ids": [r.alert_id for r in results],
                "statuses": [str(r.status) for r in results],
                "failed": [r.failed for r in results],
                "throttled": [r.throttled for r in results],
                "codes": [r.code for r in results],
                "errors": [r.error for r in results],
                "latencies": [r.latency_ms for r in results],
                "next_at": [r.next_at for r in results],
            },
        )
        return int(written or 0)

    # -- recovery ---------------------------------------------------------------------------

    def take_due_dlq(self, *, interval: float, limit: int) -> list[AlertRef]:
        """DLQ entries whose time has come, pushed ``interval`` forward (a crash before they
        are queued only delays them)."""
        return self._typed(AlertRef, "take_due_dlq", {"interval": interval, "limit": limit})

    def take_expired_leases(self, *, lease: float, limit: int) -> list[AlertRef]:
        """Alerts whose notifier died holding them, made claimable by anyone."""
        return self._typed(AlertRef, "take_expired_leases", {"lease": lease, "limit": limit})

    def orphaned_pending(self, *, age: float, limit: int) -> list[AlertRef]:
        return self._typed(AlertRef, "orphaned_pending", {"age": age, "limit": limit})

    def open_alert_ids(self, file_id: int) -> list[str]:
        return [row["id"] for row in self._rows("open_alert_ids", {"file_id": file_id})]

    # -- operators --------------------------------------------------------------------------

    def status_counts(self, file_id: int) -> dict[AlertStatus, int]:
        """Alerts of a file by status, delivered ones left out."""
        return {
            AlertStatus(row["status"]): int(row["n"])
            for row in self._rows("status_counts", {"file_id": file_id})
        }

    def row_errors_page(self, file_id: int, limit: int, offset: int) -> list[RowErrorRow]:
        return self._typed(
            RowErrorRow, "row_errors_page", {"file_id": file_id, "limit": limit, "offset": offset}
        )

    def failed_alerts_page(self, file_id: int, limit: int, offset: int) -> list[FailedAlert]:
        return self._typed(
            FailedAlert,
            "failed_alerts_page",
            {"file_id": file_id, "limit": limit, "offset": offset},
        )

    def dlq_page(self, statuses: Sequence[AlertStatus], limit: int, offset: int) -> list[DlqEntry]:
        return self._typed(
            DlqEntry,
            "dlq_page",
            {"statuses": [str(s) for s in statuses], "limit": limit, "offset": offset},
        )

    def dlq_size(self) -> tuple[int, int]:
        """(alerts in the DLQ, dead alerts)."""
        rows = self._rows("dlq_size")
        row = rows[0] if rows else {}
        return int(row.get("dlq") or 0), int(row.get("dead") or 0)

    def replay_alerts(self, statuses: Sequence[AlertStatus], file_id: int | None) -> int:
        """Give the alerts a fresh attempt budget and queue them now; how many."""
        count = self._value(
            "replay_alerts", {"statuses": [str(s) for s in statuses], "file_id": file_id}
        )
        return int(count or 0)


def _upsert_alerts(
    conn: Conn, file_id: int, seq: int, alerts: list[AlertInput]
) -> tuple[list[dict[str, Any]], list[tuple[AlertInput, str]]]:
    """Insert alerts in one statement; if PostgreSQL refuses it, find the rows to blame by
    halving, each try in its own savepoint. Returns (owned rows, refused rows with reasons)."""
    if not alerts:
        return [], []
    try:
        with conn.transaction():
            return _execute(
                conn,
                "upsert_alerts",
                {
                    "file_id": file_id,
                    "seq": seq,
                    "ids": [a[0] for a in alerts],
                    "lines": [a[1] for a in alerts],
                    "users": [a[2] for a in alerts],
                    "messages": [a[3] for a in alerts],
                    "extras": [Jsonb(a[4]) if a[4] else None for a in alerts],
                },
            ), []
    except _ROW_FAULTS as exc:
        if len(alerts) == 1:
            return [], [(alerts[0], _first_line(exc))]
    half = len(alerts) // 2
    owned, refused = _upsert_alerts(conn, file_id, seq, alerts[:half])
    more_owned, more_refused = _upsert_alerts(conn, file_id, seq, alerts[half:])
    return owned + more_owned, refused + more_refused


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _storable(text: str) -> str:
    """Text PostgreSQL accepts: no NUL, no lone surrogates."""
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def _is_outage(exc: psycopg.Error, conn: Conn) -> bool:
    if conn.broken or conn.closed:
        return True
    if exc.sqlstate:
        return exc.sqlstate[:2] in _OUTAGE_CLASSES
    # Raised by the driver itself: lost connections are these; bad values are DataError.
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


def _execute(conn: Conn, name: str, params: dict[str, Any] | None) -> list[dict[str, Any]]:
    # queries() reads our own file, shipped with the package: as trusted as a literal.
    cur = conn.execute(queries()[name], params)
    return cur.fetchall() if cur.description else []


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def as_of(moment: datetime | None) -> str | None:
    """A timestamp as ISO 8601 text (for JSON), or None."""
    return moment.isoformat() if moment is not None else None
