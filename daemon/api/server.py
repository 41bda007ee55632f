"""Serving the API from a thread of the monitor process."""

from __future__ import annotations

import socket
import threading
import time
from typing import NamedTuple

import structlog
import uvicorn

from daemon.api.app import create_app
from hookdrop.connections import connect_redis, connect_store
from hookdrop.endpoints import LiveEndpoints
from hookdrop.errors import ConfigError
from hookdrop.settings import Settings

log = structlog.get_logger(__name__)


class ApiServer(NamedTuple):
    thread: threading.Thread
    server: uvicorn.Server

    @property
    def port(self) -> int:
        return int(self.server.servers[0].sockets[0].getsockname()[1])

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        log.info("api.stopped")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        raise ConfigError(
            f"HOOKDROP_API_LISTEN={host}:{port}: cannot listen ({exc.strerror or exc})"
        ) from None


def run_api_in_thread(
    settings: Settings,
    *,
    startup_timeout: float = 10.0,
    endpoints: LiveEndpoints | None = None,
) -> ApiServer:
    """Serve the API on ``settings.api_listen`` from a daemon thread with its own loop.

    The socket is bound here, so a port in use is a ConfigError raised to the caller.
    """
    host, port = settings.api_listen
    conn = connect_redis(settings, name="hookdrop-api")
    sock = _bind(host, port)
    app = create_app(
        settings,
        lambda: connect_store(settings, name="hookdrop-api"),
        conn,
        endpoints=endpoints,
    )
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=1,
        ws_ping_interval=20,
    )
    server = uvicorn.Server(config)

    def serve() -> None:
        try:
            server.run(sockets=[sock])
        finally:
            sock.close()
            conn.close()

    thread = threading.Thread(target=serve, name="hookdrop-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:  # no start-up callback in uvicorn: poll its flag briefly
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise ConfigError(f"HOOKDROP_API_LISTEN={host}:{port}: the API did not start")
        time.sleep(0.01)
    api = ApiServer(thread, server)
    log.info("api.started", url=f"http://{host}:{api.port}/", auth=bool(settings.api_token))
    return api
