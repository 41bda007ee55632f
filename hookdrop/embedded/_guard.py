"""The guardian of a state folder's embedded servers: stops them once no command uses them.

Run as ``python -m hookdrop.embedded._guard STATE_DIR READY_FD`` by the first command that uses the
servers (see ``_users``). It waits for the exclusive users lock, which the kernel grants
only once every user has ended, however it ended; then, unless the servers are kept, it stops
them and exits.
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path

import structlog

from hookdrop.embedded import _users

log = structlog.get_logger("hookdrop.embedded.guard")


def main(argv: list[str]) -> int:
    from hookdrop.embedded import stop_unused

    state_dir = Path(argv[1])
    ready = int(argv[2])
    with _users.open_lock(state_dir, _users.GUARD_FILE) as guard:
        watching = _users.try_lock(guard, fcntl.LOCK_EX)
        os.close(ready)  # the launcher returns: this guardian, or another one, watches
        if not watching:
            return 0
        with _users.open_lock(state_dir, _users.USERS_FILE) as users:
            fcntl.flock(users.fileno(), fcntl.LOCK_EX)  # every user is gone
            stopped = stop_unused(state_dir)
            if stopped:
                log.info("embedded.guard.stopped", state_dir=str(state_dir), servers=stopped)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
