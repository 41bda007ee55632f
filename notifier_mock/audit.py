"""Append-only audit file: one ``webhook-id<TAB>userId`` line per accepted request."""

from __future__ import annotations

import asyncio
import os
from typing import TextIO

_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _field(value: str) -> str:
    # A tab or newline inside an id would break the one-line-per-request format.
    if "\t" in value or "\n" in value or "\r" in value or "\\" in value:
        return value.translate(_ESCAPES)
    return value


class AuditLog:
    """Buffers lines in memory and writes them at most ``flush_interval`` seconds later.

    Must be written to from a running event loop (the flush is a ``call_later`` timer).
    """

    def __init__(self, path: str | os.PathLike[str], flush_interval: float = 0.5) -> None:
        self.path = os.fspath(path)
        self._flush_interval = flush_interval
        # surrogateescape round-trips header bytes that are not valid UTF-8.
        self._file: TextIO | None = open(  # noqa: SIM115 - closed by close()
            self.path, "a", encoding="utf-8", errors="surrogateescape"
        )
        self._pending: list[str] = []
        self._timer: asyncio.TimerHandle | None = None

    def write(self, msg_id: str, user: str) -> None:
        """Queue one line; schedules a flush if none is pending."""
        if self._file is None:
            raise ValueError(f"audit file {self.path} is already closed")
        self._pending.append(f"{_field(msg_id)}\t{_field(user)}\n")
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._flush_interval, self.flush)

    def flush(self) -> None:
        """Write queued lines to the file now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._file is None or not self._pending:
            return
        lines, self._pending = self._pending, []
        self._file.write("".join(lines))
        self._file.flush()

    def close(self) -> None:
        """Flush and close; safe to call more than once."""
        if self._file is None:
            return
        self.flush()
        self._file.close()
        self._file = None
