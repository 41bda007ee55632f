"""The ``hookdrop`` command."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from hookdrop.errors import ConfigError, HookdropError
from hookdrop.lifeline import follow_parent
from hookdrop.settings import SETTINGS, Settings, environ_snapshot

F = Callable[..., Any]


def settings_options(func: F) -> F:
    """Add one flag per setting; each help text names its environment variable."""
    for spec in reversed(SETTINGS):
        func = click.option(
            spec.flag, spec.field, default=None, metavar="VALUE",
            help=f"{spec.help} [env: {spec.env}]",
        )(func)
    return func


def load_settings(raw: dict[str, Any]) -> Settings:
    overrides = {spec.field: raw.pop(spec.field, None) for spec in SETTINGS}
    return Settings.load(environ_snapshot(), overrides)


def with_settings(func: F) -> F:
    """Build the Settings object from env + flags and pass it as the first argument."""

    @settings_options
    @functools.wraps(func)
    def wrapper(**raw: Any) -> Any:
        return func(load_settings(raw), **raw)

    return wrapper


def connect(settings: Settings, *, migrate: bool = False) -> Settings:
    """Fill in server URLs (embedded when unset), check they answer, optionally migrate."""
    from hookdrop.embedded import postgres_reachable, redis_reachable, resolve_servers
    from hookdrop.store import Store

    redis_url, database_url = resolve_servers(
        settings.redis_url, settings.database_url, settings.state_dir
    )
    settings = settings.replace(redis_url=redis_url, database_url=database_url)
    if not redis_reachable(redis_url):
        raise ConfigError(f"REDIS_URL={redis_url}: cannot connect to Redis")
    if not postgres_reachable(database_url):
        raise ConfigError(f"DATABASE_URL={_hide_password(database_url)}: cannot connect to "
                          "PostgreSQL")
    with Store(database_url) as store:
        if migrate:
            store.migrate()
        else:
            store.check_schema()
    return settings


def check_inbox(settings: Settings) -> None:
    from hookdrop.intake import ensure_dirs

    try:
        ensure_dirs(settings)
    except OSError as exc:
        raise ConfigError(
            f"HOOKDROP_INBOX={settings.inbox}: cannot create ({exc.strerror})") from None
    if not os.access(settings.inbox, os.W_OK | os.X_OK):
        raise ConfigError(f"HOOKDROP_INBOX={settings.inbox}: not writable by this user")


def _hide_password(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def configure_logs(settings: Settings, process: str) -> None:
    from hookdrop.logs import configure

    configure(settings.log_format, settings.log_level, process=process)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="hookdrop")
def cli() -> None:
    """hookdrop: files dropped into a folder become webhook calls, one per row, never missed
    and never sent twice.

    Every setting is an environment variable and a flag of the command that uses it.
    """


@cli.command()
@with_settings
def monitor(settings: Settings) -> None:
    """Watch the inbox, claim complete files, re-inject the DLQ, serve the HTTP API."""
    configure_logs(settings, "monitor")
    check_inbox(settings)
    settings = connect(settings, migrate=True)
    from daemon.service import run_monitor

    run_monitor(settings)


@cli.command()
@click.argument("kind", type=click.Choice(["batcher", "notifier"]))
@click.option("--processes", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Worker processes to run under this one.")
@click.option("--burst", is_flag=True, help="Stop when the queue is empty (for scripts and tests).")
@with_settings
def worker(settings: Settings, kind: str, processes: int, burst: bool) -> None:
    """Run batcher or notifier workers (one queue per process)."""
    configure_logs(settings, kind)
    if kind == "notifier":
        settings.require("webhook_url")
    settings = connect(settings)
    from workers.runner import run_pool, run_worker

    if burst:
        run_worker(settings, kind, burst=True)
        return
    sys.exit(run_pool(settings, kind, processes, environ_snapshot()))


@cli.group()
def db() -> None:
    """PostgreSQL schema."""


@db.command("migrate")
@with_settings
def db_migrate(settings: Settings) -> None:
    """Apply pending migrations (safe to run any number of times, from any host)."""
    configure_logs(settings, "migrate")
    settings = connect(settings, migrate=True)
    click.echo("schema up to date")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8426, show_default=True)
@click.option("--rate", type=float, default=0.0, show_default=True,
              help="Accepted requests/s (0 = unlimited); changeable at POST /admin/config.")
@click.option("--burst", type=float, default=None, help="Bucket size (default rate/10).")
@click.option("--retry-after", "retry_after_mode", type=click.Choice(["seconds", "date", "none"]),
              default="seconds", show_default=True, help="How 429 answers carry Retry-After.")
@click.option("--error-rate", type=float, default=0.0, help="Share answered 5xx.")
@click.option("--latency-ms", type=float, default=0.0, help="Added delay per answer.")
@click.option("--timeout-rate", type=float, default=0.0, help="Share that hang (client timeouts).")
@click.option("--reset-rate", type=float, default=0.0, help="Share whose connection is reset.")
@click.option("--secret", default=None, help="whsec_ secret: check signatures (401 if bad).")
@click.option("--audit", "audit_path", type=click.Path(path_type=Path), default=None,
              help="Append 'webhook-id<TAB>userId' of every accepted alert to this file.")
def mock(**options: Any) -> None:
    """Run the mock webhook receiver (GET /stats, POST /admin/config)."""
    from notifier_mock import MockConfig, serve

    try:
        config = MockConfig(**{k: v for k, v in options.items() if v is not None})
    except ValueError as exc:
        raise ConfigError(f"mock: {exc}") from None
    serve(config)


@cli.command()
@click.option("--mock", "with_mock", is_flag=True,
              help="Also run the mock receiver and point HOOKDROP_WEBHOOK_URL at it.")
@click.option("--mock-port", type=int, default=8426, show_default=True)
@click.option("--notifiers", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Notifier worker processes.")
@click.option("--batchers", type=click.IntRange(1, 16), default=1, show_default=True,
              help="Batcher worker processes.")
@with_settings
def up(settings: Settings, with_mock: bool, mock_port: int, notifiers: int,
       batchers: int) -> None:
    """Everything in one process tree: monitor, batcher and notifier workers (and the mock)."""
    configure_logs(settings, "up")
    if with_mock:
        settings = settings.replace(webhook_url=f"http://127.0.0.1:{mock_port}/")
    settings.require("webhook_url")
    check_inbox(settings)
    settings = connect(settings, migrate=True)
    from hookdrop.supervise import Supervisor

    sup = Supervisor({**environ_snapshot(), **settings.to_environ()})
    if with_mock:
        sup.add("mock", ["mock", "--port", str(mock_port)])
    sup.add("monitor", ["monitor"])
    for n in range(batchers):
        sup.add(f"batcher-{n + 1}", ["worker", "batcher"])
    for n in range(notifiers):
        sup.add(f"notifier-{n + 1}", ["worker", "notifier"])
    click.echo(f"hookdrop up: inbox {settings.inbox}, webhook {settings.webhook_url}, "
               f"API http://{settings.api_listen[0]}:{settings.api_listen[1]}/ (Ctrl+C stops)")
    sys.exit(sup.run())


@cli.command()
@click.option("--rows", type=click.IntRange(1), default=100_000, show_default=True,
              help="Rows in the demo file.")
@click.option("--notifiers", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Notifier worker processes.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--timeout", type=float, default=900, show_default=True,
              help="Give up after this many seconds.")
@with_settings
def demo(settings: Settings, rows: int, notifiers: int, as_json: bool, timeout: float) -> None:
    """Start mock, monitor and workers, drop a file, show it delivered; exit 0 only if nothing
    was missed or duplicated."""
    configure_logs(settings, "demo")
    settings = connect(settings, migrate=True)
    from hookdrop.demo import run_demo

    summary = run_demo(settings, rows=rows, notifiers=notifiers, as_json=as_json,
                       timeout=timeout)
    sys.exit(0 if summary.ok else 1)


@cli.command()
@click.option("--scenarios", default="abcde", show_default=True,
              help="Which scenarios to run (letters a-e, see the docs).")
@click.option("--notifiers", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option("--quick", is_flag=True, help="Small sizes (a smoke run for CI).")
@click.option("--rows", type=click.IntRange(1), default=None, help="Rows for scenario a.")
@click.option("--limit", type=float, default=None, help="Receiver limit for scenario b.")
@click.option("--large-rows", type=click.IntRange(1), default=None, help="Rows for scenario d.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path),
              default=Path("bench-results/throughput.png"), show_default=True,
              help="PNG plot of throughput over time.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON only.")
@with_settings
def bench(settings: Settings, scenarios: str, notifiers: int, quick: bool, rows: int | None,
          limit: float | None, large_rows: int | None, plot_path: Path, as_json: bool) -> None:
    """Measure throughput, rate limiting, memory and latency against the product's targets."""
    import dataclasses
    import json

    configure_logs(settings, "bench")
    settings = connect(settings, migrate=True)
    from hookdrop.bench import BenchSizes, run_bench

    sizes = BenchSizes.quick() if quick else BenchSizes()
    changes = {k: v for k, v in {"rows": rows, "limit": limit, "large_rows": large_rows}.items()
               if v is not None}
    sizes = dataclasses.replace(sizes, **changes)
    plot_path.parent.mkdir(parents=True, exist_ok=True)
    results = run_bench(settings, scenarios=scenarios, notifiers=notifiers, sizes=sizes,
                        plot_path=plot_path,
                        progress=lambda text: None if as_json else click.echo(text, err=True))
    click.echo(json.dumps(results, indent=2))


def main() -> None:
    follow_parent(environ_snapshot())
    try:
        cli.main(standalone_mode=False)
    except ConfigError as exc:
        click.echo(f"hookdrop: configuration error: {exc}", err=True)
        sys.exit(2)
    except HookdropError as exc:
        click.echo(f"hookdrop: error: {exc}", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


def _register_operations() -> None:
    from hookdrop.cli_ops import register

    register(cli)


_register_operations()
