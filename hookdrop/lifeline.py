"""A child process that stops when its supervisor dies, even by SIGKILL.

The supervisor puts its pid in the child's environment; the child asks the kernel for a
SIGTERM when its parent goes away (Linux ``PR_SET_PDEATHSIG``), which its ordinary graceful
stop then handles. If the parent is already gone by then, the child stops at once.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Mapping
from typing import Final

PARENT_PID_VARIABLE: Final = "HOOKDROP_PARENT_PID"
_PR_SET_PDEATHSIG: Final = 1


def follow_parent(environ: Mapping[str, str]) -> None:
    """Stop with the parent named in the environment (no-op when none is named)."""
    raw = environ.get(PARENT_PID_VARIABLE, "")
    if not raw.isdigit() or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return  # not available here: the supervisor's own stop still reaches the child
    if os.getppid() != int(raw):
        # The parent died before the request was made: nobody would send the signal.
        os.kill(os.getpid(), signal.SIGTERM)
