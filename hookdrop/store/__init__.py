"""The ledger in PostgreSQL: files, alerts and row errors, with typed rows and statuses."""

from hookdrop.store._sql import migrations
from hookdrop.store._store import AlertInput, Store
from hookdrop.store.rows import (
    ActiveFile,
    AlertRef,
    AlertToSend,
    ChunkWritten,
    DlqEntry,
    EndpointCounts,
    FailedAlert,
    FileRef,
    FileRow,
    FileToMove,
    Result,
    RowErrorRow,
    Totals,
)
from hookdrop.store.statuses import (
    ACTIVE_FILES,
    FINISHED_FILES,
    OPEN,
    REPLAYABLE,
    TERMINAL,
    AlertStatus,
    FileStatus,
)

__all__ = [
    "ACTIVE_FILES",
    "FINISHED_FILES",
    "OPEN",
    "REPLAYABLE",
    "TERMINAL",
    "ActiveFile",
    "AlertInput",
    "AlertRef",
    "AlertStatus",
    "AlertToSend",
    "ChunkWritten",
    "DlqEntry",
    "EndpointCounts",
    "FailedAlert",
    "FileRef",
    "FileRow",
    "FileStatus",
    "FileToMove",
    "Result",
    "RowErrorRow",
    "Store",
    "Totals",
    "migrations",
]
