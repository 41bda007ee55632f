"""Alerts waiting in PostgreSQL go back to the notifier queue: the DLQ once an alert's retry
time has come, deferred alerts once their endpoint takes requests again.

Both live in PostgreSQL (alerts with status `dlq` or `deferred`), so they survive a Redis loss;
nothing is queued for an endpoint whose back-pressure flag is up or whose breaker is open.
"""

from __future__ import annotations

import structlog

from daemon._duty import BATCH, Duty
from hookdrop.endpoints.state import CLOSED, read_state

log = structlog.get_logger(__name__)


class DlqReinjection(Duty):
    def reinject_dlq(self) -> int:
        """Send DLQ entries whose time has come, but not to an endpoint that asked us to hold
        off or whose circuit breaker is open."""
        held = [
            name
            for name in self._names()
            if not read_state(self.redis, self.keys.scoped(name)).accepting
        ]
        rows = self.store.take_due_dlq(interval=self.settings.dlq_interval, limit=BATCH, held=held)
        self._enqueue_grouped(rows, dlq=True)
        if rows:
            log.info("dlq.reinjected", alerts=len(rows))
        return len(rows)

    def requeue_deferred(self) -> int:
        """Deferred alerts of endpoints open again, queued; while a breaker waits for its
        probe, one alert at a time (it is the probe)."""
        count = 0
        for name in self._names():
            state = read_state(self.redis, self.keys.scoped(name))
            if not state.accepting:
                continue
            limit = BATCH if state.breaker == CLOSED else 1
            rows = self.store.take_deferred(name, limit=limit)
            self._enqueue_grouped(rows)
            if rows:
                log.info("alert.deferred_requeued", endpoint=name, alerts=len(rows))
            count += len(rows)
        return count

    def warn_unconfigured(self) -> dict[str, int]:
        """Alerts waiting for an endpoint no longer configured (removed by a reload): said,
        by name, so nobody forgets them; they go out once it is configured again."""
        waiting = self.store.waiting_for_unconfigured(self._names())
        for name, n in sorted(waiting.items()):
            log.warning("endpoint.unconfigured_waiting", endpoint=name, alerts=n)
        return waiting
