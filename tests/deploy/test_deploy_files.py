"""Static checks of the deployment files: docker-compose.yml, Dockerfile, systemd units.

No Docker engine is needed: the compose file is validated against the Compose specification's
JSON schema (the one Compose v1 validates with, kept beside this file), and by ``docker compose
config`` / ``docker-compose config`` as well where one is installed. ``systemd-analyze verify``
runs when systemd is installed (``apt-get install -y systemd``); under CI (``CI`` set) its
absence is a failure, locally a skip.

Values are checked against each other and against hookdrop's own settings (a stop timeout longer
than a webhook call may take, the database the server creates is the one the URLs name), not
against literals copied from the files.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import jsonschema
import pytest
import yaml

from hookdrop import connections
from hookdrop.cli.main import cli
from hookdrop.settings import SETTINGS, Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_SCHEMA = Path(__file__).with_name("compose_spec.json")
DOCKERFILE = ROOT / "Dockerfile"
SYSTEMD = ROOT / "systemd"
MONITOR_UNIT = SYSTEMD / "hookdrop-monitor.service"
WORKER_UNIT = SYSTEMD / "hookdrop-worker@.service"
TARGET_UNIT = SYSTEMD / "hookdrop.target"
ENV_EXAMPLE = SYSTEMD / "hookdrop.env.example"

VENV_HOOKDROP = "/opt/hookdrop/venv/bin/hookdrop"
KNOWN_ENV = frozenset(spec.env for spec in SETTINGS)
# Read by the worker unit itself (feeds `--processes`), not by hookdrop.
UNIT_LOCAL_ENV = frozenset({"WORKER_PROCESSES"})
# The stable `hookdrop` subcommands deployment files may call (leading words, flags may follow).
COMMANDS = frozenset(
    {
        ("monitor",),
        ("worker", "batcher"),
        ("worker", "notifier"),
        ("mock",),
        ("up",),
        ("db", "migrate"),
        ("status",),
    }
)
QUEUES = ("batcher", "notifier")
HOOKDROP_SERVICES = ("migrate", "monitor", "batcher", "notifier", "mock")
LONG_RUNNING = ("monitor", "batcher", "notifier", "mock")
INBOX = "/var/lib/hookdrop/inbox"
LOOPBACK = {"127.0.0.1", "::1", "localhost"}

HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "SystemCallArchitectures": "native",
    "CapabilityBoundingSet": "",
    "ReadWritePaths": "/var/lib/hookdrop",
    "UMask": "0027",
    "User": "hookdrop",
    "Group": "hookdrop",
    "EnvironmentFile": "/etc/hookdrop/hookdrop.env",
    "Type": "notify",
    "NotifyAccess": "main",
    "Restart": "on-failure",
    "KillMode": "mixed",
    "KillSignal": "SIGTERM",
}


# --- helpers -----------------------------------------------------------------------------


def leading_command(words: list[str]) -> tuple[str, ...] | None:
    """The known subcommand ``words`` start with, or ``None``."""
    for size in (2, 1):
        if tuple(words[:size]) in COMMANDS:
            return tuple(words[:size])
    return None


_INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: str, environ: Mapping[str, str]) -> str:
    """Compose-style ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` substitution."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"] or "", match["arg"] or ""
        if environ.get(name):
            return environ[name]
        if op.endswith("-"):
            return arg
        if op.endswith("?"):
            raise KeyError(f"{name}: {arg}")
        return ""

    return _INTERPOLATION.sub(one, value)


def parse_unit(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment of a unit file, in order."""
    entries: list[tuple[str, str, str]] = []
    section = ""
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a key=value line: {raw!r}"
        entries.append((section, key.strip(), value.strip()))
    return entries


def unit_values(path: Path, section: str, key: str) -> list[str]:
    return [v for s, k, v in parse_unit(path) if s == section and k == key]


def unit_value(path: Path, section: str, key: str) -> str | None:
    """The effective value of a single-valued key (the last assignment wins)."""
    values = unit_values(path, section, key)
    return values[-1] if values else None


def unit_environment(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for value in unit_values(path, "Service", "Environment"):
        for item in shlex.split(value):
            name, _, setting = item.partition("=")
            env[name] = setting
    return env


def env_example_lines() -> Iterator[tuple[str, str, bool]]:
    """(name, value, active) for every ``KEY=value`` line, commented out or not."""
    for raw in ENV_EXAMPLE.read_text().splitlines():
        match = re.fullmatch(r"(#?)([A-Z][A-Z0-9_]*)=(.*)", raw.strip())
        if match:
            yield match[2], match[3], not match[1]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue
        line = pending + stripped
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        word, _, rest = line.partition(" ")
        instructions.append((word.upper(), rest.strip()))
    return instructions


def seconds(value: str) -> float:
    """``90s``, ``1m30s``, ``90`` (systemd and compose durations) in seconds."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|sec|min|s|m|h)", value)
    assert parts and "".join(n + u for n, u in parts) == value.replace(" ", ""), value
    return sum(float(n) * units[u] for n, u in parts)


DEFAULTS = Settings()


# --- docker-compose.yml ------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def service_env(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def env_raw(service: Mapping[str, Any], name: str) -> str:
    return service_env(service)[name]


def service_command(service: Mapping[str, Any]) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def published_ports(service: Mapping[str, Any]) -> list[tuple[str | None, str]]:
    """(host ip or None, container port) of every published port."""
    ports: list[tuple[str | None, str]] = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            ports.append((entry.get("host_ip"), str(entry["target"])))
            continue
        text = str(entry).split("/")[0]
        match = re.fullmatch(r"(?:\[?([0-9a-fA-F.:]+?)\]?:)?(?:([\d-]*):)?([\d-]+)", text)
        assert match, f"cannot parse port {entry!r}"
        ports.append((match[1], match[3]))
    return ports


def test_compose_has_the_expected_services(services: dict[str, Any]) -> None:
    expected = {"redis", "postgres", *HOOKDROP_SERVICES}
    assert expected <= set(services), f"missing services: {expected - set(services)}"


def test_every_service_builds_or_uses_an_image(services: dict[str, Any]) -> None:
    for name, service in services.items():
        assert "build" in service or "image" in service, f"{name}: neither build nor image"


def test_hookdrop_services_build_from_the_dockerfile(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    assert compose["x-hookdrop"]["build"] == ".", "x-hookdrop must hold the one `build: .`"
    for name in HOOKDROP_SERVICES:
        build = services[name].get("build")
        context = build.get("context") if isinstance(build, dict) else build
        assert context == ".", f"{name}: not built from ./Dockerfile"


def test_redis_persists(compose: dict[str, Any], services: dict[str, Any]) -> None:
    redis = services["redis"]
    command = service_command(redis)
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "everysec"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in redis["volumes"]}
    assert mounts.get("/data") in compose["volumes"], "redis /data must be a named volume"
    assert "redis-cli" in json.dumps(redis["healthcheck"]["test"])
    assert "ping" in json.dumps(redis["healthcheck"]["test"])


def test_postgres_has_volume_and_healthcheck(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    postgres = services["postgres"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in postgres["volumes"]}
    assert mounts.get("/var/lib/postgresql/data") in compose["volumes"]
    assert "pg_isready" in json.dumps(postgres["healthcheck"]["test"])
    env = {k: interpolate(v, {}) for k, v in service_env(postgres).items()}
    healthcheck = json.dumps(postgres["healthcheck"]["test"])
    assert f"-U {env['POSTGRES_USER']}" in healthcheck and f"-d {env['POSTGRES_DB']}" in healthcheck
    # The database, user and password the server is created with are the ones hookdrop uses.
    for name in HOOKDROP_SERVICES:
        url = urlsplit(interpolate(service_env(services[name])["DATABASE_URL"], {}))
        assert url.path.lstrip("/") == env["POSTGRES_DB"], name
        assert url.username == env["POSTGRES_USER"], name
        assert url.password == env["POSTGRES_PASSWORD"], name
    chosen = {"POSTGRES_PASSWORD": "s3cret"}
    database_url = interpolate(service_env(services["monitor"])["DATABASE_URL"], chosen)
    assert urlsplit(database_url).password == interpolate(
        env_raw(postgres, "POSTGRES_PASSWORD"), chosen
    )


@pytest.mark.parametrize("name", ["monitor", "batcher", "notifier"])
def test_daemons_wait_for_backends_and_migrations(services: dict[str, Any], name: str) -> None:
    depends = services[name]["depends_on"]
    assert isinstance(depends, dict), f"{name}: depends_on needs conditions"
    assert depends["redis"]["condition"] == "service_healthy"
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["migrate"]["condition"] == "service_completed_successfully"


def test_migrate_is_one_shot(services: dict[str, Any]) -> None:
    migrate = services["migrate"]
    assert leading_command(service_command(migrate)) == ("db", "migrate")
    assert migrate.get("restart", "no") == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_notifier_is_scalable(services: dict[str, Any]) -> None:
    notifier = services["notifier"]
    assert "container_name" not in notifier
    assert not notifier.get("ports"), "a fixed host port would stop `--scale notifier=N`"
    assert notifier["deploy"]["replicas"] >= 2


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_long_running_services_restart_and_drain(services: dict[str, Any], name: str) -> None:
    assert services[name]["restart"] == "unless-stopped"
    # Compose gives a stopping container as long as systemd gives a stopping worker.
    worker_stop = seconds(unit_value(WORKER_UNIT, "Service", "TimeoutStopSec") or "0")
    assert seconds(services[name]["stop_grace_period"]) == worker_stop


@pytest.mark.parametrize("name", HOOKDROP_SERVICES)
def test_compose_commands_are_hookdrop_subcommands(services: dict[str, Any], name: str) -> None:
    command = service_command(services[name])
    assert leading_command(command), f"{name}: `hookdrop {' '.join(command)}` is not known"


def test_compose_command_per_service(services: dict[str, Any]) -> None:
    assert leading_command(service_command(services["monitor"])) == ("monitor",)
    assert leading_command(service_command(services["batcher"])) == ("worker", "batcher")
    assert leading_command(service_command(services["notifier"])) == ("worker", "notifier")
    mock = service_command(services["mock"])
    assert leading_command(mock) == ("mock",)
    # Reachable from the other containers, not only from inside its own.
    assert mock[mock.index("--host") + 1] not in LOOPBACK


@pytest.mark.parametrize("name", HOOKDROP_SERVICES)
def test_compose_env_names_are_known_settings(services: dict[str, Any], name: str) -> None:
    unknown = set(service_env(services[name])) - KNOWN_ENV
    assert not unknown, f"{name}: not hookdrop settings: {sorted(unknown)}"


def test_compose_interpolated_names_are_known() -> None:
    names = {m["name"] for m in _INTERPOLATION.finditer(COMPOSE.read_text())}
    unknown = names - KNOWN_ENV - {"POSTGRES_PASSWORD"}
    assert not unknown, f"unknown variables interpolated: {sorted(unknown)}"


@pytest.mark.parametrize("name", HOOKDROP_SERVICES)
def test_compose_env_builds_valid_settings(services: dict[str, Any], name: str) -> None:
    host_env = {"HOOKDROP_API_TOKEN": "test-token"}
    env = {k: interpolate(v, host_env) for k, v in service_env(services[name]).items()}
    settings = Settings.load(env)
    # Every URL names a service of this file, on the port that service listens on.
    redis_url = urlsplit(connections.redis_url(settings))
    assert redis_url.hostname in services and redis_url.port in (None, 6379)
    assert "--port" not in service_command(services[redis_url.hostname])
    database_url = urlsplit(connections.database_url(settings))
    assert database_url.hostname in services and database_url.port in (None, 5432)
    webhook = urlsplit(settings.webhook_url or "")
    assert webhook.hostname in services, "the default receiver is the mock service"
    receiver = service_command(services[webhook.hostname])
    assert str(webhook.port) == receiver[receiver.index("--port") + 1]


def test_api_token_must_be_supplied(services: dict[str, Any]) -> None:
    env = service_env(services["monitor"])
    with pytest.raises(KeyError, match="HOOKDROP_API_TOKEN"):
        interpolate(env["HOOKDROP_API_TOKEN"], {})
    listen = Settings.load(
        {k: interpolate(v, {"HOOKDROP_API_TOKEN": "t"}) for k, v in env.items()}
    ).api_listen
    assert listen[0] not in LOOPBACK, "inside its container the API must be reachable to publish"


@pytest.mark.parametrize("name", (*HOOKDROP_SERVICES, "redis", "postgres"))
def test_published_ports_are_loopback_only(services: dict[str, Any], name: str) -> None:
    for host_ip, target in published_ports(services[name]):
        assert host_ip in LOOPBACK, f"{name}: port {target} published on all interfaces"


def test_monitor_api_published_on_loopback(services: dict[str, Any]) -> None:
    env = service_env(services["monitor"])
    listen = Settings.load(
        {k: interpolate(v, {"HOOKDROP_API_TOKEN": "t"}) for k, v in env.items()}
    ).api_listen
    published = published_ports(services["monitor"])
    assert str(listen[1]) in {port for _host, port in published}, "the API port is not published"
    assert all(host in LOOPBACK for host, _port in published)


@pytest.mark.parametrize("name", ["monitor", "batcher", "notifier"])
def test_inbox_volume_is_shared(
    compose: dict[str, Any], services: dict[str, Any], name: str
) -> None:
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services[name]["volumes"]}
    assert mounts.get(INBOX) == "inbox"
    assert "inbox" in compose["volumes"]
    assert service_env(services[name]).get("HOOKDROP_INBOX", INBOX) == INBOX


def compose_tools() -> list[list[str]]:
    """The compose command lines installed here: v2's plugin, v1's docker-compose, or none."""
    tools: list[list[str]] = []
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            tools.append([docker, "compose"])
    legacy = shutil.which("docker-compose")
    if legacy is not None:
        tools.append([legacy])
    return tools


def schema_problems(document: Any) -> list[str]:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft201909Validator(schema)
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def test_compose_file_matches_the_compose_schema(compose: dict[str, Any]) -> None:
    """The Compose specification's schema, as Compose v1 applies it (no engine needed)."""
    assert not schema_problems(compose)


def test_compose_schema_check_catches_mistakes(compose: dict[str, Any]) -> None:
    """The check above would notice a misspelt key or a wrong type (it is not vacuous)."""
    broken = json.loads(json.dumps(compose))
    broken["services"]["monitor"]["restart_policy"] = "always"
    broken["services"]["notifier"]["deploy"]["replicas"] = "two"
    problems = schema_problems(broken)
    assert any("restart_policy" in p for p in problems)
    assert any("replicas" in p for p in problems)


def test_compose_config_where_a_compose_tool_is_installed() -> None:
    """``config -q`` of each installed compose tool accepts the file (none here: schema only)."""
    env = {**os.environ, "HOOKDROP_API_TOKEN": "test-token"}
    for tool in compose_tools():
        result = subprocess.run(
            [*tool, "-f", str(COMPOSE), "config", "-q"],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            check=False,
            timeout=60,
        )
        assert result.returncode == 0, f"{' '.join(tool)}: {result.stderr}"


# --- Dockerfile --------------------------------------------------------------------------


def test_dockerfile_base_user_and_entrypoint() -> None:
    instructions = dockerfile_instructions()
    froms = [args for word, args in instructions if word == "FROM"]
    assert froms, "no FROM"
    # The image's Python is the oldest the project supports (what CI tests on).
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    oldest = pyproject["project"]["requires-python"].removeprefix(">=")
    for line in froms:
        image = line.split()[0]
        assert re.fullmatch(rf"python:{re.escape(oldest)}(-slim)?(\S*)", image), image
    last_stage = instructions[max(i for i, (w, _) in enumerate(instructions) if w == "FROM") :]
    users = [args for word, args in last_stage if word == "USER"]
    assert users, "the image must switch to a non-root USER"
    assert users[-1].split(":")[0] not in {"root", "0"}
    entrypoint = [args for word, args in last_stage if word == "ENTRYPOINT"]
    assert entrypoint and json.loads(entrypoint[-1]) == ["hookdrop"]
    volumes = [args for word, args in last_stage if word == "VOLUME"]
    assert any("/var/lib/hookdrop" in v.split() or v == '["/var/lib/hookdrop"]' for v in volumes)


def test_dockerfile_installs_every_package() -> None:
    instructions = dockerfile_instructions()
    runs = " ".join(args for word, args in instructions if word == "RUN")
    assert re.search(r"pip install (\S+ )*\.(\s|$)", runs), "the project is not pip-installed"
    copied = {
        Path(args.split()[0]).name
        for word, args in instructions
        if word == "COPY" and not args.startswith("--from")
    }
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    includes = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    for pattern in includes:
        package = pattern.rstrip("*")
        assert package in copied, f"Dockerfile does not COPY the {package} package"
    assert "pyproject.toml" in copied


# --- systemd -----------------------------------------------------------------------------


@pytest.mark.parametrize("unit", [MONITOR_UNIT, WORKER_UNIT], ids=lambda p: p.name)
def test_service_hardening_and_lifecycle(unit: Path) -> None:
    for key, expected in HARDENING.items():
        assert unit_value(unit, "Service", key) == expected, f"{unit.name}: {key}={expected}"
    assert unit_value(unit, "Unit", "PartOf") == "hookdrop.target"
    assert "hookdrop.target" in " ".join(unit_values(unit, "Install", "WantedBy")).split()
    # /proc/*/fd of uploaders must stay visible (see the comment in the unit).
    assert unit_value(unit, "Service", "ProtectProc") in {None, "default"}


def test_monitor_unit_commands() -> None:
    assert unit_value(MONITOR_UNIT, "Service", "ExecStart") == f"{VENV_HOOKDROP} monitor"
    assert unit_values(MONITOR_UNIT, "Service", "ExecStartPre") == [f"{VENV_HOOKDROP} db migrate"]


@pytest.mark.parametrize("unit", [MONITOR_UNIT, WORKER_UNIT], ids=lambda p: p.name)
def test_unit_timeouts_fit_what_the_process_does(unit: Path) -> None:
    stop = seconds(unit_value(unit, "Service", "TimeoutStopSec") or "0")
    watchdog = seconds(unit_value(unit, "Service", "WatchdogSec") or "0")
    restart = seconds(unit_value(unit, "Service", "RestartSec") or "0")
    # A graceful stop lets a webhook call in flight run to its timeout and its outcome be written.
    assert stop > 2 * DEFAULTS.request_timeout
    # The process pings at half the watchdog interval; one slow ping must not get it killed.
    assert watchdog >= 10
    # Restarts are paced, never a tight loop while Redis or PostgreSQL are down.
    assert 0 < restart < watchdog


def test_workers_get_at_least_the_monitors_stop_time() -> None:
    monitor = seconds(unit_value(MONITOR_UNIT, "Service", "TimeoutStopSec") or "0")
    worker = seconds(unit_value(WORKER_UNIT, "Service", "TimeoutStopSec") or "0")
    assert worker >= monitor, "a worker finishes a chunk or its in-flight calls; it needs longer"


def test_worker_unit_commands() -> None:
    exec_start = unit_value(WORKER_UNIT, "Service", "ExecStart")
    assert exec_start is not None
    assert exec_start.startswith(f"{VENV_HOOKDROP} worker %i")
    assert "hookdrop-monitor.service" in " ".join(unit_values(WORKER_UNIT, "Unit", "After"))


def unit_commands() -> Iterator[tuple[str, list[str]]]:
    for unit, instances in ((MONITOR_UNIT, ("",)), (WORKER_UNIT, QUEUES)):
        for key in ("ExecStartPre", "ExecStart", "ExecStartPost", "ExecStop"):
            for line in unit_values(unit, "Service", key):
                for instance in instances:
                    words = shlex.split(line.replace("%i", instance))
                    yield f"{unit.name} {key}", words


@pytest.mark.parametrize("unit", [MONITOR_UNIT, WORKER_UNIT], ids=lambda p: p.name)
def test_reload_sends_sighup_to_the_main_process(unit: Path) -> None:
    # SIGHUP re-reads the endpoints; a worker pool's supervisor passes it to its workers.
    assert unit_values(unit, "Service", "ExecReload") == ["/bin/kill -HUP $MAINPID"]


def test_unit_commands_are_hookdrop_subcommands() -> None:
    seen = 0
    for where, words in unit_commands():
        assert words[0] == VENV_HOOKDROP, f"{where}: runs {words[0]}"
        assert leading_command(words[1:]), f"{where}: `hookdrop {' '.join(words[1:])}` unknown"
        seen += 1
    assert seen >= 4


@pytest.mark.parametrize("unit", [MONITOR_UNIT, WORKER_UNIT], ids=lambda p: p.name)
def test_unit_environment_names_are_known(unit: Path) -> None:
    env = unit_environment(unit)
    unknown = set(env) - KNOWN_ENV - UNIT_LOCAL_ENV
    assert not unknown, f"{unit.name}: not hookdrop settings: {sorted(unknown)}"
    assert Settings.load({k: v for k, v in env.items() if k in KNOWN_ENV})
    # Every ${VAR} an Exec line expands has a default in the unit itself.
    for key in ("ExecStartPre", "ExecStart"):
        for line in unit_values(unit, "Service", key):
            for name in re.findall(r"\$\{(\w+)\}", line):
                assert name in env, f"{unit.name}: ${{{name}}} has no Environment= default"


def test_target_groups_the_units() -> None:
    wants = " ".join(unit_values(TARGET_UNIT, "Unit", "Wants")).split()
    expected = {"hookdrop-monitor.service", *(f"hookdrop-worker@{q}.service" for q in QUEUES)}
    assert expected <= set(wants)
    assert "multi-user.target" in unit_value(TARGET_UNIT, "Install", "WantedBy").split()  # type: ignore[union-attr]


def test_env_example_lists_every_setting() -> None:
    names = [name for name, _value, _active in env_example_lines()]
    unknown = set(names) - KNOWN_ENV
    assert not unknown, f"hookdrop.env.example: not hookdrop settings: {sorted(unknown)}"
    missing = KNOWN_ENV - set(names)
    assert not missing, f"hookdrop.env.example: settings not documented: {sorted(missing)}"
    assert len(names) == len(set(names)), "a setting appears twice"


def test_env_example_active_lines_are_valid() -> None:
    active = {name: value for name, value, is_active in env_example_lines() if is_active}
    settings = Settings.load(active)
    assert settings.redis_url and settings.database_url and settings.webhook_url


def _require_systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        message = "systemd-analyze is missing: apt-get install -y systemd"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def _verify(analyzer: str, units: Path, names: list[str]) -> list[str]:
    """Run `systemd-analyze verify` on ``names`` found in ``units``; return problem lines."""
    result = subprocess.run(
        [analyzer, "verify", "--man=no", "--recursive-errors=no", *names],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        cwd=units,
        env={**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:", "SYSTEMD_LOG_COLOR": "0"},
    )
    lines = (result.stdout + result.stderr).splitlines()
    problems = [line for line in lines if "hookdrop" in line or str(units) in line]
    if result.returncode != 0:
        problems.append(f"exit status {result.returncode}: {lines}")
    return problems


@pytest.fixture
def verifiable_units(tmp_path: Path) -> Path:
    """The units, with the venv's hookdrop replaced by a stub executable that exists here."""
    stub = tmp_path / "bin" / "hookdrop"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    units = tmp_path / "units"
    units.mkdir()
    for source in (MONITOR_UNIT, WORKER_UNIT, TARGET_UNIT):
        (units / source.name).write_text(source.read_text().replace(VENV_HOOKDROP, str(stub)))
    return units


VERIFY_NAMES = [
    "hookdrop.target",
    "hookdrop-monitor.service",
    *(f"hookdrop-worker@{queue}.service" for queue in QUEUES),
]


def test_systemd_analyze_verify(verifiable_units: Path) -> None:
    analyzer = _require_systemd_analyze()
    problems = _verify(analyzer, verifiable_units, VERIFY_NAMES)
    assert not problems, "systemd-analyze verify:\n" + "\n".join(problems)


def test_systemd_analyze_verify_catches_mistakes(verifiable_units: Path) -> None:
    """The check above would notice a bad directive (it is not vacuous)."""
    analyzer = _require_systemd_analyze()
    monitor = verifiable_units / MONITOR_UNIT.name
    monitor.write_text(monitor.read_text().replace("[Service]", "[Service]\nNotADirective=1"))
    assert _verify(analyzer, verifiable_units, ["hookdrop-monitor.service"])


# --- the CLI, once it exists -------------------------------------------------------------


def used_commands(services: Mapping[str, Any]) -> list[list[str]]:
    """Every hookdrop command line the compose file and the units run (after `hookdrop`)."""
    lines = [service_command(services[name]) for name in HOOKDROP_SERVICES]
    lines += [words[1:] for _where, words in unit_commands()]
    return [[w.replace("${WORKER_PROCESSES}", "1") for w in words] for words in lines]


def test_cli_accepts_the_commands_used_here(services: dict[str, Any]) -> None:
    """Each deployed command line parses with the real CLI."""
    for words in used_commands(services):
        command: Any = cli
        args = list(words)
        while isinstance(command, click.Group):
            assert args and args[0] in command.commands, f"`hookdrop {' '.join(words)}` unknown"
            command = command.commands[args.pop(0)]
        # Parse only: make_context checks arguments, choices and options without running.
        with command.make_context(command.name, args, resilient_parsing=False):
            pass
