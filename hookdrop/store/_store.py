"""The ledger in PostgreSQL: one method per named query, each returning typed rows.

PostgreSQL is the source of truth for what was read and delivered. Every statement lives in
``sql/queries.sql``; the methods here run them and translate psycopg's errors: a server that
cannot serve now becomes :class:`~hookdrop.errors.StoreUnavailable` (callers pause and retry),
anything else :class:`~hookdrop.errors.StoreError`. Callers never handle driver exceptions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
import structlog
from psycopg.types.json import Jsonb

from hookdrop.errors import SchemaOutdated
from hookdrop.inbox import FileIdentity
from hookdrop.store._base import Conn, execute, first_line, optional_int
from hookdrop.store._delivery import DeliveryQueries
from hookdrop.store._sql import migrations
from hookdrop.store.rows import (
    ActiveFile,
    ChunkWritten,
    DlqEntry,
    FailedAlert,
    FileRef,
    FileRow,
    FileToMove,
    RowErrorRow,
    Totals,
)
from hookdrop.store.statuses import OPEN, AlertStatus, FileStatus

log = structlog.get_logger(__name__)

# id, line, user, message, extra, body (None: the default body)
AlertInput = tuple[str, int, str, str, dict[str, object] | None, bytes | None]

# Errors that one row can cause: a value PostgreSQL cannot hold, or a size it cannot index.
_ROW_FAULTS = (psycopg.DataError, psycopg.errors.ProgramLimitExceeded, UnicodeEncodeError)
_EXCERPT = 120


class Store(DeliveryQueries):
    """A connection to PostgreSQL with hookdrop's queries.

    One per process (or per thread); reconnects after the server comes back.
    """

    # -- schema -----------------------------------------------------------------------------

    def migrate(self) -> list[str]:
        """Apply pending migrations, once, whichever process gets there first."""
        applied: list[str] = []
        with self.transaction() as conn:
            execute(conn, "migration_lock", None)
            execute(conn, "create_migrations_table", None)
            done = {row["version"] for row in execute(conn, "applied_migrations", None)}
            for version, name, sql in migrations():
                if version not in done:
                    conn.execute(sql)
                    execute(conn, "record_migration", {"version": version, "name": name})
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
            raise SchemaOutdated("DATABASE_URL: schema not up to date; run `hookdrop db migrate`")

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
        endpoint: str = "default",
    ) -> int | None:
        """Record a claimed file; None when this content (for this endpoint, and generation)
        is known already."""
        return optional_int(
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
                    "endpoint": endpoint,
                },
            )
        )

    def find_file_by_content(
        self, sha: str, generation: int, endpoint: str = "default"
    ) -> FileRef | None:
        return self._first(
            FileRef,
            "find_file_by_content",
            {"sha": sha, "generation": generation, "endpoint": endpoint},
        )

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
        endpoint: str = "default",
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
                "endpoint": endpoint,
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
        endpoint: str = "default",
    ) -> int | None:
        """Record a file that cannot be read; None when this key was recorded before."""
        return optional_int(
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
                    "endpoint": endpoint,
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
        with self.transaction() as conn:
            # Every claim of the file is visible now, or waits and then finds it cancelled.
            execute(conn, "lock_file", {"id": file_id})
            return bool(execute(conn, "cancel_file", {"id": file_id}))

    def cancel_leftovers(self) -> list[int]:
        """Alerts of cancelled files nobody holds any more end as cancelled; the ids of the
        files whose counts moved."""
        return [int(row["id"]) for row in self._rows("cancel_leftovers")]

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

        ``alerts`` holds (id, line, user_id, message, extra, body) with ids unique within the chunk.
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
                execute(
                    conn,
                    "insert_row_errors",
                    {
                        "file_id": file_id,
                        "lines": [e[0] for e in all_errors],
                        "reasons": [_storable(e[1]) for e in all_errors],
                        "excerpts": [_storable(e[2]) for e in all_errors],
                    },
                )
            progress = execute(
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

    # -- operators --------------------------------------------------------------------------

    def status_counts(self, file_id: int) -> dict[AlertStatus, int]:
        """Alerts of a file by status, delivered ones left out, as of one moment. Those off
        the common path are counted one by one (alerts_waiting), those being sent among the
        ids its chunk leases hold; pending is what the file's counters leave open besides."""
        found: dict[AlertStatus, int] = {}
        with self.transaction() as conn:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            files = execute(conn, "get_file", {"id": file_id})
            if not files:
                return found
            for row in execute(conn, "status_counts", {"file_id": file_id}):
                found[AlertStatus(row["status"])] = int(row["n"])
            sending = sum(
                int(row["n"]) for row in execute(conn, "endpoint_sending", {"file_id": file_id})
            )
        file = FileRow(**files[0])
        still_open = file.alerts_total - file.settled
        if sending:
            found[AlertStatus.SENDING] = sending
        pending = still_open - sum(n for s, n in found.items() if s in OPEN)
        if pending > 0:
            found[AlertStatus.PENDING] = pending
        elif pending < 0:
            log.warning(
                "db.counters_disagree",
                file_id=file_id,
                open_by_counters=still_open,
                open_by_rows=still_open - pending,
            )
        return found

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
    params = {
        "file_id": file_id,
        "seq": seq,
        "ids": [a[0] for a in alerts],
        "lines": [a[1] for a in alerts],
        "users": [a[2] for a in alerts],
        "messages": [a[3] for a in alerts],
        "extras": [Jsonb(a[4]) if a[4] else None for a in alerts],
        "bodies": [a[5] for a in alerts],
    }
    try:
        # New ids, the common case: a plain insert skips the conflict check before each row.
        with conn.transaction():
            execute(conn, "insert_alerts", params)
        return [{"id": a[0], "status": str(AlertStatus.PENDING)} for a in alerts], []
    except psycopg.errors.UniqueViolation:
        # An id seen before (a replayed chunk, a row repeated from an earlier chunk).
        try:
            with conn.transaction():
                return execute(conn, "upsert_alerts", params), []
        except _ROW_FAULTS as exc:
            fault: Exception = exc
    except _ROW_FAULTS as exc:
        fault = exc
    if len(alerts) == 1:
        return [], [(alerts[0], first_line(fault))]
    half = len(alerts) // 2
    owned, refused = _upsert_alerts(conn, file_id, seq, alerts[:half])
    more_owned, more_refused = _upsert_alerts(conn, file_id, seq, alerts[half:])
    return owned + more_owned, refused + more_refused


def _storable(text: str) -> str:
    """Text PostgreSQL accepts: no NUL, no lone surrogates."""
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
