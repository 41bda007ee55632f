"""The endpoints hookdrop calls, read from a TOML file (``HOOKDROP_CONFIG``).

One ``[endpoints.NAME]`` table per endpoint. ``${VAR}`` in any string is replaced from the
environment when the file is loaded, so secrets stay out of it. Every key is checked: an
unknown key, a missing variable, a bad URL or a template that does not compile raises
:class:`~hookdrop.errors.ConfigError` with one line naming the endpoint and the key.

The endpoint ``default`` (files at the top of the inbox) comes from ``HOOKDROP_WEBHOOK_URL``
and the single-endpoint settings unless the file has ``[endpoints.default]``; with no file,
it is the only endpoint and hookdrop works as it always did.
"""

from __future__ import annotations

import json as jsonlib
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit, urlunsplit

from hookdrop.endpoints.render import ENV_VARIABLE, Renderer
from hookdrop.errors import ConfigError
from hookdrop.inbox import ENDPOINT_NAME, WORK_FOLDERS
from hookdrop.settings import Settings, parse_secret

DEFAULT: Final = "default"
METHODS: Final = ("POST", "PUT", "PATCH")
FORMATS: Final = ("json", "form")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_TEMPLATES: Final = frozenset({"body", "fields"})
_KEYS: Final = frozenset(
    {
        "url",
        "rate_limit",
        "concurrency",
        "timeout",
        "signing_secret",
        "headers",
        "basic_auth",
        "method",
        "format",
        "body",
        "fields",
        "attempt_budget",
        "max_tries",
        "breaker_failures",
        "probe_seconds",
        "probe_max_seconds",
    }
)

# Sensible bounds for the numbers (a value outside is a typo, not a wish).
_RANGES: Final[Mapping[str, tuple[float, float]]] = {
    "rate_limit": (0.01, 100_000),
    "concurrency": (1, 4096),
    "timeout": (0.01, 3600),
    "attempt_budget": (1, 1000),
    "max_tries": (1, 100),
    "breaker_failures": (1, 1_000_000),
    "probe_seconds": (0.01, 86_400),
    "probe_max_seconds": (0.01, 86_400),
}
# Headers the transport or hookdrop itself sets: a user value would break or forge them.
_OWN_HEADERS: Final = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }
)
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")  # visible ASCII, spaces and tabs


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One receiver: where and how to call it, and how hard."""

    name: str
    url: str
    rate_limit: float = 0.0  # requests/s across every notifier; 0 = until a 429
    concurrency: int = 64  # requests in flight per notifier process
    timeout: float = 10.0
    signing_secret: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    basic_auth: tuple[str, str] | None = None
    method: str = "POST"
    format: str = "json"
    body: str | None = None
    fields: tuple[tuple[str, str], ...] = ()
    attempt_budget: int = 12
    max_tries: int = 3
    breaker_failures: int = 5  # consecutive failures that open the breaker; 0 = never
    probe_seconds: float = 1.0  # first wait before a probe; doubles up to probe_max_seconds
    probe_max_seconds: float = 60.0
    renderer: Renderer = field(default_factory=Renderer, compare=False, repr=False)
    written_url: str = ""  # the URL as the file has it: ${VAR} not expanded

    @property
    def masked_url(self) -> str:
        """The URL as written (secrets from the environment stay ``${VAR}``), with user,
        password and query values hidden."""
        return mask_url(self.written_url or self.url)

    @property
    def content_type(self) -> str:
        return "application/json" if self.format == "json" else "application/x-www-form-urlencoded"


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Every configured endpoint by name; ``default`` may be absent (no URL given)."""

    by_name: Mapping[str, Endpoint]
    source: Path | None = None

    def __getitem__(self, name: str) -> Endpoint:
        try:
            return self.by_name[name]
        except KeyError:
            raise ConfigError(f"endpoint {name!r} is not configured") from None

    def __contains__(self, name: object) -> bool:
        return name in self.by_name

    def __iter__(self) -> Any:
        return iter(self.by_name.values())

    @property
    def names(self) -> list[str]:
        return sorted(self.by_name)

    @property
    def folders(self) -> list[str]:
        """Names that get a folder in the inbox (every endpoint but ``default``)."""
        return [name for name in self.names if name != DEFAULT]


def mask_url(url: str) -> str:
    """``url`` fit to show: any user and password, and every query value, as ``***``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "(a URL that does not parse)"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # IPv6
    if port is not None:
        host = f"{host}:{port}"
    if parts.username is not None or parts.password is not None:
        host = f"***@{host}"
    query = "&".join(
        f"{name}=***" if sep else name
        for name, sep, _value in (pair.partition("=") for pair in parts.query.split("&"))
    )
    return urlunsplit(parts._replace(netloc=host, query=query if parts.query else ""))


def load_endpoints(settings: Settings, environ: Mapping[str, str]) -> Endpoints:
    """The endpoints of ``settings.config`` (if any) plus ``default`` from the settings."""
    tables: dict[str, Any] = {}
    if settings.config is not None:
        tables = _read(settings.config)
    found: dict[str, Endpoint] = {}
    for name, table in tables.items():
        found[name] = _endpoint(name, table, settings, environ)
    if DEFAULT not in found and settings.webhook_url:
        found[DEFAULT] = _default(settings)
    return Endpoints(found, settings.config)


def _userinfo(url: str) -> tuple[str, tuple[str, str] | None]:
    """``url`` without its user:password@, and that pair (sent as basic auth), if any."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return url, None
    if parts.username is None and parts.password is None:
        return url, None
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = f"{host}:{port}" if port is not None else host
    pair = (unquote(parts.username or ""), unquote(parts.password or ""))
    return urlunsplit(parts._replace(netloc=netloc)), pair


