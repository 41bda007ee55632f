"""The connection to PostgreSQL behind the ledger, and how driver errors are translated.

A server that cannot serve now becomes :class:`~hookdrop.errors.StoreUnavailable` (callers
pause and retry), anything else :class:`~hookdrop.errors.StoreError`. Callers never handle
driver exceptions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
from psycopg.rows import class_row, dict_row

from hookdrop.errors import StoreError, StoreUnavailable
from hookdrop.store._sql import queries

R = TypeVar("R")
Conn = psycopg.Connection[dict[str, Any]]

# SQLSTATE classes of a server that cannot serve now: connection exceptions, insufficient
# resources, operator intervention (shutdown, starting up).
_OUTAGE_CLASSES = ("08", "53", "57")

# No JIT compilation: every statement here is short, but some (the sweeps, the counts) are
# estimated to cost more than jit_above_cost on a large ledger, and PostgreSQL then spends 50 to
# 200 ms compiling each one, far more than running it.
_SESSION = "SET jit = off"
# A statement given its rows as arrays of ids (the notifier's outcomes, the batcher's inserts)
# is planned again for every run under PostgreSQL's default plan_cache_mode: the plans made for
# the values given (an empty array here, 40 ids there) look cheaper than the generic one, so
# it never settles on that. Each plan cost about 0.6 ms for the outcomes' statement, as much
# as running it. A session that runs only statements that find their rows by key (the
# workers') keeps the generic plan instead.
_KEYED_SESSION = "SET plan_cache_mode = force_generic_plan"


class Connected:
    """A connection to PostgreSQL that runs the named queries.

    One per process (or per thread); reconnects after the server comes back.
    """

    def __init__(
        self, url: str, *, application_name: str = "hookdrop", keyed: bool = False
    ) -> None:
        self.url = url
        self.application_name = application_name
        # Runs only statements that find their rows by key: one plan kept per statement.
        self.keyed = keyed
        self._conn: Conn | None = None

    # -- connection -------------------------------------------------------------------------

    def _connect(self) -> Conn:
        if self._conn is None or self._conn.closed:
            try:
                conn = psycopg.connect(
                    self.url,
                    autocommit=True,
                    row_factory=dict_row,
                    connect_timeout=5,
                    application_name=self.application_name,
                )
            except psycopg.OperationalError as exc:
                raise StoreUnavailable(f"PostgreSQL unreachable: {first_line(exc)}") from exc
            try:
                conn.execute(_SESSION)
                if self.keyed:
                    conn.execute(_KEYED_SESSION)
            except psycopg.Error as exc:
                # Never kept half set up: the next call connects again.
                outage = is_outage(exc, conn)
                conn.close()
                if outage:
                    raise StoreUnavailable(f"PostgreSQL unreachable: {first_line(exc)}") from exc
                raise StoreError(f"PostgreSQL refused the session: {first_line(exc)}") from exc
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[Conn]:
        """A transaction; a lost or refused connection comes out as StoreUnavailable, any
        other driver error as StoreError."""
        with self._translated() as conn, conn.transaction():
            yield conn

    @contextmanager
    def _translated(self) -> Iterator[Conn]:
        """The connection, its driver errors translated. On its own (autocommit) a single
        statement is a transaction of its own: atomic, without BEGIN and COMMIT round trips."""
        conn = self._connect()
        try:
            yield conn
        except psycopg.Error as exc:
            if is_outage(exc, conn):
                self.close()
                raise StoreUnavailable(f"PostgreSQL error: {first_line(exc)}") from exc
            raise StoreError(f"PostgreSQL refused a statement: {first_line(exc)}") from exc

    def _rows(self, name: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        with self._translated() as conn:
            return execute(conn, name, params)

    def _typed(self, row_type: type[R], name: str, params: dict[str, Any] | None = None) -> list[R]:
        with self._translated() as conn:
            cur = conn.cursor(row_factory=class_row(row_type))
            cur.execute(queries()[name], params)
            return cur.fetchall() if cur.description else []

    def _first(
        self, row_type: type[R], name: str, params: dict[str, Any] | None = None
    ) -> R | None:
        rows = self._typed(row_type, name, params)
        return rows[0] if rows else None

    def _value(self, name: str, params: dict[str, Any] | None = None) -> Any:
        """The first column of the first row, or None."""
        rows = self._rows(name, params)
        return next(iter(rows[0].values())) if rows else None

    def ping(self) -> None:
        self._rows("ping")


def optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def is_outage(exc: psycopg.Error, conn: Conn) -> bool:
    if conn.broken or conn.closed:
        return True
    if exc.sqlstate:
        return exc.sqlstate[:2] in _OUTAGE_CLASSES
    # Raised by the driver itself: lost connections are these; bad values are DataError.
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


def execute(conn: Conn, name: str, params: dict[str, Any] | None) -> list[dict[str, Any]]:
    # queries() reads our own file, shipped with the package: as trusted as a literal.
    cur = conn.execute(queries()[name], params)
    return cur.fetchall() if cur.description else []


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
