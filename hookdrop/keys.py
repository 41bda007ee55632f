"""Every Redis key hookdrop uses, in one place.

All keys start with the configured prefix (``HOOKDROP_KEY_PREFIX``, default ``hookdrop``), so
several deployments or test runs can share one Redis. RQ's own keys (``rq:<kind>:<name>...``)
are named after the queues, job ids and worker names below, which all start with the prefix
too: :meth:`Keys.owns` tells a deployment's keys from everyone else's.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "hookdrop"
    # The endpoint the per-endpoint keys below belong to (see :meth:`scoped`).
    endpoint: str = "default"

    def scoped(self, endpoint: str) -> Keys:
        """The same keys, with the per-endpoint ones (rate limit, back-pressure, rate
        controller, outcomes, breaker) of ``endpoint``."""
        return Keys(self.prefix, endpoint)

    @property
    def _ep(self) -> str:
        """``<prefix>`` for the endpoint ``default`` (the names it always had),
        ``<prefix>:ep:<name>`` for the others."""
        return self.prefix if self.endpoint == "default" else f"{self.prefix}:ep:{self.endpoint}"

    # RQ queue names (RQ stores them under rq:queue:<name>).
    @property
    def batcher_queue(self) -> str:
        return f"{self.prefix}-batcher"

    @property
    def notifier_queue(self) -> str:
        return f"{self.prefix}-notifier"

    # RQ job ids and worker names: "<id prefix><32 hex>" and "<id prefix><kind>-<12 hex>".
    # The id prefix is the prefix with '.' as '_' (RQ ids allow letters, digits, '_', '-').
    @property
    def rq_id_prefix(self) -> str:
        return self.prefix.replace(".", "_") + "-"

    def new_job_id(self) -> str:
        return f"{self.rq_id_prefix}{uuid.uuid4().hex}"

    def new_worker_name(self, kind: str) -> str:
        return f"{self.rq_id_prefix}{kind}-{uuid.uuid4().hex[:12]}"

    @property
    def scan_patterns(self) -> tuple[str, ...]:
        """SCAN patterns that find every key of this deployment (and maybe others: filter
        with :meth:`owns`)."""
        return tuple(
            dict.fromkeys(
                (f"{self.prefix}:*", f"rq:*:{self.prefix}-*", f"rq:*:{self.rq_id_prefix}*")
            )
        )

    def owns(self, key: str) -> bool:
        """True for this deployment's keys: its own, and RQ's keys of its queues, jobs and
        workers. Never true for another prefix's keys or RQ's shared sets."""
        return key.startswith(f"{self.prefix}:") or bool(self._rq_key.fullmatch(key))

    @property
    def _rq_key(self) -> re.Pattern[str]:
        ids = re.escape(self.rq_id_prefix)
        queues = "|".join(re.escape(q) for q in (self.batcher_queue, self.notifier_queue))
        return re.compile(
            rf"rq:[a-z_-]+:(?:{queues}|{ids}[0-9a-f]{{32}}"
            rf"|{ids}(?:batcher|notifier)-[0-9a-f]{{12}})(?::.*)?"
        )

    # Set once when this Redis first serves hookdrop; its absence means Redis lost its data.
    @property
    def epoch(self) -> str:
        return f"{self.prefix}:epoch"

    # Batcher checkpoint of one file: hash {offset, line, records, seq, alerts, invalid}.
    def checkpoint(self, file_id: int) -> str:
        return f"{self.prefix}:ckpt:{file_id}"

    # Per endpoint (see _ep): back-pressure flag: exists while every notifier must hold off
    # its endpoint (429 seen); TTL = pause.
    @property
    def backpressure(self) -> str:
        return f"{self._ep}:backpressure"

    # Per endpoint: global rate limiter tokens: hash {tat (GCRA), granted (running total),
    # first (when the first token was granted)}.
    @property
    def ratelimit(self) -> str:
        return f"{self._ep}:rl"

    # Per endpoint: adaptive rate controller: hash of workers.adaptive.RateState fields plus
    # version.
    @property
    def ratecontrol(self) -> str:
        return f"{self._ep}:rl:ctl"

    # Per endpoint: per-second counters of accepted / throttled requests: hash field =
    # "<unix second>:ok|throttled|granted".
    @property
    def outcomes(self) -> str:
        return f"{self._ep}:rl:outcomes"

    # Per endpoint: circuit breaker: hash {state (closed|open|probing), fails (consecutive
    # failures), opened (unix s), probe_at (unix s), interval (s), error (last one)}.
    @property
    def breaker(self) -> str:
        return f"{self._ep}:breaker"

    # A file paused by the operator ("1", no TTL, until resumed) or cancelled ("cancelled",
    # kept 7 days): running notifier jobs hand its alerts back.
    def paused(self, file_id: int) -> str:
        return f"{self.prefix}:paused:{file_id}"

    # Short-lived locks for periodic monitor duties, so one monitor of many does each round.
    def lock(self, name: str) -> str:
        return f"{self.prefix}:lock:{name}"

    # Delivery latency histogram: hash of per-bucket counts "le:<ms>", "sum_ms", "count".
    @property
    def latency(self) -> str:
        return f"{self.prefix}:latency"

    # Lock held by the one batcher reading a file (value = its token; TTL renewed while reading).
    def reading(self, file_id: int) -> str:
        return f"{self.prefix}:reading:{file_id}"

    # Set when a read job is queued, cleared when a batcher starts it: avoids piling up jobs.
    def read_queued(self, file_id: int) -> str:
        return f"{self.prefix}:read-queued:{file_id}"

    # A claim in progress of a file in processing/ (value: the monitor; TTL renewed while it
    # is hashed), so orphan adoption leaves it alone however long the hashing takes.
    def claiming(self, processing_name: str) -> str:
        return f"{self.prefix}:claiming:{processing_name}"
