"""The states of files and alerts in the ledger, as the database stores them."""

from __future__ import annotations

from enum import StrEnum


class FileStatus(StrEnum):
    """claimed -> reading -> delivering -> done; or failed, duplicate, cancelled."""

    CLAIMED = "claimed"
    READING = "reading"
    DELIVERING = "delivering"
    DONE = "done"
    FAILED = "failed"
    DUPLICATE = "duplicate"
    CANCELLED = "cancelled"


class AlertStatus(StrEnum):
    """pending -> sending -> delivered; or retrying, throttled, dlq, dead, rejected, cancelled."""

    PENDING = "pending"
    SENDING = "sending"  # leased to a notifier
    RETRYING = "retrying"  # failed, tried again within the same job
    THROTTLED = "throttled"  # answered 429, tried again after the pause
    DLQ = "dlq"  # failed its tries in one job; re-injected later
    DEAD = "dead"  # attempt budget spent; waits for a manual replay
    DELIVERED = "delivered"
    REJECTED = "rejected"  # a 4xx other than 429: not tried again
    CANCELLED = "cancelled"
    DEFERRED = "deferred"  # its endpoint is paused or its breaker open: waits, no budget spent


#: Files being read or delivered.
ACTIVE_FILES = frozenset({FileStatus.CLAIMED, FileStatus.READING, FileStatus.DELIVERING})
#: Files nothing more will happen to.
FINISHED_FILES = frozenset(
    {FileStatus.DONE, FileStatus.FAILED, FileStatus.CANCELLED, FileStatus.DUPLICATE}
)
#: Alert states in which nothing more will happen without an operator.
TERMINAL = frozenset(
    {AlertStatus.DELIVERED, AlertStatus.REJECTED, AlertStatus.DEAD, AlertStatus.CANCELLED}
)
#: Alert states still on their way (counted per file by the status view).
OPEN = (
    AlertStatus.PENDING,
    AlertStatus.SENDING,
    AlertStatus.RETRYING,
    AlertStatus.THROTTLED,
    AlertStatus.DLQ,
    AlertStatus.DEFERRED,
)
#: Alert states an operator can replay.
REPLAYABLE = frozenset({AlertStatus.DLQ, AlertStatus.DEAD, AlertStatus.REJECTED})
