"""Property-based requests generated from the API's own OpenAPI document (schemathesis):
whatever the input, the API answers with a client error or success, never a server error,
and a request with the token is never mistaken for a cross-site one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error

from daemon.api import create_app
from hookdrop import connections
from hookdrop.intake import ensure_dirs
from hookdrop.settings import Settings
from hookdrop.store import Store

TOKEN = "fuzz-token"
TEST_CLIENT_HOST = "testserver"  # the Host schemathesis's ASGI client sends


@pytest.fixture
def api_schema(settings: Settings, redis_url: str) -> Iterator[Any]:
    fuzz_settings = settings.replace(api_token=TOKEN, api_allowed_hosts=(TEST_CLIENT_HOST,))
    ensure_dirs(fuzz_settings)
    conn = redis.Redis.from_url(redis_url)
    app = create_app(
        fuzz_settings,
        lambda: Store(connections.database_url(fuzz_settings)),
        conn,
        max_upload_bytes=64 * 1024,
    )
    try:
        yield schemathesis.openapi.from_asgi(
            "/openapi.json", app, headers={"authorization": f"Bearer {TOKEN}"}
        )
    finally:
        app.state.hub.pool.close()
        conn.close()


def _operations() -> list[tuple[str, str]]:
    # The paths of an app that is never served: building one connects to nothing.
    spec = create_app(Settings(), lambda: Store("postgresql://unused"), redis.Redis()).openapi()
    return [(method.upper(), path) for path, ops in spec["paths"].items() for method in ops]


@pytest.mark.parametrize(("method", "path"), _operations())
def test_no_input_causes_a_server_error(api_schema: Any, method: str, path: str) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy())
    @hypothesis_settings(
        max_examples=6,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        response = case.call_and_validate(
            headers={"authorization": f"Bearer {TOKEN}"}, checks=[not_a_server_error]
        )
        assert response.status_code not in (403, 421), response.text

    check()
