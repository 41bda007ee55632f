"""Typed rows the ledger returns, one class per shape of answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hookdrop.inbox import FileIdentity
from hookdrop.store.statuses import AlertStatus, FileStatus


@dataclass(frozen=True, slots=True)
class FileRow:
    """A whole ``files`` row (see migrations for what each column means)."""

    id: int
    name: str
    content_sha256: str
    generation: int
    size_bytes: int
    layout: dict[str, Any] | None
    chunk_size: int
    status: FileStatus
    duplicate_of: int | None
    processing_path: str | None
    final_path: str | None
    claimed_by: str | None
    error: str | None
    rows_total: int
    rows_invalid: int
    alerts_total: int
    read_complete: bool
    delivered: int
    rejected: int
    dead: int
    cancelled: int
    paused: bool
    created_at: datetime
    read_done_at: datetime | None
    first_delivery_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    file_key: str | None
    mtime_ns: int | None
    ctime_ns: int | None
    endpoint: str

    @property
    def identity(self) -> FileIdentity | None:
        """What the claimed file was (None for files claimed before identities were kept)."""
        if self.file_key is None or self.mtime_ns is None or self.ctime_ns is None:
            return None
        return FileIdentity(self.file_key, self.size_bytes, self.mtime_ns, self.ctime_ns)

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", FileStatus(self.status))

    @property
    def settled(self) -> int:
        """Alerts that reached an end state."""
        return self.delivered + self.rejected + self.dead + self.cancelled


@dataclass(frozen=True, slots=True)
class FileRef:
    id: int
    status: FileStatus
    name: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", FileStatus(self.status))


@dataclass(frozen=True, slots=True)
class ActiveFile:
    id: int
    status: FileStatus
    read_complete: bool
    processing_path: str | None
    paused: bool

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", FileStatus(self.status))


@dataclass(frozen=True, slots=True)
class FileToMove:
    id: int
    name: str
    status: FileStatus
    processing_path: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", FileStatus(self.status))


@dataclass(frozen=True, slots=True)
class AlertRef:
    """An alert to queue: its job delivers one chunk of one file."""

    id: str
    file_id: int
    chunk_seq: int


@dataclass(frozen=True, slots=True)
class AlertToSend:
    """An alert leased to a notifier, with what its webhook carries."""

    id: str
    file_id: int
    user_id: str
    message: str
    extra: dict[str, Any] | None
    attempts: int
    body: bytes | None  # rendered from the endpoint's template; None: the default body
    endpoint: str
    file_name: str
    fresh: bool = False  # never tried: a delivery at its first try goes into deliveries


@dataclass(frozen=True, slots=True)
class RowErrorRow:
    line_no: int
    reason: str
    excerpt: str


@dataclass(frozen=True, slots=True)
class FailedAlert:
    id: str
    line_no: int
    user_id: str
    status: AlertStatus
    attempts: int
    throttled: int
    last_status_code: int | None
    last_error: str | None
    last_attempt_at: datetime | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", AlertStatus(self.status))


@dataclass(frozen=True, slots=True)
class DlqEntry:
    id: str
    file_id: int
    user_id: str
    status: AlertStatus
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", AlertStatus(self.status))


@dataclass(frozen=True, slots=True)
class Totals:
    active: int
    done: int
    failed: int
    delivered: int
    alerts: int


@dataclass(frozen=True, slots=True)
class ChunkWritten:
    """What writing one chunk did."""

    owned: list[tuple[str, AlertStatus]]  # (alert id, status) of the alerts this chunk owns
    refused: int  # rows PostgreSQL could not store, recorded as row errors
    file_status: FileStatus | None  # None: the file is gone


@dataclass(frozen=True, slots=True)
class Result:
    """One delivery outcome to record."""

    alert_id: str
    status: AlertStatus
    failed: int = 0  # 1 when this try counts against the attempt budget
    throttled: int = 0  # 1 when the receiver answered 429
    code: int | None = None
    error: str | None = None
    latency_ms: float | None = None
    next_at: datetime | None = None
    # Delivered at the first try of an alert never tried before (AlertToSend.fresh): written
    # as part of a deliveries row, the alert row left as it is.
    first_try: bool = False


@dataclass(slots=True)
class EndpointCounts:
    """One endpoint's files and alerts, for the operator."""

    delivered: int = 0
    rejected: int = 0
    dead: int = 0
    active_files: int = 0
    open: dict[AlertStatus, int] = field(default_factory=dict)  # alerts by state still open
