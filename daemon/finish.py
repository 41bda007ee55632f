"""Finishing files: once all their alerts reached an end state, mark them and move them out.

A file leaves processing/ only after all its results are committed; a failed file gets an
error note beside it.
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog

from daemon._duty import Duty
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
        self.move_finished()
        return len(finished)

    def move_finished(self) -> None:
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
            if row.status == FileStatus.FAILED:
                file = self.store.get_file(row.id)
                write_error_note(final, str(file and file.error))
            self.store.set_final_path(row.id, str(final))
            log.info("file.moved", file_id=row.id, to=str(final))
