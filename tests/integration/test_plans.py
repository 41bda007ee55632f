"""Statements given a list of alert ids go by the primary key, whatever the statistics say.

A ledger in service is mostly delivered alerts, and that is what its statistics say when the
next large file arrives. A statement that could reach alerts through ``alerts_waiting`` (those
off the common path) then walks every one of them for each batch it is given: at a million
dead or deferred alerts, every batch of outcomes costs a walk of a million index entries.
These tests build that picture (statistics taken over delivered alerts, then a backlog) and
read PostgreSQL's plans, the generic one that a prepared statement keeps and the one made for
the given values.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis
from structlog.testing import capture_logs

import hookdrop.store._base
from daemon.recovery import Recovery
from hookdrop.errors import StoreError
from hookdrop.settings import Settings
from hookdrop.store import Store
from hookdrop.store._sql import queries

BACKLOG = 5_000
SERVED = 20_000
BATCH = 46

# The type of every parameter the statements below take, for PREPARE.
TYPES = {
    "ids": "text[]",
    "sent_ids": "text[]",
    "sent_codes": "int[]",
    "sent_latencies": "real[]",
    "statuses": "text[]",
    "failed": "int[]",
    "throttled": "int[]",
    "codes": "int[]",
    "errors": "text[]",
    "latencies": "real[]",
    "next_at": "timestamptz[]",
    "file_id": "bigint",
    "seq": "int",
    "owner": "text",
    "dlq": "boolean",
    "limit": "int",
    "configured": "text[]",
    "age": "float8",
}


@pytest.fixture
def in_service(database_url: str) -> Iterator[tuple[psycopg.Connection[Any], int]]:
    """A ledger of delivered alerts, analyzed as such, then a backlog of open ones in one
    chunk-leased file; yields the connection and the backlog's file id."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        old, new = (
            conn.execute(
                "INSERT INTO files (name, content_sha256, generation, size_bytes, chunk_size,"
                " status, endpoint) VALUES (%s, %s, 1, 1, 500, %s, 'default') RETURNING id",
                (name, name, status),
            ).fetchone()[0]  # type: ignore[index]
            for name, status in (("old.csv", "done"), ("new.csv", "delivering"))
        )
        conn.execute(
            "INSERT INTO alerts (id, file_id, chunk_seq, line_no, user_id, message, status)"
            " SELECT 'old-' || g, %s, g / 500, g, 'u' || g, 'm', 'delivered'"
            " FROM generate_series(1, %s) AS g",
            (old, SERVED),
        )
        conn.execute("ANALYZE alerts")
        conn.execute(
            "INSERT INTO alerts (id, file_id, chunk_seq, line_no, user_id, message)"
            " SELECT 'new-' || g, %s, 0, g, 'u' || g, 'm' FROM generate_series(1, %s) AS g",
            (new, BACKLOG),
        )
        conn.execute(
            "INSERT INTO chunk_leases (file_id, chunk_seq, owner, until, ids)"
            " VALUES (%s, 0, 'me', now() - interval '1 second', ARRAY['new-1', 'new-2'])",
            (new,),
        )
        yield conn, new


def _params(file_id: int) -> dict[str, Any]:
    ids = [f"new-{i}" for i in range(1, BATCH + 1)]
    return {
        "ids": ids,
        "sent_ids": [],
        "sent_codes": [],
        "sent_latencies": [],
        "statuses": ["delivered"] * BATCH,
        "failed": [0] * BATCH,
        "throttled": [0] * BATCH,
        "codes": [200] * BATCH,
        "errors": [None] * BATCH,
        "latencies": [1.0] * BATCH,
        "next_at": [None] * BATCH,
        "file_id": file_id,
        "seq": 0,
        "owner": "me",
        "dlq": False,
        "limit": 1000,
    }


def _numbered(name: str) -> tuple[str, list[str]]:
    """A named statement with ``$1, $2 ...`` for its parameters, and their names in order."""
    order: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in order:
            order.append(match.group(1))
        return f"${order.index(match.group(1)) + 1}"

    return re.sub(r"%\((\w+)\)s", number, queries()[name]).replace("%%", "%"), order


