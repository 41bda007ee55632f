"""Finishing files: once all their alerts reached an end state, mark them and move them out.

A file leaves processing/ only after all its results are committed; it gets its summary
beside it (``daemon/summary.py``), and a failed file an error note too.
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog

from daemon._duty import Duty
from daemon.summary import write_summary
from hookdrop.inbox import disk_name
from hookdrop.intake import write_error_note
from hookdrop.store import FileStatus

log = structlog.get_logger(__name__)


class Finisher(Duty):
    def finish_files(self) -> int:
        """Files whose alerts all reached an end state: mark them and move them out."""
        finished = self.store.finish_files()
        for row in finished:
            self.redis.delete(self.keys.checkpoint(row.id))
            log.info("file.finished", file_id=row.id, name=row.name)
        moved = self.move_finished()
        for row in finished:
            if row.id not in moved:  # finished again after a replay: already moved
                self._refresh_summary(row.id)
        return len(finished)

    def move_finished(self) -> set[int]:
        """Move finished files out of processing/, each with its summary (and, if it failed,
        its error note) beside it; the ids of the files moved."""
        moved: set[int] = set()
        for row in self.store.files_to_move():
            source = Path(row.processing_path)
            folder = (
                self.settings.done_dir
                if row.status == FileStatus.DONE
                else self.settings.failed_dir
            )
            final = folder / disk_name(str(row.id), row.name)
            try:
                os.rename(source, final)
            except FileNotFoundError:
                if not final.exists():
                    # Gone from processing/ (removed by hand): say so once, and stop looking.
                    log.error("file.missing", file_id=row.id, path=str(source))
                    self.store.set_final_path(row.id, "")
                    continue
            file = self.store.get_file(row.id)
            if row.status == FileStatus.FAILED:
                write_error_note(final, str(file and file.error))
            if file is not None:
                write_summary(final, file)
            self.store.set_final_path(row.id, str(final))
            moved.add(row.id)
            log.info("file.moved", file_id=row.id, to=str(final))
        return moved
