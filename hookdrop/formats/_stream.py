"""Byte streams under the readers: plain or gzip, bounded line reads, cheap blank skipping.

Memory stays bounded whatever the file: lines are read with ``readline(limit)``, the rest of an
over-long line is skipped in fixed steps, and runs of blank lines are consumed a buffer at a
time instead of line by line (a gzip of newlines can expand to gigabytes).
"""

from __future__ import annotations

import codecs
import gzip
import io
import os
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Final, Protocol

from hookdrop.errors import UnreadableFile

#: A path (opened without following a link), a descriptor or an open binary file; either
#: way it is read from its start through a descriptor of its own.
Source = Path | int | BinaryIO
#: Called with the bytes consumed so far, at least every PROGRESS_EVERY bytes.
ProgressCallback = Callable[[int], None]

PROGRESS_EVERY: Final = 4 << 20
#: Longest line followed to its end; no record is this long (see DEFAULT_MAX_RECORD_BYTES).
MAX_LINE_BYTES: Final = 64 << 20
BOM: Final = codecs.BOM_UTF8
COMPRESSION_ERRORS: Final = (EOFError, gzip.BadGzipFile, zlib.error)
_READ_BUFFER: Final = 1 << 20
_SKIP_CHUNK: Final = 64 * 1024
_INFLATE_STEP: Final = 64 * 1024
_GZIP_MAGIC: Final = b"\x1f\x8b"
_BLANK: Final = b" \t\r\n\f\v"
#: Blank lines read one by one before the rest of a run is skipped in bulk.
BLANK_RUN: Final = 64
_EXCERPT_CHARS: Final = 120
_EXCERPT_BYTES: Final = 4 * _EXCERPT_CHARS  # a UTF-8 character is at most 4 bytes


class ByteStream(Protocol):
    def readline(self, size: int = -1, /) -> bytes: ...
    def read(self, size: int = -1, /) -> bytes: ...
    def peek(self, size: int = 0, /) -> bytes: ...
    def seek(self, offset: int, /) -> int: ...


class Meter:
    """Calls ``callback(offset)`` each time reading passes another PROGRESS_EVERY bytes."""

    __slots__ = ("_callback", "next_at")

    def __init__(self, callback: ProgressCallback | None, offset: int = 0) -> None:
        self._callback = callback
        self.next_at = offset + PROGRESS_EVERY if callback is not None else 1 << 62

    def tick(self, offset: int) -> None:
        if offset >= self.next_at and self._callback is not None:
            self.next_at = offset + PROGRESS_EVERY
            self._callback(offset)


def _own_fd(source: Source) -> int:
    if isinstance(source, Path):
        return os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    if isinstance(source, int):
        return os.dup(source)
    return os.dup(source.fileno())


def is_gzip(fd: int) -> bool:
    return os.pread(fd, 2, 0) == _GZIP_MAGIC


class Stream(io.BufferedReader):
    """A buffered byte stream that knows whether it inflates a gzip (and so cannot seek)."""

    compressed: bool = False


class _Inflated(io.RawIOBase):
    """A gzip stream as a raw stream: each read inflates what one step gives.

    ``GzipFile.read(n)`` keeps going until it has ``n`` bytes, so a truncated stream would
    lose the data before the cut inside a large buffer; ``read1`` returns it first.
    """

    def __init__(self, unzipped: gzip.GzipFile) -> None:
        self._unzipped = unzipped

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        # A small step: data inflated before a corrupt spot comes out before the error does.
        data = self._unzipped.read1(min(len(buffer), _INFLATE_STEP))
        buffer[: len(data)] = data
        return len(data)


@contextmanager
def open_stream(source: Source, compressed: bool | None = None) -> Iterator[tuple[Stream, bool]]:
    """The decompressed bytes of ``source`` from its start, and whether it was gzip.

    A path is opened without following a final symbolic link; an open file is read through
    a duplicate of its descriptor (the caller keeps its own). The stream has a large buffer,
    so ``peek`` shows up to a megabyte at a time.
    """
    fd = _own_fd(source)
    raw = io.FileIO(fd, "rb", closefd=True)
    try:
        if compressed is None:
            compressed = is_gzip(fd)
        raw.seek(0)
        if compressed:
            with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
                stream = Stream(_Inflated(unzipped), _READ_BUFFER)
                stream.compressed = True
                yield stream, True
        else:
            yield Stream(raw, _READ_BUFFER), False
    finally:
        raw.close()