def _prepare(conn: psycopg.Connection[Any], name: str, as_name: str) -> None:
    text, order = _numbered(name)
    types = f" ({', '.join(TYPES[param] for param in order)})" if order else ""
    conn.execute(f"PREPARE {as_name}{types} AS {text}")


def _execute(conn: psycopg.Connection[Any], name: str, as_name: str, params: dict[str, Any]) -> str:
    """``EXECUTE`` of the prepared statement with these values, as SQL text."""
    _, order = _numbered(name)
    if not order:
        return f"EXECUTE {as_name}"
    args = psycopg.ClientCursor(conn).mogrify(
        ", ".join(["%s"] * len(order)), [params[param] for param in order]
    )
    return f"EXECUTE {as_name} ({args})"


def _buffers(plan: str) -> int:
    """The buffers a plan run (EXPLAIN ANALYZE, BUFFERS) read, all nodes together: those its
    top node counts."""
    line = next(line for line in plan.splitlines() if "Buffers:" in line)
    return sum(int(n) for n in re.findall(r"(?:hit|read)=(\d+)", line))


def _reads_little(conn: psycopg.Connection[Any], name: str, params: dict[str, Any]) -> list[str]:
    """Run a named statement's generic and custom plans (rolled back) and check that each
    read under a tenth of the backlog's size in buffers; returns both plans."""
    plans = _plans(conn, name, params, run=True)
    for mode, plan in plans.items():
        buffers = _buffers(plan)
        assert buffers < BACKLOG / 10, f"{name} ({mode}) read {buffers} buffers:\n{plan}"
    return list(plans.values())


def _plans(
    conn: psycopg.Connection[Any], name: str, params: dict[str, Any], *, run: bool = False
) -> dict[str, str]:
    """The generic and the custom plan of a named statement, as text; with ``run``, run as
    well (EXPLAIN ANALYZE, in a transaction rolled back), with the buffers each node read."""
    _prepare(conn, name, "plan_check")
    try:
        call = _execute(conn, name, "plan_check", params)
        found = {}
        for mode in ("force_generic_plan", "force_custom_plan"):
            conn.execute(f"SET plan_cache_mode = {mode}")
            if run:
                conn.execute("BEGIN")
                rows = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {call}").fetchall()
                conn.execute("ROLLBACK")
            else:
                rows = conn.execute(f"EXPLAIN {call}").fetchall()
            found[mode] = "\n".join(row[0] for row in rows)
        return found
    finally:
        conn.execute("RESET plan_cache_mode")
        conn.execute("DEALLOCATE plan_check")


@pytest.mark.parametrize(
    "name", ["record_results", "claim_chunk", "defer_alerts", "take_expired_leases"]
)
def test_statements_given_alert_ids_never_walk_the_open_alerts(
    in_service: tuple[psycopg.Connection[Any], int], name: str
) -> None:
    conn, file_id = in_service
    for mode, plan in _plans(conn, name, _params(file_id)).items():
        assert "alerts_waiting" not in plan, f"{name} ({mode}) walks the waiting alerts:\n{plan}"
        assert "alerts_pkey" in plan, f"{name} ({mode}) does not go by the ids:\n{plan}"


def test_the_sweep_of_cancelled_leftovers_looks_only_at_cancelled_files(
    in_service: tuple[psycopg.Connection[Any], int],
) -> None:
    """The monitor runs it every scan: it must not walk the backlog of the files still
    delivering to find the few alerts a cancelled file left open."""
    conn, _ = in_service
    cancelled = conn.execute(
        "INSERT INTO files (name, content_sha256, generation, size_bytes, chunk_size, status,"
        " endpoint, alerts_total, cancelled) VALUES ('gone.csv', 'gone', 1, 1, 500, 'cancelled',"
        " 'default', 10, 7) RETURNING id"
    ).fetchone()[0]  # type: ignore[index]
    conn.execute(
        "INSERT INTO alerts (id, file_id, chunk_seq, line_no, user_id, message, status)"
        " SELECT 'gone-' || g, %s, 0, g, 'u' || g, 'm',"
        " CASE WHEN g <= 7 THEN 'cancelled' ELSE 'pending' END FROM generate_series(1, 10) AS g",
        (cancelled,),
    )
    for plan in _reads_little(conn, "cancel_leftovers", {}):
        assert "rows=3 " in plan, f"did not find the 3 leftovers:\n{plan}"


