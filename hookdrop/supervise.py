"""The one process supervisor: ``hookdrop up``, worker pools (``--processes N``), demo, bench.

Children are ordinary ``hookdrop`` commands with their settings in the environment. A child
that dies is restarted with a growing delay (without holding up the others); the first
SIGTERM/SIGINT is passed on to every child as SIGTERM (a graceful stop), a repeat a second or
more later is passed on as SIGINT (children stop at once), SIGHUP is passed on as it is (the
children re-read their configuration), and children still running after
``stop_timeout`` are killed. Each child is told its parent's pid, so it stops by itself if
the supervisor is killed (see :func:`hookdrop.lifeline.follow_parent`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from hookdrop import sdnotify
from hookdrop.errors import CONFIG_ERROR_EXIT
from hookdrop.lifeline import PARENT_PID_VARIABLE
from hookdrop.retry import compute_backoff
from hookdrop.shutdown import StopFlag, StopSignals

log = structlog.get_logger(__name__)

# Restart delays: 1 s after the first death, doubling up to 30 s.
RESTART_BASE = 1.0
RESTART_CAP = 30.0
# Exit statuses of a child that stopped because it was asked to (by signal, or at once).
_STOPPED = frozenset(
    {0, -signal.SIGTERM, -signal.SIGINT, 128 + signal.SIGTERM, 128 + signal.SIGINT}
)
POLL = 0.2


@dataclass
class Child:
    name: str
    args: list[str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    restart_at: float | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    reloads: bool = True  # passed SIGHUP (re-read the configuration)


class Supervisor:
    def __init__(self, environ: Mapping[str, str], *, stop_timeout: float = 60.0) -> None:
        self.env = sdnotify.child_environ(environ)
        self.env[PARENT_PID_VARIABLE] = str(os.getpid())
        self.children: list[Child] = []
        self.stop_timeout = stop_timeout
        self.log_dir: Path | None = None
        self.stopping = StopFlag()
        self._forced = False
        self._reload = False  # SIGHUP seen, not yet passed on

    def add(self, name: str, args: list[str], *, reloads: bool = True, **extra_env: str) -> Child:
        child = Child(name, args, extra_env=extra_env, reloads=reloads)
        self.children.append(child)
        return child

    def _spawn(self, child: Child) -> None:
        command = [sys.executable, "-m", "hookdrop", *child.args]
        env = {**self.env, **child.extra_env}
        if self.log_dir is None:
            child.process = subprocess.Popen(command, env=env)
        else:
            with (self.log_dir / f"{child.name}.log").open("ab") as out:
                child.process = subprocess.Popen(
                    command, env=env, stdout=out, stderr=subprocess.STDOUT
                )
        child.restart_at = None
        log.info("process.started", name=child.name, pid=child.process.pid)

    def start(self, *, log_dir: Path | None = None) -> None:
        """Start every child; with ``log_dir`` each writes its output to ``<name>.log`` there."""
        self.log_dir = log_dir
        for child in self.children:
            self._spawn(child)

    def signal_all(self, sig: int) -> None:
        for child in self.children:
            if child.process is not None and child.process.poll() is None:
                child.process.send_signal(sig)

    def stop(self) -> None:
        """Ask every child to stop gracefully."""
        self.stopping.set()
        self.signal_all(signal.SIGTERM)

    def force(self, _signum: int = signal.SIGINT) -> None:
        """Ask every child to stop at once (a second stop signal); lock-free for handlers."""
        self._forced = True
        self.stopping.set()

    def wait(self) -> int:
        """Wait for every child to exit (killing stragglers); the first failure's exit code."""
        deadline = time.monotonic() + self.stop_timeout
        forwarded_force = False
        code = 0
        for child in self.children:
            if child.process is None:
                continue
            while True:
                if self._forced and not forwarded_force:
                    forwarded_force = True
                    log.warning("process.force_stop")
                    self.signal_all(signal.SIGINT)
                try:
                    result = child.process.wait(timeout=POLL)
                    break
                except subprocess.TimeoutExpired:
                    if time.monotonic() < deadline:
                        continue
                    log.error("process.kill", name=child.name, reason="did not stop in time")
                    child.process.kill()
                    result = child.process.wait()
                    break
            code = code or (0 if result in _STOPPED else result)
        return code

    def check(self) -> None:
        """Restart children that died while nobody asked them to stop; never sleeps."""
        if self.stopping.is_set():
            return
        now = time.monotonic()
        for child in self.children:
            if child.process is None or child.process.poll() is None:
                continue
            if child.restart_at is None:
                child.restarts += 1
                delay = compute_backoff(
                    child.restarts, base=RESTART_BASE, cap=RESTART_CAP, jitter=False
                )
                child.restart_at = now + delay
                log.error(
                    "process.died",
                    name=child.name,
                    exit_code=child.process.returncode,
                    restart_in=delay,
                )
                if child.process.returncode == CONFIG_ERROR_EXIT:
                    # Typically an endpoints file whose reload was refused: the processes
                    # still running keep the endpoints they had; this one cannot start.
                    log.error(
                        "process.config_refused",
                        name=child.name,
                        hint="the configuration does not load (its error is the line above); "
                        "fix the file: restarts go on with a growing delay",
                    )
            elif now >= child.restart_at:
                self._spawn(child)

    def run(self, *, on_ready: Callable[[], None] | None = None) -> int:
        """Start everything, keep it running until a stop signal, then stop it all."""
        signals = StopSignals(self.stopping, on_force=self.force)
        signals.install()
        signal.signal(signal.SIGHUP, self._reload_requested)
        self.start()
        if on_ready is not None:
            on_ready()
        pings = threading.Thread(target=_watchdog_pings, args=(self.stopping,), daemon=True)
        pings.start()
        while not self.stopping.is_set():
            self.check()
            if self._reload:
                self._reload = False
                log.info("process.reloading")
                for child in self.children:
                    if child.reloads and child.process is not None and child.process.poll() is None:
                        child.process.send_signal(signal.SIGHUP)
            self.stopping.wait(POLL)
        sdnotify.notify("STOPPING=1")
        log.info("process.stopping", signal=signals.signum)
        self.signal_all(signal.SIGTERM)
        return self.wait()

    def _reload_requested(self, _signum: int, _frame: object) -> None:
        """SIGHUP: passed on to the children from the loop (a handler only sets a flag)."""
        self._reload = True


def _watchdog_pings(stop: StopFlag) -> None:
    interval = sdnotify.watchdog_interval()
    if interval is None:
        return
    while not stop.wait(interval):
        sdnotify.notify("WATCHDOG=1")
