"""When is a dropped file complete?

Writers give no completion signal (``cp``, ``curl -o``, ``rsync --inplace``), or write a hidden
temp name and rename it (``rsync``), or hard-link then unlink (``sftp``). So: hidden and temp
names are ignored; events are only hints; a file is ready when no process holds it open for
writing (Linux: ``/proc/*/fd`` plus the access mode in ``/proc/*/fdinfo``) and its size and
mtime have been still for the settle time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from hookdrop.inbox import is_ignored


def open_for_writing(paths: Iterable[str], proc: Path = Path("/proc")) -> set[str]:
    """The subset of ``paths`` that some process holds open for writing.

    Processes we may not inspect (other users, without privileges) are skipped: for those the
    settle time is the only guard, as documented for operators.
    """
    wanted = set(paths)
    if not wanted:
        return set()
    found: set[str] = set()
    try:
        pids = [entry.name for entry in os.scandir(proc) if entry.name.isdigit()]
    except OSError:
        return found
    for pid in pids:
        fd_dir = f"{proc}/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # gone, or not ours to look at
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target in wanted and _writable(f"{proc}/{pid}/fdinfo/{fd}"):
                found.add(target)
    return found


def _writable(fdinfo: str) -> bool:
    try:
        with open(fdinfo, encoding="ascii") as handle:
            for line in handle:
                if line.startswith("flags:"):
                    return int(line.split()[1], 8) & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
    except OSError:
        return False
    return False


@dataclass(slots=True)
class _Seen:
    size: int
    mtime_ns: int
    still_since: float


class ReadinessTracker:
    """Follows candidate files until each has settled and nobody writes to it."""

    def __init__(
        self,
        settle_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        writers: Callable[[Iterable[str]], set[str]] = open_for_writing,
    ) -> None:
        self.settle_seconds = settle_seconds
        self.clock = clock
        self.writers = writers
        self._seen: dict[Path, _Seen] = {}

    def hint(self, path: Path) -> None:
        """A create / close / move-in / scan saw this path; start or keep following it."""
        if not is_ignored(path.name):
            self._seen.setdefault(path, _Seen(-1, -1, self.clock()))

    @property
    def pending(self) -> list[Path]:
        return list(self._seen)

    def ready(self) -> list[Path]:
        """Paths that are complete now; they stop being followed."""
        now = self.clock()
        settled: list[Path] = []
        for path, seen in list(self._seen.items()):
            try:
                st = path.lstat()
            except FileNotFoundError:
                del self._seen[path]  # renamed away or deleted before it settled
                continue
            if (st.st_size, st.st_mtime_ns) != (seen.size, seen.mtime_ns):
                self._seen[path] = _Seen(st.st_size, st.st_mtime_ns, now)
                continue
            if now - seen.still_since >= self.settle_seconds:
                settled.append(path)
        if not settled:
            return []
        busy = self.writers(str(p) for p in settled)
        ready = [p for p in settled if str(p) not in busy]
        for path in ready:
            del self._seen[path]
        return ready
