"""Several endpoints on real Redis and PostgreSQL (HTTP mocked by respx): routing by folder,
bodies rendered at insert, per-endpoint headers and auth, the breaker, deferral on a long
429 pause, reload."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest
import redis
import respx
import structlog
from structlog.testing import capture_logs

import daemon.dlq
import hookdrop.store._delivery
from daemon.claim import Claimer
from daemon.recovery import Recovery
from hookdrop.endpoints import LiveEndpoints
from hookdrop.endpoints.state import read_state
from hookdrop.intake import ensure_dirs
from hookdrop.ops.endpoints import endpoints_view
from hookdrop.settings import Settings
from hookdrop.store import AlertStatus, Result, Store
from tests.helpers import (
    alert_rows,
    file_rows,
    ledger_file,
    queued_alert_ids,
    run_burst,
    run_queued_deliveries,
    running_monitor,
    wait_for,
    write_csv,
)
from workers import context
from workers.notifier import Delivery
from workers.runner import build_context

CHAT = "http://chat.test/hook"
SMS = "http://sms.test/send"
DOWN = "http://down.test/hook"
BUSY = "http://busy.test/hook"
DEFAULT = "http://default.test/hook"
ENV = {"CHAT_TOKEN": "chat-t0ken", "SMS_PASSWORD": "sms-pw"}

CONFIG = f"""
[endpoints.chat]
url = "{CHAT}"
method = "PUT"
body = '''{{"text": {{{{ ("*" ~ userId ~ "*: " ~ alertMessage) | tojson }}}},
    "sev": {{{{ severity | tojson }}}}}}'''
headers = {{ Authorization = "Bearer ${{CHAT_TOKEN}}" }}

[endpoints.sms]
url = "{SMS}"
format = "form"
fields = {{ To = "{{{{ userId }}}}", Body = "{{{{ alertMessage }}}}" }}
basic_auth = {{ username = "acct", password = "${{SMS_PASSWORD}}" }}

[endpoints.down]
url = "{DOWN}"
breaker_failures = 3
probe_seconds = 0.3
max_tries = 2

