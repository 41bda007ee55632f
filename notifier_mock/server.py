"""Running the mock under uvicorn (httptools + uvloop, one process, one event loop)."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from collections.abc import Iterator
from types import FrameType

import uvicorn

from notifier_mock.app import MockApp, create_app
from notifier_mock.config import MockConfig

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _MockServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: MockApp) -> None:
        super().__init__(config)
        self._mock = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Injected hangs (30 s by default) would otherwise hold up the graceful shutdown.
        self._mock.begin_shutdown()
        await super().shutdown(sockets)


def _ignore(signum: int, frame: FrameType | None) -> None:
    """Absorbs the signal uvicorn re-raises after its graceful shutdown."""


@contextlib.contextmanager
def _stop_signals_end_serving() -> Iterator[None]:
    # uvicorn re-raises SIGINT/SIGTERM once it has shut down, which would kill the process
    # (or raise KeyboardInterrupt) after the clean shutdown; we want serve() to just return.
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _ignore) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve(config: MockConfig, *, log_level: str = "warning") -> None:
    """Serve the mock until SIGINT/SIGTERM, then shut down cleanly and flush the audit file.

    Blocking. Logging goes to the ``uvicorn`` loggers (uvicorn's own logging setup is not
    installed, so an embedding CLI keeps its logging configuration).
    """
    app = create_app(config)
    uv_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        http="httptools",
        loop="uvloop",
        interface="asgi3",
        lifespan="on",
        access_log=False,
        log_config=None,
        log_level=log_level,
        server_header=False,
        timeout_graceful_shutdown=5,
        backlog=4096,
    )
    try:
        with _stop_signals_end_serving():
            _MockServer(uv_config, app).run()
    finally:
        app.close()
