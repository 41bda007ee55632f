"""One frozen settings object, built from environment variables and CLI flags.

Each setting has one environment variable and one CLI flag (see ``SETTINGS``); the CLI builds
its options from that table so ``hookdrop --help`` shows every variable. Nothing else in
hookdrop reads ``os.environ``: entry points call :meth:`Settings.load` and pass the result down.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

from hookdrop.errors import ConfigError
from hookdrop.keys import Keys


@dataclass(frozen=True, slots=True)
class Spec:
    """How one setting is named, parsed and documented."""

    field: str
    env: str
    flag: str
    help: str
    parse: Callable[[str], Any]


def _path(value: str) -> Path:
    return Path(value).expanduser().absolute()


def _positive_float(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise ValueError("must be greater than 0")
    return number


def _lease(value: str) -> float:
    if not 1 <= float(value) < float("inf"):  # NaN too
        raise ValueError("must be at least 1 (a shorter lease runs out while renewed) and finite")
    return float(value)


def _non_negative_float(value: str) -> float:
    number = float(value)
    if number < 0:
        raise ValueError("must be 0 or more")
    return number


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError("must be a whole number greater than 0")
    return number


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    return value


def _redis_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in {"redis", "rediss", "unix"}:
        raise ValueError("must start with redis://, rediss:// or unix://")
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError("must name a host, e.g. redis://127.0.0.1:6379/0")
    _check_port(parts)
    database = parts.path.strip("/")
    if parts.scheme != "unix" and database and not database.isdigit():
        raise ValueError("the path must be a database number, e.g. redis://127.0.0.1:6379/0")
    return value


def _check_port(parts: SplitResult) -> None:
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise ValueError("the port must be a number from 1 to 65535") from None


def _database_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in {"postgresql", "postgres"}:
        raise ValueError("must start with postgresql://, e.g. postgresql://user@127.0.0.1/hookdrop")
    _check_port(parts)
    return value


# ``password=...`` in a key=value connection string (``host=h password=s3cret``) or in a
# URL's options: the value is quoted ('it''s', 'a\'b') or runs to a space or ``&``.
_KEYWORD_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s&]+)", re.IGNORECASE)


def without_password(value: str) -> str:
    """``value`` with every password in it as ``***``: a URL's user part, and ``password=``
    in a key=value connection string or a URL's options (other text unchanged)."""
    try:
        password = urlsplit(value).password
    except ValueError:
        password = None
    if password:
        value = value.replace(f":{password}@", ":***@")
    return _KEYWORD_PASSWORD.sub(r"\g<1>***", value)


def parse_secret(value: str) -> str:
    """A Standard Webhooks secret, checked; ValueError says what is wrong."""
    if not value.startswith("whsec_"):
        raise ValueError("must be a Standard Webhooks secret starting with whsec_")
    import base64
    import binascii

    try:
        raw = base64.b64decode(value.removeprefix("whsec_"), validate=True)
    except binascii.Error:
        raise ValueError("the part after whsec_ must be base64") from None
    if len(raw) < 24:
        raise ValueError("the key must be at least 24 bytes (32 recommended)")
    return value


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("must be a whole number, 0 or more")
    return number


def _listen(value: str) -> tuple[str, int]:
    match = re.fullmatch(r"\[?([^\]]*?)\]?:(\d+)", value)
    if not match:
        raise ValueError("must be host:port, e.g. 127.0.0.1:8425")
    port = int(match.group(2))
    if not 0 <= port <= 65535:
        raise ValueError("port must be between 0 and 65535")
    return match.group(1) or "127.0.0.1", port


def split_host(value: str) -> tuple[str, int | None] | None:
    """``name``, ``name:port``, ``[v6]`` or ``[v6]:port`` as (lowercase name, port), or None."""
    match = re.fullmatch(r"(\[[0-9a-f:.]+\]|[a-z0-9._-]+)(?::(\d{1,5}))?", value.strip().lower())
    if not match:
        return None
    port = int(match.group(2)) if match.group(2) else None
    if port is not None and port > 65535:
        return None
    return match.group(1).strip("[]"), port


def _hosts(value: str) -> tuple[str, ...]:
    hosts = tuple(part.strip().lower() for part in value.split(",") if part.strip())
    for host in hosts:
        if split_host(host) is None:
            raise ValueError(
                f"{host!r} is not a host name or host:port (no scheme, no path; IPv6 in brackets)"
            )
    return hosts


