"""Re-injecting the DLQ: alerts whose retry time has come go back to the notifier queue.

The DLQ lives in PostgreSQL (alerts with status `dlq`), so it survives a Redis loss; nothing is
re-injected while the receiver's back-pressure flag is up.
"""

from __future__ import annotations

import structlog

from daemon._duty import BATCH, Duty

log = structlog.get_logger(__name__)


class DlqReinjection(Duty):
    def reinject_dlq(self) -> int:
        """Send DLQ entries whose time has come, unless the receiver asked us to hold off."""
        if self.redis.exists(self.keys.backpressure):
            return 0
        rows = self.store.take_due_dlq(interval=self.settings.dlq_interval, limit=BATCH)
        self._enqueue_grouped(rows)
        if rows:
            log.info("dlq.reinjected", alerts=len(rows))
        return len(rows)
