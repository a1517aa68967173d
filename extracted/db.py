"""Database plumbing shared by both Order sides: engines, write transactions, outage detection."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

__all__ = [
    "OUTCOME_UNKNOWN",
    "PG_LOCK_TIMEOUT_MS",
    "SQLITE_BUSY_TIMEOUT_MS",
    "OutcomeUnknown",
    "check_db_url",
    "create_engine",
    "is_unavailable",
    "transaction",
]

SQLITE_BUSY_TIMEOUT_MS = 10_000
"""How long a SQLite writer waits for the write lock before the request fails with 503."""

PG_LOCK_TIMEOUT_MS = SQLITE_BUSY_TIMEOUT_MS
"""How long a PostgreSQL write transaction waits for a lock (an order row, a racing
idempotency key) before the request fails with 503, nothing applied; as on SQLite."""

_WRITE_OPTION = "strangler_write"


OUTCOME_UNKNOWN = (
    "the database did not confirm the change: it may have been applied;"
    " read the order before trying again"
)
"""The message of a 500 `outcome_unknown` answer (both Order apps)."""


class OutcomeUnknown(Exception):
    """PostgreSQL did not confirm a COMMIT (the connection broke while it was sent or
    answered): the change may be applied or not. Never "retry later" (a retried refund
    would be applied twice): the caller reads the order first."""


_DRIVERS = ("sqlite+aiosqlite", "postgresql+psycopg", "postgresql+psycopg_async")


def check_db_url(db_url: str) -> None:
    """ValueError unless `db_url` names a database this project opens: SQLite (aiosqlite),
    a file path in an existing directory (a `file:` URI or memory is left to SQLite), or
    PostgreSQL (psycopg)."""
    usage = "use sqlite+aiosqlite:///FILE or postgresql+psycopg://USER@HOST/DB"
    try:
        url = make_url(db_url)
    except sa_exc.ArgumentError:
        raise ValueError(f"the database URL is not a URL; {usage}") from None
    if url.drivername not in _DRIVERS:
        shown = url.render_as_string(hide_password=True)
        raise ValueError(f"unsupported database URL {shown!r}; {usage}")
    db = url.database
    if (
        url.drivername.startswith("sqlite")
        and db
        and db != ":memory:"
        and not db.startswith("file:")
    ):
        folder = os.path.dirname(os.path.abspath(db))
        if not os.path.isdir(folder):
            raise ValueError(f"no directory {folder!r} for the SQLite database {db!r}")


def create_engine(db_url: str) -> AsyncEngine:
    """An async engine for `db_url`, tuned so concurrent writers serialize instead of failing.

    SQLite waits up to SQLITE_BUSY_TIMEOUT_MS for the write lock unless the URL sets
    `?timeout=SECONDS`; PostgreSQL pings pooled connections so a dead one is replaced, and
    its write transactions wait up to PG_LOCK_TIMEOUT_MS for a lock unless the URL's
    `options` set `lock_timeout`.
    """
    check_db_url(db_url)
    if db_url.startswith("sqlite"):
        engine = create_async_engine(db_url)
        # A `?timeout=SECONDS` in the URL is the driver's busy timeout; keep it if given.
        _tune_sqlite(engine, busy_timeout="timeout" not in make_url(db_url).query)
        return engine
    engine = create_async_engine(db_url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    if "lock_timeout" not in str(make_url(db_url).query.get("options", "")):
        _bound_pg_lock_waits(engine)
    return engine


def _bound_pg_lock_waits(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Without a bound a write queued behind a held row lock waited forever: past every
        # client and proxy timeout, holding a pooled connection, then applied when the lock
        # came free, after its caller had been told it failed. Now 503, nothing applied.
        if conn.get_execution_options().get(_WRITE_OPTION, False):
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = {int(PG_LOCK_TIMEOUT_MS)}")


def _tune_sqlite(engine: AsyncEngine, *, busy_timeout: bool) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the driver so BEGIN IMMEDIATE below is ours.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if busy_timeout:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # A write transaction takes the write lock up front: racing writers queue on
        # busy_timeout instead of failing later with "database is locked" on upgrade.
        write = conn.get_execution_options().get(_WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


@asynccontextmanager
async def transaction(
    engine: AsyncEngine, *, write: bool = False, rollback: bool = False
) -> AsyncIterator[AsyncConnection]:
    """One transaction: committed on success unless `rollback` (dry run), rolled back on error.

    A read (not `write`) sees one snapshot of the database on SQLite and PostgreSQL alike."""
    async with engine.connect() as conn:
        if write:
            await conn.execution_options(**{_WRITE_OPTION: True})
        elif conn.dialect.name == "postgresql":
            # One snapshot for the whole read, as on SQLite: under read committed a listing's
            # count and page were taken at different moments and disagreed.
            await conn.execution_options(isolation_level="REPEATABLE READ")
        trans = await conn.begin()
        try:
            yield conn
        except BaseException:
            # If the connection is gone the server discards the transaction by itself.
            with contextlib.suppress(sa_exc.SQLAlchemyError):
                await trans.rollback()
            raise
        if rollback:
            await trans.rollback()
            return
        try:
            await trans.commit()
        except sa_exc.DBAPIError as exc:
            # SQLite either commits or reports that it did not; a PostgreSQL connection that
            # breaks around COMMIT leaves a write's outcome unknown (the server may have it).
            # A read changed nothing: its broken COMMIT is an outage like any other (503).
            if write and conn.dialect.name == "postgresql" and is_unavailable(exc):
                raise OutcomeUnknown(str(exc.orig or exc)) from exc
            raise


def is_unavailable(exc: BaseException) -> bool:
    """Whether `exc` means the database is unreachable or refused the work for now (-> 503)."""
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError):
        return True
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, sa_exc.PendingRollbackError | ConnectionError)
