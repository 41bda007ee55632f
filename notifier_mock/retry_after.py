"""The ``Retry-After`` value of a 429, in the configured mode."""

from __future__ import annotations

import math
from email.utils import formatdate


def _ceil(value: float) -> int:
    # Float noise like 2.0000000000000004 must not push the answer a whole second later.
    return math.ceil(round(value, 6))


def retry_after(mode: str, wait_s: float, wall_now: float) -> str | None:
    """Header value telling a client to come back in ``wait_s`` seconds, or None for no header.

    ``"seconds"``: whole seconds, rounded up, at least 1. ``"date"``: the IMF-fixdate (RFC 9110)
    of ``wall_now + wait_s`` rounded up to the next whole second. ``"none"``: no header.
    """
    if mode == "seconds":
        return str(max(1, _ceil(wait_s)))
    if mode == "date":
        return formatdate(_ceil(wall_now + wait_s), usegmt=True)
    if mode == "none":
        return None
    raise ValueError(f"unknown retry_after_mode {mode!r}")
