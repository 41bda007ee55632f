"""A small process supervisor for ``hookdrop up`` and ``hookdrop demo``.

Children are ordinary ``hookdrop`` commands with the settings passed in their environment.
A child that dies is restarted with backoff; the first SIGTERM/SIGINT is forwarded to every
child (graceful stop), a second one kills them.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import structlog

from hookdrop import sdnotify
from hookdrop.settings import Settings

log = structlog.get_logger(__name__)


@dataclass
class Child:
    name: str
    args: list[str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    backoff: float = 0.5
    extra_env: dict[str, str] = field(default_factory=dict)


class Supervisor:
    def __init__(self, settings: Settings, environ: Mapping[str, str],
                 *, stop_timeout: float = 60.0) -> None:
        self.env = sdnotify.child_environ({**environ, **settings.to_environ()})
        self.children: list[Child] = []
        self.signals = 0
        self.stop_timeout = stop_timeout
        self.log_dir: Path | None = None

    def add(self, name: str, args: list[str], **extra_env: str) -> Child:
        child = Child(name, args, extra_env=extra_env)
        self.children.append(child)
        return child

    def _spawn(self, child: Child) -> None:
        command = [sys.executable, "-m", "hookdrop", *child.args]
        env = {**self.env, **child.extra_env}
        if self.log_dir is None:
            child.process = subprocess.Popen(command, env=env)
        else:
            with (self.log_dir / f"{child.name}.log").open("ab") as out:
                child.process = subprocess.Popen(command, env=env, stdout=out,
                                                 stderr=subprocess.STDOUT)
        log.info("process.started", name=child.name, pid=child.process.pid)

    def start(self, *, log_dir: Path | None = None) -> None:
        """Start every child; with ``log_dir`` each writes its output to ``<name>.log`` there."""
        self.log_dir = log_dir
        for child in self.children:
            self._spawn(child)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signals += 1
        self.stop(signal.SIGKILL if self.signals > 1 else signal.Signals(signum))

    def stop(self, sig: int = signal.SIGTERM) -> None:
        for child in self.children:
            if child.process is not None and child.process.poll() is None:
                child.process.send_signal(sig)

    def wait(self) -> int:
        deadline = time.monotonic() + self.stop_timeout
        code = 0
        for child in self.children:
            if child.process is None:
                continue
            try:
                result = child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("process.kill", name=child.name, reason="did not stop in time")
                child.process.kill()
                result = child.process.wait()
            code = code or (0 if result in (0, -signal.SIGTERM, -signal.SIGINT) else result)
        return code

    def check(self) -> None:
        """Restart children that died while nobody asked them to stop."""
        if self.signals:
            return
        for child in self.children:
            if child.process is None or child.process.poll() is None:
                continue
            code = child.process.returncode
            child.restarts += 1
            child.backoff = min(30.0, child.backoff * 2)
            log.error("process.died", name=child.name, exit_code=code,
                      restart_in=child.backoff)
            time.sleep(child.backoff)
            self._spawn(child)

    def run(self) -> int:
        """Start everything, keep it running until a signal, then stop it all."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.start()
        while not self.signals:
            self.check()
            time.sleep(0.2)
        return self.wait()
