"""The state folder's lock, its record of ports and folders (``embedded.json``) and the
servers' passwords (``<server>.password``); the record and the passwords are 0600."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hookdrop.errors import ConfigError

_LOCK_FILE = "embedded.lock"
_STATE_FILE = "embedded.json"
# The PostgreSQL folder again, on its own: should embedded.json be lost or garbled, a stop still
# finds a server whose data was moved out of the state folder.
_POSTGRES_DIR_FILE = "postgres.dir"
_LOCK_TIMEOUT = 180.0


def prepare(state_dir: Path) -> Path:
    """The state folder, resolved and created."""
    state_dir = state_dir.expanduser().resolve()
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"HOOKDROP_STATE_DIR {state_dir} cannot be used: {exc}") from exc
    return state_dir


@contextlib.contextmanager
def locked(state_dir: Path) -> Iterator[None]:
    """Hold the fcntl lock that serialises starting and stopping across processes."""
    path = state_dir / _LOCK_FILE
    try:
        # Python opens files close-on-exec, so the servers started under the lock never
        # inherit (and never hold on to) it.
        handle = path.open("a")
    except OSError as exc:
        raise ConfigError(f"HOOKDROP_STATE_DIR {state_dir} cannot be used: {exc}") from exc
    with handle:
        deadline = time.monotonic() + _LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ConfigError(
                        f"another process has held {path} for over {_LOCK_TIMEOUT:.0f} s"
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def read(state_dir: Path, *, lenient: bool = False) -> dict[str, Any]:
    """The record; ``lenient`` (stopping): a garbled one counts as empty but for the
    PostgreSQL folder, which is also kept on its own."""
    path = state_dir / _STATE_FILE
    state: Any = {}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        if not lenient:
            raise ConfigError(
                f"{path} is not valid JSON ({exc}); run `hookdrop servers stop`, then delete "
                "it to choose new ports"
            ) from exc
        state = {}
    if not isinstance(state, dict):
        if not lenient:
            raise ConfigError(
                f"{path} must hold a JSON object; run `hookdrop servers stop`, then delete it "
                "to choose new ports"
            )
        state = {}
    record: dict[str, Any] = state
    if not record.get("postgres_dir"):
        with contextlib.suppress(FileNotFoundError):
            recorded = (state_dir / _POSTGRES_DIR_FILE).read_text(encoding="utf-8").strip()
            if recorded:
                record["postgres_dir"] = recorded
    return record


def write(state_dir: Path, state: dict[str, Any]) -> None:
    path = state_dir / _STATE_FILE
    temporary = path.with_suffix(".json.tmp")
    # Replace atomically: readers that skip the lock never see half a file.
    temporary.unlink(missing_ok=True)
    _write_private(temporary, json.dumps(state, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, path)
    recorded = state.get("postgres_dir")
    side = state_dir / _POSTGRES_DIR_FILE
    if isinstance(recorded, str) and recorded and not side.exists():
        temporary = side.with_suffix(".tmp")
        temporary.write_text(recorded + "\n", encoding="utf-8")
        os.replace(temporary, side)


def secret(state_dir: Path, server: str) -> str:
    """The password of the embedded ``server``: chosen once per state folder and kept in
    ``<server>.password``, readable by this user only."""
    path = state_dir / f"{server}.password"
    if not path.exists():
        temporary = state_dir / f".{server}.password.{os.getpid()}"
        temporary.unlink(missing_ok=True)
        _write_private(temporary, secrets.token_urlsafe(24) + "\n")
        try:
            # A link never replaces: of two processes choosing at once, one password wins.
            os.link(temporary, path)
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    if not value:
        raise ConfigError(f"{path} is empty; run `hookdrop servers stop --remove` to start afresh")
    return value


def _write_private(path: Path, text: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)


def forget(state_dir: Path) -> None:
    """Delete the record and passwords: the next start chooses them afresh."""
    (state_dir / _STATE_FILE).unlink(missing_ok=True)
    (state_dir / _POSTGRES_DIR_FILE).unlink(missing_ok=True)
    for path in state_dir.glob("*.password"):
        path.unlink()


def port(state: dict[str, Any], key: str) -> int | None:
    value = state.get(key)
    return value if isinstance(value, int) and 0 < value < 65536 else None
