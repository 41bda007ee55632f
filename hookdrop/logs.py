"""structlog set-up: JSON lines under systemd or in pipes, readable output on a terminal."""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, TextIO

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class _Stream:
    """stderr that survives its reader going away (``hookdrop up 2>&1 | head``), written a
    whole line at a time.

    A closed pipe must not take the process, and its children, down with it: once writing
    fails, log lines are dropped and the process goes on. ``print`` writes a line's text and
    its newline separately; processes sharing one log file (a worker pool and its children)
    then interleave them (``{...}{...}`` then two newlines), and a reader loses both lines. So
    the text is held until its newline and the line goes out in one write.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._broken = False
        self._pending: list[str] = []
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            self._pending.append(text)
            if text.endswith("\n"):
                self._send()
        return len(text)

    def flush(self) -> None:
        with self._lock:
            self._send()

    def _send(self) -> None:
        text, self._pending = "".join(self._pending), []
        if self._broken or not text:
            return
        try:
            self._stream.write(text)
            self._stream.flush()
        except OSError:
            self._broken = True

    def isatty(self) -> bool:
        return self._stream.isatty()


def configure(fmt: str = "auto", level: str = "info", *, process: str | None = None) -> None:
    """Configure structlog (and the stdlib loggers of rq and friends) once per process."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    stream: Any = _Stream(sys.stderr)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if process:
        structlog.contextvars.bind_contextvars(process=process)
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer]
        if use_json
        else [*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )
    # rq logs through the stdlib; keep its chatter at warning so our events stand out.
    logging.basicConfig(
        level=max(_LEVELS[level], logging.WARNING),
        stream=stream,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("rq").setLevel(max(_LEVELS[level], logging.WARNING))
