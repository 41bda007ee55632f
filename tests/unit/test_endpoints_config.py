"""The endpoints file: validation with one-line errors, ${VAR}, templates, masking."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from hookdrop.endpoints import DEFAULT, Endpoints, RenderError, load_endpoints, mask_url
from hookdrop.errors import ConfigError
from hookdrop.inbox import disk_name, endpoint_of, original_name, processing_tag
from hookdrop.settings import Settings

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def load(
    tmp_path: Path, text: str, env: dict[str, str] | None = None, **settings: object
) -> Endpoints:
    path = tmp_path / "endpoints.toml"
    path.write_text(text, encoding="utf-8")
    return load_endpoints(Settings(config=path, **settings), env or {})  # type: ignore[arg-type]


def render(endpoints: Endpoints, name: str, **row: object) -> bytes | None:
    values: dict[str, object] = {
        "user_id": "u1",
        "message": "hello",
        "extra": None,
        "alert_id": "msg_1",
        "file": "alerts.csv",
        "line": 2,
    }
    values.update(row)
    return endpoints[name].renderer.render(**values)  # type: ignore[arg-type]


def test_without_a_file_the_default_endpoint_is_todays_single_one() -> None:
    settings = Settings(
        webhook_url="https://example.com/a", rate_limit=7, concurrency=3, signing_secret=SECRET
    )
    endpoints = load_endpoints(settings, {})
    assert endpoints.names == [DEFAULT]
    default = endpoints[DEFAULT]
    assert (default.url, default.rate_limit, default.concurrency) == ("https://example.com/a", 7, 3)
    assert default.signing_secret == SECRET
    assert render(endpoints, DEFAULT) is None  # the default body, built when sent
    assert endpoints.folders == []


def test_no_url_and_no_file_means_no_endpoint() -> None:
    assert load_endpoints(Settings(), {}).names == []


def test_a_full_endpoint_is_read_with_variables_from_the_environment(tmp_path: Path) -> None:
    endpoints = load(
        tmp_path,
        """
        [endpoints.api]
        url = "https://api.example.com/v1/alerts"
        rate_limit = 20
        concurrency = 4
        timeout = 2.5
        method = "put"
        headers = { Authorization = "Bearer ${API_TOKEN}", X-Team = "ops" }
        signing_secret = "${SECRET}"
        attempt_budget = 3
        breaker_failures = 2
        """,
        {"API_TOKEN": "t0k", "SECRET": SECRET},
        webhook_url="https://example.com/default",
    )
    assert endpoints.names == ["api", DEFAULT]
    assert endpoints.folders == ["api"]
    api = endpoints["api"]
    assert api.method == "PUT"
    assert dict(api.headers) == {"Authorization": "Bearer t0k", "X-Team": "ops"}
    assert (api.rate_limit, api.concurrency, api.timeout) == (20, 4, 2.5)
    assert (api.attempt_budget, api.breaker_failures, api.signing_secret) == (3, 2, SECRET)


def test_a_file_default_replaces_the_settings_one(tmp_path: Path) -> None:
    endpoints = load(
        tmp_path,
        '[endpoints.default]\nurl = "https://other.example/x"\n',
        webhook_url="https://example.com/a",
    )
    assert endpoints[DEFAULT].url == "https://other.example/x"


@pytest.mark.parametrize(
    ("table", "env", "names"),
    [
        ('url = "https://x.example"\ncolour = "blue"', {}, ("'chat'", "'colour'", "unknown key")),
        ('url = "ftp://x.example"', {}, ("'chat'", "'url'", "http")),
        ("rate_limit = 3", {}, ("'chat'", "'url'", "required")),
        ('url = "https://x.example"\nheaders = { A = "${NOPE}" }', {}, ("'headers'", "NOPE")),
        ('url = "https://x.example"\nbody = "{{ userId "', {}, ("'body'", "does not compile")),
        ('url = "https://x.example"\nmethod = "GET"', {}, ("'method'", "POST")),
        ('url = "https://x.example"\nformat = "xml"', {}, ("'format'", "json")),
        ('url = "https://x.example"\nconcurrency = 0', {}, ("'concurrency'", "greater than 0")),
        ('url = "https://x.example"\nconcurrency = 1.5', {}, ("'concurrency'", "whole")),
        ('url = "https://x.example"\nrate_limit = "fast"', {}, ("'rate_limit'", "number")),
        ('url = "https://x.example"\nbasic_auth = { username = "a" }', {}, ("'basic_auth'",)),
        ('url = "https://x.example"\nsigning_secret = "nope"', {}, ("'signing_secret'",)),
        ('url = "https://x.example"\nfields = { a = "b" }', {}, ("'fields'", "form")),
        ('url = "https://x.example"\nformat = "form"\nbody = "x"', {}, ("'body'", "fields")),
        ('url = "https://x.example"\nheaders = { "bad name" = "x" }', {}, ("'headers'",)),
        ('url = "https://x.example"\nrate_limit = nan', {}, ("'rate_limit'", "finite")),
        ('url = "https://x.example"\nrate_limit = inf', {}, ("'rate_limit'", "finite")),
        ('url = "https://x.example"\ntimeout = -inf', {}, ("'timeout'", "finite")),
        ('url = "https://x.example"\nprobe_seconds = nan', {}, ("'probe_seconds'",)),
        ('url = "https://x.example"\nconcurrency = 100000000', {}, ("'concurrency'", "between")),
        ('url = "https://x.example"\nrate_limit = 1e-9', {}, ("'rate_limit'", "between")),
        ('url = "https://x.example"\ntimeout = 1e9', {}, ("'timeout'", "between")),
        ('url = "https://x.example"\nheaders = { X-Name = "Zoë" }', {}, ("'headers'", "ASCII")),
        ('url = "https://x.example"\nheaders = { X-A = "a\\r\\nX-B: 1" }', {}, ("'headers'",)),
        ('url = "https://x.example"\nheaders = { X-A = "a\\u0000" }', {}, ("'headers'",)),
        ('url = "https://x.example"\nheaders = { X-A = "${V}" }', {"V": "a\nb"}, ("'headers'",)),
        ('url = "https://x.example"\nheaders = { Host = "evil" }', {}, ("'headers'", "Host")),
        ('url = "https://x.example"\nheaders = { Content-Length = "1" }', {}, ("'headers'",)),
        ('url = "https://x.example"\nheaders = { Transfer-Encoding = "x" }', {}, ("'headers'",)),
        ('url = "https://x.example"\nheaders = { connection = "close" }', {}, ("'headers'",)),
        ('url = "https://x.example"\nheaders = { webhook-id = "x" }', {}, ("'headers'",)),
        ('url = "https://x.example"\nformat = "form"', {}, ("'fields'", "needs fields")),
        ('url = "https://x.example"\nbody = "not json"', {}, ("'body'", "JSON")),
        ('url = "https://x.example"\nbody = \'{"a": NaN}\'', {}, ("'body'", "NaN")),
        (
            'url = "https://x.example"\nprobe_seconds = 90\nprobe_max_seconds = 60',
            {},
            ("'probe_seconds'", "probe_max_seconds"),
        ),
    ],
)
def test_a_bad_endpoint_is_refused_with_one_line_naming_endpoint_and_key(
    tmp_path: Path, table: str, env: dict[str, str], names: tuple[str, ...]
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, f"[endpoints.chat]\n{table}\n", env)
    message = str(caught.value)
    assert "\n" not in message
    for part in names:
        assert part in message, message


@pytest.mark.parametrize(
    "name", ["processing", "done", "failed", "a--b", ".hidden", "x" * 41, "a-", "-a", "a-b-"]
)
def test_names_that_cannot_be_inbox_folders_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="name"):
        load(tmp_path, f'[endpoints."{name}"]\nurl = "https://x.example"\n')


def test_a_file_that_is_not_toml_or_missing_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(tmp_path, "[endpoints.a\n")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_endpoints(Settings(config=tmp_path / "missing.toml"), {})
    with pytest.raises(ConfigError, match="unknown table"):
        load(tmp_path, '[webhooks.a]\nurl = "https://x.example"\n')


def test_a_chat_body_keeps_quotes_newlines_and_non_ascii(tmp_path: Path) -> None:
    endpoints = load(
        tmp_path,
        """
        [endpoints.chat]
        url = "https://chat.example/hook"
        body = '{"text": {{ ("*" ~ userId ~ "*: " ~ alertMessage) | tojson }}}'
        """,
    )
    message = 'disk "full"\non host ünïcødé 📣 <b>'
    body = render(endpoints, "chat", user_id='u"1', message=message)
    assert body is not None
    assert json.loads(body) == {"text": f'*u"1*: {message}'}


def test_extra_columns_are_variables_by_name_and_as_extra(tmp_path: Path) -> None:
    endpoints = load(
        tmp_path,
        """
        [endpoints.api]
        url = "https://api.example"
        body = '''{"to": {{ userId | tojson }}, "sev": {{ severity | tojson }},
            "all": {{ extra | tojson }}, "id": "{{ alert_id }}",
            "at": "{{ file }}:{{ line }}"}'''
        """,
    )
    body = render(endpoints, "api", extra={"severity": "high", "team": "db"})
    assert body is not None
    assert json.loads(body) == {
        "to": "u1",
        "sev": "high",
        "all": {"severity": "high", "team": "db"},
        "id": "msg_1",
        "at": "alerts.csv:2",
    }


def test_a_missing_variable_or_invalid_json_is_a_render_error(tmp_path: Path) -> None:
    endpoints = load(
        tmp_path,
        """
        [endpoints.a]
        url = "https://a.example"
        body = '{"v": {{ severity | tojson }}}'
        [endpoints.b]
        url = "https://b.example"
        body = '{"text": "{{ alertMessage }}"}'
        """,
    )
    with pytest.raises(RenderError, match="severity"):
        render(endpoints, "a")
    # Not escaped for JSON: a quote in the message breaks the body, which is refused.
    with pytest.raises(RenderError, match="valid JSON"):
        render(endpoints, "b", message='say "hi"')
    assert render(endpoints, "b", message="plain") == b'{"text": "plain"}'


def test_the_sandbox_refuses_to_reach_python_internals(tmp_path: Path) -> None:
    endpoints = load(
        tmp_path,
        """
        [endpoints.a]
        url = "https://a.example"
        body = '{"v": "{{ userId.__class__.__mro__ }}"}'
        """,
    )
    with pytest.raises(RenderError):
        render(endpoints, "a")


def test_a_form_body_is_url_encoded_from_its_fields(tmp_path: Path) -> None:
    endpoints = load(
        tmp_path,
        """
        [endpoints.sms]
        url = "https://sms.example/send"
        format = "form"
        fields = { To = "{{ userId }}", Body = "{{ alertMessage }}" }
        basic_auth = { username = "acct", password = "${SMS_PASSWORD}" }
        """,
        {"SMS_PASSWORD": "s3cret"},
    )
    sms = endpoints["sms"]
    assert sms.content_type == "application/x-www-form-urlencoded"
    assert sms.basic_auth == ("acct", "s3cret")
    body = render(endpoints, "sms", message="a & b = ç\nnext")
    assert body is not None
    assert parse_qs(body.decode()) == {"To": ["u1"], "Body": ["a & b = ç\nnext"]}


def test_credentials_in_urls_are_masked() -> None:
    assert mask_url("https://user:pw@h.example:8443/p?q=1") == "https://***@h.example:8443/p?q=***"
    assert mask_url("https://h.example/p") == "https://h.example/p"
    assert mask_url("http://[::1]:8080/p?api_key=k&flag") == "http://[::1]:8080/p?api_key=***&flag"


def test_a_url_is_shown_as_written_with_secrets_from_the_environment_unexpanded(
    tmp_path: Path,
) -> None:
    env = {"SLACK_HOOK_PATH": "T000/B000/s3cr3t", "TOKEN": "t0k3n"}
    endpoints = load(
        tmp_path,
        '[endpoints.chat]\nurl = "https://hooks.slack.com/services/${SLACK_HOOK_PATH}"\n'
        '[endpoints.api]\nurl = "https://api.example/v1?api_key=${TOKEN}&x=1"\n',
        env,
    )
    chat, api = endpoints["chat"], endpoints["api"]
    assert chat.url == "https://hooks.slack.com/services/T000/B000/s3cr3t"
    assert chat.masked_url == "https://hooks.slack.com/services/${SLACK_HOOK_PATH}"
    assert api.masked_url == "https://api.example/v1?api_key=***&x=***"
    assert "t0k3n" not in api.masked_url


def test_a_port_out_of_range_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"endpoint 'a', key 'url'.*not a valid URL") as caught:
        load(tmp_path, '[endpoints.a]\nurl = "http://user:pw@127.0.0.1:99999/x"\n')
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("value", ["a\r\nX-Evil: 1", "a\tb", "a b"])
def test_a_url_with_a_control_character_is_refused_in_one_line(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match=r"endpoint 'a', key 'url'.*control") as caught:
        load(tmp_path, '[endpoints.a]\nurl = "http://127.0.0.1/x/${V}"\n', {"V": value})
    assert "\n" not in str(caught.value)


def test_url_credentials_beside_an_authorization_header_or_a_header_twice_are_refused(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match=r"key 'url'.*Authorization"):
        load(
            tmp_path,
            '[endpoints.a]\nurl = "http://u:p@127.0.0.1/x"\n'
            'headers = { Authorization = "Bearer t" }\n',
        )
    with pytest.raises(ConfigError, match=r"key 'headers'.*twice"):
        load(
            tmp_path,
            '[endpoints.a]\nurl = "http://127.0.0.1/x"\nheaders = { x-a = "1", X-A = "2" }\n',
        )


def test_user_and_password_in_the_url_are_sent_as_basic_auth(tmp_path: Path) -> None:
    endpoint = load(tmp_path, '[endpoints.a]\nurl = "https://us%40r:p%3Aw@h.example:8443/x"\n')["a"]
    assert endpoint.url == "https://h.example:8443/x"
    assert endpoint.basic_auth == ("us@r", "p:w")
    assert endpoint.masked_url == "https://***@h.example:8443/x"
    with pytest.raises(ConfigError, match=r"key 'url'.*basic_auth"):
        load(
            tmp_path,
            '[endpoints.a]\nurl = "https://u:p@h.example/"\n'
            'basic_auth = { username = "a", password = "b" }\n',
        )
    default = load_endpoints(Settings(webhook_url="http://u:p@h.example/hook"), {})[DEFAULT]
    assert (default.url, default.basic_auth) == ("http://h.example/hook", ("u", "p"))


@pytest.mark.parametrize(
    ("endpoint", "name"),
    [("a", "-x.csv"), ("b-c", "x--y.csv"), (DEFAULT, "a@b--c.csv"), ("z", "--"), ("a_1", "n")],
)
def test_a_processing_name_gives_back_its_endpoint_and_name(endpoint: str, name: str) -> None:
    disk = disk_name(processing_tag("0123456789ab", endpoint), name)
    assert (endpoint_of(disk), original_name(disk)) == (endpoint, name)


def test_a_row_whose_template_recurses_or_grows_too_large_is_a_row_error(tmp_path: Path) -> None:
    endpoints = load(
        tmp_path,
        '[endpoints.deep]\nurl = "https://x.example"\n'
        "body = '{% macro m(n) %}{{ m(n) }}{% endmacro %}{{ m(userId) }}'\n"
        '[endpoints.big]\nurl = "https://x.example"\n'
        "body = '\"{% for i in range(99999) %}{{ alertMessage }}{% endfor %}\"'\n"
        '[endpoints.nan]\nurl = "https://x.example"\n'
        "body = '{\"v\": {{ alertMessage }}}'\n",
    )
    with pytest.raises(RenderError, match="recurses"):
        render(endpoints, "deep")
    with pytest.raises(RenderError, match="too large"):
        render(endpoints, "big", message="x" * 100)
    assert render(endpoints, "big", message="x") is not None  # ~100 kB: fine
    for constant in ("NaN", "Infinity", "-Infinity"):
        with pytest.raises(RenderError, match="JSON"):
            render(endpoints, "nan", message=constant)


def test_environment_values_in_templates_are_text_never_template(tmp_path: Path) -> None:
    env = {"TAG": 'x" {{ 7 * 7 }} {% if 1 %}\\', "SENDER": "{{ userId }}&a=b"}
    endpoints = load(
        tmp_path,
        '[endpoints.chat]\nurl = "https://x.example"\n'
        'body = \'{"tag": "${TAG}", "u": {{ userId | tojson }}}\'\n'
        '[endpoints.sms]\nurl = "https://x.example"\nformat = "form"\n'
        'fields = { From = "${SENDER}", To = "{{ userId }}" }\n',
        env,
    )
    body = render(endpoints, "chat")
    assert body is not None
    assert json.loads(body) == {"tag": env["TAG"], "u": "u1"}
    form = render(endpoints, "sms")
    assert form is not None
    assert parse_qs(form.decode()) == {"From": ["{{ userId }}&a=b"], "To": ["u1"]}
