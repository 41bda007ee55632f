"""A wrong REDIS_URL or DATABASE_URL: one line naming the setting, the password masked."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.conftest import Servers
from tests.helpers import free_port, run_hookdrop

pytestmark = pytest.mark.e2e

SECRET = "s3cret-pw"


def _with(url: str, *, password: str | None = None, port: int | None = None, path: str = "") -> str:
    parts = urlsplit(url)
    user = parts.username or ""
    credentials = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = f"{parts.hostname}:{port or parts.port}"
    return urlunsplit(parts._replace(netloc=credentials + host, path=path or parts.path))


def _env(tmp_path: Path, redis_url: str, database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKDROP_")}
    env.update(
        REDIS_URL=redis_url,
        DATABASE_URL=database_url,
        HOOKDROP_STATE_DIR=str(tmp_path / "state"),
        HOOKDROP_LOG_FORMAT="json",
    )
    return env


CASES = {
    "redis db index out of range": ("REDIS_URL", "DB index is out of range"),
    "redis wrong port": ("REDIS_URL", "cannot use Redis"),
    "redis port not a number": ("REDIS_URL", "port must be a number"),
    "postgres unknown database": ("DATABASE_URL", "does not exist"),
    "postgres wrong port": ("DATABASE_URL", "cannot use PostgreSQL"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_server_url_ends_the_command_in_one_line(
    servers: Servers, tmp_path: Path, case: str
) -> None:
    redis_url, database_url = servers.redis_url, servers.admin_url
    if case == "redis db index out of range":
        redis_url = _with(redis_url, password=SECRET, path="/99999")
    elif case == "redis wrong port":
        redis_url = _with(redis_url, password=SECRET, port=free_port())
    elif case == "redis port not a number":
        redis_url = f"redis://:{SECRET}@127.0.0.1:sixty/0"
    elif case == "postgres unknown database":
        database_url = _with(database_url, password=SECRET, path="/no_such_hookdrop_db")
    else:
        database_url = _with(database_url, password=SECRET, port=free_port())
    variable, reason = CASES[case]

    done = run_hookdrop(
        "db", "migrate", env=_env(tmp_path, redis_url, database_url), cwd=tmp_path, timeout=60
    )

    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"hookdrop: configuration error: {variable}="), lines[0]
    assert reason in lines[0]
    assert SECRET not in done.stderr + done.stdout
    assert ":***@" in lines[0]
    assert not (tmp_path / "state").exists()
