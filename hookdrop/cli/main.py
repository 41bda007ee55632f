"""The ``hookdrop`` group: every command, registered here and only here."""

from __future__ import annotations

import sys

import click

from hookdrop.cli import develop, operate, processes, servers
from hookdrop.errors import CONFIG_ERROR_EXIT, ConfigError, HookdropError
from hookdrop.lifeline import follow_parent
from hookdrop.settings import environ_snapshot


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="hookdrop")
def cli() -> None:
    """hookdrop: files dropped into a folder become webhook calls, one per row, never missed
    and never sent twice.

    Every setting is an environment variable and a flag of the command that uses it.
    """


for _command in (*processes.COMMANDS, *operate.COMMANDS, *servers.COMMANDS, *develop.COMMANDS):
    cli.add_command(_command)


def main() -> None:
    follow_parent(environ_snapshot())
    try:
        cli.main(standalone_mode=False)
    except ConfigError as exc:
        click.echo(f"hookdrop: configuration error: {exc}", err=True)
        sys.exit(CONFIG_ERROR_EXIT)
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
