"""What every monitor duty works with: settings, the endpoints, the ledger and Redis."""

from __future__ import annotations

from pathlib import Path

import redis

from daemon.summary import write_summary
from hookdrop.endpoints import DEFAULT, LiveEndpoints
from hookdrop.queues import by_chunk, enqueue_deliveries
from hookdrop.settings import Settings
from hookdrop.store import AlertRef, Store

BATCH = 5000


class Duty:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        conn: redis.Redis,
        endpoints: LiveEndpoints | None = None,
    ) -> None:
        self.settings = settings
        self.endpoints = endpoints or LiveEndpoints(settings, {})
        self.keys = settings.keys
        self.store = store
        self.redis = conn

    def _names(self) -> list[str]:
        return sorted({DEFAULT, *self.endpoints.current.names})

    def _refresh_summary(self, file_id: int) -> None:
        """Write a moved file's summary again: its counts changed since."""
        file = self.store.get_file(file_id)
        if file is not None and file.final_path:
            write_summary(Path(file.final_path), file)

    def _enqueue_grouped(self, rows: list[AlertRef], *, dlq: bool = False) -> None:
        """One job per chunk of the alerts ``rows``."""
        grouped = by_chunk(rows)
        for file_id, chunks in grouped.items():
            enqueue_deliveries(self.redis, self.keys, file_id, chunks, dlq=dlq)
