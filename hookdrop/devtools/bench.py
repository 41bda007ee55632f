"""``hookdrop bench``: where hookdrop stands against the product's targets.

Every scenario runs the real stack (mock receiver, monitor, batcher, notifiers as separate
processes) on this machine. Figures that depend on the machine are reported as ratios measured
in the same run (hookdrop vs a bare asyncio sender against the same receiver).

Scenarios:
  a  receiver unlimited: deliveries/s end to end, and the ratio to a bare, non-durable sender;
  b  receiver limited to a rate: share of that rate used, share of requests answered 429;
  c  the limit lowered mid-run: seconds until the sending rate is back under it;
  d  a large file: batcher peak RSS and Redis peak memory;
  e  latency from a file being complete to its first webhook.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis

from hookdrop.connections import redis_url
from hookdrop.devtools.baseline import run_bare_send
from hookdrop.devtools.cpu import CpuMeter, per_item_us
from hookdrop.devtools.harness import Stack, with_search_path
from hookdrop.settings import Settings
from hookdrop.store import FileStatus, serve_ledger


@dataclass
class Sampler:
    """Samples the receiver's counters (and optional extras) on a fixed period in a thread."""

    stack: Stack
    period: float = 0.25
    extra: Callable[[], dict[str, float]] | None = None
    samples: list[dict[str, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, name="bench-sampler")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            stats = self.stack.mock_stats()
            if stats is not None:
                row = {
                    "t": time.time(),
                    "received": float(stats["received"]),
                    "accepted": float(stats["accepted"]),
                    "throttled": float(stats["throttled"]),
                }
                if self.extra is not None:
                    row.update(self.extra())
                self.samples.append(row)
            self._stop.wait(self.period)

    def rates(self, key: str = "accepted", window: float = 1.0) -> list[tuple[float, float]]:
        """(time, per-second rate of ``key`` over the trailing ``window``) for each sample."""
        out: list[tuple[float, float]] = []
        start = 0
        for end, row in enumerate(self.samples):
            while row["t"] - self.samples[start]["t"] > window and start < end:
                start += 1
            first = self.samples[start]
            span = row["t"] - first["t"]
            if span > 0:
                out.append((row["t"], (row[key] - first[key]) / span))
        return out


def _stack(settings: Settings, notifiers: int, mock_args: tuple[str, ...] = ()) -> Stack:
    return Stack(settings, notifiers=notifiers, mock_args=mock_args)


def _meter(stack: Stack) -> CpuMeter:
    components = {
        child.name: child.process.pid
        for child in stack.supervisor.children
        if child.process is not None
    }
    return CpuMeter(
        components,
        database_url=stack.admin_url,
        redis_url=redis_url(stack.settings),
    )


def scenario_unlimited(
    settings: Settings, *, rows: int, notifiers: int, bare_requests: int, served: int = 0
) -> tuple[dict[str, Any], Sampler]:
    with _stack(settings, notifiers) as stack:
        if served:
            serve_ledger(with_search_path(stack.admin_url, stack.schema), served)
        meter = _meter(stack)
        mock_pid = meter.components["mock"]
        mock_before, sender_before = _process_cpu(mock_pid), time.process_time()
        bare = run_bare_send(
            f"http://127.0.0.1:{stack.mock_port}/bare", bare_requests, settings.concurrency
        )
        bare_cpu = {
            "sender": time.process_time() - sender_before,
            "mock": _process_cpu(mock_pid) - mock_before,
        }
        stack.mock.reset()
        start = meter.sample()
        every_second = _Every(1.0, meter.sample)
        with Sampler(stack, extra=every_second) as sampler:
            drop = stack.drop(rows)
            file = stack.wait_done(drop.path.name, timeout=rows / 200 + 120)
        used = CpuMeter.since(start, meter.sample())
        stats = stack.mock.stats(per_user=False)
    accepted = [s for s in sampler.samples if s["accepted"] > 0]
    first = accepted[0]["t"] if accepted else drop.complete_at
    last = next(
        (s["t"] for s in sampler.samples if s["accepted"] >= stats["unique"]),
        sampler.samples[-1]["t"],
    )
    ours = stats["unique"] / max(last - first, 1e-6)
    return {
        "rows": rows,
        "served": served,
        "notifiers": notifiers,
        "delivered": stats["unique"],
        "duplicates": stats["duplicates"],
        "missed": file.alerts_total - stats["unique"],
        "deliveries_per_s": round(ours, 1),
        "bare_sender_per_s": round(bare.per_second, 1),
        "ratio_to_bare": round(ours / bare.per_second, 3) if bare.per_second else None,
        # CPU microseconds per delivered alert, per component, and per bare request.
        "cpu_us_per_alert": per_item_us(used, stats["unique"]),
        "bare_cpu_us_per_request": per_item_us(bare_cpu, bare.ok),
    }, sampler


def _process_cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


@dataclass
class _Every:
    """Call ``action`` at most once per ``period`` seconds (the sampler calls far more often)."""

    period: float
    action: Callable[[], object]
    _last: float = 0.0

    def __call__(self) -> dict[str, float]:
        now = time.monotonic()
        if now - self._last >= self.period:
            self._last = now
            self.action()
        return {}


def _steady(
    sampler: Sampler, skip: float, tail: float
) -> tuple[dict[str, float], dict[str, float]]:
    samples = sampler.samples
    start_t = next(s["t"] for s in samples if s["received"] > 0) + skip
    end_t = samples[-1]["t"] - tail
    window = [s for s in samples if start_t <= s["t"] <= end_t]
    if len(window) < 2:
        window = samples[-2:]
    return window[0], window[-1]


@dataclass(frozen=True)
class ReceiverShape:
    """A rate-limited receiver: its token bucket and how its 429s say when to come back."""

    burst_seconds: float = 0.1  # the bucket holds this many seconds of its rate
    retry_after: str = "seconds"  # seconds, date or none
    configured: str = "unknown"  # hookdrop's HOOKDROP_RATE_LIMIT: unknown, or too high (5x)

    @property
    def name(self) -> str:
        return (
            f"burst {self.burst_seconds:g}s, Retry-After {self.retry_after}, "
            f"limit {self.configured}"
        )


SHAPES = tuple(
    ReceiverShape(burst, retry_after, configured)
    for burst in (0.1, 2.0)
    for retry_after in ("seconds", "date", "none")
    for configured in ("unknown", "too high")
)


def scenario_limited(
    settings: Settings,
    *,
    rate: float,
    seconds: float,
    notifiers: int,
    shape: ReceiverShape = ReceiverShape(),
) -> tuple[dict[str, Any], Sampler]:
    """A job of ``seconds`` worth of rows at the receiver's limit, from first request to last."""
    rows = int(rate * seconds)
    configured = rate * 5 if shape.configured == "too high" else 0.0
    mock_args = (
        "--rate",
        str(rate),
        "--burst",
        str(max(1.0, rate * shape.burst_seconds)),
        "--retry-after-mode",
        shape.retry_after,
    )
    with _stack(settings.replace(rate_limit=configured), notifiers, mock_args) as stack:
        with Sampler(stack) as sampler:
            drop = stack.drop(rows)
            stack.wait_done(drop.path.name, timeout=seconds * 4 + 120)
        stats = stack.mock.stats(per_user=False)
    span = stats["last_accepted_at"] - stats["first_received_at"]
    first, last = _steady(sampler, skip=span * 0.5, tail=1.0)
    steady = last["t"] - first["t"]
    return {
        "receiver": shape.name,
        "limit_per_s": rate,
        "rows": rows,
        "hookdrop_rate_limit": configured or None,
        "seconds_first_request_to_last": round(span, 2),
        "share_of_limit_used_whole_run": round(stats["unique"] / (rate * span), 3),
        "share_of_limit_used_steady": round(
            (last["accepted"] - first["accepted"]) / (steady * rate), 3
        )
        if steady > 0
        else None,
        "share_429": round(stats["throttled"] / max(1, stats["received"]), 4),
        "duplicates": stats["duplicates"],
        "delivered": stats["unique"],
    }, sampler


def scenario_lowered(
    settings: Settings, *, high: float, low: float, before: float, notifiers: int
) -> tuple[dict[str, Any], Sampler]:
    rows = int(high * before + low * 30)
    with _stack(settings, notifiers, ("--rate", str(high))) as stack:
        with Sampler(stack, period=0.1) as sampler:
            drop = stack.drop(rows)
            stack.mock.wait_until(lambda s: s["accepted"] > 0, timeout=60, per_user=False)
            time.sleep(before)  # run at the high limit for a while: the scenario's premise
            lowered_at = time.time()
            stack.mock.configure(rate=low)
            stack.wait_done(drop.path.name, timeout=rows / low + 120)
        stats = stack.mock.stats(per_user=False)
    sending = sampler.rates("received", window=1.0)
    back_under = None
    for t, _rate in sending:
        if t < lowered_at + 1.0:
            continue
        later = [r for tt, r in sending if t <= tt <= t + 3.0]
        if later and max(later) <= low * 1.05:
            back_under = t - lowered_at
            break
    # Once settled (10 s after the change, to the end but the last second): share used.
    end = sampler.samples[-1]["t"] - 1
    settled = [s for s in sampler.samples if lowered_at + 10 <= s["t"] <= end]
    used = None
    if len(settled) >= 2 and settled[-1]["t"] > settled[0]["t"]:
        used = round(
            (settled[-1]["accepted"] - settled[0]["accepted"])
            / (settled[-1]["t"] - settled[0]["t"])
            / low,
            3,
        )
    return {
        "high_per_s": high,
        "low_per_s": low,
        "seconds_until_under_new_limit": round(back_under, 2) if back_under else None,
        "share_of_new_limit_used_settled": used,
        "delivered": stats["unique"],
        "duplicates": stats["duplicates"],
    }, sampler


def scenario_large(
    settings: Settings, *, rows: int, seconds: float, notifiers: int
) -> dict[str, Any]:
    with _stack(settings, notifiers) as stack:
        conn = redis.Redis.from_url(redis_url(stack.settings))
        batcher = stack.supervisor.children[2]
        assert batcher.name == "batcher" and batcher.process is not None
        proc = psutil.Process(batcher.process.pid)
        drop = stack.drop(rows)
        size = drop.path.stat().st_size if drop.path.exists() else None
        rss: list[float] = []
        redis_mem: list[float] = []
        started = time.monotonic()
        read = 0
        # At least until the first rows are read (a busy box may take seconds to claim it).
        while (elapsed := time.monotonic() - started) < seconds or (
            read == 0 and elapsed < seconds * 6
        ):
            rss.append(proc.memory_info().rss / 2**20)
            redis_mem.append(int(conn.info("memory")["used_memory"]) / 2**20)
            row = stack.file_row(drop.path.name)
            read = row.rows_total if row else 0
            if row is not None and row.status in (FileStatus.DONE, FileStatus.FAILED):
                break
            time.sleep(0.5)
        conn.close()
    quarter = len(rss) // 4
    return {
        "rows": rows,
        "file_mb": round((size or 0) / 2**20, 1),
        "seconds_sampled": seconds,
        "rows_read": read,
        "batcher_rss_peak_mb": round(max(rss), 1),
        "batcher_rss_growth_mb": round(max(rss[quarter:]) - rss[quarter], 1) if rss else None,
        "redis_used_memory_peak_mb": round(max(redis_mem), 1),
    }


def scenario_latency(settings: Settings, *, tries: int, notifiers: int) -> dict[str, Any]:
    latencies = []
    with _stack(settings, notifiers) as stack:
        for n in range(tries):
            stack.mock.reset()
            drop = stack.drop(10, name=f"latency-{n}.csv")
            stats = stack.mock.wait_until(
                lambda s: s["accepted"] > 0, timeout=60, interval=0.005, per_user=False
            )
            seen = time.time()
            assert stats["accepted"] > 0
            latencies.append(seen - drop.complete_at)
            stack.wait_done(drop.path.name, timeout=60)
    median = statistics.median(latencies)
    return {
        "tries": tries,
        "settle_seconds": settings.settle_seconds,
        "first_webhook_seconds_median": round(median, 3),
        "beyond_settle_seconds_median": round(median - settings.settle_seconds, 3),
        "all": [round(x, 3) for x in latencies],
    }


def plot(samplers: dict[str, Sampler], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(samplers), 1, figsize=(9, 3 * len(samplers)), squeeze=False)
    for ax, (name, sampler) in zip(axes[:, 0], samplers.items(), strict=True):
        accepted = sampler.rates("accepted")
        received = sampler.rates("received")
        if not accepted:
            continue
        t0 = accepted[0][0]
        ax.plot(
            [t - t0 for t, _ in received],
            [r for _, r in received],
            label="sent (received)",
            linewidth=1,
        )
        ax.plot(
            [t - t0 for t, _ in accepted], [r for _, r in accepted], label="accepted", linewidth=1.5
        )
        ax.set_title(name)
        ax.set_xlabel("seconds")
        ax.set_ylabel("requests/s")
        ax.legend(loc="lower right")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


@dataclass(frozen=True)
class BenchSizes:
    rows: int = 200_000
    bare_requests: int = 50_000
    limit: float = 400.0
    limited_seconds: float = 30.0
    shapes: tuple[ReceiverShape, ...] = SHAPES
    high: float = 1500.0
    low: float = 750.0
    before: float = 8.0
    large_rows: int = 3_000_000
    large_seconds: float = 60.0
    latency_tries: int = 5
    served: int = 0

    @classmethod
    def quick(cls) -> BenchSizes:
        return cls(
            rows=4_000,
            bare_requests=4_000,
            limit=300,
            limited_seconds=5,
            shapes=SHAPES[:1],
            high=400,
            low=200,
            before=2,
            large_rows=30_000,
            large_seconds=5,
            latency_tries=2,
        )


def run_bench(
    settings: Settings,
    *,
    scenarios: str,
    notifiers: int,
    sizes: BenchSizes,
    plot_path: Path | None,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    results: dict[str, Any] = {
        "notifiers": notifiers,
        "cpus": psutil.cpu_count(),
        "settle_seconds": settings.settle_seconds,
    }
    samplers: dict[str, Sampler] = {}
    if "a" in scenarios:
        progress("a: receiver unlimited")
        results["a_unlimited"], samplers["a: receiver unlimited"] = scenario_unlimited(
            settings,
            rows=sizes.rows,
            notifiers=notifiers,
            bare_requests=sizes.bare_requests,
            served=sizes.served,
        )
    if "b" in scenarios:
        results["b_limited"] = []
        for shape in sizes.shapes:
            progress(f"b: receiver limited to {sizes.limit:g}/s, {shape.name}")
            result, sampler = scenario_limited(
                settings,
                rate=sizes.limit,
                seconds=sizes.limited_seconds,
                notifiers=notifiers,
                shape=shape,
            )
            results["b_limited"].append(result)
            samplers[f"b: {sizes.limit:g}/s, {shape.name}"] = sampler
    if "c" in scenarios:
        progress("c: limit lowered mid-run")
        results["c_lowered"], samplers[f"c: limit {sizes.high:g} -> {sizes.low:g}/s"] = (
            scenario_lowered(
                settings, high=sizes.high, low=sizes.low, before=sizes.before, notifiers=notifiers
            )
        )
    if "d" in scenarios:
        progress("d: large file")
        results["d_large_file"] = scenario_large(
            settings, rows=sizes.large_rows, seconds=sizes.large_seconds, notifiers=notifiers
        )
    if "e" in scenarios:
        progress("e: latency")
        results["e_latency"] = scenario_latency(
            settings, tries=sizes.latency_tries, notifiers=notifiers
        )
    if plot_path is not None and samplers:
        plot(samplers, plot_path)
        results["plot"] = str(plot_path)
    return results
