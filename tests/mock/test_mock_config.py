"""MockConfig validation, live changes and the command-line flags."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from notifier_mock import MockConfig
from notifier_mock.cli import build_parser, main

SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()


def test_defaults() -> None:
    config = MockConfig()
    assert (config.host, config.port, config.rate, config.burst) == ("127.0.0.1", 8426, 0.0, None)
    assert config.retry_after_mode == "seconds"
    assert config.timeout_hang_s == 30.0
    assert config.secret is None and config.audit_path is None
    assert MockConfig(rate=250).effective_burst == 25
    assert MockConfig(rate=3).effective_burst == 1
    assert MockConfig(rate=250, burst=7).effective_burst == 7


def test_ints_are_normalised_to_floats() -> None:
    config = MockConfig(rate=100, burst=5, latency_ms=2)
    assert isinstance(config.rate, float) and isinstance(config.burst, float)
    assert isinstance(config.latency_ms, float)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"host": ""}, "host must be a non-empty string"),
        ({"port": 70000}, "port must be from 0 to 65535"),
        ({"port": "80"}, "port must be a whole number"),
        ({"rate": -5}, "rate must be 0 or more"),
        ({"rate": True}, "rate must be a number"),
        ({"rate": float("inf")}, "rate must be a finite number"),
        ({"burst": 0.5}, "burst must be at least 1"),
        ({"retry_after_mode": "minutes"}, "retry_after_mode must be one of seconds, date, none"),
        ({"error_rate": 1.5}, "error_rate is a share of requests: use a number from 0 to 1"),
        ({"reset_rate": -0.1}, "reset_rate is a share"),
        ({"error_rate": 0.6, "timeout_rate": 0.5}, "must be at most 1"),
        ({"latency_ms": -1}, "latency_ms must be 0 or more"),
        ({"timeout_hang_s": 0}, "timeout_hang_s must be more than 0"),
        ({"secret": "not-a-secret"}, "starting with whsec_"),
        ({"secret": "whsec_%%%"}, "must be base64"),
        ({"audit_path": ""}, "audit_path must be a file path"),
    ],
)
def test_invalid_values_raise_readable_errors(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MockConfig(**changes)


def test_with_changes_validates_and_refuses_startup_only_settings() -> None:
    config = MockConfig(rate=10)
    changed = config.with_changes({"rate": 20, "error_rate": 0.5})
    assert (changed.rate, changed.error_rate, config.rate) == (20.0, 0.5, 10.0)
    with pytest.raises(ValueError, match="port cannot be changed while running"):
        config.with_changes({"port": 1})
    with pytest.raises(ValueError, match=r"unknown setting 'rat'; valid settings: .*rate"):
        config.with_changes({"rat": 1})
    with pytest.raises(ValueError, match="error_rate is a share"):
        config.with_changes({"error_rate": 2})


def test_public_dict_masks_the_secret() -> None:
    data = MockConfig(secret=SECRET).public_dict()
    assert data["secret"] == "whsec_***"
    assert data["signature_check"] is True
    assert SECRET not in repr(data)


def test_command_line_flags_mirror_the_config(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        [
            "--port",
            "9001",
            "--rate",
            "50",
            "--burst",
            "5",
            "--retry-after-mode",
            "date",
            "--error-rate",
            "0.1",
            "--latency-ms",
            "3",
            "--latency-jitter-ms",
            "2",
            "--timeout-rate",
            "0.2",
            "--timeout-hang-s",
            "4",
            "--reset-rate",
            "0.3",
            "--secret",
            SECRET,
            "--audit-path",
            str(tmp_path / "audit.tsv"),
        ]
    )
    options = vars(args)
    options.pop("log_level")
    config = MockConfig(**options)
    assert (config.port, config.rate, config.burst, config.retry_after_mode) == (
        9001,
        50.0,
        5.0,
        "date",
    )
    assert (config.error_rate, config.timeout_rate, config.reset_rate) == (0.1, 0.2, 0.3)
    assert (config.latency_ms, config.latency_jitter_ms, config.timeout_hang_s) == (3, 2, 4)
    assert config.secret == SECRET


def test_command_line_rejects_invalid_values(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--error-rate", "2"])
    assert exit_info.value.code == 2
    assert "error_rate is a share of requests" in capsys.readouterr().err