def _default(settings: Settings) -> Endpoint:
    url, basic = _userinfo(settings.webhook_url or "")
    return Endpoint(
        name=DEFAULT,
        url=url,
        basic_auth=basic,
        written_url=settings.webhook_url or "",
        rate_limit=settings.rate_limit,
        concurrency=settings.concurrency,
        timeout=settings.request_timeout,
        signing_secret=settings.signing_secret,
        attempt_budget=settings.attempt_budget,
        max_tries=settings.max_tries,
        breaker_failures=settings.breaker_failures,
    )


def _read(path: Path) -> dict[str, Any]:
    where = f"HOOKDROP_CONFIG={path}"
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise ConfigError(f"{where}: cannot be read: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"endpoints"})
    if unknown:
        raise ConfigError(f"{where}: unknown table {unknown[0]!r} (only [endpoints.NAME])")
    endpoints = data.get("endpoints", {})
    if not isinstance(endpoints, dict):
        raise ConfigError(f"{where}: endpoints must be tables [endpoints.NAME]")
    for name, table in endpoints.items():
        if not ENDPOINT_NAME.fullmatch(name) or name in WORK_FOLDERS:
            raise ConfigError(
                f"endpoint {name!r}: the name must be 1 to 40 letters, digits, '_' or '-' "
                f"(no '--', not ending in '-'), and not one of {', '.join(WORK_FOLDERS)}"
            )
        if not isinstance(table, dict):
            raise ConfigError(f"endpoint {name!r}: must be a table [endpoints.{name}]")
    return endpoints


def _endpoint(
    name: str, table: dict[str, Any], settings: Settings, environ: Mapping[str, str]
) -> Endpoint:
    def fail(key: str, problem: str) -> ConfigError:
        return ConfigError(f"endpoint {name!r}, key {key!r}: {problem}")

    unknown = sorted(set(table) - _KEYS)
    if unknown:
        return _raise(fail(unknown[0], f"unknown key (known: {', '.join(sorted(_KEYS))})"))
    values = {
        key: _expand(value, environ, lambda p, k=key: fail(k, p))
        for key, value in table.items()
        if key not in _TEMPLATES
    }
    fmt = _string(values, "format", fail, "json")
    env_values: dict[str, str] = {}
    for key in _TEMPLATES & table.keys():
        # ${VAR} in a template is a value, never template text: the environment cannot
        # change what the template does
        values[key] = _as_values(
            table[key], environ, env_values, json=fmt == "json", fail=fail, key=key
        )
    if "url" not in values:
        raise fail("url", "required")
    url = _string(values, "url", fail)
    if any(ord(char) < 0x21 or ord(char) == 0x7F for char in url):
        # urlsplit drops tabs and line breaks silently; the request would then fail
        raise fail("url", "contains a space or a control character")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        raise fail("url", f"not a valid URL ({exc})") from None
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise fail("url", "must be an http:// or https:// URL with a host")
    written = table["url"] if isinstance(table["url"], str) else url
    method = _string(values, "method", fail, "POST").upper()
    if method not in METHODS:
        raise fail("method", f"must be one of {', '.join(METHODS)}")
    if fmt not in FORMATS:
        raise fail("format", f"must be one of {', '.join(FORMATS)}")
    secret = values.get("signing_secret")
    if secret is not None:
        try:
            secret = parse_secret(_string(values, "signing_secret", fail))
        except ValueError as exc:
            raise fail("signing_secret", str(exc)) from None
    headers = _table(values, "headers", fail)
    for header, text in headers.items():
        if not _HEADER_NAME.fullmatch(header):
            raise fail("headers", f"{header!r} is not a header name")
        if header.lower() in _OWN_HEADERS:
            raise fail("headers", f"{header!r} is set by hookdrop and cannot be given")
        if not _HEADER_VALUE.fullmatch(text):
            raise fail(
                "headers",
                f"the value of {header!r} must be printable ASCII "
                "(no line breaks, control characters or non-ASCII letters)",
            )
        if header.lower() == "authorization" and "basic_auth" in values:
            raise fail("headers", "Authorization and basic_auth cannot both be given")
    auth = _table(values, "basic_auth", fail)
    basic: tuple[str, str] | None = None
    if "basic_auth" in values:
        if set(auth) != {"username", "password"}:
            raise fail("basic_auth", "needs exactly username and password")
        basic = (auth["username"], auth["password"])
    url, in_url = _userinfo(url)
    if in_url is not None:
        if basic is not None:
            raise fail("url", "has user:password@ and basic_auth is given too: keep one")
        if any(header.lower() == "authorization" for header in headers):
            raise fail("url", "has user:password@ and an Authorization header too: keep one")
        basic = in_url
    lowered = [header.lower() for header in headers]
    if len(set(lowered)) < len(lowered):
        raise fail("headers", "a header is given twice (names are case-insensitive)")
    body = values.get("body")
    if body is not None and not isinstance(body, str):
        raise fail("body", "must be a string (a Jinja2 template)")
    fields = _table(values, "fields", fail)
    if fmt == "json" and "fields" in values:
        raise fail("fields", 'only for format = "form" (use body for JSON)')
    if fmt == "form" and body is not None:
        raise fail("body", 'format = "form" takes fields, not body')
    if fmt == "form" and not fields:
        raise fail("fields", 'format = "form" needs fields (field name -> template)')
    try:
        renderer = Renderer(fmt, body, tuple(fields.items()), env_values)
    except ValueError as exc:
        raise fail("fields" if fmt == "form" else "body", str(exc)) from None
    probe = _number(values, "probe_seconds", fail, 1.0)
    probe_max = _number(values, "probe_max_seconds", fail, 60.0)
    if probe > probe_max:
        raise fail("probe_seconds", f"must not be more than probe_max_seconds ({probe_max:g})")
    return Endpoint(
        name=name,
        url=url,
        rate_limit=_number(
            values, "rate_limit", fail, settings.rate_limit if name == DEFAULT else 0.0, zero=True
        ),
        concurrency=int(_number(values, "concurrency", fail, settings.concurrency, whole=True)),
        timeout=_number(values, "timeout", fail, settings.request_timeout),
        signing_secret=secret,
        headers=tuple(headers.items()),
        basic_auth=basic,
        method=method,
        format=fmt,
        body=body,
        fields=tuple(fields.items()),
        attempt_budget=int(
            _number(values, "attempt_budget", fail, settings.attempt_budget, whole=True)
        ),
        max_tries=int(_number(values, "max_tries", fail, settings.max_tries, whole=True)),
        breaker_failures=int(
            _number(
                values, "breaker_failures", fail, settings.breaker_failures, whole=True, zero=True
            )
        ),
        probe_seconds=probe,
        probe_max_seconds=probe_max,
        renderer=renderer,
        written_url=written,
    )


def _raise(error: ConfigError) -> Endpoint:
    raise error


def _expand(value: Any, environ: Mapping[str, str], fail: Any) -> Any:
    """``${VAR}`` replaced in every string, inside tables too."""
    if isinstance(value, str):

        def one(match: re.Match[str]) -> str:
            var = match.group(1)
            if var not in environ:
                raise fail(f"environment variable {var} is not set")
            return environ[var]

        return _VAR.sub(one, value)
    if isinstance(value, dict):
        return {k: _expand(v, environ, fail) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, environ, fail) for v in value]
    return value


