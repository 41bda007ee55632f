"""Several endpoints with real processes (``hookdrop up``) and several mock receivers: bodies,
headers and auth as each receiver wants them, one endpoint's 429 storm or outage beside a
healthy one that keeps its pace, reload by SIGHUP, the operator's view."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from hookdrop.settings import Settings
from hookdrop.store import Store
from tests.helpers import StartMock, file_rows, free_port, hookdrop_process, wait_for, write_csv

pytestmark = pytest.mark.e2e

HEALTHY_RATE = 40.0  # requests/s configured for the healthy endpoint
HEALTHY_ROWS = 240  # six seconds at that rate


def start_up(settings: Settings, tmp_path: Path, config: str, **env: str) -> tuple[Any, Path]:
    path = tmp_path / "endpoints.toml"
    path.write_text(config, encoding="utf-8")
    log = tmp_path / "up.log"
    live = settings.replace(config=path, log_format="json")
    process = hookdrop_process(live, "up", "--notifiers", "2", extra_env=env, log_path=log)
    wait_for(lambda: events(log, "monitor.started") or process.poll() is not None, timeout=60)
    assert process.poll() is None, log.read_text()[-3000:]
    return process, log


def events(log: Path, name: str) -> list[dict[str, Any]]:
    found = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("{"):
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == name:
                found.append(event)
    return found


def pace(stats: dict[str, Any]) -> float:
    """Accepted requests per second from the first request to the last acceptance."""
    span = stats["last_accepted_at"] - stats["first_received_at"]
    return float(stats["accepted"]) / max(span, 0.001)


def test_each_receiver_gets_its_own_body_headers_and_auth(
    settings: Settings, store: Store, tmp_path: Path, start_mock: StartMock
) -> None:
    chat = start_mock(
        any_body=True, record_bodies=10, require_header="Authorization: Bearer chat-t0ken"
    )
    form = start_mock(
        any_body=True, record_bodies=10, require_header="Authorization: Basic YWNjdDpzbXMtcHc="
    )
    default = start_mock()
    config = f"""
[endpoints.chat]
url = "{chat.hook_url}"
body = '{{"text": {{{{ ("*" ~ userId ~ "*: " ~ alertMessage) | tojson }}}}}}'
headers = {{ Authorization = "Bearer ${{CHAT_TOKEN}}" }}

[endpoints.sms]
url = "{form.hook_url}"
format = "form"
fields = {{ To = "{{{{ userId }}}}", Body = "{{{{ alertMessage }}}}" }}
basic_auth = {{ username = "acct", password = "${{SMS_PASSWORD}}" }}

[endpoints.default]
url = "{default.hook_url}"
"""
    process, log = start_up(
        settings, tmp_path, config, CHAT_TOKEN="chat-t0ken", SMS_PASSWORD="sms-pw"
    )
    inbox = settings.inbox
    wait_for(lambda: (inbox / "chat").is_dir() and (inbox / "sms").is_dir(), what="folders")
    message = 'disk "full"\non db1 — ünïcødé 📣'
    (inbox / "chat" / ".a.tmp").write_text(
        "user_id,message\n" + f'u1,"{message.replace(chr(34), chr(34) * 2)}"\nu2,plain\n',
        encoding="utf-8",
    )
    os.rename(inbox / "chat" / ".a.tmp", inbox / "chat" / "a.csv")
    write_csv(inbox / "sms" / "b.csv", 5)
    write_csv(inbox / "c.csv", 5)
    chat.wait_until(lambda s: s["accepted"] >= 2, timeout=60)
    form.wait_until(lambda s: s["accepted"] >= 5, timeout=60)
    default.wait_until(lambda s: s["accepted"] >= 5, timeout=60)
    wait_for(lambda: all(r["status"] == "done" for r in file_rows(store)), what="all done")

    texts = {json.loads(b["body"])["text"] for b in chat.client_bodies()}
    assert texts == {f"*u1*: {message}", "*u2*: plain"}
    forms = [parse_qs(b["body"]) for b in form.client_bodies()]
    assert {f["To"][0] for f in forms} == {f"u{n}" for n in range(5)}
    assert all(
        b["headers"]["content-type"].startswith("application/x-www-form")
        for b in form.client_bodies()
    )
    for mock in (chat, form, default):
        stats = mock.stats(per_user=False)
        assert stats["accepted"] == stats["unique"]  # each alert once
        assert stats["bad_request"] == 0  # every required header was there

    # The operator's view: per-file endpoint, GET /endpoints and `hookdrop endpoints`.
    assert {r["endpoint"] for r in file_rows(store)} == {"chat", "sms", "default"}
    host, port = settings.api_listen
    answer = httpx.get(f"http://{host}:{port}/endpoints", timeout=10).json()["endpoints"]
    by_name = {e["name"]: e for e in answer}
    assert by_name["sms"]["counts"]["delivered"] == 5
    assert by_name["chat"]["breaker"]["state"] == "closed"
    assert "sms-pw" not in json.dumps(answer) and "chat-t0ken" not in json.dumps(answer)
    metrics = httpx.get(f"http://{host}:{port}/metrics", timeout=10).text
    assert 'hookdrop_endpoint_alerts_total{endpoint="chat",status="delivered"} 2.0' in metrics
    env = {
        **os.environ,
        **settings.replace(config=tmp_path / "endpoints.toml").to_environ(),
        "CHAT_TOKEN": "x",
        "SMS_PASSWORD": "y",
    }
    cli = subprocess.run(
        [sys.executable, "-m", "hookdrop", "endpoints", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert {e["name"] for e in json.loads(cli.stdout)} == {"chat", "sms", "default"}

    # Reload: a bad file is refused and the running endpoints stay; a good one adds a folder.
    path = tmp_path / "endpoints.toml"
    path.write_text(config + '\n[endpoints.more]\nurl = "not a url"\n', encoding="utf-8")
    process.send_signal(signal.SIGHUP)
    # By every process: the monitor, the batcher and both notifiers.
    wait_for(lambda: len(events(log, "config.refused")) == 4, what="the bad file refused")
    assert {e["process"] for e in events(log, "config.refused")} == {
        "monitor",
        "batcher",
        "notifier",
    }
    assert all("'more'" in e["error"] for e in events(log, "config.refused"))
    assert process.poll() is None
    path.write_text(config + f'\n[endpoints.more]\nurl = "{default.hook_url}"\n', "utf-8")
    process.send_signal(signal.SIGHUP)
    wait_for((inbox / "more").is_dir, what="the new endpoint's folder")
    write_csv(inbox / "more" / "d.csv", 3, start=100)
    default.wait_until(lambda s: s["accepted"] >= 8, timeout=60)
    assert default.stats(per_user=False)["unique"] == 8


@pytest.mark.parametrize("trouble", ["429 storm", "outage"])
def test_trouble_at_one_endpoint_never_slows_another(
    settings: Settings, store: Store, tmp_path: Path, start_mock: StartMock, trouble: str
) -> None:
    healthy = start_mock()
    if trouble == "429 storm":
        bad = start_mock()
        bad.configure(throttle_burst=1_000_000)  # every request: 429, Retry-After 1 s
        bad_url = bad.hook_url
    else:
        bad_port = free_port()  # nothing listens: connection refused
        bad_url = f"http://127.0.0.1:{bad_port}/hook"
    config = f"""
