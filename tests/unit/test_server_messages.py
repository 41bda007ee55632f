"""Server errors name what the user set, or the embedded server, and never show a password."""

from __future__ import annotations

import pytest

from hookdrop.cli._common import _check_reachable, _masked, hide_password
from hookdrop.errors import ConfigError
from hookdrop.settings import Settings
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
        ("host=127.0.0.1 password=s3cret dbname=y", "host=127.0.0.1 password=*** dbname=y"),
        ("host=h password = 's3 cret' dbname=y", "host=h password = *** dbname=y"),
        ("host=h PASSWORD=s3cret", "host=h PASSWORD=***"),
    ],
)
def test_passwords_are_masked(url: str, shown: str) -> None:
    assert hide_password(url) == shown


def test_a_keyword_database_url_is_refused_without_showing_its_password() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.load({"DATABASE_URL": "host=127.0.0.1 password=s3cret dbname=y"})

    assert "password=***" in str(caught.value)
    assert "s3cret" not in str(caught.value)


def test_a_library_error_quoting_a_keyword_password_is_masked() -> None:
    shown = _masked(
        "connection failed: password=s3cret rejected", "host=h password=s3cret dbname=y"
    )

    assert "s3cret" not in shown
