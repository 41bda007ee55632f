"""What every monitor duty works with: settings, the endpoints, the ledger and Redis."""

from __future__ import annotations

from collections import defaultdict

import redis

from hookdrop.endpoints import DEFAULT, LiveEndpoints
from hookdrop.queues import enqueue_deliveries
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

    def _enqueue_grouped(self, rows: list[AlertRef]) -> None:
        by_file: dict[int, list[str]] = defaultdict(list)
        for row in rows:
            by_file[row.file_id].append(row.id)
        for file_id, ids in by_file.items():
            enqueue_deliveries(self.redis, self.keys, file_id, ids, self.settings.chunk_size)