def test_the_count_of_alerts_waiting_for_removed_endpoints_skips_the_configured_backlog(
    in_service: tuple[psycopg.Connection[Any], int], database_url: str
) -> None:
    """The monitor asks every minute which removed endpoints still have alerts waiting: it
    must not count the backlog of the endpoints that are configured to find out."""
    conn, _ = in_service
    removed = conn.execute(
        "INSERT INTO files (name, content_sha256, generation, size_bytes, chunk_size, status,"
        " endpoint, alerts_total, delivered, dead) VALUES ('old.csv', 'removed', 1, 1, 500,"
        " 'delivering', 'removed', 6, 1, 1) RETURNING id"
    ).fetchone()[0]  # type: ignore[index]
    conn.execute(
        "INSERT INTO alerts (id, file_id, chunk_seq, line_no, user_id, message, status)"
        " SELECT 'removed-' || g, %s, 0, g, 'u' || g, 'm',"
        " (ARRAY['delivered', 'dead', 'deferred', 'dlq', 'pending', 'retrying'])[g]"
        " FROM generate_series(1, 6) AS g",
        (removed,),
    )
    _reads_little(conn, "waiting_for_unconfigured", {"configured": ["default"]})
    with Store(database_url) as store:
        assert store.waiting_for_unconfigured(["default"]) == {"removed": 4}
        assert store.waiting_for_unconfigured(["default", "removed"]) == {}


def _file_reads(plan: str) -> list[str]:
    """The plan's nodes that read alerts of a file by its id, looking for open ones (the
    node's line; its conditions follow it, up to the next node)."""
    lines = plan.splitlines()
    found = []
    for n, line in enumerate(lines):
        if " on alerts " not in line:
            continue
        details = []
        for follow in lines[n + 1 :]:
            if "->" in follow:
                break
            details.append(follow)
        text = " ".join(details)
        if "file_id = f.id" in text and "{pending,retrying,throttled}" in text:
            found.append(line)
    return found


def test_the_orphan_sweep_reads_a_file_only_when_open_alerts_are_not_accounted_for(
    database_url: str,
) -> None:
    """Asked every scan while the notifier queue is empty, as it is whenever notifiers keep up
    with a file still being read: it must not read the file while the open alerts are the
    ones its chunk leases hold, and must find those no lease holds."""
    chunks, per_chunk = 10, 500
    with psycopg.connect(database_url, autocommit=True) as conn, Store(database_url) as store:
        file_id = conn.execute(
            "INSERT INTO files (name, content_sha256, generation, size_bytes, chunk_size,"
            " status, endpoint, alerts_total, delivered) VALUES ('big.csv', 'big', 1, 1, %s,"
            " 'reading', 'default', %s, %s) RETURNING id",
            (per_chunk, chunks * per_chunk, (chunks - 2) * per_chunk),
        ).fetchone()[0]  # type: ignore[index]
        conn.execute(
            "INSERT INTO alerts (id, file_id, chunk_seq, line_no, user_id, message, created_at)"
            " SELECT 'o-' || g, %s, g / %s, g, 'u' || g, 'm', now() - interval '1 hour'"
            " FROM generate_series(0, %s) AS g",
            (file_id, per_chunk, chunks * per_chunk - 1),
        )
        # Chunks 0-7 delivered at the first try, 8 and 9 held by live leases.
        conn.execute(
            "INSERT INTO deliveries (file_id, chunk_seq, ids, codes, latencies)"
            " SELECT %s, chunk_seq, array_agg(id), array_agg(200), array_agg(1.0::real)"
            " FROM alerts WHERE file_id = %s AND chunk_seq < %s GROUP BY chunk_seq",
            (file_id, file_id, chunks - 2),
        )
        conn.execute(
            "INSERT INTO chunk_leases (file_id, chunk_seq, owner, until, ids)"
            " SELECT %s, chunk_seq, 'live', now() + interval '1 minute', array_agg(id)"
            " FROM alerts WHERE file_id = %s AND chunk_seq >= %s GROUP BY chunk_seq",
            (file_id, file_id, chunks - 2),
        )
        conn.execute("ANALYZE alerts")
        params = {"age": 60.0, "limit": 1000}
        for plan in _plans(conn, "orphaned_pending", params, run=True).values():
            reads = _file_reads(plan)
            assert reads and all("never executed" in read for read in reads), plan
        assert store.orphaned_pending(age=60, limit=1000) == []

        # The job of chunk 9 was lost: its alerts are found, and only those.
        conn.execute("DELETE FROM chunk_leases WHERE file_id = %s AND chunk_seq = 9", (file_id,))
        found = store.orphaned_pending(age=60, limit=1000)
        assert {(ref.file_id, ref.chunk_seq) for ref in found} == {(file_id, 9)}
        assert len(found) == per_chunk


