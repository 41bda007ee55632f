"""Operator commands: status, files, results, DLQ, replay, resend, send, pause / resume /
cancel.

They talk to Redis and PostgreSQL directly through :mod:`hookdrop.ops` (no API needed) and
never start embedded servers: they act on a hookdrop that runs. ``send`` only writes into
the inbox.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import click

from hookdrop.cli._common import configure_logs, connect, with_settings
from hookdrop.cli._views import (
    endpoints_table,
    file_text,
    files_table,
    overview_text,
    print_json,
    table_console,
    watch,
)
from hookdrop.errors import ConfigError
from hookdrop.settings import Settings, environ_snapshot

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
limit_option = click.option(
    "--limit", type=click.IntRange(1, 1000), default=50, show_default=True, help="Items per page."
)
offset_option = click.option("--offset", type=click.IntRange(0), default=0, help="Items to skip.")
statuses_option = click.option(
    "--status",
    "status_list",
    default="dlq,dead",
    show_default=True,
    help="Comma-separated: dlq, dead, rejected.",
)


def _statuses(value: str) -> list[str]:
    return [s.strip() for s in value.split(",") if s.strip()]


@contextmanager
def control_for(settings: Settings) -> Iterator[Any]:
    from hookdrop.connections import connect_redis, connect_store
    from hookdrop.endpoints import LiveEndpoints
    from hookdrop.ops import Control

    quiet = settings.replace(log_level="warning") if settings.log_level == "info" else settings
    configure_logs(quiet, "cli")
    # These commands act on a running hookdrop: they never start embedded servers.
    with connect(settings, start=False) as live:
        conn = connect_redis(live, name="hookdrop-cli")
        store = connect_store(live, name="hookdrop-cli")
        try:
            yield Control(live, store, conn, endpoints=LiveEndpoints(live, environ_snapshot()))
        finally:
            store.close()
            conn.close()


@click.command("status")
@click.argument("file_id", type=click.IntRange(1), required=False)
@click.option(
    "--watch",
    "watching",
    is_flag=True,
    help="Live progress bars until the file(s) are finished (Ctrl+C stops).",
)
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
                print_json(data)
            else:
                click.echo(file_text(data))
            return
        overview = control.overview()
        files = control.list_files(limit=20)
        if as_json:
            print_json({"overview": overview, "files": files})
            return
        console = table_console()
        console.print(overview_text(overview), highlight=False)
        if files:
            console.print(files_table(files))


@click.command("files")
@limit_option
@offset_option
@json_option
@with_settings
def files(settings: Settings, limit: int, offset: int, as_json: bool) -> None:
    """List files, newest first."""

    with control_for(settings) as control:
        rows = control.list_files(limit, offset)
    if as_json:
        print_json(rows)
    elif rows:
        table_console().print(files_table(rows))
    else:
        click.echo("no files")


@click.command("result")
@click.argument("file_id", type=click.IntRange(1))
@limit_option
@offset_option
@json_option
@click.option(
    "--csv",
    "as_csv",
    is_flag=True,
    help="Print every row's outcome as CSV (line, user id, alert id, status, HTTP code, "
    "error), the whole file, streamed.",
)
@with_settings
def result(
    settings: Settings, file_id: int, limit: int, offset: int, as_json: bool, as_csv: bool
) -> None:
    """A file's bad rows and the alerts that did not get through, with reasons."""
    if as_csv:
        _result_csv(settings, file_id)
        return
    with control_for(settings) as control:
        data = control.file_result(file_id, limit, offset)
    if as_json:
        print_json(data)
        return
    click.echo(file_text(data["file"]))
    click.echo(f"\nbad rows ({data['row_errors_total']:,}):")
    for e in data["row_errors"]:
        click.echo(f"  line {e['line_no']}: {e['reason']}: {e['excerpt']!r}")
    click.echo(f"\nalerts not delivered ({data['failed_alerts_total']:,}):")
    for a in data["failed_alerts"]:
        code = f" HTTP {a['last_status_code']}" if a["last_status_code"] else ""
        click.echo(
            f"  line {a['line_no']} user {a['user_id']}: {a['status']}{code}"
            f" after {a['attempts']} tries: {a['last_error'] or ''}"
        )