[endpoints.healthy]
url = "{healthy.hook_url}"
rate_limit = {HEALTHY_RATE}

[endpoints.bad]
url = "{bad_url}"
probe_seconds = 0.5
probe_max_seconds = 2
"""
    process, log = start_up(settings.replace(chunk_size=20), tmp_path, config)
    inbox = settings.inbox
    wait_for(lambda: (inbox / "bad").is_dir() and (inbox / "healthy").is_dir(), what="folders")
    # The troubled endpoint's work first, so its jobs are ahead of the healthy one's.
    write_csv(inbox / "bad" / "bad.csv", 400)
    wait_for(lambda: file_rows(store), what="bad file claimed")
    write_csv(inbox / "healthy" / "ok.csv", HEALTHY_ROWS, start=1000)
    stats = healthy.wait_until(lambda s: s["accepted"] >= HEALTHY_ROWS, timeout=60)
    assert stats["unique"] == HEALTHY_ROWS
    assert pace(stats) >= 0.85 * HEALTHY_RATE, f"healthy endpoint slowed: {pace(stats):.1f}/s"
    assert process.poll() is None

    if trouble == "outage":
        assert events(log, "breaker.opened"), "the breaker never opened"
        # The receiver comes back on its port: a probe closes the breaker, all get through.
        back = start_mock(port=bad_port)
        back.wait_until(lambda s: s["accepted"] >= 400, timeout=60)
        assert back.stats(per_user=False)["unique"] == 400
        assert events(log, "breaker.closed")
    else:
        assert bad.stats(per_user=False)["accepted"] == 0
        # Nothing but 429s for a few seconds: the chunk goes back (maybe after the healthy
        # file finished on a busy machine, so wait for it rather than expect it already).
        wait_for(lambda: events(log, "chunk.released"), timeout=30, what="a chunk handed back")
        bad.configure(throttle_burst=0)
        bad.wait_until(lambda s: s["accepted"] >= 400, timeout=60)
        assert bad.stats(per_user=False)["unique"] == 400
    dead = [r for r in file_rows(store) if r["dead"] or r["rejected"]]
    assert not dead, "trouble spent the alerts' budget"


def test_a_held_endpoint_hands_its_chunks_back_at_once_and_frees_the_workers(
    settings: Settings, store: Store, tmp_path: Path, start_mock: StartMock
) -> None:
    """Senders waiting for a token or in a retry backoff when the endpoint is held send
    nothing more: the chunk goes back within moments, and the other endpoint's file starts
    promptly even though the held one's jobs were ahead of it on both workers."""
    healthy, bad = start_mock(), start_mock()
    bad.configure(throttle_burst=1_000_000)  # every request: 429, Retry-After 1 s
    config = f"""
[endpoints.healthy]
url = "{healthy.hook_url}"

[endpoints.bad]
url = "{bad.hook_url}"
"""
    process, log = start_up(settings.replace(chunk_size=200), tmp_path, config)
    inbox = settings.inbox
    wait_for(lambda: (inbox / "bad").is_dir() and (inbox / "healthy").is_dir(), what="folders")
    write_csv(inbox / "bad" / "bad.csv", 400)  # two chunks: one per notifier
    wait_for(lambda: bad.stats(per_user=False)["received"] >= 2, what="both chunks sending")
    dropped = time.time()
    write_csv(inbox / "healthy" / "ok.csv", 20, start=1000)
    stats = healthy.wait_until(lambda s: s["accepted"] >= 20, timeout=60)
    # The held chunks go back once only 429s came for REFUSED_HAND_BACK_SECONDS (5 s).
    waited = stats["first_received_at"] - dropped
    assert waited < 7.5, f"the healthy file waited {waited:.1f} s for a worker"
    wait_for(lambda: len(events(log, "chunk.released")) >= 1, what="a chunk handed back")
    held = min(_at(e) for e in events(log, "endpoint.held"))
    released = [_at(e) for e in events(log, "chunk.released") if e.get("endpoint") == "bad"]
    assert min(released) - held < 1.0, f"handed back {min(released) - held:.1f} s after held"
    assert process.poll() is None


def _at(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()
