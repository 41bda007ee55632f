"""The ledger's queries for delivery: notifiers lease alerts and write outcomes, the
monitor's recovery queues again what is due, lost or deferred."""

from __future__ import annotations

from collections.abc import Sequence

from hookdrop.store._base import Connected
from hookdrop.store.rows import AlertRef, AlertToSend, EndpointCounts, Result
from hookdrop.store.statuses import AlertStatus


class DeliveryQueries(Connected):
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

    def take_expired_leases(self, *, lease: float, limit: int) -> list[AlertRef]:
        """Alerts whose notifier died holding them, made claimable by anyone."""
        return self._typed(AlertRef, "take_expired_leases", {"lease": lease, "limit": limit})

    def orphaned_pending(self, *, age: float, limit: int) -> list[AlertRef]:
        return self._typed(AlertRef, "orphaned_pending", {"age": age, "limit": limit})

    def open_alert_ids(self, file_id: int) -> list[str]:
        return [row["id"] for row in self._rows("open_alert_ids", {"file_id": file_id})]

    def defer_alerts(self, ids: Sequence[str], owner: str) -> None:
        """Leased alerts wait in PostgreSQL until their endpoint is open again."""
        if ids:
            self._rows("defer_alerts", {"ids": list(ids), "owner": owner})

    def take_deferred(self, endpoint: str, *, limit: int) -> list[AlertRef]:
        """Deferred alerts of ``endpoint``, pending again, to be queued."""
        return self._typed(AlertRef, "take_deferred", {"endpoint": endpoint, "limit": limit})

    def endpoint_counts(self) -> dict[str, EndpointCounts]:
        """Per endpoint: files and alerts by state."""
        found: dict[str, EndpointCounts] = {}
        for row in self._rows("endpoint_delivered"):
            found[row["endpoint"]] = EndpointCounts(
                delivered=int(row["delivered"]),
                rejected=int(row["rejected"]),
                dead=int(row["dead"]),
                active_files=int(row["active_files"]),
            )
        for row in self._rows("endpoint_counts"):
            counts = found.setdefault(row["endpoint"], EndpointCounts())
            counts.open[AlertStatus(row["status"])] = int(row["n"])
        return found
