"""Operator commands of the ``hookdrop`` CLI: status, files, results, DLQ, replay, resend,
send, pause / resume / cancel.

They talk to Redis and PostgreSQL directly through :mod:`hookdrop.ops` (no API needed);
``send`` only writes into the inbox. Registered on the main group by :func:`register`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from hookdrop.errors import ConfigError
from hookdrop.settings import Settings

WATCH_INTERVAL = 0.5

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
limit_option = click.option("--limit", type=click.IntRange(1, 1000), default=50,
                            show_default=True, help="Items per page.")
offset_option = click.option("--offset", type=click.IntRange(0), default=0,
                             help="Items to skip.")


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _statuses(value: str) -> list[str]:
    return [s.strip() for s in value.split(",") if s.strip()]


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
    for name, justify in (("id", "right"), ("name", "left"), ("status", "left"),
                          ("done", "right"), ("delivered", "right"), ("invalid", "right"),
                          ("dlq", "right"), ("dead", "right"), ("rejected", "right"),
                          ("rate", "right"), ("eta", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for f in files:
        c = f["counts"]
        status = "paused" if f["paused"] and not f["finished"] else f["status"]
        table.add_row(str(f["id"]), escape(f["name"]), status, f"{f['percent']}%",
                      f"{c['delivered']:,}/{c['alerts']:,}", f"{c['invalid']:,}",
                      f"{c['dlq']:,}", f"{c['dead']:,}", f"{c['rejected']:,}",
                      "-" if f["finished"] else _rate(f["rate"]),
                      "-" if f["finished"] else _eta(f["eta_seconds"]))
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
        f"file {f['id']} {f['name']} (generation {f['generation']}): {f['status']}"
        + (" (paused)" if f["paused"] and not f["finished"] else ""),
        f"  rows {c['rows']:,} · invalid {c['invalid']:,} · alerts {c['alerts']:,}",
        f"  delivered {c['delivered']:,} · queued {c['queued']:,} · sending {c['sending']:,}"
        f" · throttled {c['throttled']:,} · retrying {c['retrying']:,}",
        f"  in DLQ {c['dlq']:,} · dead {c['dead']:,} · rejected {c['rejected']:,}"
        f" · cancelled {c['cancelled']:,}",
    ]
    if not f["finished"]:
        lines.append(f"  {f['percent']}% · rate {_rate(f['rate'])} · ETA {_eta(f['eta_seconds'])}")
    if f["error"]:
        lines.append(f"  error: {f['error']}")
    return "\n".join(lines)


def watch(fetch: Callable[[], list[dict[str, Any]]], as_json: bool) -> None:
    """Live progress bars (or JSON lines) until every watched file is finished."""
    from rich.progress import BarColumn, Progress, TaskID, TextColumn

    columns = (TextColumn("[bold]{task.description}"), BarColumn(bar_width=None),
               TextColumn("{task.percentage:>3.0f}%"),
               TextColumn("{task.fields[counts]}"), TextColumn("{task.fields[rate]}"),
               TextColumn("ETA {task.fields[eta]}"))
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
                    tasks[f["id"]] = progress.add_task(label, total=total, completed=done,
                                                       **fields)
                else:
                    progress.update(tasks[f["id"]], description=label, total=total,
                                    completed=done, **fields)
                if as_json:
                    line = json.dumps(f, default=str, sort_keys=True)
                    key = json.dumps({k: v for k, v in f.items()
                                      if k not in ("rate", "eta_seconds")}, default=str)
                    if last.get(f["id"]) != key:
                        last[f["id"]] = key
                        click.echo(line)
            if all(f["finished"] for f in files):
                return
            time.sleep(WATCH_INTERVAL)


def register(cli: click.Group) -> None:
    """Add the operator commands to the ``hookdrop`` group."""
    from hookdrop.cli import configure_logs, connect, with_settings

    @contextmanager
    def control_for(settings: Settings) -> Iterator[Any]:
        from hookdrop.connections import connect_redis, connect_store
        from hookdrop.ops import Control

        quiet = settings.replace(log_level="warning") if settings.log_level == "info" else settings
        configure_logs(quiet, "cli")
        # These commands act on a running hookdrop: they never start embedded servers.
        with connect(settings, start=False) as live:
            conn = connect_redis(live, name="hookdrop-cli")
            store = connect_store(live, name="hookdrop-cli")
            try:
                yield Control(live, store, conn)
            finally:
                store.close()
                conn.close()

    @cli.command("status")
    @click.argument("file_id", type=click.IntRange(1), required=False)
    @click.option("--watch", "watching", is_flag=True,
                  help="Live progress bars until the file(s) are finished (Ctrl+C stops).")
    @json_option
    @with_settings
    def status(settings: Settings, file_id: int | None, watching: bool, as_json: bool) -> None:
        """The whole system (no ID) or one file: counts, rate, ETA."""

        with control_for(settings) as control:
            if watching:
                if file_id is not None:
                    control.file_status(file_id)  # unknown id: fail before drawing anything

                def fetch() -> list[dict[str, Any]]:
                    if file_id is not None:
                        return [control.file_status(file_id)]
                    return [f for f in control.list_files(limit=50) if not f["finished"]]

                with suppress(KeyboardInterrupt):  # Ctrl+C just ends the watch
                    watch(fetch, as_json)
                return
            if file_id is not None:
                data = control.file_status(file_id)
                if as_json:
                    _print_json(data)
                else:
                    click.echo(file_text(data))
                return
            overview = control.overview()
            files = control.list_files(limit=20)
            if as_json:
                _print_json({"overview": overview, "files": files})
                return
            console = table_console()
            console.print(overview_text(overview), highlight=False)
            if files:
                console.print(files_table(files))

    @cli.command("files")
    @limit_option
    @offset_option
    @json_option
    @with_settings
    def files(settings: Settings, limit: int, offset: int, as_json: bool) -> None:
        """List files, newest first."""

        with control_for(settings) as control:
            rows = control.list_files(limit, offset)
        if as_json:
            _print_json(rows)
        elif rows:
            table_console().print(files_table(rows))
        else:
            click.echo("no files")

    @cli.command("result")
    @click.argument("file_id", type=click.IntRange(1))
    @limit_option
    @offset_option
    @json_option
    @with_settings
    def result(settings: Settings, file_id: int, limit: int, offset: int,
               as_json: bool) -> None:
        """A file's bad rows and the alerts that did not get through, with reasons."""
        with control_for(settings) as control:
            data = control.file_result(file_id, limit, offset)
        if as_json:
            _print_json(data)
            return
        click.echo(file_text(data["file"]))
        click.echo(f"\nbad rows ({data['row_errors_total']:,}):")
        for e in data["row_errors"]:
            click.echo(f"  line {e['line_no']}: {e['reason']}: {e['excerpt']!r}")
        click.echo(f"\nalerts not delivered ({data['failed_alerts_total']:,}):")
        for a in data["failed_alerts"]:
            code = f" HTTP {a['last_status_code']}" if a["last_status_code"] else ""
            click.echo(f"  line {a['line_no']} user {a['user_id']}: {a['status']}{code}"
                       f" after {a['attempts']} tries: {a['last_error'] or ''}")

    @cli.group("dlq")
    def dlq() -> None:
        """The dead-letter queue: alerts waiting for a retry, dead or rejected."""

    @dlq.command("list")
    @click.option("--status", "status_list", default="dlq,dead", show_default=True,
                  help="Comma-separated: dlq, dead, rejected.")
    @limit_option
    @offset_option
    @json_option
    @with_settings
    def dlq_list(settings: Settings, status_list: str, limit: int, offset: int,
                 as_json: bool) -> None:
        """List alerts in the DLQ (and dead ones)."""
        with control_for(settings) as control:
            data = control.dlq_list(_statuses(status_list), limit, offset)
        if as_json:
            _print_json(data)
            return
        click.echo(f"DLQ {data['dlq']:,} · dead {data['dead']:,}")
        for a in data["alerts"]:
            code = f" HTTP {a['last_status_code']}" if a["last_status_code"] else ""
            click.echo(f"  file {a['file_id']} user {a['user_id']}: {a['status']}{code}, "
                       f"{a['attempts']} tries: {a['last_error'] or ''}")

    @dlq.command("replay")
    @click.option("--file", "file_id", type=click.IntRange(1), default=None,
                  help="Only this file's alerts.")
    @click.option("--status", "status_list", default="dlq,dead", show_default=True,
                  help="Comma-separated: dlq, dead, rejected.")
    @with_settings
    def dlq_replay(settings: Settings, file_id: int | None, status_list: str) -> None:
        """Send DLQ and dead alerts again now, with a fresh attempt budget."""
        with control_for(settings) as control:
            count = control.replay(file_id, _statuses(status_list))
        click.echo(f"{count:,} alerts replayed; the monitor sends them within "
                   f"{settings.dlq_interval:g} s")

    @cli.command("replay")
    @click.argument("file_id", type=click.IntRange(1))
    @click.option("--status", "status_list", default="dlq,dead,rejected", show_default=True,
                  help="Comma-separated: dlq, dead, rejected.")
    @with_settings
    def replay(settings: Settings, file_id: int, status_list: str) -> None:
        """Send a file's failed (DLQ, dead, rejected) alerts again."""
        with control_for(settings) as control:
            count = control.replay(file_id, _statuses(status_list))
        click.echo(f"file {file_id}: {count:,} alerts replayed")

    @cli.command("resend")
    @click.argument("file_id", type=click.IntRange(1))
    @json_option
    @with_settings
    def resend(settings: Settings, file_id: int, as_json: bool) -> None:
        """Send a finished file again as a new generation: every row is delivered again."""
        with control_for(settings) as control:
            data = control.resend(file_id)
        if as_json:
            _print_json(data)
        else:
            click.echo(f"file {file_id} resent as file {data['file_id']} "
                       f"(generation {data['generation']}): {data['status']}")

    @cli.command("send")
    @click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option("--name", default=None, help="Name in the inbox (default: the file's name).")
    @with_settings
    def send(settings: Settings, path: Path, name: str | None) -> None:
        """Drop FILE into the inbox atomically (hidden temp file, fsync, rename)."""
        from hookdrop.ops import send as send_file

        if not settings.inbox.is_dir():
            raise ConfigError(f"HOOKDROP_INBOX={settings.inbox}: no such folder")
        final = send_file(path, settings.inbox, name)
        click.echo(f"sent {path} -> {final}")

    def action(name: str, verb: str, doc: str) -> None:
        @cli.command(name, help=doc)
        @click.argument("file_id", type=click.IntRange(1))
        @json_option
        @with_settings
        def command(settings: Settings, file_id: int, as_json: bool) -> None:
            with control_for(settings) as control:
                data = getattr(control, name)(file_id)
            if as_json:
                _print_json(data)
                return
            c = data["counts"]
            extra = f", {data['requeued']:,} alerts queued again" if "requeued" in data else ""
            click.echo(f"file {file_id} {verb}: {c['delivered']:,} of {c['alerts']:,} "
                       f"delivered{extra}")

    action("pause", "paused", "Stop sending a file's alerts (running jobs stop within ~0.3 s).")
    action("resume", "resumed", "Resume a paused file.")
    action("cancel", "cancelled", "Cancel every alert of a file not yet sent.")
