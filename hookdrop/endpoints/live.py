"""The endpoints a running process uses, re-read from the file on SIGHUP.

The signal handler only sets a flag (it may run while the main thread holds a lock); the
file is read the next time a caller asks for the endpoints, outside the handler. A new file
that does not load is refused with one line (``config.refused``) and the running endpoints
stay; work in flight is unaffected either way (a job uses the endpoint it started with).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Mapping
from types import FrameType

import structlog

from hookdrop.endpoints.config import Endpoints, load_endpoints
from hookdrop.errors import ConfigError
from hookdrop.settings import Settings

log = structlog.get_logger(__name__)


class LiveEndpoints:
    """The current endpoints; :meth:`request_reload` (signal-safe) makes the next read
    load the file again."""

    def __init__(self, settings: Settings, environ: Mapping[str, str]) -> None:
        self.settings = settings
        self.environ = dict(environ)
        self._current = load_endpoints(settings, self.environ)
        self._wanted = False
        self._lock = threading.Lock()
        self.generation = 0  # how many reloads took effect

    def request_reload(self) -> None:
        """Safe in a signal handler: sets a flag."""
        self._wanted = True

    def install_sighup(self) -> None:
        def handler(_signum: int, _frame: FrameType | None) -> None:
            self.request_reload()

        signal.signal(signal.SIGHUP, handler)

    @property
    def current(self) -> Endpoints:
        if self._wanted:
            self.reload()
        return self._current

    def reload(self) -> bool:
        """Read the file again; False (and the old endpoints kept) when it does not load."""
        with self._lock:
            self._wanted = False
            try:
                fresh = load_endpoints(self.settings, self.environ)
            except ConfigError as exc:
                log.error("config.refused", error=str(exc), kept=self._current.names)
                return False
            self._current = fresh
            self.generation += 1
        log.info("config.reloaded", endpoints=fresh.names)
        return True
