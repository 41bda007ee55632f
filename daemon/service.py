"""The monitor process: the Monitor loop, signals (SIGHUP re-reads the endpoints), systemd
notifications (and the HTTP API)."""

from __future__ import annotations

import time

from daemon.api import run_api_in_thread
from daemon.monitor import Monitor
from hookdrop import sdnotify
from hookdrop.connections import connect_redis, connect_store
from hookdrop.endpoints import LiveEndpoints
from hookdrop.settings import Settings, environ_snapshot
from hookdrop.shutdown import StopFlag, StopSignals


def run_monitor(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT: the first stops claiming and ends the loop, a second one (a
    second or more later) stops at once."""
    conn = connect_redis(settings, name="hookdrop-monitor")
    store = connect_store(settings, name="hookdrop-monitor")
    watchdog_every = sdnotify.watchdog_interval()
    last_ping = [0.0]
    stopping = StopFlag()
    signals = StopSignals(stopping)

    def tick() -> None:
        if watchdog_every is not None and time.monotonic() - last_ping[0] >= watchdog_every:
            sdnotify.notify("WATCHDOG=1")
            last_ping[0] = time.monotonic()

    def stopping_now() -> None:
        sdnotify.notify("STOPPING=1")

    endpoints = LiveEndpoints(settings, environ_snapshot())  # a bad file stops the start
    monitor = Monitor(
        settings,
        store,
        conn,
        on_tick=tick,
        stopping=stopping,
        on_stopping=stopping_now,
        endpoints=endpoints,
    )
    signals.install()
    endpoints.install_sighup()
    api = run_api_in_thread(
        settings, endpoints=endpoints
    )  # a port in use stops the start with a ConfigError
    sdnotify.notify("READY=1", f"STATUS=watching {settings.inbox}")
    try:
        monitor.run()
    finally:
        api.stop()
        store.close()
        conn.close()
        stopping.close()
