"""How operator commands show things: tables, one-line summaries, live progress bars.

File names come from uploaders: they are shown as text, never read as console markup.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import click
from rich.markup import escape

WATCH_INTERVAL = 0.5


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:,.1f}/s"


def table_console() -> Any:
    """A console for tables: the terminal's width, or as wide as the table when piped."""
    from rich.console import Console

    console = Console()
    # Piped, rich assumes 80 columns and would cut the table; a wide page lets each
    # column take what its content needs.
    return console if console.is_terminal else Console(width=10_000)


def files_table(files: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title="files", title_justify="left")
    for name, justify in (
        ("id", "right"),
        ("name", "left"),
        ("endpoint", "left"),
        ("status", "left"),
        ("done", "right"),
        ("delivered", "right"),
        ("invalid", "right"),
        ("dlq", "right"),
        ("dead", "right"),
        ("rejected", "right"),
        ("rate", "right"),
        ("eta", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for f in files:
        c = f["counts"]
        status = "paused" if f["paused"] and not f["finished"] else f["status"]
        table.add_row(
            str(f["id"]),
            escape(f["name"]),
            escape(f["endpoint"]),
            status,
            f"{f['percent']}%",
            f"{c['delivered']:,}/{c['alerts']:,}",
            f"{c['invalid']:,}",
            f"{c['dlq']:,}",
            f"{c['dead']:,}",
            f"{c['rejected']:,}",
            "-" if f["finished"] else _rate(f["rate"]),
            "-" if f["finished"] else _eta(f["eta_seconds"]),
        )
    return table


def overview_text(o: dict[str, Any]) -> str:
    pressure = o["backpressure"]
    bp = f"ACTIVE ({pressure['seconds_left']:.1f} s left)" if pressure["active"] else "off"
    limit = o["rate_limit"]["current"] or o["rate_limit"]["configured"]
    files = o["files"]
    return (
        f"files: {files.get('active', 0)} active, {files.get('done', 0)} done, "
        f"{files.get('failed', 0)} failed · delivered {files.get('delivered', 0):,} of "
        f"{files.get('alerts', 0):,}\n"
        f"throughput: {o['delivered_per_second']:,.1f}/s · rate limit: "
        f"{_rate(limit) if limit else 'none'} · back-pressure: {bp}\n"
        f"queues: notifier {o['queues']['notifier']:,}, batcher {o['queues']['batcher']:,} · "
        f"workers: notifier {o['workers']['notifier']}, batcher {o['workers']['batcher']} · "
        f"DLQ {o['dlq']:,} · dead {o['dead']:,}"
    )


def file_text(f: dict[str, Any]) -> str:
    c = f["counts"]
    lines = [
        f"file {f['id']} {f['name']} → {f['endpoint']} (generation {f['generation']}): "
        f"{f['status']}" + (" (paused)" if f["paused"] and not f["finished"] else ""),
        f"  rows {c['rows']:,} · invalid {c['invalid']:,} · alerts {c['alerts']:,}",
        f"  delivered {c['delivered']:,} · queued {c['queued']:,} · sending {c['sending']:,}"
        f" · throttled {c['throttled']:,} · retrying {c['retrying']:,}",
        f"  in DLQ {c['dlq']:,} · deferred {c['deferred']:,} · dead {c['dead']:,}"
        f" · rejected {c['rejected']:,} · cancelled {c['cancelled']:,}",
    ]
    if not f["finished"]:
        lines.append(f"  {f['percent']}% · rate {_rate(f['rate'])} · ETA {_eta(f['eta_seconds'])}")
    if f["error"]:
        lines.append(f"  error: {f['error']}")
    return "\n".join(lines)


def watch(fetch: Callable[[], list[dict[str, Any]]], as_json: bool) -> None:
    """Live progress bars (or JSON lines) until every watched file is finished."""
    from rich.progress import BarColumn, Progress, TaskID, TextColumn

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=None),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[counts]}"),
        TextColumn("{task.fields[rate]}"),
        TextColumn("ETA {task.fields[eta]}"),
    )
    tasks: dict[int, TaskID] = {}
    last: dict[int, str] = {}
    with Progress(*columns, disable=as_json, expand=True) as progress:
        while True:
            files = fetch()
            for f in files:
                c = f["counts"]
                settled = c["delivered"] + c["rejected"] + c["dead"] + c["cancelled"]
                total = max(c["alerts"], 1)
                done = total if f["finished"] else min(settled, total)
                fields: dict[str, Any] = {
                    "counts": f"{c['delivered']:,}/{c['alerts']:,} delivered · "
                    f"DLQ {c['dlq']:,} · dead {c['dead']:,}",
                    "rate": "" if f["finished"] else _rate(f["rate"]),
                    "eta": "done" if f["finished"] else _eta(f["eta_seconds"]),
                }
                label = escape(f"{f['id']} {f['name'][:30]} {f['status']}")
                if f["id"] not in tasks:
                    tasks[f["id"]] = progress.add_task(label, total=total, completed=done, **fields)
                else:
                    progress.update(
                        tasks[f["id"]], description=label, total=total, completed=done, **fields
                    )
                if as_json:
                    line = json.dumps(f, default=str, sort_keys=True)
                    key = json.dumps(
                        {k: v for k, v in f.items() if k not in ("rate", "eta_seconds")},
                        default=str,
                    )
                    if last.get(f["id"]) != key:
                        last[f["id"]] = key
                        click.echo(line)
            if all(f["finished"] for f in files):
                return
            time.sleep(WATCH_INTERVAL)


def endpoints_table(endpoints: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title="endpoints", title_justify="left")
    for name in (
        "name",
        "url",
        "limit",
        "rate",
        "back-pressure",
        "breaker",
        "delivered",
        "open",
        "deferred",
        "dlq",
        "dead",
        "rejected",
    ):
        table.add_column(name, justify="left" if name in ("name", "url", "breaker") else "right")
    for e in endpoints:
        c = e["counts"]
        pressure = e["backpressure"]
        breaker = e["breaker"]
        state = breaker["state"]
        if state != "closed" and breaker["probe_in"] is not None:
            state += f" (probe in {max(0.0, breaker['probe_in']):.0f} s)"
        waiting = sum(c.get(k, 0) for k in ("pending", "sending", "retrying", "throttled"))
        table.add_row(
            escape(e["name"]),
            escape(e["url"] or "(not configured)"),
            _rate(e["rate_limit"]["configured"]),
            _rate(e["rate_limit"]["current"]),
            f"{pressure['seconds_left']:.1f} s" if pressure["active"] else "-",
            state,
            f"{c['delivered']:,}",
            f"{waiting:,}",
            f"{c.get('deferred', 0):,}",
            f"{c.get('dlq', 0):,}",
            f"{c['dead']:,}",
            f"{c['rejected']:,}",
        )
    return table
