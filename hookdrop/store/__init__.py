"""The ledger in PostgreSQL: files, alerts and row errors, with typed rows and statuses."""

from hookdrop.store._admin import backends_of, create_schema, drop_schema, serve_ledger
from hookdrop.store._results import INVALID, ResultLine, result_lines
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
    "INVALID",
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
    "ResultLine",
    "RowErrorRow",
    "Store",
    "Totals",
    "backends_of",
    "create_schema",
    "drop_schema",
    "migrations",
    "result_lines",
    "serve_ledger",
]