def _prefix(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", value):
        raise ValueError("use 1 to 40 letters, digits, '_', '.' or '-'")
    return value


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return parse


SETTINGS: tuple[Spec, ...] = (
    Spec(
        "config",
        "HOOKDROP_CONFIG",
        "--config",
        "TOML file of endpoints ([endpoints.NAME] tables; see docs/endpoints.md). Unset: one "
        "endpoint, default, from HOOKDROP_WEBHOOK_URL and the settings below.",
        _path,
    ),
    Spec(
        "inbox",
        "HOOKDROP_INBOX",
        "--inbox",
        "Folder watched for dropped files; processing/, done/ and failed/ are made inside it.",
        _path,
    ),
    Spec(
        "webhook_url",
        "HOOKDROP_WEBHOOK_URL",
        "--webhook-url",
        "URL called once per alert (POST, JSON body).",
        _http_url,
    ),
    Spec(
        "rate_limit",
        "HOOKDROP_RATE_LIMIT",
        "--rate-limit",
        "Global requests per second across all notifiers; 0 means no limit until the receiver "
        "answers 429.",
        _non_negative_float,
    ),
    Spec(
        "concurrency",
        "HOOKDROP_CONCURRENCY",
        "--concurrency",
        "Requests in flight at once per notifier process.",
        _positive_int,
    ),
    Spec(
        "signing_secret",
        "HOOKDROP_SIGNING_SECRET",
        "--signing-secret",
        "Standard Webhooks secret (whsec_...); when set every request is signed.",
        parse_secret,
    ),
    Spec(
        "state_dir",
        "HOOKDROP_STATE_DIR",
        "--state-dir",
        "Folder for the embedded Redis and PostgreSQL when no URLs are given.",
        _path,
    ),
    Spec(
        "api_listen",
        "HOOKDROP_API_LISTEN",
        "--api-listen",
        "host:port of the daemon's HTTP API and status page.",
        _listen,
    ),
    Spec(
        "api_token",
        "HOOKDROP_API_TOKEN",
        "--api-token",
        "Bearer token the HTTP API requires; mandatory when it listens beyond loopback.",
        str,
    ),
    Spec(
        "api_allowed_hosts",
        "HOOKDROP_API_ALLOWED_HOSTS",
        "--api-allowed-hosts",
        "Comma-separated Host names (name or name:port) the HTTP API answers besides its "
        "listen address, e.g. a reverse proxy's name.",
        _hosts,
    ),
    Spec(
        "redis_url",
        "REDIS_URL",
        "--redis-url",
        "Redis server (queues, progress, flags). Unset: an embedded one is started.",
        _redis_url,
    ),
    Spec(
        "database_url",
        "DATABASE_URL",
        "--database-url",
        "PostgreSQL server (the ledger). Unset: an embedded one is started.",
        _database_url,
    ),
    Spec(
        "key_prefix",
        "HOOKDROP_KEY_PREFIX",
        "--key-prefix",
        "Prefix of every Redis key and queue name.",
        _prefix,
    ),
    Spec(
        "settle_seconds",
        "HOOKDROP_SETTLE_SECONDS",
        "--settle-seconds",
        "How long a file's size and mtime must stay still before it is read.",
        _non_negative_float,
    ),
    Spec(
        "scan_interval",
        "HOOKDROP_SCAN_INTERVAL",
        "--scan-interval",
        "Seconds between full scans of the inbox and recovery rounds.",
        _positive_float,
    ),
    Spec(
        "chunk_size",
        "HOOKDROP_CHUNK_SIZE",
        "--chunk-size",
        "Alerts per notifier job.",
        _positive_int,
    ),
    Spec(
        "queue_high_water",
        "HOOKDROP_QUEUE_HIGH_WATER",
        "--queue-high-water",
        "Notifier jobs queued above which batchers stop reading.",
        _positive_int,
    ),
    Spec(
        "request_timeout",
        "HOOKDROP_REQUEST_TIMEOUT",
        "--request-timeout",
        "Seconds before a webhook call counts as timed out.",
        _positive_float,
    ),
    Spec(
        "max_tries",
        "HOOKDROP_MAX_TRIES",
        "--max-tries",
        "Tries of a failing alert within one job before it goes to the DLQ.",
        _positive_int,
    ),
    Spec(
        "attempt_budget",
        "HOOKDROP_ATTEMPT_BUDGET",
        "--attempt-budget",
        "Total failed tries of an alert (across DLQ re-injections) before it is dead.",
        _positive_int,
    ),
    Spec(
        "breaker_failures",
        "HOOKDROP_BREAKER_FAILURES",
        "--breaker-failures",
        "Consecutive failures (connection errors, timeouts, 5xx) that open an endpoint's "
        "circuit breaker; 0 never opens it.",
        _non_negative_int,
    ),
    Spec(
        "dlq_interval",
        "HOOKDROP_DLQ_INTERVAL",
        "--dlq-interval",
        "Seconds between DLQ re-injection rounds.",
        _positive_float,
    ),
    Spec(
        "lease_seconds",
        "HOOKDROP_LEASE_SECONDS",
        "--lease-seconds",
        "How long a notifier's lease on its chunk lasts without renewal (at least 1); after "
        "a crash, its alerts are picked up again after this.",
        _lease,
    ),
    Spec(
        "backpressure_seconds",
        "HOOKDROP_BACKPRESSURE_SECONDS",
        "--backpressure-seconds",
        "Pause after a 429 that carries no Retry-After.",
        _positive_float,
    ),
    Spec(
        "max_pause_seconds",
        "HOOKDROP_MAX_PAUSE_SECONDS",
        "--max-pause-seconds",
        "Upper bound on a pause requested by Retry-After.",
        _positive_float,
    ),
    Spec(
        "log_format",
        "HOOKDROP_LOG_FORMAT",
        "--log-format",
        "auto (console on a terminal, JSON otherwise), json or console.",
        _choice("auto", "json", "console"),
    ),
    Spec(
        "log_level",
        "HOOKDROP_LOG_LEVEL",
        "--log-level",
        "debug, info, warning or error.",
        _choice("debug", "info", "warning", "error"),
    ),
)

_BY_FIELD = {spec.field: spec for spec in SETTINGS}
# Relative to where the command runs, like any path given on the command line.
_DEFAULT_INBOX = Path("inbox").absolute()
_DEFAULT_STATE = Path(".hookdrop").absolute()


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a hookdrop process needs to know, checked when built."""

    config: Path | None = None
    inbox: Path = _DEFAULT_INBOX
    webhook_url: str | None = None
    rate_limit: float = 0.0
    concurrency: int = 64
    signing_secret: str | None = None
    state_dir: Path = _DEFAULT_STATE
    api_listen: tuple[str, int] = ("127.0.0.1", 8425)
    api_token: str | None = None
    api_allowed_hosts: tuple[str, ...] = ()
    redis_url: str | None = None
    database_url: str | None = None
    key_prefix: str = "hookdrop"
    settle_seconds: float = 1.0
    scan_interval: float = 5.0
    chunk_size: int = 500
    queue_high_water: int = 64
    request_timeout: float = 10.0
    max_tries: int = 3
    attempt_budget: int = 12
    breaker_failures: int = 5
    dlq_interval: float = 30.0
    lease_seconds: float = 30.0
    backpressure_seconds: float = 1.0
    max_pause_seconds: float = 300.0
    log_format: str = "auto"
    log_level: str = "info"

    def __post_init__(self) -> None:
        host, _port = self.api_listen
        if host not in {"127.0.0.1", "::1", "localhost"} and not self.api_token:
            raise ConfigError(
                f"HOOKDROP_API_LISTEN={host}: listening beyond loopback needs HOOKDROP_API_TOKEN"
            )

    @property
    def keys(self) -> Keys:
        return Keys(self.key_prefix)

    @property
    def processing_dir(self) -> Path:
        return self.inbox / "processing"

    @property
    def done_dir(self) -> Path:
        return self.inbox / "done"

    @property
    def failed_dir(self) -> Path:
        return self.inbox / "failed"

    @classmethod
    def load(
        cls, environ: Mapping[str, str], overrides: Mapping[str, Any] | None = None
    ) -> Settings:
        """Build settings from environment variables, then CLI values (which win).

        ``overrides`` holds raw strings from the command line (``None`` = not given).
        Raises :class:`ConfigError` naming the first bad setting.
        """
        values: dict[str, Any] = {}
        for spec in SETTINGS:
            raw = (overrides or {}).get(spec.field)
            source = spec.flag
            if raw is None:
                raw = environ.get(spec.env)
                source = spec.env
            if raw is None or raw == "":
                continue
            if not isinstance(raw, str):
                values[spec.field] = raw
                continue
            try:
                values[spec.field] = spec.parse(raw)
            except ValueError as exc:
                shown = "whsec_..." if spec.field == "signing_secret" else without_password(raw)
                raise ConfigError(f"{source}={shown!r}: {exc}") from None
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def to_environ(self) -> dict[str, str]:
        """The environment variables that rebuild these settings in a child process."""
        env: dict[str, str] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None or value == ():
                continue
            spec = _BY_FIELD[field.name]
            if field.name == "api_listen":
                value = f"{value[0]}:{value[1]}"
            elif field.name == "api_allowed_hosts":
                value = ",".join(value)
            env[spec.env] = str(value)
        return env

    def require(self, *fields: str) -> None:
        """Refuse to go on when a setting this command needs is missing."""
        for name in fields:
            if getattr(self, name) in (None, ""):
                spec = _BY_FIELD[name]
                raise ConfigError(f"{spec.env} is not set ({spec.flag}): {spec.help}")


def environ_snapshot() -> dict[str, str]:
    """The process environment, read once at an entry point."""
    return dict(os.environ)