def test_plans_made_while_the_ledger_was_small_are_made_again_once_it_grew(
    database_url: str,
) -> None:
    """A prepared statement keeps the plan made over a small table (reading all of it is
    cheapest then) until new statistics come; the monitor takes them once alerts has grown
    fourfold, whether or not autovacuum runs on the server."""
    with Store(database_url) as store, psycopg.connect(database_url, autocommit=True) as conn:
        file_id = conn.execute(
            "INSERT INTO files (name, content_sha256, generation, size_bytes, chunk_size,"
            " status, endpoint) VALUES ('new.csv', 'new', 1, 1, 500, 'delivering', 'default')"
            " RETURNING id"
        ).fetchone()[0]  # type: ignore[index]
        add = (
            "INSERT INTO alerts (id, file_id, chunk_seq, line_no, user_id, message)"
            " SELECT 'new-' || g, %s, 0, g, 'u' || g, 'm'"
            " FROM generate_series(%s::int, %s::int) AS g"
        )
        conn.execute(add, (file_id, 1, 100))
        assert store.refresh_statistics() is False  # a few pages: nothing to refresh
        small = _kept_plan(conn, file_id)
        assert "Seq Scan on alerts" in small, small

        conn.execute(add, (file_id, 101, 40_000))
        assert _kept_plan(conn, file_id) == small  # grown 100-fold, the plan is the same

        assert store.refresh_statistics() is True
        assert store.refresh_statistics() is False  # once per fourfold growth
        grown = _kept_plan(conn, file_id)
        assert "alerts_pkey" in grown and "Seq Scan on alerts" not in grown, grown


def _kept_plan(conn: psycopg.Connection[Any], file_id: int) -> str:
    """The plan a connection that prepared record_results keeps (made on its first use as a
    generic plan, then reused), as text."""
    prepared = conn.execute(
        "SELECT 1 FROM pg_prepared_statements WHERE name = 'kept_results'"
    ).fetchone()
    if prepared is None:
        _prepare(conn, "record_results", "kept_results")
        conn.execute("SET plan_cache_mode = force_generic_plan")
    call = _execute(conn, "record_results", "kept_results", _params(file_id))
    return "\n".join(row[0] for row in conn.execute(f"EXPLAIN {call}").fetchall())


def test_an_analyze_postgresql_skips_is_not_taken_for_done_and_waits_before_a_retry(
    settings: Settings, database_url: str, rconn: redis.Redis
) -> None:
    with Store(database_url) as store, psycopg.connect(database_url) as holder:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO alerts (id, file_id, chunk_seq, line_no, user_id, message)"
                " SELECT 'a-' || g, 1, 0, g, 'u', 'm' FROM generate_series(1, 20000) AS g"
            )
        # A VACUUM or ANALYZE of the table holds this lock: PostgreSQL skips ours.
        holder.execute("LOCK TABLE alerts IN SHARE UPDATE EXCLUSIVE MODE")
        assert store.refresh_statistics() is None
        recovery = Recovery(settings, store, rconn)
        with capture_logs() as logs:
            recovery.refresh_statistics()
            recovery.refresh_statistics()  # within the pause: not tried
        assert [entry["event"] for entry in logs] == ["db.statistics_not_refreshed"]
        holder.rollback()
        assert store.statistics_outgrown()
        with capture_logs() as logs:
            recovery.refresh_statistics()  # still within the pause
        assert logs == [] and store.statistics_outgrown()
        assert store.refresh_statistics() is True
        assert not store.statistics_outgrown()


