"""Server errors name what the user set, or the embedded server, and never show a password."""

from __future__ import annotations

import pytest

from hookdrop.cli._common import _check_reachable, hide_password
from hookdrop.errors import ConfigError
from tests.helpers import free_port


def test_an_embedded_server_failing_is_named_as_such_not_as_a_setting() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"

    with pytest.raises(ConfigError) as caught:
        _check_reachable(url, None, redis_name="the embedded Redis of /srv/state")

    message = str(caught.value)
    assert message.startswith(f"the embedded Redis of /srv/state ({url}): cannot use Redis: ")
    assert "REDIS_URL" not in message


def test_a_setting_failing_is_named_with_its_url() -> None:
    url = f"postgresql://app:pw@127.0.0.1:{free_port()}/db"

    with pytest.raises(ConfigError, match=r"^DATABASE_URL=postgresql://app:\*\*\*@") as caught:
        _check_reachable(None, url)

    assert "pw" not in str(caught.value).replace("postgresql", "")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:secret@h:6379/0", "redis://:***@h:6379/0"),
        ("postgresql://u:secret@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u@h/db?password=secret&x=1", "postgresql://u@h/db?password=***&x=1"),
        ("redis://h:6379/0", "redis://h:6379/0"),
    ],
)
def test_passwords_are_masked(url: str, shown: str) -> None:
    assert hide_password(url) == shown
