from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hookdrop.errors import ConfigError
from hookdrop.settings import SETTINGS, Settings

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_environment_and_flags_build_the_settings(tmp_path: Path) -> None:
    env = {
        "HOOKDROP_INBOX": str(tmp_path / "in"),
        "HOOKDROP_RATE_LIMIT": "250",
        "REDIS_URL": "redis://127.0.0.1:6379/2",
        "HOOKDROP_SIGNING_SECRET": SECRET,
    }
    settings = Settings.load(env, {"rate_limit": "500", "chunk_size": None})
    assert settings.inbox == tmp_path / "in"
    assert settings.rate_limit == 500.0  # the flag wins over the environment
    assert settings.chunk_size == 500  # the default
    assert settings.redis_url == "redis://127.0.0.1:6379/2"
    assert settings.processing_dir == tmp_path / "in" / "processing"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"HOOKDROP_WEBHOOK_URL": "ftp://x"}, "HOOKDROP_WEBHOOK_URL"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"HOOKDROP_RATE_LIMIT": "fast"}, "HOOKDROP_RATE_LIMIT"),
        ({"HOOKDROP_RATE_LIMIT": "-3"}, "HOOKDROP_RATE_LIMIT"),
        ({"HOOKDROP_CHUNK_SIZE": "0"}, "HOOKDROP_CHUNK_SIZE"),
        ({"HOOKDROP_LEASE_SECONDS": "0.2"}, "HOOKDROP_LEASE_SECONDS"),
        ({"HOOKDROP_LEASE_SECONDS": "nan"}, "HOOKDROP_LEASE_SECONDS"),
        ({"HOOKDROP_LEASE_SECONDS": "inf"}, "HOOKDROP_LEASE_SECONDS"),
        ({"HOOKDROP_SIGNING_SECRET": "hunter2"}, "HOOKDROP_SIGNING_SECRET"),
        ({"HOOKDROP_API_LISTEN": "everywhere"}, "HOOKDROP_API_LISTEN"),
        ({"HOOKDROP_LOG_FORMAT": "xml"}, "HOOKDROP_LOG_FORMAT"),
        ({"HOOKDROP_API_ALLOWED_HOSTS": "https://proxy.example"}, "HOOKDROP_API_ALLOWED_HOSTS"),
        ({"HOOKDROP_API_ALLOWED_HOSTS": "a.example, ::1"}, "HOOKDROP_API_ALLOWED_HOSTS"),
    ],
)
def test_a_bad_value_is_refused_with_the_setting_named(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.load(env)
    message = str(raised.value)
    assert message.startswith(named)
    assert "\n" not in message


def test_a_secret_is_never_echoed_back() -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.load({"HOOKDROP_SIGNING_SECRET": "whsec_!!notbase64!!"})
    assert "notbase64" not in str(raised.value)


def test_listening_beyond_loopback_needs_a_token() -> None:
    with pytest.raises(ConfigError, match="HOOKDROP_API_TOKEN"):
        Settings.load({"HOOKDROP_API_LISTEN": "0.0.0.0:8425"})
    settings = Settings.load({"HOOKDROP_API_LISTEN": "0.0.0.0:8425", "HOOKDROP_API_TOKEN": "t"})
    assert settings.api_listen == ("0.0.0.0", 8425)


def test_allowed_hosts_are_a_comma_separated_list_of_names() -> None:
    settings = Settings.load({"HOOKDROP_API_ALLOWED_HOSTS": " Proxy.Example ,[::1]:8443,,x:80"})
    assert settings.api_allowed_hosts == ("proxy.example", "[::1]:8443", "x:80")
    assert Settings.load({}).api_allowed_hosts == ()


def test_settings_round_trip_through_the_environment(tmp_path: Path) -> None:
    settings = Settings(
        inbox=tmp_path,
        rate_limit=12.5,
        signing_secret=SECRET,
        api_listen=("::1", 9000),
        api_allowed_hosts=("a.example", "b:8443"),
    )
    assert Settings.load(settings.to_environ()) == settings


def test_every_setting_has_one_env_var_and_one_flag() -> None:
    envs = [s.env for s in SETTINGS]
    flags = [s.flag for s in SETTINGS]
    assert len(set(envs)) == len(envs) and len(set(flags)) == len(flags)
    fields = set(Settings.__dataclass_fields__)
    assert {s.field for s in SETTINGS} == fields


def test_the_cli_refuses_to_start_with_one_clear_line(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOOKDROP_INBOX": str(tmp_path / "in"),
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "DATABASE_URL": "postgresql://x@127.0.0.1:1/x",
    }
    done = subprocess.run(
        [sys.executable, "-m", "hookdrop", "monitor"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "REDIS_URL=redis://127.0.0.1:1/0" in lines[0]


def test_an_unwritable_inbox_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    env = {
        "PATH": "/usr/bin:/bin",
        "HOOKDROP_INBOX": str(blocker / "inbox"),
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "DATABASE_URL": "postgresql://x@127.0.0.1:1/x",
    }
    done = subprocess.run(
        [sys.executable, "-m", "hookdrop", "monitor"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().startswith("hookdrop: configuration error: HOOKDROP_INBOX=")


def test_help_names_every_environment_variable() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hookdrop", "monitor", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for spec in SETTINGS:
        assert spec.env in done.stdout
