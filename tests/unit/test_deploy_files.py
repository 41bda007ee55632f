"""Static checks of the deployment files: docker-compose.yml, Dockerfile, systemd units.

No Docker engine is needed. ``systemd-analyze verify`` runs when systemd is installed
(``apt-get install -y systemd``); under CI (``CI`` set) its absence is a failure, locally a skip.
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

import pytest
import yaml

from hookdrop.settings import SETTINGS, Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
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
    "WatchdogSec": "30",
    "Restart": "on-failure",
    "RestartSec": "2",
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
    env = service_env(postgres)
    assert env["POSTGRES_DB"] == "hookdrop"
    assert "POSTGRES_PASSWORD" in env


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
    assert services[name]["stop_grace_period"] == "90s"


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
    assert mock[mock.index("--host") + 1] == "0.0.0.0"


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
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.database_url is not None
    assert settings.database_url.startswith("postgresql://hookdrop:")
    assert settings.database_url.endswith("@postgres:5432/hookdrop")
    assert settings.webhook_url == "http://mock:8426/"


def test_api_token_must_be_supplied(services: dict[str, Any]) -> None:
    env = service_env(services["monitor"])
    with pytest.raises(KeyError, match="HOOKDROP_API_TOKEN"):
        interpolate(env["HOOKDROP_API_TOKEN"], {})
    assert Settings.load(
        {k: interpolate(v, {"HOOKDROP_API_TOKEN": "t"}) for k, v in env.items()}
    ).api_listen == ("0.0.0.0", 8425)


@pytest.mark.parametrize("name", (*HOOKDROP_SERVICES, "redis", "postgres"))
def test_published_ports_are_loopback_only(services: dict[str, Any], name: str) -> None:
    for host_ip, target in published_ports(services[name]):
        assert host_ip in LOOPBACK, f"{name}: port {target} published on all interfaces"


def test_monitor_api_published_on_loopback(services: dict[str, Any]) -> None:
    assert ("127.0.0.1", "8425") in published_ports(services["monitor"])


@pytest.mark.parametrize("name", ["monitor", "batcher", "notifier"])
def test_inbox_volume_is_shared(
    compose: dict[str, Any], services: dict[str, Any], name: str
) -> None:
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services[name]["volumes"]}
    assert mounts.get(INBOX) == "inbox"
    assert "inbox" in compose["volumes"]
    assert service_env(services[name]).get("HOOKDROP_INBOX", INBOX) == INBOX


def test_docker_compose_config() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker client not installed")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    env = {**os.environ, "HOOKDROP_API_TOKEN": "test-token"}
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


# --- Dockerfile --------------------------------------------------------------------------


def test_dockerfile_base_user_and_entrypoint() -> None:
    instructions = dockerfile_instructions()
    froms = [args for word, args in instructions if word == "FROM"]
    assert froms, "no FROM"
    assert froms[-1].split()[0] == "python:3.11-slim"
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
    assert unit_value(MONITOR_UNIT, "Service", "TimeoutStopSec") == "60"


def test_worker_unit_commands() -> None:
    exec_start = unit_value(WORKER_UNIT, "Service", "ExecStart")
    assert exec_start is not None
    assert exec_start.startswith(f"{VENV_HOOKDROP} worker %i")
    assert int(unit_value(WORKER_UNIT, "Service", "TimeoutStopSec") or 0) >= 90
    assert "hookdrop-monitor.service" in " ".join(unit_values(WORKER_UNIT, "Unit", "After"))


def unit_commands() -> Iterator[tuple[str, list[str]]]:
    for unit, instances in ((MONITOR_UNIT, ("",)), (WORKER_UNIT, QUEUES)):
        for key in ("ExecStartPre", "ExecStart", "ExecStartPost", "ExecReload", "ExecStop"):
            for line in unit_values(unit, "Service", key):
                for instance in instances:
                    words = shlex.split(line.replace("%i", instance))
                    yield f"{unit.name} {key}", words


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
    """Each deployed command line parses with the real CLI (when hookdrop.cli exists)."""
    click = pytest.importorskip("click")
    try:
        from hookdrop import cli as cli_module
    except ModuleNotFoundError as exc:
        if exc.name != "hookdrop.cli":
            raise
        pytest.skip("hookdrop.cli does not exist yet")
    groups = [g for g in vars(cli_module).values() if isinstance(g, click.Group)]
    roots = [g for g in groups if not any(g in p.commands.values() for p in groups)]
    if len(roots) != 1:
        pytest.skip(f"cannot tell the root click group of hookdrop.cli: {roots}")
    for words in used_commands(services):
        command: Any = roots[0]
        args = list(words)
        while isinstance(command, click.Group):
            assert args and args[0] in command.commands, f"`hookdrop {' '.join(words)}` unknown"
            command = command.commands[args.pop(0)]
        # Parse only: make_context checks arguments, choices and options without running.
        with command.make_context(command.name, args, resilient_parsing=False):
            pass
