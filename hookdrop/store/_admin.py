"""Statements about the server rather than the ledger, for the benchmark and the demo.

A private schema per benchmark stack (made before migrating into it, dropped after) and the
backend serving a client connection (for CPU accounting). The ledger's own statements are the
named queries of ``sql/queries.sql``.
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
