"""What the readers produce: records, row errors, gaps and resume positions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

DEFAULT_MAX_RECORD_BYTES: Final = 1 << 20
MAX_USER_ID_CHARS: Final = 256
MAX_MESSAGE_CHARS: Final = 64 * 1024

#: Header names (compared stripped and lower-cased) that mark the two required columns.
USER_ID_NAMES: Final = frozenset({"user_id", "userid", "user", "user id"})
MESSAGE_NAMES: Final = frozenset({"message", "alertmessage", "alert_message", "alert", "msg"})

NUL_REASON: Final = "contains a NUL character"


@dataclass(frozen=True, slots=True)
class Row:
    """A good record."""

    line: int  # 1-based physical line where the record starts
    user_id: str
    message: str
    extra: dict[str, object] | None  # None when there are no extra fields


@dataclass(frozen=True, slots=True)
class RowError:
    """A record that cannot become an alert, and why."""

    line: int
    reason: str
    excerpt: str  # the raw record's first 120 characters, decoded with errors="replace"


@dataclass(frozen=True, slots=True)
class Gap:
    """A long run of blank lines was skipped; a clean place to checkpoint (no record pending)."""


@dataclass(frozen=True, slots=True)
class Position:
    """Where to resume: just after the last item returned."""

    offset: int  # byte offset in the decompressed stream
    line: int  # physical lines consumed so far
    records: int  # rows + row errors consumed so far (not the header, not blank lines)


@dataclass(frozen=True, slots=True)
class Layout:
    """What sniffing decided; stored with the file and passed back to ``read_rows``."""

    format: str  # "csv" or "jsonl"
    compressed: bool
    header: tuple[str, ...] | None  # CSV header as read; None if headerless or jsonl
    user_col: int | None
    message_col: int | None
    dialect_delimiter: str


Item = Row | RowError | Gap


def field_problem(user: str, message: str) -> str | None:
    """Why a user id and message cannot make an alert, or None when they can."""
    if not user:
        return "empty user id"
    if len(user) > MAX_USER_ID_CHARS:
        return f"absurdly long field: user id longer than {MAX_USER_ID_CHARS} characters"
    if not message or message.isspace():
        return "empty message"
    if len(message) > MAX_MESSAGE_CHARS:
        return f"absurdly long field: message longer than {MAX_MESSAGE_CHARS} characters"
    return None
