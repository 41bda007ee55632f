"""Configuration of the mock receiver: a frozen, validated dataclass plus live-change rules."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any, Final

RETRY_AFTER_MODES: Final = ("seconds", "date", "none")

# Settings that only make sense at start-up: the socket and the audit file are already open.
STARTUP_ONLY: Final = frozenset({"host", "port", "audit_path"})

# Not part of MockConfig because it is a one-shot counter ("the next N requests"), not a setting.
THROTTLE_BURST: Final = "throttle_burst"


def _number(name: str, value: object) -> float:
    # bool is an int subclass; "rate": true in JSON is a mistake, not 1.0.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    result = float(value)
    if not math.isfinite(result):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return result


def _share(name: str, value: object) -> float:
    result = _number(name, value)
    if not 0.0 <= result <= 1.0:
        raise ValueError(f"{name} is a share of requests: use a number from 0 to 1, got {value!r}")
    return result


def _non_negative(name: str, value: object) -> float:
    result = _number(name, value)
    if result < 0:
        raise ValueError(f"{name} must be 0 or more, got {value!r}")
    return result


def secret_key(secret: str) -> bytes:
    """The HMAC key inside a ``whsec_...`` secret; ValueError if it is not one."""
    if not isinstance(secret, str) or not secret.startswith("whsec_"):
        raise ValueError("secret must be a Standard Webhooks secret starting with whsec_")
    encoded = secret.removeprefix("whsec_")
    # Some generators drop the base64 padding; accept that like the reference library does.
    encoded += "=" * (-len(encoded) % 4)
    try:
        key = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise ValueError("secret: the part after whsec_ must be base64") from None
    if not key:
        raise ValueError("secret: the key after whsec_ is empty")
    return key


def parse_throttle_burst(value: object) -> int:
    """Validate the admin-only ``throttle_burst`` (force the next N answers to 429)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"throttle_burst must be a whole number 0 or more, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class MockConfig:
    """Everything the mock receiver can be told; invalid values raise ValueError at creation.

    ``rate`` is requests/s for the global token bucket (0 = unlimited); ``burst`` is the bucket
    size (None = max(1, rate/10)). The ``*_rate`` faults are shares of the requests the limiter
    let through and together may not exceed 1, so each one is exactly the share it says.
    """

    host: str = "127.0.0.1"
    port: int = 8426
    rate: float = 0.0
    burst: float | None = None
    retry_after_mode: str = "seconds"
    error_rate: float = 0.0
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    timeout_rate: float = 0.0
    timeout_hang_s: float = 30.0
    reset_rate: float = 0.0
    secret: str | None = None
    audit_path: str | os.PathLike[str] | None = None
    # Any body (a form, {"text": ...}): counted by webhook-id instead of its JSON userId.
    any_body: bool = False
    # "Name: value" every request must carry (401 otherwise), e.g. an Authorization header.
    require_header: str | None = None
    # Keep the first N requests (method, headers of interest, body) for GET /admin/bodies.
    record_bodies: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ValueError(f"host must be a non-empty string, got {self.host!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise ValueError(f"port must be a whole number, got {self.port!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be from 0 to 65535, got {self.port}")
        # Normalise ints to floats so the config reads the same however it was built.
        fix = object.__setattr__
        fix(self, "rate", _non_negative("rate", self.rate))
        if self.burst is not None:
            burst = _number("burst", self.burst)
            if burst < 1:
                raise ValueError(
                    f"burst must be at least 1 (or null for max(1, rate/10)), got {self.burst!r}"
                )
            fix(self, "burst", burst)
        if self.retry_after_mode not in RETRY_AFTER_MODES:
            raise ValueError(
                f"retry_after_mode must be one of {', '.join(RETRY_AFTER_MODES)}, "
                f"got {self.retry_after_mode!r}"
            )
        for name in ("error_rate", "timeout_rate", "reset_rate"):
            fix(self, name, _share(name, getattr(self, name)))
        total = self.error_rate + self.timeout_rate + self.reset_rate
        if total > 1.0 + 1e-9:
            raise ValueError(
                f"error_rate + timeout_rate + reset_rate must be at most 1, got {total:g}"
            )
        for name in ("latency_ms", "latency_jitter_ms"):
            fix(self, name, _non_negative(name, getattr(self, name)))
        hang = _number("timeout_hang_s", self.timeout_hang_s)
        if not 0 < hang <= 3600:
            raise ValueError(
                f"timeout_hang_s must be more than 0 and at most 3600, got {self.timeout_hang_s!r}"
            )
        fix(self, "timeout_hang_s", hang)
        if self.secret is not None:
            secret_key(self.secret)
        if self.require_header is not None:
            name, sep, value = self.require_header.partition(":")
            if not sep or not name.strip() or not value.strip():
                raise ValueError(
                    f"require_header must be 'Name: value', got {self.require_header!r}"
                )
        if isinstance(self.record_bodies, bool) or not isinstance(self.record_bodies, int):
            raise ValueError(f"record_bodies must be a whole number, got {self.record_bodies!r}")
        if self.record_bodies < 0:
            raise ValueError(f"record_bodies must be 0 or more, got {self.record_bodies}")
        if self.audit_path is not None and not os.fspath(self.audit_path):
            raise ValueError("audit_path must be a file path or None, got an empty string")

    @property
    def effective_burst(self) -> float:
        """The bucket size actually used: ``burst`` or max(1, rate/10)."""
        return self.burst if self.burst is not None else max(1.0, self.rate / 10)

    def with_changes(self, changes: Mapping[str, Any]) -> MockConfig:
        """A new config with ``changes`` applied, as the admin endpoint allows while running.

        Raises ValueError naming the offending setting for unknown keys, start-up-only keys
        and invalid values.
        """
        known = {field.name for field in dataclasses.fields(self)}
        for key in changes:
            if key in STARTUP_ONLY:
                raise ValueError(f"{key} cannot be changed while running; restart the mock")
            if key not in known:
                valid = sorted((known - STARTUP_ONLY) | {THROTTLE_BURST})
                raise ValueError(f"unknown setting {key!r}; valid settings: {', '.join(valid)}")
        return dataclasses.replace(self, **changes)

    def public_dict(self) -> dict[str, Any]:
        """The config as JSON-ready data, with the secret masked."""
        return {
            "host": self.host,
            "port": self.port,
            "rate": self.rate,
            "burst": self.burst,
            "effective_burst": self.effective_burst if self.rate > 0 else None,
            "retry_after_mode": self.retry_after_mode,
            "error_rate": self.error_rate,
            "latency_ms": self.latency_ms,
            "latency_jitter_ms": self.latency_jitter_ms,
            "timeout_rate": self.timeout_rate,
            "timeout_hang_s": self.timeout_hang_s,
            "reset_rate": self.reset_rate,
            "secret": "whsec_***" if self.secret is not None else None,
            "signature_check": self.secret is not None,
            "audit_path": os.fspath(self.audit_path) if self.audit_path is not None else None,
            "any_body": self.any_body,
            "require_header": self.require_header.partition(":")[0] + ": ***"
            if self.require_header
            else None,
            "record_bodies": self.record_bodies,
        }
