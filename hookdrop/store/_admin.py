"""Statements about the server rather than the ledger, for the benchmark and the demo.

A private schema per benchmark stack (made before migrating into it, dropped after), the
backend serving a client connection (for CPU accounting), and a ledger made to look in service
before a measured run. The ledger's own statements are the named queries of
``sql/queries.sql``.
"""

from __future__ import annotations

from collections.abc import Iterable

import psycopg
from psycopg import sql


def create_schema(admin_url: str, schema: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))


def drop_schema(admin_url: str, schema: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def backends_of(database_url: str, client_ports: Iterable[int]) -> list[tuple[int, int]]:
    """(backend pid, client port) of the server's backends serving these client ports."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid, client_port FROM pg_stat_activity WHERE client_port = ANY(%s)",
            (sorted(client_ports),),
        ).fetchall()
    return [(int(pid), int(port)) for pid, port in rows]


def serve_ledger(database_url: str, alerts: int) -> None:
    """Make the ledger look in service: ``alerts`` delivered alerts of one finished file,
    with PostgreSQL's statistics taken over them (what a ledger that has run for a while
    holds, and what its planner believes, when the next file arrives)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO files (name, content_sha256, generation, size_bytes, chunk_size, status,"
            " alerts_total, delivered, read_complete, finished_at)"
            " VALUES ('served.csv', 'served', 1, 0, 500, 'done', %(n)s, %(n)s, true, now())"
            " RETURNING id",
            {"n": alerts},
        ).fetchone()
        assert row is not None
        conn.execute(
            "INSERT INTO alerts (id, file_id, chunk_seq, line_no, user_id, message, status,"
            " delivered_at, last_status_code)"
            " SELECT 'served-' || g, %(file)s, g / 500, g, 'u' || g, 'served', 'delivered', now(),"
            " 200 FROM generate_series(1, %(n)s) AS g",
            {"file": row[0], "n": alerts},
        )
        conn.execute("ANALYZE files, alerts")
