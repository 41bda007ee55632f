"""The ledger's queries for delivery: notifiers lease chunks and write outcomes, the
monitor's recovery queues again what is due, lost or deferred."""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from psycopg.rows import class_row

from hookdrop.store._base import Connected, execute
from hookdrop.store._sql import queries
from hookdrop.store.rows import AlertRef, AlertToSend, EndpointCounts, Result
from hookdrop.store.statuses import AlertStatus

log = structlog.get_logger(__name__)


class DeliveryQueries(Connected):
    # -- notifier ---------------------------------------------------------------------------

    def claim_chunk(
        self,
        file_id: int,
        seq: int,
        ids: Sequence[str],
        owner: str,
        lease: float,
        *,
        dlq: bool = False,
    ) -> tuple[list[AlertToSend], int] | None:
        """Lease chunk ``seq`` of a file to ``owner`` and read its alerts among ``ids`` that
        still need sending (DLQ entries too with ``dlq``), with how many ids the lease holds
        (for ``end_lease``); None when another notifier holds the chunk (``ids`` then join its
        lease, so they are seen to when it ends)."""
        unique = list(dict.fromkeys(ids))  # an id given twice is still one alert, sent once
        with self.transaction() as conn:
            leased = execute(
                conn,
                "lease_chunk",
                {"file_id": file_id, "seq": seq, "ids": unique, "owner": owner, "lease": lease},
            )
            if not leased or not leased[0]["ours"]:
                return None
            cur = conn.cursor(row_factory=class_row(AlertToSend))
            given = leased[0]["ids"]
            cur.execute(
                queries()["claim_chunk"],
                {"file_id": file_id, "seq": seq, "ids": given, "dlq": dlq},
            )
            return [row for row in cur.fetchall() if row.file_id == file_id], len(given)

    def chunks_of(self, file_id: int, ids: Sequence[str]) -> list[tuple[int, list[str]]]:
        """``ids`` by the chunk they belong to."""
        rows = self._rows("chunks_of", {"ids": list(ids)})
        return [
            (int(row["chunk_seq"]), list(row["ids"])) for row in rows if row["file_id"] == file_id
        ]

    def renew_lease(self, file_id: int, seq: int, owner: str, lease: float) -> bool:
        """False when the chunk is not ours any more (the lease ran out and was taken)."""
        params = {"file_id": file_id, "seq": seq, "owner": owner, "lease": lease}
        return bool(self._rows("renew_lease", params))

    def end_lease(
        self, file_id: int, seq: int, owner: str, *, given: int = -1, settled: bool = False
    ) -> None:
        """The job is over: the lease goes if the job ``settled`` every alert it read and the
        lease still holds the ``given`` ids; otherwise it ends now, and the lease sweep queues
        what is still open among them."""
        self._rows(
            "end_lease",
            {"file_id": file_id, "seq": seq, "owner": owner, "given": given, "settled": settled},
        )

    def record_results(self, results: Sequence[Result], file_id: int, seq: int, owner: str) -> int:
        """Write outcomes in one statement; returns how many were written (none once the
        chunk's lease is not ``owner``'s). Deliveries at an alert's first try (``first_try``)
        make one row of ``deliveries``; the others update their alert rows."""
        if not results:
            return 0
        sent: list[Result] = []
        rest: list[Result] = []
        for r in results:
            (sent if r.first_try and r.status == AlertStatus.DELIVERED else rest).append(r)
        written = self._value(
            "record_results",
            {
                "owner": owner,
                "file_id": file_id,
                "seq": seq,
                "sent_ids": [r.alert_id for r in sent],
                "sent_codes": [r.code for r in sent],
                "sent_latencies": [r.latency_ms for r in sent],
                "ids": [r.alert_id for r in rest],
                "statuses": [str(r.status) for r in rest],
                "failed": [r.failed for r in rest],
                "throttled": [r.throttled for r in rest],
                "codes": [r.code for r in rest],
                "errors": [r.error for r in rest],
                "latencies": [r.latency_ms for r in rest],
                "next_at": [r.next_at for r in rest],
            },
        )
        return int(written or 0)

    def defer_alerts(self, ids: Sequence[str], file_id: int, seq: int, owner: str) -> None:
        """Leased alerts wait in PostgreSQL until their endpoint is open again."""
        if ids:
            self._rows(
                "defer_alerts", {"ids": list(ids), "file_id": file_id, "seq": seq, "owner": owner}
            )

    # -- recovery ---------------------------------------------------------------------------

    def take_due_dlq(
        self, *, interval: float, limit: int, held: Sequence[str] = ()
    ) -> list[AlertRef]:
        """DLQ entries whose time has come (not of the ``held`` endpoints), pushed
        ``interval`` forward (a crash before they are queued only delays them)."""
        return self._typed(
            AlertRef,
            "take_due_dlq",
            {"interval": interval, "limit": limit, "held": list(held)},
        )

    def take_expired_leases(self, *, limit: int) -> list[AlertRef]:
        """Open alerts of chunks whose lease ran out (the notifier died, or handed them
        back); the leases end."""
        return self._typed(AlertRef, "take_expired_leases", {"limit": limit})

    def statistics_outgrown(self) -> bool:
        """Whether alerts has 4 times the pages PostgreSQL's statistics describe."""
        return bool(self._value("alerts_outgrew_statistics"))

    def refresh_statistics(self) -> bool | None:
        """ANALYZE alerts once it has outgrown what PostgreSQL's statistics say of it (4 times
        the pages), so that plans made while it was small are made again. True when new
        statistics were taken, False when none were needed, None when PostgreSQL skipped it
        (the table is busy with a VACUUM or ANALYZE, or this role does not own it).
        Autovacuum does the same, but only where it runs and on its own schedule."""
        if not self.statistics_outgrown():
            return False
        self._rows("analyze_alerts")
        return None if self.statistics_outgrown() else True

    def orphaned_pending(self, *, age: float, limit: int) -> list[AlertRef]:
        return self._typed(AlertRef, "orphaned_pending", {"age": age, "limit": limit})

    def open_alerts(self, file_id: int) -> list[AlertRef]:
        """A file's alerts still to send (the DLQ and deferred ones left out), chunk by chunk."""
        return self._typed(AlertRef, "open_alerts", {"file_id": file_id})

    def take_deferred(self, endpoint: str, *, limit: int) -> list[AlertRef]:
        """Deferred alerts of ``endpoint``, pending again, to be queued."""
        return self._typed(AlertRef, "take_deferred", {"endpoint": endpoint, "limit": limit})

    def waiting_for_unconfigured(self, configured: Sequence[str]) -> dict[str, int]:
        """Alerts still to go (dead ones left out) of endpoints not in ``configured``, by
        endpoint; none of the configured endpoints' backlog is counted."""
        rows = self._rows("waiting_for_unconfigured", {"configured": list(configured)})
        return {row["endpoint"]: int(row["n"]) for row in rows}

    def endpoint_counts(self) -> dict[str, EndpointCounts]:
        """Per endpoint: files, and alerts by state, as of one moment. How many alerts are not
        at an end state comes from the files' counters; only those waiting to be sent again
        and those being sent are looked up, so the cost does not grow with the pending backlog
        (the status page asks every second); deferred alerts are looked up, so it grows while
        an endpoint is held."""
        found: dict[str, EndpointCounts] = {}
        still_open: dict[str, int] = {}
        with self.transaction() as conn:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            for row in execute(conn, "endpoint_delivered", None):
                found[row["endpoint"]] = EndpointCounts(
                    delivered=int(row["delivered"]),
                    rejected=int(row["rejected"]),
                    dead=int(row["dead"]),
                    active_files=int(row["active_files"]),
                )
                still_open[row["endpoint"]] = int(row["open"])
            for row in execute(conn, "endpoint_waiting", None):
                counts = found.setdefault(row["endpoint"], EndpointCounts())
                counts.open[AlertStatus(row["status"])] = int(row["n"])
            for row in execute(conn, "endpoint_sending", {"file_id": None}):
                counts = found.setdefault(row["endpoint"], EndpointCounts())
                counts.open[AlertStatus.SENDING] = int(row["n"])
        for name, counts in found.items():
            pending = still_open.get(name, 0) - sum(counts.open.values())
            if pending > 0:
                counts.open[AlertStatus.PENDING] = pending
            elif pending < 0:
                # One snapshot: the files' counters and the alert rows move in the same
                # statements, so this is a bug to report, not a race.
                log.warning(
                    "db.counters_disagree",
                    endpoint=name,
                    open_by_counters=still_open.get(name, 0),
                    open_by_rows=sum(counts.open.values()),
                )
            if counts.dead > 0:
                counts.open[AlertStatus.DEAD] = counts.dead
        return found
