"""``hookdrop servers``: the embedded Redis and PostgreSQL, kept running across commands."""

from __future__ import annotations

import sys

import click

from hookdrop.cli._common import configure_logs, hide_password, with_settings
from hookdrop.settings import Settings


@click.group()
def servers() -> None:
    """The embedded Redis and PostgreSQL of HOOKDROP_STATE_DIR (used when no URLs are set).

    Every command that needs them starts them (or uses the running ones); the last command
    using them stops them when it ends, however it ends. Start them here to keep them running
    across commands, until `hookdrop servers stop`.
    """


def _server_lines(redis_url: str | None, database_url: str | None) -> list[str]:
    # The passwords stay in the state folder's *.password files (readable by this user).
    return [
        f"{name}: {hide_password(url) if url else 'not running'}"
        for name, url in (("redis", redis_url), ("postgresql", database_url))
    ]


@servers.command("start")
@with_settings
def servers_start(settings: Settings) -> None:
    """Start them (if they do not run yet), migrate the schema and keep them until
    `hookdrop servers stop`."""
    from hookdrop.embedded import start_detached
    from hookdrop.store import Store

    configure_logs(settings, "servers")
    found = start_detached(settings.state_dir)
    assert found.database_url is not None  # start_detached starts both or raises
    # So every command works against them at once (status, files, ...).
    with Store(found.database_url, application_name="hookdrop-servers") as store:
        store.migrate()
    click.echo("\n".join(_server_lines(found.redis_url, found.database_url)))


@servers.command("stop")
@click.option(
    "--remove",
    is_flag=True,
    help="Also delete their data, wherever it is (see `hookdrop servers status`).",
)
@with_settings
def servers_stop(settings: Settings, remove: bool) -> None:
    """Stop them, whoever started or uses them (PostgreSQL's data stays unless --remove)."""
    from hookdrop.embedded import remove_embedded, stop_embedded

    configure_logs(settings, "servers")
    if remove:
        for folder in remove_embedded(settings.state_dir):
            click.echo(f"removed {folder}")
        return
    stopped = stop_embedded(settings.state_dir)
    click.echo(
        f"stopped: {', '.join(stopped)}"
        if stopped
        else f"no embedded server runs in {settings.state_dir}"
    )


@servers.command("status")
@with_settings
def servers_status(settings: Settings) -> None:
    """Say which run and their URLs; exit 3 when neither runs."""
    from hookdrop.embedded import embedded_postgres_dir, find_running, servers_use

    configure_logs(settings, "servers")
    found = find_running(settings.state_dir)
    click.echo(f"state folder {found.state_dir}")
    pg_dir = embedded_postgres_dir(found.state_dir) if found.state_dir.is_dir() else None
    if pg_dir is not None and pg_dir.exists():
        click.echo(f"postgresql data {pg_dir}")
    click.echo("\n".join(_server_lines(found.redis_url, found.database_url)))
    if not (found.redis_url or found.database_url):
        sys.exit(3)
    click.echo(f"running: {servers_use(settings.state_dir)}")


COMMANDS = (servers,)
