"""``hookdrop demo``: the whole pipeline on one box, counted at the receiver."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from hookdrop.devtools.harness import Stack
from hookdrop.settings import Settings
from hookdrop.store import FileRow


@dataclass(frozen=True, slots=True)
class Summary:
    rows: int
    alerts: int
    delivered: int  # unique alert ids the receiver accepted
    missed: int
    duplicates: int  # requests the receiver accepted for an id it had already accepted
    invalid: int
    seconds: float  # from the file being complete to the last delivery
    first_webhook_seconds: float | None
    deliveries_per_second: float
    ok: bool


def summarise(
    rows: int,
    file: FileRow,
    stats: dict[str, Any],
    *,
    complete_at: float,
    first_seen: float | None,
    finished: float,
) -> Summary:
    unique = int(stats["unique"])
    alerts = file.alerts_total
    missed = max(0, alerts - unique)
    duplicates = int(stats["duplicates"])
    window = finished - (first_seen or complete_at)
    return Summary(
        rows=rows,
        alerts=alerts,
        delivered=unique,
        missed=missed,
        duplicates=duplicates,
        invalid=file.rows_invalid,
        seconds=round(finished - complete_at, 2),
        first_webhook_seconds=round(first_seen - complete_at, 3) if first_seen else None,
        deliveries_per_second=round(unique / window, 1) if window > 0 else 0.0,
        ok=missed == 0 and duplicates == 0 and unique == rows,
    )


def run_demo(
    settings: Settings, *, rows: int, notifiers: int, as_json: bool, timeout: float
) -> Summary:
    console = Console(stderr=True, quiet=as_json)
    with Stack(settings, notifiers=notifiers) as stack:
        console.print(
            f"[bold]hookdrop demo[/]: {rows:,} rows -> mock receiver at "
            f"{stack.settings.webhook_url} ({notifiers} notifier processes)"
        )
        console.print(f"inbox {stack.settings.inbox}   logs {stack.logs}", markup=False)
        drop = stack.drop(rows)
        first_seen: list[float] = []
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:,}/{task.total:,}"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
            disable=as_json,
        ) as progress:
            read = progress.add_task("read     ", total=rows, rate="")
            sent = progress.add_task("delivered", total=rows, rate="")

            def update(file: FileRow | None, stats: dict[str, Any] | None) -> None:
                if stats and stats.get("accepted") and not first_seen:
                    first_seen.append(time.time())
                if file is not None:
                    progress.update(read, completed=file.rows_total)
                if stats:
                    # The receiver's rate over the last second; the summary gives the average.
                    progress.update(
                        sent,
                        completed=int(stats["unique"]),
                        rate=f"now {stats.get('rate_1s', 0):,}/s",
                    )

            file = stack.wait_done(drop.path.name, timeout=timeout, progress=update)
            finished = time.time()
        stats = stack.mock.wait_until(
            lambda s: s["unique"] >= file.delivered, timeout=10, per_user=False
        )
        summary = summarise(
            rows,
            file,
            stats,
            complete_at=drop.complete_at,
            first_seen=first_seen[0] if first_seen else None,
            finished=finished,
        )
        stack.keep = not summary.ok  # keep logs and ledger of a failed run to look at
    if as_json:
        print(json.dumps(asdict(summary), indent=2))
    else:
        verdict = "[green]OK[/]" if summary.ok else "[red]FAILED[/]"
        console.print(
            f"{verdict}  rows {summary.rows:,}  delivered {summary.delivered:,}  "
            f"missed {summary.missed}  duplicates {summary.duplicates}\n"
            f"average {summary.deliveries_per_second:,.0f} deliveries/s from the first "
            f"delivery to the last (the bar shows the last second's rate); "
            f"{summary.seconds:.1f} s from drop to last delivery; first webhook after "
            f"{summary.first_webhook_seconds} s"
        )
    return summary