def test_analyze_describes_the_columns_statements_filter_on_and_skips_the_rest(
    in_service: tuple[psycopg.Connection[Any], int],
) -> None:
    conn, _ = in_service
    described = {
        row[0]
        for row in conn.execute(
            "SELECT attname FROM pg_stats WHERE tablename = 'alerts'"
            " AND schemaname = current_schema()"
        )
    }
    assert {"id", "file_id", "chunk_seq", "status", "created_at", "line_no"} <= described
    assert not described & {"user_id", "message", "extra", "body", "last_error"}


def test_a_workers_session_keeps_one_plan_for_the_outcomes_statement(
    database_url: str, settings: Settings
) -> None:
    """Under PostgreSQL's default, the outcomes statement was planned again for every round
    (the plan made for the arrays given always looked cheaper than the generic one): as much
    CPU as running it. The workers' sessions keep the generic plan, which goes by the ids."""
    from hookdrop.store import AlertStatus, Result
    from tests.helpers import ledger_file
    from workers.runner import build_context

    ctx = build_context(settings.replace(database_url=database_url))
    try:
        assert ctx.store.keyed
        store = ctx.store
        file_id, ids = ledger_file(store, 60, chunk_size=60)
        claimed = store.claim_chunk(file_id, 0, ids, "me", 60)
        assert claimed is not None
        for n, first in enumerate(range(0, 60, 3)):  # psycopg prepares it on its 6th run
            batch = ids[first : first + 3]
            results = [
                Result(alert, AlertStatus.DELIVERED, code=200, first_try=n % 2 == 0)
                for alert in batch
            ]
            assert store.record_results(results, file_id, 0, "me") == 3
        conn = store._connect()
        assert conn.execute("SHOW plan_cache_mode").fetchone() == {
            "plan_cache_mode": "force_generic_plan"
        }
        kept = conn.execute(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
            " WHERE statement LIKE '%Write one batch of outcomes%'"
        ).fetchone()
        assert kept is not None and kept["custom_plans"] == 0 and kept["generic_plans"] >= 5
        file = store.get_file(file_id)
        assert file is not None and file.delivered == 60
    finally:
        ctx.close()
    with Store(database_url) as store:  # the monitor's and the API's: PostgreSQL's default
        assert store._connect().execute("SHOW plan_cache_mode").fetchone() == {
            "plan_cache_mode": "auto"
        }


def test_statements_are_never_jit_compiled(database_url: str) -> None:
    """On a large ledger the planner's estimates for the sweeps pass jit_above_cost, and
    compiling one costs PostgreSQL 50 to 200 ms, far more than running it; also after a
    reconnect."""
    with Store(database_url) as store:
        for _ in range(2):
            conn = store._connect()
            assert conn.execute("SHOW jit").fetchone() == {"jit": "off"}
            store.close()


def test_a_session_refused_its_settings_is_not_kept(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store(database_url) as store:
        monkeypatch.setattr(hookdrop.store._base, "_SESSION", "SET no_such_setting = 1")
        with pytest.raises(StoreError, match="refused the session"):
            store.ping()
        assert store._conn is None
        monkeypatch.undo()
        store.ping()
        assert store._connect().execute("SHOW jit").fetchone() == {"jit": "off"}


@pytest.mark.parametrize(
    "name", ["endpoint_delivered", "endpoint_waiting", "endpoint_sending", "dlq_size"]
)
def test_the_status_page_counts_never_walk_the_backlog(
    in_service: tuple[psycopg.Connection[Any], int], name: str
) -> None:
    """The status page asks for them (and the DLQ's size) every second: beside a backlog of
    pending alerts and as many dead ones from earlier files, which only add up."""
    conn, file_id = in_service
    conn.execute(
        "UPDATE alerts SET status = 'dead' WHERE id IN"
        " (SELECT 'old-' || g FROM generate_series(1, %s) AS g)",
        (BACKLOG,),
    )
    conn.execute("UPDATE files SET dead = %s WHERE name = 'old.csv'", (BACKLOG,))
    conn.execute(
        "INSERT INTO chunk_leases (file_id, chunk_seq, owner, until, ids)"
        " VALUES (%s, 1, 'live', now() + interval '1 minute', ARRAY['new-3', 'new-4'])",
        (file_id,),
    )
    _reads_little(conn, name, {"file_id": None})