[endpoints.busy]
url = "{BUSY}"
"""


@pytest.fixture
def esettings(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in ENV.items():  # read by the workers (run_burst) from the environment
        monkeypatch.setenv(name, value)
    path = tmp_path / "endpoints.toml"
    path.write_text(CONFIG, encoding="utf-8")
    return settings.replace(config=path, webhook_url=DEFAULT, dlq_interval=60.0)


@pytest.fixture
def engine(esettings: Settings) -> Iterator[Delivery]:
    ctx = build_context(esettings, name="test-notifier")
    context.install(ctx)
    delivery = Delivery(ctx)
    yield delivery
    delivery.close()
    context.install(None)
    ctx.close()


def test_files_are_routed_by_folder_rendered_and_sent_with_each_endpoints_auth(
    esettings: Settings, store: Store, rconn: redis.Redis
) -> None:
    inbox = esettings.inbox
    with running_monitor(esettings, environ=ENV) as monitor:
        wait_for(lambda: (inbox / "chat").is_dir() and (inbox / "sms").is_dir(), what="folders")
        (inbox / "stray").mkdir()
        (inbox / "chat" / "day.csv").write_text(
            'user_id,message,severity\nu1,"disk ""full""\non db1 ✓",high\nu2,ok,\n',
            encoding="utf-8",
        )
        # No severity column: the template cannot be rendered for its rows.
        (inbox / "chat" / "nosev.csv").write_text("user_id,message\nu9,x\n", encoding="utf-8")
        write_csv(inbox / "sms" / "day.csv", 3)
        write_csv(inbox / "top.csv", 3)  # the same rows as sms/day.csv: another endpoint
        wait_for(lambda: len(file_rows(store)) == 4, what="four files claimed")
        assert monitor.folders >= {inbox / "chat", inbox / "sms"}
    by_endpoint = {row["endpoint"]: row for row in file_rows(store) if row["name"] != "nosev.csv"}
    nosev = next(row for row in file_rows(store) if row["name"] == "nosev.csv")
    assert set(by_endpoint) == {"chat", "sms", "default"}
    assert {row["status"] for row in by_endpoint.values()} == {"claimed"}  # none a duplicate
    run_burst(esettings, "batcher")
    chat_id = by_endpoint["chat"]["id"]
    chat = alert_rows(store, chat_id)
    assert [r["user_id"] for r in chat] == ["u1", "u2"]
    assert json.loads(bytes(chat[0]["body"])) == {
        "text": '*u1*: disk "full"\non db1 ✓',
        "sev": "high",
    }
    with store.transaction() as conn:
        errors = conn.execute(
            "SELECT line_no, reason FROM row_errors WHERE file_id = %s", (nosev["id"],)
        ).fetchall()
    assert not alert_rows(store, nosev["id"])  # a row error, never a broken request
    assert [e["line_no"] for e in errors] == [2]
    assert "'severity'" in errors[0]["reason"]
    sms_ids = {r["id"] for r in alert_rows(store, by_endpoint["sms"]["id"])}
    top_ids = {r["id"] for r in alert_rows(store, by_endpoint["default"]["id"])}
    assert not sms_ids & top_ids  # same rows, two endpoints: two alerts each
    assert all(r["body"] is None for r in alert_rows(store, by_endpoint["default"]["id"]))

    with respx.mock(using="httpx") as router:
        chat_route = router.put(CHAT).respond(200)
        sms_route = router.post(SMS).respond(201)
        default_route = router.post(DEFAULT).respond(200)
        run_burst(esettings, "notifier")
    assert chat_route.call_count == 2 and sms_route.call_count == 3
    assert default_route.call_count == 3
    chat_request = chat_route.calls[0].request
    assert chat_request.headers["authorization"] == "Bearer chat-t0ken"
    assert chat_request.headers["content-type"] == "application/json"
    sms_request = sms_route.calls[0].request
    expected = "Basic " + base64.b64encode(b"acct:sms-pw").decode()
    assert sms_request.headers["authorization"] == expected
    assert sms_request.headers["content-type"] == "application/x-www-form-urlencoded"
    form = parse_qs(sms_request.content.decode())
    assert set(form) == {"To", "Body"}
    default_body = json.loads(default_route.calls[0].request.content)
    assert set(default_body) == {"userId", "alertMessage"}


def test_an_endpoint_down_opens_its_breaker_and_alerts_wait_without_spending_budget(
    engine: Delivery, esettings: Settings, store: Store, rconn: redis.Redis
) -> None:
    file_id, ids = ledger_file(store, 10, endpoint="down", sha="down10")
    recovery = Recovery(esettings, store, rconn, LiveEndpoints(esettings, ENV))
    keys = esettings.keys.scoped("down")
    with respx.mock(using="httpx") as router, capture_logs() as logs:
        down = router.post(DOWN).mock(side_effect=httpx.ConnectError("refused"))
        result = engine.run_alerts(file_id, ids)
        tries_when_open = down.call_count
        rows = alert_rows(store, file_id)
        assert read_state(rconn, keys).breaker == "open"
        assert result["deferred"] >= 7
        # Every try that was made counts; the alerts then wait without spending more.
        assert 3 <= tries_when_open <= 10
        assert {r["status"] for r in rows} <= {"deferred", "dlq"}
        assert sum(r["attempts"] for r in rows) == tries_when_open
        assert not [r for r in rows if r["status"] == "dead"]
        # Open: nothing is queued again, and the other endpoints are untouched.
        assert recovery.requeue_deferred() == 0
        assert read_state(rconn, esettings.keys).breaker == "closed"
        # The probe is due: one alert goes out, and fails, so the wait doubles.
        wait_for(lambda: read_state(rconn, keys).accepting, what="probe due")
        assert recovery.requeue_deferred() == 1
        run_queued_deliveries(engine, rconn, esettings)
        assert down.call_count == tries_when_open + 1
        # The failed probe is the breaker's test: it costs the alert nothing.
        assert sum(r["attempts"] for r in alert_rows(store, file_id)) == tries_when_open
        state = read_state(rconn, keys)
        assert state.breaker == "open" and state.probe_interval == pytest.approx(0.6)
        down.mock(return_value=httpx.Response(200))
        rconn.delete(esettings.keys.notifier_queue)
        wait_for(lambda: read_state(rconn, keys).accepting, what="second probe due")
        assert recovery.requeue_deferred() == 1
        run_queued_deliveries(engine, rconn, esettings)
        assert read_state(rconn, keys).breaker == "closed"
        rconn.delete(esettings.keys.notifier_queue)
        with store.transaction() as conn:  # the ones in the DLQ are due now
            conn.execute("UPDATE alerts SET next_attempt_at = now() WHERE status = 'dlq'")
        recovery.requeue_deferred()
        recovery.reinject_dlq()
        run_queued_deliveries(engine, rconn, esettings)
    rows = alert_rows(store, file_id)
    assert {r["status"] for r in rows} == {"delivered"}
    # (info events may be filtered by a log level another test set; warnings never are)
    assert [e["after_probe"] for e in logs if e["event"] == "breaker.opened"] == [False, True]


def test_a_long_429_pause_hands_the_chunk_back_at_once_and_holds_only_that_endpoint(
    engine: Delivery, esettings: Settings, store: Store, rconn: redis.Redis
) -> None:
    file_id, ids = ledger_file(store, 20, endpoint="busy", sha="busy20")
    recovery = Recovery(esettings, store, rconn, LiveEndpoints(esettings, ENV))
    with respx.mock(using="httpx") as router:
        router.post(BUSY).respond(429, headers={"retry-after": "30"})
        started = time.monotonic()
        result = engine.run_alerts(file_id, ids)
        took = time.monotonic() - started
    assert took < 10, "the job waited for the pause instead of handing its alerts back"
    assert result["deferred"] == 20
    rows = alert_rows(store, file_id)
    assert {r["status"] for r in rows} == {"deferred"}
    assert {r["attempts"] for r in rows} == {0}  # 429s spend no budget
    busy = read_state(rconn, esettings.keys.scoped("busy"))
    assert busy.backpressure_seconds > 20
    assert read_state(rconn, esettings.keys).backpressure_seconds == 0  # default: not held
    assert read_state(rconn, esettings.keys.scoped("chat")).backpressure_seconds == 0
    assert recovery.requeue_deferred() == 0  # held: stays in PostgreSQL
    # The pause ends (the receiver's flag expires): the monitor queues them again.
    rconn.delete(esettings.keys.scoped("busy").backpressure)
    rconn.delete(esettings.keys.scoped("busy").ratecontrol)
    assert recovery.requeue_deferred() == 20
    assert set(queued_alert_ids(rconn, esettings)) == set(ids)


def test_a_bad_reload_keeps_the_running_endpoints_and_a_good_one_applies(
    esettings: Settings,
) -> None:
    assert esettings.config is not None
    live = LiveEndpoints(esettings, {"CHAT_TOKEN": "a", "SMS_PASSWORD": "b"})
    before = live.current
    good = esettings.config.read_text()
    esettings.config.write_text(good + '\n[endpoints.extra]\nurl = "nope"\n')
    live.request_reload()
    with capture_logs() as logs:
        assert live.current is before
    refused = [e for e in logs if e["event"] == "config.refused"]
    assert len(refused) == 1 and "'extra'" in refused[0]["error"]
    esettings.config.write_text(good + '\n[endpoints.extra]\nurl = "http://extra.test/"\n')
    live.request_reload()
    assert "extra" in live.current
    assert live.generation == 1


def test_an_endpoint_folder_swapped_for_a_link_leads_nowhere(
    esettings: Settings, store: Store, rconn: redis.Redis, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "secret.csv").write_text("user_id,message\nu1,x\n", encoding="utf-8")
    ensure_dirs(esettings)
    (esettings.inbox / "chat").symlink_to(elsewhere)
    assert (
        Claimer(esettings, store, rconn, "m").claim(esettings.inbox / "chat" / "secret.csv") is None
    )
    assert (elsewhere / "secret.csv").exists()  # not taken
    assert not file_rows(store)


def test_a_file_or_link_in_place_of_an_endpoint_folder_leaves_the_others_working(
    esettings: Settings, store: Store, tmp_path: Path
) -> None:
    inbox = esettings.inbox
    inbox.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (inbox / "chat").symlink_to(elsewhere)
    (inbox / "sms").symlink_to(tmp_path / "nowhere")  # dangling
    with capture_logs() as logs, running_monitor(esettings, environ=ENV) as monitor:
        wait_for((inbox / "busy").is_dir, what="the other folders")
        write_csv(inbox / "busy" / "day.csv", 3)
        # The links, files at the top of the inbox, are refused like any link; once they
        # are gone the endpoints' folders are made on a later pass.
        wait_for(
            lambda: {inbox / "chat", inbox / "sms", inbox / "busy"} <= monitor.folders,
            what="every folder made and watched",
        )
        wait_for(lambda: any(r["endpoint"] == "busy" for r in file_rows(store)), what="claim")
    assert (inbox / "chat").is_dir() and not (inbox / "chat").is_symlink()
    assert list(elsewhere.iterdir()) == []  # nothing made through the link
    unusable = [e for e in logs if e["event"] == "inbox.endpoint_folder_unusable"]
    assert sorted(e["path"] for e in unusable) == [str(inbox / "chat"), str(inbox / "sms")]


def test_alerts_of_an_endpoint_removed_by_a_reload_wait_visibly_and_go_once_it_is_back(
    esettings: Settings, store: Store, rconn: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fresh logger: one an earlier test already used is cached past capture_logs.
    monkeypatch.setattr(daemon.dlq, "log", structlog.get_logger("daemon.dlq"))
    assert esettings.config is not None
    file_id, ids = ledger_file(store, 4, endpoint="busy", sha="gone4")
    with store.transaction() as conn:  # handed back while the endpoint was held
        conn.execute("UPDATE alerts SET status = 'deferred' WHERE file_id = %s", (file_id,))
    full = esettings.config.read_text()
    esettings.config.write_text(full.split("[endpoints.busy]")[0])
    recovery = Recovery(esettings, store, rconn, LiveEndpoints(esettings, ENV))
    with capture_logs() as logs:
        assert recovery.requeue_deferred() == 0
        assert recovery.warn_unconfigured() == {"busy": 4}
    assert [e["endpoint"] for e in logs if e["event"] == "endpoint.unconfigured_waiting"] == [
        "busy"
    ]
    view = {
        e["name"]: e
        for e in endpoints_view(recovery.endpoints.current, store, rconn, esettings.keys)
    }
    assert view["busy"]["configured"] is False
    assert view["busy"]["counts"]["deferred"] == 4
    esettings.config.write_text(full)  # configured again: they go out
    recovery.endpoints.request_reload()
    assert recovery.warn_unconfigured() == {}
    assert recovery.requeue_deferred() == 4
    assert set(queued_alert_ids(rconn, esettings)) == set(ids)


def test_a_file_whose_endpoint_was_removed_fails_with_the_reason_instead_of_another_body(
    esettings: Settings, store: Store
) -> None:
    assert esettings.config is not None
    inbox = esettings.inbox
    with running_monitor(esettings, environ=ENV):
        wait_for((inbox / "busy").is_dir, what="folders")
        write_csv(inbox / "busy" / "day.csv", 3)
        wait_for(lambda: len(file_rows(store)) == 1, what="the file claimed")
    esettings.config.write_text(esettings.config.read_text().split("[endpoints.busy]")[0])
    run_burst(esettings, "batcher")
    row = file_rows(store)[0]
    assert "'busy' is not configured" in (row["error"] or "")
    assert alert_rows(store, row["id"]) == []


# Every open alert counted one by one, as the endpoints view did before it read the files'
# counters: it must say the same. Sending: pending, and held by a live lease of its chunk.
_COUNTED_ONE_BY_ONE = """
SELECT f.endpoint,
       CASE WHEN a.status = 'pending' AND EXISTS (SELECT 1 FROM chunk_leases AS l
                    WHERE l.file_id = a.file_id AND l.chunk_seq = a.chunk_seq AND l.until >= now()
                      AND a.id = ANY(l.ids))
            THEN 'sending' ELSE a.status END AS status,
       count(*) AS n
