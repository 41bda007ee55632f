"""The ``hookdrop`` command."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from hookdrop.errors import ConfigError, HookdropError, NotRunning
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


@contextlib.contextmanager
def connect(settings: Settings, *, migrate: bool = False, schema: bool = True,
            start: bool = True) -> Iterator[Settings]:
    """The settings with both server URLs, for as long as the block runs.

    A URL that is not set means the embedded server of HOOKDROP_STATE_DIR: reused when it
    runs, else (``start``) started for this command and stopped when the block ends. Without
    ``start`` nothing is started: with no server running the command ends in one line.
    Checks both servers answer, then migrates (``migrate``) or checks (``schema``) the schema.
    """
    from hookdrop.embedded import embedded_servers, find_running
    from hookdrop.store import Store

    with contextlib.ExitStack() as owned:
        # Given URLs first: a wrong one fails the command before anything is started.
        _check_reachable(settings.redis_url, settings.database_url)
        missing = [name for name, url in (("REDIS_URL", settings.redis_url),
                                          ("DATABASE_URL", settings.database_url)) if not url]
        if missing and start:
            servers = owned.enter_context(embedded_servers(
                settings.state_dir, redis=not settings.redis_url,
                postgres=not settings.database_url))
        elif missing:
            servers = find_running(settings.state_dir)
            absent = [name for name, given, found in
                      (("Redis", settings.redis_url, servers.redis_url),
                       ("PostgreSQL", settings.database_url, servers.database_url))
                      if not given and not found]
            if absent:
                raise NotRunning(
                    f"no {' and no '.join(absent)}: {' and '.join(missing)} not set and "
                    f"no embedded server runs in {settings.state_dir} (start them with "
                    "`hookdrop up` or `hookdrop servers start`)")
        if missing:
            settings = settings.replace(
                redis_url=settings.redis_url or servers.redis_url,
                database_url=settings.database_url or servers.database_url)
            _check_reachable(settings.redis_url, settings.database_url)
        database_url = settings.database_url
        assert database_url is not None
        if migrate or schema:
            with Store(database_url) as store:
                if migrate:
                    store.migrate()
                else:
                    store.check_schema()
        yield settings


def _check_reachable(redis_url: str | None, database_url: str | None) -> None:
    from hookdrop.embedded import postgres_reachable, redis_reachable

    if redis_url and not redis_reachable(redis_url):
        raise ConfigError(f"REDIS_URL={_hide_password(redis_url)}: cannot connect to Redis")
    if database_url and not postgres_reachable(database_url):
        raise ConfigError(f"DATABASE_URL={_hide_password(database_url)}: cannot connect to "
                          "PostgreSQL")


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
    from daemon.service import run_monitor

    with connect(settings, migrate=True) as live:
        run_monitor(live)


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
    from workers.runner import run_pool, run_worker

    with connect(settings) as live:
        if burst:
            run_worker(live, kind, burst=True)
            return
        sys.exit(run_pool(live, kind, processes, environ_snapshot()))


@cli.group()
def db() -> None:
    """PostgreSQL schema."""


@db.command("migrate")
@with_settings
def db_migrate(settings: Settings) -> None:
    """Apply pending migrations (safe to run any number of times, from any host)."""
    configure_logs(settings, "migrate")
    with connect(settings, migrate=True):
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
    from hookdrop.supervise import Supervisor

    # Embedded servers started here stop when everything below has stopped; the children
    # get the URLs in their environment and never start servers of their own.
    with connect(settings, migrate=True) as live:
        sup = Supervisor({**environ_snapshot(), **live.to_environ()})
        if with_mock:
            sup.add("mock", ["mock", "--port", str(mock_port)])
        sup.add("monitor", ["monitor"])
        for n in range(batchers):
            sup.add(f"batcher-{n + 1}", ["worker", "batcher"])
        for n in range(notifiers):
            sup.add(f"notifier-{n + 1}", ["worker", "notifier"])
        click.echo(f"hookdrop up: inbox {live.inbox}, webhook {live.webhook_url}, "
                   f"API http://{live.api_listen[0]}:{live.api_listen[1]}/ "
                   "(Ctrl+C stops)")
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
    from hookdrop.demo import run_demo

    # The run migrates a schema of its own in the database; the database's own is not used.
    with connect(settings, schema=False) as live:
        summary = run_demo(live, rows=rows, notifiers=notifiers, as_json=as_json,
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
    from hookdrop.bench import BenchSizes, run_bench

    sizes = BenchSizes.quick() if quick else BenchSizes()
    changes = {k: v for k, v in {"rows": rows, "limit": limit, "large_rows": large_rows}.items()
               if v is not None}
    sizes = dataclasses.replace(sizes, **changes)
    plot_path.parent.mkdir(parents=True, exist_ok=True)
    # Each run migrates a schema of its own, as in the demo.
    with connect(settings, schema=False) as live:
        results = run_bench(live, scenarios=scenarios, notifiers=notifiers, sizes=sizes,
                            plot_path=plot_path,
                            progress=lambda text: None if as_json else click.echo(text,
                                                                                  err=True))
    click.echo(json.dumps(results, indent=2))


@cli.group()
def servers() -> None:
    """The embedded Redis and PostgreSQL of HOOKDROP_STATE_DIR (used when no URLs are set).

    Every command that needs them starts them itself and stops them when it ends; start them
    here to keep them running across commands (they are then reused and left running).
    """


def _server_lines(redis_url: str | None, database_url: str | None) -> list[str]:
    return [f"{name}: {url or 'not running'}"
            for name, url in (("redis", redis_url), ("postgresql", database_url))]


@servers.command("start")
@with_settings
def servers_start(settings: Settings) -> None:
    """Start them (if they do not run yet) to run until `hookdrop servers stop`."""
    from hookdrop.embedded import start_detached

    configure_logs(settings, "servers")
    found = start_detached(settings.state_dir)
    click.echo("\n".join(_server_lines(found.redis_url, found.database_url)))


@servers.command("stop")
@with_settings
def servers_stop(settings: Settings) -> None:
    """Stop them, whoever started them (their data stays in the state folder)."""
    from hookdrop.embedded import stop_embedded

    configure_logs(settings, "servers")
    stopped = stop_embedded(settings.state_dir)
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else
               f"no embedded server runs in {settings.state_dir}")


@servers.command("status")
@with_settings
def servers_status(settings: Settings) -> None:
    """Say which run and their URLs; exit 3 when neither runs."""
    from hookdrop.embedded import find_running

    configure_logs(settings, "servers")
    found = find_running(settings.state_dir)
    click.echo(f"state folder {found.state_dir}")
    click.echo("\n".join(_server_lines(found.redis_url, found.database_url)))
    if not (found.redis_url or found.database_url):
        sys.exit(3)


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
