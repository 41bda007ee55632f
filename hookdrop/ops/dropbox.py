"""Dropping a file into the inbox atomically: the API's upload, ``hookdrop send``, resend.

A hidden ``.name.XXXX.part`` temp file (which the monitor ignores), fsync, then one link or
rename to the final name: readers never see a partial file under the final name, and an
existing file of that name is never overwritten.
"""

from __future__ import annotations

import os
import secrets
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import structlog

from hookdrop.inbox import is_ignored
from hookdrop.ops.errors import BadRequest, Conflict, TooLarge

log = structlog.get_logger(__name__)

MAX_NAME_BYTES = 200  # leaves room for the prefixes added in processing/ and done/
COPY_BLOCK = 1 << 20


def check_name(name: str) -> str:
    """A name a file may have in the inbox, or BadRequest saying why not."""
    if not name or name in {".", ".."}:
        raise BadRequest("a file name is required")
    if "/" in name or "\\" in name or os.sep in name:
        raise BadRequest(f"{name!r}: a file name, not a path (no '/' or '\\')")
    if ".." in name:
        raise BadRequest(f"{name!r}: '..' is not allowed in a name")
    if any(unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Zl", "Zp"} for ch in name):
        raise BadRequest(f"{name!r}: control characters are not allowed in a name")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise BadRequest(f"name too long (at most {MAX_NAME_BYTES} bytes)")
    if is_ignored(name):
        raise BadRequest(
            f"{name!r}: hidden and temporary names (.*, *.part, *.tmp, ...) are "
            "ignored by the monitor; choose another name"
        )
    return name


class InboxWriter:
    """Writes a file into a folder atomically: a hidden ``.name.XXXX.part`` temp file, fsync,
    then one link/rename to the final name. Readers never see a partial file under the final
    name, and an existing file of that name is never overwritten."""

    def __init__(
        self, folder: Path, name: str, *, limit: int | None = None, check: bool = True
    ) -> None:
        self.folder = folder
        self.name = check_name(name) if check else name
        self.limit = limit
        self.size = 0
        while True:
            temp = folder / f".{self.name}.{secrets.token_hex(4)}.part"
            try:
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
                break
            except FileExistsError:
                continue
        self.temp = temp
        self._file: BinaryIO | None = os.fdopen(fd, "wb")

    def __enter__(self) -> InboxWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.abort()

    def write(self, data: bytes) -> None:
        if self._file is None:
            raise ValueError("writer already closed")
        if self.limit is not None and self.size + len(data) > self.limit:
            raise TooLarge(f"{self.name}: larger than the {self.limit} bytes allowed")
        self._file.write(data)
        self.size += len(data)

    def _close_synced(self) -> None:
        if self._file is None:
            raise ValueError("writer already closed")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None

    def commit(self) -> Path:
        """Publish under the final name; :class:`Conflict` if that name is taken."""
        return self.commit_to(self.folder / self.name)

    def commit_to(self, final: Path) -> Path:
        self._close_synced()
        try:
            os.link(self.temp, final)  # atomic, and never replaces an existing file
        except FileExistsError:
            raise Conflict(
                f"{final.name} already exists in {final.parent.name}/; choose another name"
            ) from None
        except OSError:  # a filesystem without hard links
            if final.exists():
                raise Conflict(
                    f"{final.name} already exists in {final.parent.name}/; choose another name"
                ) from None
            os.rename(self.temp, final)
        self.temp.unlink(missing_ok=True)
        _fsync_dir(final.parent)
        return final

    def abort(self) -> None:
        """Drop the temp file (no-op after a commit)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self.temp.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def send_chunks(
    chunks: Iterable[bytes], inbox: Path, name: str, *, limit: int | None = None
) -> Path:
    """Drop a stream of bytes into the inbox atomically under ``name``."""
    with InboxWriter(inbox, name, limit=limit) as writer:
        for chunk in chunks:
            writer.write(chunk)
        final = writer.commit()
    log.info("file.sent", name=final.name, size=writer.size)
    return final


def send(path: Path, inbox: Path, name: str | None = None) -> Path:
    """Copy a local file into the inbox atomically (``hookdrop send``); needs no servers."""
    target = check_name(name if name is not None else path.name)
    with path.open("rb") as handle:
        return send_chunks(iter(lambda: handle.read(COPY_BLOCK), b""), inbox, target)
