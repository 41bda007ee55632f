"""The guardian of a state folder's embedded servers: stops them once no command uses them.

Run as ``python -m hookdrop.embedded._guard STATE_DIR READY_FD`` by the first command that uses the
servers (see ``_users``). It waits for the exclusive users lock, which the kernel grants
only once every user has ended, however it ended; then, unless the servers are kept, it stops
them and exits. Meanwhile it keeps in mind which server processes run, so that if the state
folder is deleted under them (a checkout removed while a demo runs) it still stops them.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path

import structlog

from hookdrop.embedded import _process, _users
from hookdrop.errors import HookdropError

log = structlog.get_logger("hookdrop.embedded.guard")

_TRY_EVERY = 0.05
_LOOK_EVERY = 1.0
_STOP_TIMEOUT = 60.0


def main(argv: list[str]) -> int:
    from hookdrop.embedded import server_processes, stop_unused

    state_dir = Path(argv[1])
    ready = int(argv[2])
    with _users.open_lock(state_dir, _users.GUARD_FILE) as guard:
        watching = _users.try_lock(guard, fcntl.LOCK_EX)
        os.close(ready)  # the launcher returns: this guardian, or another one, watches
        if not watching:
            return 0
        known: list[_process.Known] = []
        with _users.open_lock(state_dir, _users.USERS_FILE) as users:
            # The lock is on the open file, so it still works once the folder is deleted.
            looked = 0.0
            while not _users.try_lock(users, fcntl.LOCK_EX):  # every user is gone
                if state_dir.is_dir() and time.monotonic() - looked > _LOOK_EVERY:
                    looked = time.monotonic()
                    try:
                        seen = server_processes(state_dir)
                        if state_dir.is_dir():  # not deleted while looking
                            known = seen
                    except (HookdropError, OSError) as exc:
                        log.warning("embedded.guard.look_failed", error=str(exc))
                time.sleep(_TRY_EVERY)
            if state_dir.is_dir():
                stopped = stop_unused(state_dir)
            else:
                stopped = [str(server.pid) for server in known if server.stop(_STOP_TIMEOUT)]
            if stopped:
                log.info("embedded.guard.stopped", state_dir=str(state_dir), servers=stopped)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