def _result_csv(settings: Settings, file_id: int) -> None:
    from hookdrop.ops import result_csv

    out = sys.stdout.buffer  # UTF-8 whatever the locale
    with control_for(settings) as control:
        pieces = result_csv(control.store, file_id)
        try:
            for piece in pieces:
                out.write(piece.encode("utf-8"))
            out.flush()  # a reader gone (`| head`) ends it quietly: click handles EPIPE
        finally:
            pieces.close()


@click.group("dlq")
def dlq() -> None:
    """The dead-letter queue: alerts waiting for a retry, dead or rejected."""


@dlq.command("list")
@statuses_option
@limit_option
@offset_option
@json_option
@with_settings
def dlq_list(settings: Settings, status_list: str, limit: int, offset: int, as_json: bool) -> None:
    """List alerts in the DLQ (and dead ones)."""
    with control_for(settings) as control:
        data = control.dlq_list(_statuses(status_list), limit, offset)
    if as_json:
        print_json(data)
        return
    click.echo(f"DLQ {data['dlq']:,} · dead {data['dead']:,}")
    for a in data["alerts"]:
        code = f" HTTP {a['last_status_code']}" if a["last_status_code"] else ""
        click.echo(
            f"  file {a['file_id']} user {a['user_id']}: {a['status']}{code}, "
            f"{a['attempts']} tries: {a['last_error'] or ''}"
        )


@dlq.command("replay")
@click.option(
    "--file", "file_id", type=click.IntRange(1), default=None, help="Only this file's alerts."
)
@statuses_option
@with_settings
def dlq_replay(settings: Settings, file_id: int | None, status_list: str) -> None:
    """Send DLQ and dead alerts again now, with a fresh attempt budget."""
    with control_for(settings) as control:
        count = control.replay(file_id, _statuses(status_list))
    click.echo(
        f"{count:,} alerts replayed; the monitor sends them within {settings.dlq_interval:g} s"
    )


@click.command("replay")
@click.argument("file_id", type=click.IntRange(1))
@click.option(
    "--status",
    "status_list",
    default="dlq,dead,rejected",
    show_default=True,
    help="Comma-separated: dlq, dead, rejected.",
)
@with_settings
def replay(settings: Settings, file_id: int, status_list: str) -> None:
    """Send a file's failed (DLQ, dead, rejected) alerts again."""
    with control_for(settings) as control:
        count = control.replay(file_id, _statuses(status_list))
    click.echo(f"file {file_id}: {count:,} alerts replayed")


@click.command("resend")
@click.argument("file_id", type=click.IntRange(1))
@json_option
@with_settings
def resend(settings: Settings, file_id: int, as_json: bool) -> None:
    """Send a finished file again as a new generation: every row is delivered again."""
    with control_for(settings) as control:
        data = control.resend(file_id)
    if as_json:
        print_json(data)
    else:
        click.echo(
            f"file {file_id} resent as file {data['file_id']} "
            f"(generation {data['generation']}): {data['status']}"
        )


@click.command("send")
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


def _action(name: str, verb: str, doc: str) -> click.Command:
    @click.command(name, help=doc)
    @click.argument("file_id", type=click.IntRange(1))
    @json_option
    @with_settings
    def command(settings: Settings, file_id: int, as_json: bool) -> None:
        with control_for(settings) as control:
            data = getattr(control, name)(file_id)
        if as_json:
            print_json(data)
            return
        c = data["counts"]
        extra = f", {data['requeued']:,} alerts queued again" if "requeued" in data else ""
        click.echo(f"file {file_id} {verb}: {c['delivered']:,} of {c['alerts']:,} delivered{extra}")

    return command


pause = _action(
    "pause", "paused", "Stop sending a file's alerts (running jobs stop within ~0.3 s)."
)
resume = _action("resume", "resumed", "Resume a paused file.")
cancel = _action("cancel", "cancelled", "Cancel every alert of a file not yet sent.")


@click.command("endpoints")
@json_option
@with_settings
def endpoints(settings: Settings, as_json: bool) -> None:
    """Every endpoint: URL (credentials masked), configured limit, rate in force,
    back-pressure, circuit breaker, counts."""
    with control_for(settings) as control:
        rows = control.endpoints()
    if as_json:
        print_json(rows)
    else:
        table_console().print(endpoints_table(rows))


COMMANDS = (
    status,
    files,
    result,
    dlq,
    replay,
    resend,
    send,
    pause,
    resume,
    cancel,
    endpoints,
)