def begin(stream: ByteStream, start_offset: int | None, meter: Meter) -> int:
    """Move to where reading starts (after a BOM, or at a resume offset); return that offset."""
    if start_offset is None:
        if stream.peek(len(BOM))[: len(BOM)] == BOM:
            stream.read(len(BOM))
            return len(BOM)
        return 0
    if getattr(stream, "compressed", False):
        # A gzip stream cannot seek without decompressing: read forward in large steps.
        done = 0
        while done < start_offset:
            chunk = stream.read(min(start_offset - done, _READ_BUFFER))
            if not chunk:
                break  # shorter than before: nothing left to read
            done += len(chunk)
            meter.tick(done)
    else:
        stream.seek(start_offset)
    return start_offset


def skip_line(stream: ByteStream, offset: int, meter: Meter) -> int:
    """Read to just after the next newline (or the end) in bounded steps; return bytes read.

    A line longer than MAX_LINE_BYTES (a hole in a sparse file, a stream of one character) is
    not followed to its end: UnreadableFile, and the rest of the file is not read.
    """
    skipped = 0
    while True:
        chunk = stream.readline(_SKIP_CHUNK)
        skipped += len(chunk)
        meter.tick(offset + skipped)
        if not chunk or chunk.endswith(b"\n"):
            return skipped
        if skipped > MAX_LINE_BYTES:
            raise UnreadableFile(
                f"a line longer than {MAX_LINE_BYTES >> 20} MiB at byte "
                f"{offset:,}; the rest of the file was not read"
            )


def _first_content(buf: bytes) -> int:
    """Index of the first byte of ``buf`` that is not blank, or ``len(buf)``.

    Looks at a small window first and widens it, so the cost follows the blank run's length.
    """
    start, window = 0, 4096
    while start < len(buf):
        part = buf[start : start + window]
        rest = part.translate(None, _BLANK)
        if rest:
            return start + part.find(rest[:1])
        start += len(part)
        window = min(window * 16, _READ_BUFFER)
    return len(buf)


def skip_blank_lines(
    stream: ByteStream, offset: int, stop_at: int | None, meter: Meter
) -> tuple[int, int]:
    """Consume whole blank lines from here; return (bytes, lines) consumed.

    Stops before the first line with content, at a partial line at the end of the buffer, or
    just after the first blank line that ends at or past ``stop_at`` (an absolute offset), so
    the places where a caller can stop do not depend on how the stream is buffered. Each call
    copies the stream's buffer: callers use it for long runs, not for a stray blank line.
    """
    consumed = lines = 0
    while True:
        buf = stream.peek(_READ_BUFFER)
        if not buf:
            break
        content_at = _first_content(buf)
        end = buf.rfind(b"\n", 0, content_at) + 1
        reached = False
        if stop_at is not None and end > 0:
            limit = stop_at - (offset + consumed)
            newline = buf.find(b"\n", max(0, limit - 1), end)
            if newline != -1:
                end, reached = newline + 1, True
        if end == 0:
            break
        stream.read(end)
        consumed += end
        lines += buf.count(b"\n", 0, end)
        meter.tick(offset + consumed)
        if reached or content_at < len(buf) or end < len(buf):
            break
    return consumed, lines


def stream_failure(exc: BaseException, after_line: int) -> UnreadableFile:
    if isinstance(exc, EOFError):
        return UnreadableFile(
            f"compressed stream ends early (truncated .gz) after line {after_line}"
        )
    return UnreadableFile(f"compressed stream is corrupt after line {after_line} ({exc})")


def excerpt(raw: bytes) -> str:
    """The start of a raw record as text that any store can hold (no NUL, no surrogates)."""
    text = raw[:_EXCERPT_BYTES].decode("utf-8", "replace").rstrip("\r\n")[:_EXCERPT_CHARS]
    return text.replace("\x00", "\ufffd")