FROM alerts AS a JOIN files AS f ON f.id = a.file_id
WHERE a.status IN ('pending', 'retrying', 'throttled', 'dlq', 'dead', 'deferred')
GROUP BY 1, 2
"""


def test_the_endpoint_counts_from_the_files_counters_match_the_alerts_one_by_one(
    store: Store,
) -> None:
    """Alerts in every state, reached through the notifier's and the operator's own
    statements on two endpoints: a chunk being sent, one handed back with deferred alerts, a
    cancelled file, a replayed dead alert."""
    later = datetime.now(UTC) + timedelta(hours=1)
    sending, ids = ledger_file(store, 12, name="a.csv", endpoint="default")
    claimed = store.claim_chunk(sending, 1, ids, "job-a", 60.0)
    assert claimed is not None and len(claimed[0]) == 12
    outcomes = [
        Result(ids[0], AlertStatus.DELIVERED, code=200),
        Result(ids[1], AlertStatus.DELIVERED, code=200),
        Result(ids[2], AlertStatus.REJECTED, code=400),
        Result(ids[3], AlertStatus.DEAD, failed=1, code=500),
        Result(ids[4], AlertStatus.DEAD, failed=1, code=500),
        Result(ids[5], AlertStatus.DLQ, failed=1, code=500, next_at=later),
        Result(ids[6], AlertStatus.RETRYING, failed=1, code=503),
        Result(ids[7], AlertStatus.THROTTLED, throttled=1, code=429),
    ]
    assert store.record_results(outcomes, sending, 1, "job-a") == len(outcomes)
    assert store.replay_alerts([AlertStatus.DEAD], sending) == 2  # dead again: to the DLQ

    handed, chat_ids = ledger_file(store, 7, name="b.csv", endpoint="chat")
    claimed = store.claim_chunk(handed, 1, chat_ids, "job-b", 60.0)
    assert claimed is not None
    store.record_results([Result(chat_ids[0], AlertStatus.DELIVERED)], handed, 1, "job-b")
    store.defer_alerts(chat_ids[1:3], handed, 1, "job-b")
    store.end_lease(handed, 1, "job-b", given=len(chat_ids))

    gone, _ = ledger_file(store, 5, name="c.csv", endpoint="chat")
    assert store.cancel_file(gone)
    later_dead, dead_ids = ledger_file(store, 3, name="d.csv", endpoint="chat")
    claimed = store.claim_chunk(later_dead, 1, dead_ids, "job-d", 60.0)
    assert claimed is not None
    store.record_results([Result(dead_ids[0], AlertStatus.DEAD)], later_dead, 1, "job-d")
    # A job holding part of its chunk (a breaker's probe, one alert), an id given twice; the
    # rest of the chunk waits in another job, pending.
    part, part_ids = ledger_file(store, 5, name="e.csv", endpoint="chat")
    claimed = store.claim_chunk(part, 1, [part_ids[0], part_ids[0]], "job-e", 60.0)
    assert claimed is not None
    assert [row.id for row in claimed[0]] == [part_ids[0]] and claimed[1] == 1  # sent once
    assert store.status_counts(part) == {AlertStatus.SENDING: 1, AlertStatus.PENDING: 4}

    with store.transaction() as conn:
        expected: dict[str, dict[str, int]] = {}
        for row in conn.execute(_COUNTED_ONE_BY_ONE):
            expected.setdefault(row["endpoint"], {})[row["status"]] = row["n"]
    found = {
        name: {str(status): n for status, n in counts.open.items()}
        for name, counts in store.endpoint_counts().items()
    }
    assert found == expected
    assert expected == {
        "default": {"sending": 4, "retrying": 1, "throttled": 1, "dlq": 3},
        "chat": {"pending": 4 + 4, "sending": 2 + 1, "deferred": 2, "dead": 1},
    }
    assert store.dlq_size() == (3, 1)  # the overview's and the DLQ list's figures


def test_counters_short_of_the_alert_rows_are_reported_not_shown_as_negative(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        hookdrop.store._delivery, "log", structlog.get_logger("hookdrop.store._delivery")
    )
    file_id, ids = ledger_file(store, 3, name="off.csv", endpoint="default")
    with store.transaction() as conn:  # a counter moved without its alerts
        conn.execute("UPDATE files SET delivered = 3 WHERE id = %s", (file_id,))
        conn.execute("UPDATE alerts SET status = 'retrying' WHERE id = %s", (ids[0],))
    with capture_logs() as logs:
        counts = store.endpoint_counts()["default"]
    assert counts.open == {AlertStatus.RETRYING: 1}
    assert [(e["event"], e["open_by_counters"], e["open_by_rows"]) for e in logs] == [
        ("db.counters_disagree", 0, 1)
    ]
