"""Upgrading a ledger whose alerts were leased one by one (schema 4) to chunk leases
(migration 005) loses nothing: what a notifier of the old version held is queued again."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis

from daemon.recovery import Recovery
from hookdrop.settings import Settings
from hookdrop.store import Store
from hookdrop.store._sql import migrations, queries
from tests import leftovers
from tests.conftest import Servers
from tests.helpers import queued_alert_ids


@pytest.fixture
def v4_url(servers: Servers) -> Iterator[str]:
    """A database at schema version 4, with one file of four alerts as an old notifier left
    them: one leased and being sent, one leased and retrying, one pending, one delivered."""
    name = f"hookdrop_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(servers.admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    leftovers.mark_database(servers.admin_url, name, os.getpid())
    url = urlunsplit(urlsplit(servers.admin_url)._replace(path=f"/{name}"))
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(queries()["create_migrations_table"])
            for version, migration, sql in migrations():
                if version <= 4:
                    conn.execute(sql)
                    conn.execute(
                        queries()["record_migration"], {"version": version, "name": migration}
                    )
            conn.execute(
                "INSERT INTO files (id, name, content_sha256, generation, size_bytes, chunk_size,"
                " status, read_complete, alerts_total, delivered)"
                " VALUES (7, 'old.csv', 'sha-old', 0, 1, 500, 'delivering', true, 4, 1)"
            )
            conn.execute(
                "INSERT INTO alerts (id, file_id, chunk_seq, line_no, user_id, message, status,"
                " lease_owner, lease_until, created_at) VALUES"
                " ('msg_a', 7, 1, 2, 'u1', 'm', 'sending', 'old:1', now() + interval '1 h',"
                "  now() - interval '1 h'),"
                " ('msg_b', 7, 1, 3, 'u2', 'm', 'retrying', 'old:1', now() + interval '1 h',"
                "  now() - interval '1 h'),"
                " ('msg_c', 7, 1, 4, 'u3', 'm', 'pending', NULL, NULL, now() - interval '1 h'),"
                " ('msg_d', 7, 1, 5, 'u4', 'm', 'delivered', NULL, NULL, now() - interval '1 h')"
            )
        yield url
    finally:
        with psycopg.connect(servers.admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_alerts_leased_the_old_way_are_queued_again_after_the_upgrade(
    v4_url: str, settings: Settings, rconn: redis.Redis
) -> None:
    with Store(v4_url) as store:
        assert store.migrate() == [
            "005_chunk_leases.sql",
            "006_lighter_statistics.sql",
            "007_delivered_rounds.sql",
        ]
        store.check_schema()
        with store.transaction() as conn:
            rows = conn.execute("SELECT id, status FROM alerts ORDER BY id").fetchall()
            columns = {
                row["column_name"]
                for row in conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = 'alerts'"
                ).fetchall()
            }
        assert [(r["id"], r["status"]) for r in rows] == [
            ("msg_a", "pending"),
            ("msg_b", "retrying"),
            ("msg_c", "pending"),
            ("msg_d", "delivered"),
        ]
        assert not {"lease_owner", "lease_until"} & columns
        # No chunk lease: the orphan sweep queues every open alert, once, as one chunk.
        recovery = Recovery(settings.replace(database_url=v4_url), store, rconn)
        assert recovery.requeue_orphaned_pending() == 3
    assert queued_alert_ids(rconn, settings) == {"msg_a": 1, "msg_b": 1, "msg_c": 1}
