"""Keeping work moving after crashes, Redis loss and failures: the monitor's periodic duties.

Each concern has its module: re-queuing lost work (`sweeps.py`), re-injecting the DLQ
(`dlq.py`), finishing files (`finish.py`). Every duty is idempotent and safe to run from
several monitors at once.
"""

from __future__ import annotations

from daemon.dlq import DlqReinjection
from daemon.finish import Finisher
from daemon.sweeps import Sweeps


class Recovery(Sweeps, DlqReinjection, Finisher):
    """All the monitor's recovery duties on one object (settings, ledger and Redis shared)."""


__all__ = ["Recovery"]
