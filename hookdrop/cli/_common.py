"""What every command shares: settings from env and flags, the servers, logging."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any

import click

from hookdrop.errors import ConfigError, NotRunning, SchemaOutdated
from hookdrop.settings import SETTINGS, Settings, environ_snapshot, without_password

F = Callable[..., Any]


def settings_options(func: F) -> F:
    """Add one flag per setting; each help text names its environment variable."""
    for spec in reversed(SETTINGS):
        func = click.option(
            spec.flag,
            spec.field,
            default=None,
            metavar="VALUE",
            help=f"{spec.help} [env: {spec.env}]",
        )(func)
    return func


def load_settings(raw: dict[str, Any]) -> Settings:
    overrides = {spec.field: raw.pop(spec.field, None) for spec in SETTINGS}
    return Settings.load(environ_snapshot(), overrides)


#: How many notifier processes a command that starts a whole stack runs.
notifiers_option = click.option(
    "--notifiers",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    help="Notifier worker processes.",
)


def with_settings(func: F) -> F:
    """Build the Settings object from env + flags and pass it as the first argument."""

    @settings_options
    @functools.wraps(func)
    def wrapper(**raw: Any) -> Any:
        return func(load_settings(raw), **raw)

    return wrapper


@contextlib.contextmanager
def connect(
    settings: Settings, *, migrate: bool = False, schema: bool = True, start: bool = True
) -> Iterator[Settings]:
    """The settings with both server URLs, for as long as the block runs.

    A URL that is not set means the embedded server of HOOKDROP_STATE_DIR: reused when it
    runs, else (``start``) started for this command and stopped when the block ends. Without
    ``start`` nothing is started: with no server running the command ends in one line.
    Checks both servers answer, then migrates (``migrate``) or checks (``schema``) the schema.
    """
    from hookdrop.connections import database_url
    from hookdrop.embedded import embedded_servers, find_running
    from hookdrop.store import Store

    with contextlib.ExitStack() as owned:
        # Given URLs first: a wrong one fails the command before anything is started.
        _check_reachable(settings.redis_url, settings.database_url)
        given_database_url = bool(settings.database_url)
        missing = [
            name
            for name, url in (
                ("REDIS_URL", settings.redis_url),
                ("DATABASE_URL", settings.database_url),
            )
            if not url
        ]
        if missing and start:
            servers = owned.enter_context(
                embedded_servers(
                    settings.state_dir,
                    redis=not settings.redis_url,
                    postgres=not settings.database_url,
                )
            )
        elif missing:
            servers = find_running(settings.state_dir)
            absent = [
                name
                for name, given, found in (
                    ("Redis", settings.redis_url, servers.redis_url),
                    ("PostgreSQL", settings.database_url, servers.database_url),
                )
                if not given and not found
            ]
            if absent:
                raise NotRunning(
                    f"no {' and no '.join(absent)}: {' and '.join(missing)} not set and "
                    f"no embedded server runs in {settings.state_dir} (start them with "
                    "`hookdrop up` or `hookdrop servers start`)"
                )
        if missing:
            where = f"the embedded {{}} of {settings.state_dir}"
            _check_reachable(
                None if settings.redis_url else servers.redis_url,
                None if settings.database_url else servers.database_url,
                redis_name=where.format("Redis"),
                database_name=where.format("PostgreSQL"),
            )
            settings = settings.replace(
                redis_url=settings.redis_url or servers.redis_url,
                database_url=settings.database_url or servers.database_url,
            )
        if migrate or schema:
            with Store(database_url(settings)) as store:
                if migrate:
                    store.migrate()
                else:
                    try:
                        store.check_schema()
                    except SchemaOutdated:
                        if not given_database_url:
                            raise SchemaOutdated(
                                f"the embedded PostgreSQL of {settings.state_dir}: schema not "
                                "up to date; run `hookdrop db migrate`"
                            ) from None
                        raise
        yield settings


def _check_reachable(
    redis_url: str | None,
    database_url: str | None,
    *,
    redis_name: str = "REDIS_URL",
    database_name: str = "DATABASE_URL",
) -> None:
    """Raise ConfigError naming the server (a setting, or an embedded server) that fails."""
    from hookdrop.embedded import postgres_problem, redis_problem

    if redis_url and (problem := redis_problem(redis_url)):
        raise ConfigError(
            f"{_named(redis_name, redis_url)}: cannot use Redis: {_masked(problem, redis_url)}"
        )
    if database_url and (problem := postgres_problem(database_url)):
        raise ConfigError(
            f"{_named(database_name, database_url)}: cannot use PostgreSQL: "
            f"{_masked(problem, database_url)}"
        )


def _named(name: str, url: str) -> str:
    shown = hide_password(url)
    return f"{name}={shown}" if name.isupper() else f"{name} ({shown})"


def _masked(text: str, url: str) -> str:
    """``text`` without the password of ``url``, should a library have quoted it."""
    password = _password(url)
    return without_password(text.replace(password, "***") if password else text)


def check_inbox(settings: Settings) -> None:
    from hookdrop.intake import ensure_dirs

    try:
        ensure_dirs(settings)
    except OSError as exc:
        raise ConfigError(
            f"HOOKDROP_INBOX={settings.inbox}: cannot create ({exc.strerror})"
        ) from None
    if not os.access(settings.inbox, os.W_OK | os.X_OK):
        raise ConfigError(f"HOOKDROP_INBOX={settings.inbox}: not writable by this user")


def _password(url: str) -> str | None:
    """The password of a URL or of a key=value connection string (``password=...``)."""
    from urllib.parse import parse_qsl, urlsplit

    if "://" not in url:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        try:
            value = conninfo_to_dict(url).get("password")
        except psycopg.Error:
            return None
        return str(value) if value else None
    try:
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        return parts.password or query.get("password") or None
    except ValueError:
        return None


def hide_password(url: str) -> str:
    """``url`` with its password (in the user part, a ``password=`` option, or a key=value
    connection string's ``password=``) as ``***``."""
    return without_password(url)


def configure_logs(settings: Settings, process: str) -> None:
    from hookdrop.logs import configure

    configure(settings.log_format, settings.log_level, process=process)