def _as_values(
    value: Any,
    environ: Mapping[str, str],
    found: dict[str, str],
    *,
    json: bool,
    fail: Any,
    key: str,
) -> Any:
    """``${VAR}`` in a template (or a table of them) made a reference to the variable's value
    (``found``); in a JSON body the value is escaped for use inside a JSON string."""
    if isinstance(value, dict):
        return {
            k: _as_values(v, environ, found, json=json, fail=fail, key=key)
            for k, v in value.items()
        }
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        var = match.group(1)
        if var not in environ:
            raise fail(key, f"environment variable {var} is not set")
        text = environ[var]
        found[var] = jsonlib.dumps(text, ensure_ascii=False)[1:-1] if json else text
        return "{{ " + ENV_VARIABLE + "[" + repr(var) + "] }}"

    return _VAR.sub(one, value)


def _string(values: dict[str, Any], key: str, fail: Any, default: str | None = None) -> str:
    value = values.get(key, default)
    if not isinstance(value, str):
        raise fail(key, "must be a string")
    return value


def _table(values: dict[str, Any], key: str, fail: Any) -> dict[str, str]:
    value = values.get(key, {})
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise fail(key, "must be a table of strings")
    return value


def _number(
    values: dict[str, Any],
    key: str,
    fail: Any,
    default: float,
    *,
    whole: bool = False,
    zero: bool = False,
) -> float:
    value = values.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise fail(key, "must be a number")
    if not math.isfinite(value):
        raise fail(key, "must be a finite number")
    if whole and not isinstance(value, int):
        raise fail(key, "must be a whole number")
    if value < 0 or (value == 0 and not zero):
        raise fail(key, "must be 0 or more" if zero else "must be greater than 0")
    least, most = _RANGES[key]
    if key in values and value != 0 and not least <= value <= most:
        raise fail(key, f"must be between {least:g} and {most:g}" + (" (or 0)" if zero else ""))
    return float(value)
