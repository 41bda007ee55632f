"""The long-running processes: monitor, workers (alone or as a pool), the mock receiver, and
``up``, all of them in one process tree."""

from __future__ import annotations

import sys

import click

from hookdrop import sdnotify
from hookdrop.cli._common import (
    check_inbox,
    configure_logs,
    connect,
    notifiers_option,
    with_settings,
)
from hookdrop.endpoints import Endpoints, load_endpoints
from hookdrop.errors import ConfigError
from hookdrop.settings import Settings, environ_snapshot
from hookdrop.supervise import Supervisor


@click.command()
@with_settings
def monitor(settings: Settings) -> None:
    """Watch the inbox, claim complete files, re-inject the DLQ, serve the HTTP API."""
    configure_logs(settings, "monitor")
    check_inbox(settings)
    from daemon.service import run_monitor

    with connect(settings, migrate=True) as live:
        run_monitor(live)


@click.command()
@click.argument("kind", type=click.Choice(["batcher", "notifier"]))
@click.option(
    "--processes",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Worker processes to run under this one.",
)
@click.option("--burst", is_flag=True, help="Stop when the queue is empty (for scripts and tests).")
@with_settings
def worker(settings: Settings, kind: str, processes: int, burst: bool) -> None:
    """Run batcher or notifier workers (one queue per process)."""
    configure_logs(settings, kind)
    if kind == "notifier":
        require_endpoints(settings)
    from workers.runner import run_worker

    with connect(settings) as live:
        if burst:
            run_worker(live, kind, burst=True)
        elif processes == 1:
            run_worker(live, kind)
        else:
            sys.exit(run_pool(live, kind, processes))


def run_pool(settings: Settings, kind: str, processes: int) -> int:
    """``processes`` worker processes under one supervisor, which alone talks to systemd."""
    pool = Supervisor({**environ_snapshot(), **settings.to_environ()}, stop_timeout=24 * 3600)
    for slot in range(processes):
        pool.add(f"{kind}-{slot + 1}", ["worker", kind, "--processes", "1"])

    def ready() -> None:
        sdnotify.notify("READY=1", f"STATUS=hookdrop {kind} pool of {processes}")

    return pool.run(on_ready=ready)


@click.group()
def db() -> None:
    """PostgreSQL schema."""


@db.command("migrate")
@with_settings
def db_migrate(settings: Settings) -> None:
    """Apply pending migrations (safe to run any number of times, from any host)."""
    configure_logs(settings, "migrate")
    with connect(settings, migrate=True):
        click.echo("schema up to date")


@click.command(context_settings={"ignore_unknown_options": True}, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def mock(args: tuple[str, ...]) -> None:
    """Run the mock webhook receiver (GET /stats, POST /admin/config); `hookdrop mock --help`
    lists its flags, the same as `python -m notifier_mock`."""
    from notifier_mock.cli import main as mock_main

    sys.exit(mock_main(list(args), prog="hookdrop mock"))


@click.command()
@click.option(
    "--mock",
    "with_mock",
    is_flag=True,
    help="Also run the mock receiver and point HOOKDROP_WEBHOOK_URL at it.",
)
@click.option("--mock-port", type=int, default=8426, show_default=True)
@notifiers_option
@click.option(
    "--batchers",
    type=click.IntRange(1, 16),
    default=1,
    show_default=True,
    help="Batcher worker processes.",
)
@with_settings
def up(settings: Settings, with_mock: bool, mock_port: int, notifiers: int, batchers: int) -> None:
    """Everything in one process tree: monitor, batcher and notifier workers (and the mock)."""
    configure_logs(settings, "up")
    if with_mock:
        settings = settings.replace(webhook_url=f"http://127.0.0.1:{mock_port}/")
    endpoints = require_endpoints(settings)
    check_inbox(settings)
    # Embedded servers started here stop when everything below has stopped; the children
    # get the URLs in their environment and never start servers of their own.
    with connect(settings, migrate=True) as live:
        sup = Supervisor({**environ_snapshot(), **live.to_environ()})
        if with_mock:
            sup.add("mock", ["mock", "--port", str(mock_port)], reloads=False)
        sup.add("monitor", ["monitor"])
        for n in range(batchers):
            sup.add(f"batcher-{n + 1}", ["worker", "batcher"])
        for n in range(notifiers):
            sup.add(f"notifier-{n + 1}", ["worker", "notifier"])
        targets = ", ".join(f"{e.name} {e.masked_url}" for e in endpoints)
        click.echo(
            f"hookdrop up: inbox {live.inbox}, endpoints: {targets}, "
            f"API http://{live.api_listen[0]}:{live.api_listen[1]}/ "
            "(Ctrl+C stops)"
        )
        sys.exit(sup.run())


def require_endpoints(settings: Settings) -> Endpoints:
    """The endpoints, checked now so a bad file stops the start with one line."""
    endpoints = load_endpoints(settings, environ_snapshot())
    if not endpoints.names:
        raise ConfigError(
            "no endpoint: set HOOKDROP_WEBHOOK_URL (--webhook-url) or HOOKDROP_CONFIG (--config)"
        )
    return endpoints


COMMANDS = (monitor, worker, db, mock, up)
