"""A child process that stops when its supervisor dies, even by SIGKILL.

The supervisor puts its pid in the child's environment; the child asks the kernel for a
SIGTERM when its parent goes away (Linux ``PR_SET_PDEATHSIG``), which its ordinary graceful
stop then handles. If the parent is already gone by then, the child stops at once.

A graceful stop may wait on servers that died with the parent (embedded ones do), and nobody
is left to force it. So a thread also watches the parent: once it is gone, the child gets
``ORPHAN_GRACE`` seconds to stop by itself and is then ended.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from typing import Final

PARENT_PID_VARIABLE: Final = "HOOKDROP_PARENT_PID"
ORPHAN_GRACE: Final = 10.0
ORPHAN_EXIT_CODE: Final = 70
_POLL: Final = 0.5
_PR_SET_PDEATHSIG: Final = 1


def follow_parent(environ: Mapping[str, str], *, grace: float = ORPHAN_GRACE) -> None:
    """Stop with the parent named in the environment (no-op when none is named)."""
    raw = environ.get(PARENT_PID_VARIABLE, "")
    if not raw.isdigit():
        return
    parent = int(raw)
    signalled = _ask_kernel()
    if os.getppid() != parent:
        # The parent died before the request was made: nobody would send the signal.
        os.kill(os.getpid(), signal.SIGTERM)
    watcher = threading.Thread(
        target=_end_when_orphaned,
        args=(parent, grace, not signalled),
        name="lifeline",
        daemon=True,
    )
    watcher.start()


def _ask_kernel() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _end_when_orphaned(parent: int, grace: float, send_stop: bool) -> None:
    while os.getppid() == parent:
        time.sleep(_POLL)
    if send_stop:  # no kernel signal on this system: ask for the graceful stop here
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace)
    sys.stderr.write(f"hookdrop: parent {parent} is gone and this process did not stop; ending\n")
    sys.stderr.flush()
    os._exit(ORPHAN_EXIT_CODE)
