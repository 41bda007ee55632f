"""CPU time spent by each part of a running stack, for the benchmark's cost per alert.

Each hookdrop process (and its worker children) is read from ``/proc`` through psutil. PostgreSQL
is charged for the backends that serve the stack's own connections (found by the client port of
every TCP connection a stack process holds to the server), so other users of a shared server do
not count; its background processes (WAL writer, checkpointer, autovacuum) serve everybody and
are left out. Redis is charged for the whole server (``INFO cpu``): the benchmark's numbers are
only right for Redis when the stack is its only user, as with an embedded server.

A process that exits between two samples keeps the CPU time last seen for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import psutil
import redis

from hookdrop.store import backends_of

Sample = dict[str, float]


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


@dataclass
class CpuMeter:
    """Cumulative CPU seconds per component; ``sample()`` often, ``since(start)`` at the end."""

    components: dict[str, int]  # component name -> pid of its top process
    database_url: str
    redis_url: str
    _seen: dict[tuple[str, int], float] = field(default_factory=dict)

    def _processes(self) -> Iterable[tuple[str, psutil.Process]]:
        for name, pid in self.components.items():
            try:
                top = psutil.Process(pid)
                yield name, top
                for child in top.children(recursive=True):
                    yield name, child
            except psutil.NoSuchProcess:
                continue

    def _backends(self, ports: dict[int, str]) -> list[tuple[int, str]]:
        """(backend pid, component it serves) for the given client ports."""
        if not ports:
            return []
        return [(pid, ports[port]) for pid, port in backends_of(self.database_url, ports)]

    def _redis_cpu(self) -> float:
        conn = redis.Redis.from_url(self.redis_url)
        try:
            info = conn.info("cpu")
        finally:
            conn.close()
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def sample(self) -> Sample:
        """Record what every process has used so far; return the totals per component."""
        server_port = urlsplit(self.database_url).port or 5432
        ports: dict[int, str] = {}
        for name, process in self._processes():
            try:
                self._seen[(name, process.pid)] = _cpu(process)
                for conn in process.net_connections(kind="tcp"):
                    if conn.raddr and conn.raddr.port == server_port:
                        ports[conn.laddr.port] = name
            except psutil.Error:
                continue  # gone, or not ours to read: keep what was last seen
        for pid, serves in self._backends(ports):
            try:
                self._seen[(f"postgres for {serves}", pid)] = _cpu(psutil.Process(pid))
            except psutil.Error:
                continue
        totals: Sample = {}
        for (name, _pid), seconds in self._seen.items():
            totals[name] = totals.get(name, 0.0) + seconds
            if name.startswith("postgres for "):
                totals["postgres"] = totals.get("postgres", 0.0) + seconds
        totals["redis"] = self._redis_cpu()
        return totals

    @staticmethod
    def since(start: Sample, end: Sample) -> Sample:
        """CPU seconds per component between two samples."""
        return {name: end[name] - start.get(name, 0.0) for name in end}


def per_item_us(seconds: Sample, items: int) -> dict[str, float]:
    """CPU microseconds per item for each component, and their sum as ``total``.

    ``postgres`` is the sum of the ``postgres for <component>`` parts (the backends serving
    that component's connections), so the parts are not added to the total twice.
    """
    if items <= 0:
        return {}
    out = {name: round(value / items * 1e6, 1) for name, value in sorted(seconds.items())}
    counted = sum(v for name, v in seconds.items() if not name.startswith("postgres for "))
    out["total"] = round(counted / items * 1e6, 1)
    return out
