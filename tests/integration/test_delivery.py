"""Notifier jobs on real Redis and PostgreSQL, with the HTTP layer mocked by respx."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
import redis
import respx
from standardwebhooks.webhooks import Webhook

from daemon.recovery import Recovery
from hookdrop.settings import Settings
from hookdrop.store import AlertStatus, Result, Store
from tests.helpers import alert_rows as ledger_alert_rows
from tests.helpers import ledger_file, queued_alert_ids, run_queued_deliveries
from workers import context
from workers.notifier import Delivery, _Chunk
from workers.runner import build_context

URL = "http://receiver.test/hook"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def dsettings(settings: Settings) -> Settings:
    return settings.replace(
        webhook_url=URL,
        signing_secret=SECRET,
        max_tries=3,
        attempt_budget=5,
        backpressure_seconds=0.2,
        concurrency=8,
        breaker_failures=0,  # the DLQ and the budget are under test; the breaker has its own
    )


@pytest.fixture
def engine(dsettings: Settings) -> Iterator[Delivery]:
    ctx = build_context(dsettings, name="test-notifier")
    context.install(ctx)
    delivery = Delivery(ctx)
    yield delivery
    delivery.close()
    context.install(None)
    ctx.close()


def make_file(
    store: Store, count: int, *, extra: dict[str, Any] | None = None
) -> tuple[int, list[str]]:
    return ledger_file(store, count, sha=f"sha{count}", chunk_size=500, extra=extra)


def alert_rows(store: Store, file_id: int) -> dict[str, dict[str, Any]]:
    return {r["user_id"]: r for r in ledger_alert_rows(store, file_id)}


def test_a_chunk_is_delivered_signed_with_stable_ids(engine: Delivery, store: Store) -> None:
    file_id, ids = make_file(store, 25, extra={"plan": "gold"})
    with respx.mock(using="httpx") as router:
        route = router.post(URL).respond(200, json={"ok": True})
        result = engine.run_alerts(file_id, ids)
    assert result["delivered"] == 25
    assert route.call_count == 25
    verifier = Webhook(SECRET)
    seen = set()
    for call in route.calls:
        request = call.request
        body = json.loads(request.content)
        assert set(body) == {"userId", "alertMessage", "plan"}
        verifier.verify(request.content, dict(request.headers))
        seen.add(request.headers["webhook-id"])
    assert seen == set(ids)
    file = store.get_file(file_id)
    assert file is not None and file.delivered == 25
    assert {r["status"] for r in alert_rows(store, file_id).values()} == {"delivered"}


def test_a_delivered_alert_is_never_sent_again(engine: Delivery, store: Store) -> None:
    file_id, ids = make_file(store, 10)
    with respx.mock(using="httpx") as router:
        route = router.post(URL).respond(200)
        engine.run_alerts(file_id, ids)
        again = engine.run_alerts(file_id, ids)  # a re-run job, a re-enqueued chunk...
    assert route.call_count == 10
    assert again["claimed"] == 0


def test_first_try_deliveries_are_one_row_per_round_and_read_as_delivered_everywhere(
    engine: Delivery, store: Store
) -> None:
    """An alert never tried before and delivered at its first try leaves its row as the batcher
    wrote it: its round's row in ``deliveries`` delivers it, for every reader of the ledger. An
    alert that failed first is written as before."""
    from hookdrop.store import result_lines

    file_id, ids = make_file(store, 12)
    failed_once: set[str] = set()

    def answer(request: httpx.Request) -> httpx.Response:
        alert = request.headers["webhook-id"]
        if alert == ids[3] and alert not in failed_once:
            failed_once.add(alert)
            return httpx.Response(503)
        return httpx.Response(201)

    with respx.mock(using="httpx") as router:
        route = router.post(URL).mock(side_effect=answer)
        engine.run_alerts(file_id, ids)
        assert engine.run_alerts(file_id, ids)["claimed"] == 0  # nothing is sent twice
    assert route.call_count == 13
    with store.transaction() as conn:
        raw = {
            r["id"]: r
            for r in conn.execute(
                "SELECT id, status, attempts, last_status_code FROM alerts WHERE file_id = %s",
                (file_id,),
            )
        }
        rounds = conn.execute(
            "SELECT ids, codes FROM deliveries WHERE file_id = %s", (file_id,)
        ).fetchall()
    in_rounds = [alert for row in rounds for alert in row["ids"]]
    assert sorted(in_rounds) == sorted(set(ids) - {ids[3]})  # each once
    assert {code for row in rounds for code in row["codes"]} == {201}
    assert {raw[alert]["status"] for alert in in_rounds} == {"pending"}  # rows untouched
    assert (raw[ids[3]]["status"], raw[ids[3]]["attempts"]) == ("delivered", 1)
    # What operators read: every alert delivered, with its code; nothing open.
    lines = list(result_lines(store, file_id))
    assert {(line.status, line.http_code, line.error) for line in lines} == {
        ("delivered", 201, None)
    }
    assert store.status_counts(file_id) == {}
    file = store.get_file(file_id)
    assert file is not None and (file.delivered, file.alerts_total) == (12, 12)
    assert store.open_alerts(file_id) == []


def test_a_round_written_again_after_its_commit_answer_was_lost_counts_once(
    store: Store,
) -> None:
    """The writer retries a round whose commit went through but whose answer was lost (a
    reset connection): the second write records nothing more, as an update of the alert
    rows would not have."""
    file_id, ids = make_file(store, 4)
    assert store.claim_chunk(file_id, 1, ids, "me", 60) is not None
    round_ = [Result(alert, AlertStatus.DELIVERED, code=200, first_try=True) for alert in ids]
    assert store.record_results(round_, file_id, 1, "me") == 4
    assert store.record_results(round_, file_id, 1, "me") == 0
    file = store.get_file(file_id)
    assert file is not None and (file.delivered, file.alerts_total) == (4, 4)
    with store.transaction() as conn:
        rows = conn.execute("SELECT count(*) AS n FROM deliveries").fetchone()
    assert rows == {"n": 1}


def test_a_cancel_leaves_a_run_out_lease_its_late_outcomes_and_ends_the_rest(
    store: Store, rconn: redis.Redis, dsettings: Settings
) -> None:
    """A notifier's lease ran out (a stall) before the sweep saw it, and the operator cancels
    the file: what the notifier delivered and writes late counts as delivered, the rest as
    cancelled, never an alert as both."""
    from hookdrop.store import result_lines

    file_id, ids = make_file(store, 4)
    assert store.claim_chunk(file_id, 1, ids, "slow", 60) is not None
    with store.transaction() as conn:
        conn.execute("UPDATE chunk_leases SET until = now() - interval '1 s'")
    assert store.cancel_file(file_id)
    assert store.get_file(file_id).cancelled == 0  # type: ignore[union-attr]
    late = [Result(alert, AlertStatus.DELIVERED, code=200, first_try=True) for alert in ids[:2]]
    assert store.record_results(late, file_id, 1, "slow") == 2
    # The monitor's sweep ends the lease, then the leftovers: never an alert queued again.
    recovery = Recovery(dsettings, store, rconn)
    assert recovery.requeue_expired_leases() == 0
    file = store.get_file(file_id)
    assert file is not None
    assert (file.delivered, file.cancelled, file.alerts_total) == (2, 2, 4)
    assert {line.alert_id: line.status for line in result_lines(store, file_id)} == {
        **dict.fromkeys(ids[:2], "delivered"),
        **dict.fromkeys(ids[2:], "cancelled"),
    }
    assert store.status_counts(file_id) == {AlertStatus.CANCELLED: 2}


@pytest.mark.parametrize("retry_after", ["1", "date", None])
def test_429_sets_back_pressure_and_retries_without_using_the_budget(
    engine: Delivery,
    store: Store,
    rconn: redis.Redis,
    dsettings: Settings,
    retry_after: str | None,
) -> None:
    file_id, ids = make_file(store, 1)
    headers = {}
    if retry_after == "date":
        headers["retry-after"] = format_datetime(
            datetime.now(UTC) + timedelta(seconds=2), usegmt=True
        )
    elif retry_after:
        headers["retry-after"] = retry_after
    pauses: list[int] = []
    times: list[float] = []

    def answer(request: httpx.Request) -> httpx.Response:
        times.append(time.monotonic())
        pauses.append(int(rconn.pttl(dsettings.keys.backpressure)))
        if len(pauses) <= 2:
            return httpx.Response(429, headers=headers)
        return httpx.Response(200)

    with respx.mock(using="httpx") as router:
        router.post(URL).mock(side_effect=answer)
        result = engine.run_alerts(file_id, ids)
    assert result["delivered"] == 1 and result["throttled"] == 2
    row = alert_rows(store, file_id)["u0"]
    assert (row["status"], row["attempts"], row["throttled"]) == ("delivered", 0, 2)
    # the flag existed after the first 429 and had expired before the try that succeeded
    assert pauses[0] <= 0 and pauses[-1] <= 0
    # each retry waited out the pause the receiver asked for (or the default); a date names
    # one instant, so it bounds the whole wait rather than each gap
    if retry_after == "date":
        assert times[-1] - times[0] >= 0.9
    else:
        expected = 0.9 if retry_after else dsettings.backpressure_seconds * 0.9
        assert min(b - a for a, b in itertools.pairwise(times)) >= expected


def test_5xx_then_success_counts_one_failed_try(engine: Delivery, store: Store) -> None:
    file_id, ids = make_file(store, 1)
    with respx.mock(using="httpx") as router:
        router.post(URL).mock(
            side_effect=[httpx.Response(503), httpx.ReadTimeout("slow"), httpx.Response(200)]
        )
        engine.run_alerts(file_id, ids)
    row = alert_rows(store, file_id)["u0"]
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("delivered", 2, 200)


def test_other_4xx_is_rejected_at_once_with_code_and_excerpt(
    engine: Delivery, store: Store
) -> None:
    file_id, ids = make_file(store, 1)
    with respx.mock(using="httpx") as router:
        route = router.post(URL).respond(422, text="unknown user u0\n")
        engine.run_alerts(file_id, ids)
    assert route.call_count == 1
    row = alert_rows(store, file_id)["u0"]
    assert (row["status"], row["last_status_code"]) == ("rejected", 422)
    assert row["last_error"] == "HTTP 422: unknown user u0"
    assert store.get_file(file_id).rejected == 1  # type: ignore[union-attr]


def test_failures_go_to_the_dlq_then_dead_when_the_budget_is_spent(
    engine: Delivery, store: Store, rconn: redis.Redis, dsettings: Settings
) -> None:
    file_id, ids = make_file(store, 2)
    recovery = Recovery(dsettings, store, rconn)
    with respx.mock(using="httpx") as router:
        route = router.post(URL).mock(side_effect=httpx.ConnectError("refused"))
        engine.run_alerts(file_id, ids)
        rows = alert_rows(store, file_id)
        assert {r["status"] for r in rows.values()} == {"dlq"}
        assert {r["attempts"] for r in rows.values()} == {3}
        assert route.call_count == 6
        # not due yet: nothing re-injected
        assert recovery.reinject_dlq() == 0
        with store.transaction() as conn:
            conn.execute("UPDATE alerts SET next_attempt_at = now() WHERE file_id = %s", (file_id,))
        # while the receiver asks us to hold off, the DLQ stays put
        rconn.set(dsettings.keys.backpressure, "1", px=5000)
        assert recovery.reinject_dlq() == 0
        rconn.delete(dsettings.keys.backpressure)
        assert recovery.reinject_dlq() == 2
        queued = queued_alert_ids(rconn, dsettings)
        assert set(queued) == set(ids)
        run_queued_deliveries(engine, rconn, dsettings)
    rows = alert_rows(store, file_id)
    assert {r["status"] for r in rows.values()} == {"dead"}
    assert {r["attempts"] for r in rows.values()} == {5}  # the attempt budget
    assert route.call_count == 10
    assert store.get_file(file_id).dead == 2  # type: ignore[union-attr]


def test_a_notifier_of_the_same_name_never_passes_for_the_holder_of_a_live_lease(
    engine: Delivery, store: Store
) -> None:
    """Two processes can share a name (pid 1 in containers, hosts of one name): a second job
    of a chunk held by one of them sends nothing, whatever the names."""
    file_id, ids = make_file(store, 5)
    engine.owner = "vm:1"
    holder = store.claim_chunk(file_id, 1, ids, "vm:1", 60)  # the other process, mid-chunk
    assert holder is not None
    with respx.mock(using="httpx", assert_all_called=False) as router:
        route = router.post(URL).respond(200)
        result = engine.run_alerts(file_id, ids)
    assert route.call_count == 0
    assert result["claimed"] == 0 and result["busy"] == 1


def leased_chunk(
    engine: Delivery, store: Store, *, leased_at: float | None = None
) -> tuple[int, list[str], _Chunk]:
    """A file of 5 alerts whose chunk notifier ``n:1`` leased, as the job it runs."""
    file_id, ids = make_file(store, 5)
    claimed = store.claim_chunk(file_id, 1, ids, "n:1", 60)
    assert claimed is not None
    rows = claimed[0]
    target = engine.target(rows[0].endpoint)
    assert target is not None
    return file_id, ids, _Chunk(engine, target, file_id, 1, rows, owner="n:1", leased_at=leased_at)


def run_chunk(engine: Delivery, chunk: _Chunk) -> tuple[int, dict[str, Any]]:
    """Run the job against a receiver that accepts everything: (requests, the job's counts)."""
    with respx.mock(using="httpx", assert_all_called=False) as router:
        route = router.post(URL).respond(200)
        result = engine.loop.run_until_complete(chunk.run())
    return route.call_count, result


def test_a_notifier_woken_past_its_lease_sends_nothing_of_a_chunk_taken_meanwhile(
    engine: Delivery, store: Store
) -> None:
    """A notifier stopped (SIGSTOP, a starved host) past its lease finds on waking that the
    monitor handed its chunk to another notifier: it sends nothing more of it. Its clock says
    the lease may have run out, so it asks PostgreSQL before the next request."""
    woke = time.monotonic() - 2 * engine.settings.lease_seconds  # leased, then frozen
    file_id, ids, chunk = leased_chunk(engine, store, leased_at=woke)
    with store.transaction() as conn:  # meanwhile the lease ran out and the sweep took it
        conn.execute("UPDATE chunk_leases SET until = now() - interval '1 s'")
    assert store.claim_chunk(file_id, 1, ids, "n:2", 60) is not None
    calls, result = run_chunk(engine, chunk)
    assert calls == 0
    assert result["released"] == 5 and result["delivered"] == 0


def test_a_notifier_woken_past_its_lease_goes_on_once_a_renewal_says_the_chunk_is_its(
    engine: Delivery, store: Store
) -> None:
    woke = time.monotonic() - 2 * engine.settings.lease_seconds
    _, _, chunk = leased_chunk(engine, store, leased_at=woke)
    calls, result = run_chunk(engine, chunk)
    assert calls == 5
    assert result["delivered"] == 5
    assert chunk.renewed_at > woke


def test_a_notifier_woken_from_a_freeze_sends_nothing_of_a_file_paused_meanwhile(
    engine: Delivery, store: Store, rconn: redis.Redis, dsettings: Settings
) -> None:
    """The keeper reads the pause flag every quarter second; a notifier that slept longer
    (SIGSTOP) reads it before its next request instead of sending one per sender first."""
    file_id, _, chunk = leased_chunk(engine, store)
    chunk.flags_checked_at -= 10  # frozen for a while, during which the file was paused
    rconn.set(dsettings.keys.paused(file_id), "1")
    calls, result = run_chunk(engine, chunk)
    assert calls == 0
    assert result["released"] == 5


def test_the_leases_of_a_paused_then_cancelled_file_are_cleared(
    store: Store, rconn: redis.Redis, dsettings: Settings
) -> None:
    file_id, ids = make_file(store, 5)
    assert store.claim_chunk(file_id, 1, ids, "n:1", 60) is not None
    assert store.set_paused(file_id, True)
    store.end_lease(file_id, 1, "n:1")  # handed back on the pause: it waits for the resume
    recovery = Recovery(dsettings, store, rconn)
    assert recovery.requeue_expired_leases() == 0
    assert store.cancel_file(file_id)
    assert recovery.requeue_expired_leases() == 0  # nothing of a cancelled file is queued
    with store.transaction() as conn:
        assert conn.execute("SELECT count(*) AS n FROM chunk_leases").fetchone() == {"n": 0}
    assert store.get_file(file_id).cancelled == 5  # type: ignore[union-attr]


def test_an_expired_lease_is_handed_back_and_delivered_once(
    engine: Delivery, store: Store, rconn: redis.Redis, dsettings: Settings
) -> None:
    file_id, ids = make_file(store, 5)
    # A notifier claimed the chunk and died (no results, no renewals).
    claimed = store.claim_chunk(file_id, 1, ids, "dead-notifier", 60)
    assert claimed is not None and len(claimed[0]) == 5
    recovery = Recovery(dsettings, store, rconn)
    # while its lease lasts, nobody else gets the chunk: a doubled job sends nothing
    assert store.claim_chunk(file_id, 1, ids, "other", 60) is None
    assert recovery.requeue_expired_leases() == 0
    with store.transaction() as conn:
        conn.execute("UPDATE chunk_leases SET until = now() - interval '1 s'")
    assert recovery.requeue_expired_leases() == 5
    with respx.mock(using="httpx") as router:
        route = router.post(URL).respond(200)
        run_queued_deliveries(engine, rconn, dsettings)
        # the dead notifiers' late results are ignored: they no longer hold the lease
        result = Result(ids[0], AlertStatus.REJECTED, code=400)
        assert store.record_results([result], file_id, 1, "dead-notifier") == 0
    assert route.call_count == 5
    assert {r["status"] for r in alert_rows(store, file_id).values()} == {"delivered"}
