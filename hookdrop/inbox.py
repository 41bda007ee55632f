"""The inbox on disk: which names are ignored, how names are made, how files are opened.

Anyone who can write into the inbox can put anything there: links, pipes, devices, names of
255 bytes, files they keep changing. So a file is opened once, without following links and
without blocking on a pipe, and everything after that (hashing, sniffing, reading) goes
through that descriptor or is checked against the identity it had when it was claimed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

SEPARATOR: Final = "--"
ENDPOINT_MARK: Final = "@"
# An endpoint's name: 1 to 40 letters, digits, '_' and single '-' between them (never at the
# end, never '--'), so where it ends in "<token>@<endpoint>--<name>" is never in doubt.
ENDPOINT_NAME: Final = re.compile(r"(?=.{1,40}$)[A-Za-z0-9_]+(?:-[A-Za-z0-9_]+)*")
_TAGGED: Final = re.compile(
    r"([0-9A-Fa-f]+)(?:@((?:[A-Za-z0-9_]+-)*[A-Za-z0-9_]+))?--(.*)", re.DOTALL
)
DEFAULT_ENDPOINT: Final = "default"
ERROR_SUFFIX: Final = ".error.txt"
SUMMARY_SUFFIX: Final = ".summary.json"
PROCESSING: Final = "processing"
DONE: Final = "done"
FAILED: Final = "failed"
WORK_FOLDERS: Final = (PROCESSING, DONE, FAILED)
# Longest name most file systems allow, in bytes.
NAME_MAX: Final = 255
# Room kept on every name hookdrop makes, so a note beside it still fits.
_NOTE_ROOM: Final = max(len(ERROR_SUFFIX), len(SUMMARY_SUFFIX))
_ELLIPSIS: Final = "~"
IGNORED_SUFFIXES: Final = (
    ".part",
    ".partial",
    ".tmp",
    ".temp",
    ".filepart",
    ".crdownload",
    ".swp",
    ".lock",
    "~",
)
_OPEN_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


# The notes hookdrop writes beside finished files: never read, even if moved back in with them.
NOTE_SUFFIXES: Final = (ERROR_SUFFIX, SUMMARY_SUFFIX)


def is_ignored(name: str) -> bool:
    """Hidden files, the temp names of common transfer tools and hookdrop's own notes are
    never read."""
    lowered = name.lower()
    return name.startswith(".") or lowered.endswith(IGNORED_SUFFIXES + NOTE_SUFFIXES)


def safe_name(name: str) -> str:
    """``name`` as valid UTF-8: undecodable bytes of the file system name become ``\\xNN``."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def disk_name(tag: str, name: str) -> str:
    """``<tag>--<name>``, shortened in the middle so that it and a note beside it fit.

    The original name is kept in PostgreSQL; this one only has to be unique (``tag``), fit the
    file system's limit, and still show the start of the name and its extensions.
    """
    head = f"{tag}{SEPARATOR}"
    room = NAME_MAX - _NOTE_ROOM - len(head.encode())
    if len(name.encode("utf-8", "surrogatepass")) <= room:
        return head + name
    suffix = "".join(Path(name).suffixes[-2:])
    if len(suffix.encode("utf-8", "surrogatepass")) > room // 2:
        suffix = ""
    stem = name[: len(name) - len(suffix)] if suffix else name
    budget = room - len(suffix.encode("utf-8", "surrogatepass")) - len(_ELLIPSIS)
    while len(stem.encode("utf-8", "surrogatepass")) > budget:
        stem = stem[:-1]
    return f"{head}{stem}{_ELLIPSIS}{suffix}"


def processing_tag(token: str, endpoint: str) -> str:
    """The tag of a name in ``processing/``: it carries the endpoint (but ``default``), so a
    claim a crash left half done is finished for the right endpoint."""
    return token if endpoint == DEFAULT_ENDPOINT else f"{token}{ENDPOINT_MARK}{endpoint}"


def endpoint_of(disk: str) -> str:
    """The endpoint a name made with :func:`processing_tag` belongs to."""
    found = _TAGGED.fullmatch(disk)
    return (found.group(2) if found else None) or DEFAULT_ENDPOINT


def original_name(disk: str) -> str:
    """The name part of a name made by :func:`disk_name` (possibly shortened)."""
    found = _TAGGED.fullmatch(disk)
    if found:
        return found.group(3)
    return disk.split(SEPARATOR, 1)[1] if SEPARATOR in disk else disk


def note_path(final: Path, suffix: str = ERROR_SUFFIX) -> Path:
    return final.with_name(final.name + suffix)


_NOTE_CREATE: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def write_note(note: Path, data: bytes) -> None:
    """Put ``data`` at ``note`` whole or not at all, never through a link planted there.

    The bytes go to a hidden temporary file created new beside it (``O_EXCL``, no link
    followed), are synced, then renamed over ``note``: a link at that name is replaced, and a
    reader sees the whole note or none. Raises ``OSError``; the temporary file is removed.
    """
    temp = note.parent / f".note.{secrets.token_hex(8)}.tmp"
    fd = os.open(temp, _NOTE_CREATE, 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, note)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def open_folder(path: Path) -> int:
    """A descriptor of the folder ``path`` (an endpoint's folder in the inbox), opened without
    following a link: files are then claimed relative to it, so a folder swapped for a link
    leads nowhere. Raises NotRegularFile for anything but a folder."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise NotRegularFile(
                f"{safe_name(path.name)} is not a folder (links are not followed)"
            ) from None
        raise


def kind_of(mode: int) -> str:
    """What a non-regular directory entry is, in words."""
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """Which file, and which version of it: compared before a claimed file is read.

    The change time catches what size and mtime cannot: its owner can write the same number
    of bytes and set the mtime back, but any write or ``utimensat`` moves the ctime, and
    nobody can set it back.
    """

    key: str  # "<device>:<inode>"
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileIdentity:
        return cls(f"{st.st_dev}:{st.st_ino}", st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class NotRegularFile(OSError):
    """The path is a link, pipe, socket, device or directory; the message says which."""


class ChangedFile(OSError):
    """The file is not the one that was claimed (replaced, grown or shrunk since)."""


def open_regular(
    path: Path, expect: FileIdentity | None = None, *, dir_fd: int | None = None
) -> tuple[int, os.stat_result]:
    """Open ``path`` for reading and return the descriptor and its stat.

    A final symbolic link is not followed and a pipe does not block; anything that is not a
    regular file raises :class:`NotRegularFile`. With ``expect``, a file whose identity differs
    (another inode, size or modification time) raises :class:`ChangedFile`. With ``dir_fd``,
    ``path.name`` is opened in that folder. The caller closes the descriptor.
    """
    try:
        fd = os.open(path.name if dir_fd is not None else path, _OPEN_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the final component is a symbolic link
            raise NotRegularFile(f"{safe_name(path.name)} is a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(f"{safe_name(path.name)} is {kind_of(st.st_mode)}")
        if expect is not None and FileIdentity.of(st) != expect:
            raise ChangedFile(describe_change(expect, FileIdentity.of(st)))
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def describe_change(expected: FileIdentity, found: FileIdentity) -> str:
    """What differs between the file claimed and the one found, in words."""
    if found.key != expected.key:
        return "another file is in its place"
    if found.size != expected.size:
        return f"{found.size} bytes, claimed with {expected.size}"
    if found.mtime_ns != expected.mtime_ns:
        return "same size, new modification time"
    return "same size, written to or touched since (new change time)"
