"""The comparison store: SQLAlchemy 2 async over SQLite (aiosqlite) or PostgreSQL (psycopg).

SQLite gets its schema with `create_all` on start; PostgreSQL gets the versioned migrations
of `shadow.migrations`, tracked in a `schema_version` table. Every table lives in the
connection's default schema (the first of its `search_path`), never a hard-coded one.
A store opened with `create=False` (the commands that read one) never makes a database a
store: one without strangler's tables, or a SQLite file that does not exist, is an error,
and nothing is written to it.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    delete,
    event,
    exc,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from shadow.migrations import migrations
from shadow.record import ComparisonRecord, DiffExample, RouteChange
from shadow.redact import mask_secrets
from shadow.sqlite_writer import SqliteWriter, SqliteWriterError, rw_uri

__all__ = [
    "SCHEMA_VERSION",
    "Store",
    "StoreError",
    "comparison_paths",
    "comparisons",
    "mask_url",
    "metadata",
    "normalize_url",
    "route_changes",
    "shadow_drops",
    "sqlite_file",
]


class StoreError(Exception):
    """The store cannot be reached or used; `transient` errors are worth retrying.

    `maybe_stored` (from `insert_batch`): the batch may be stored after all, by this attempt
    (its COMMIT was sent, the answer lost) or an earlier one that may still commit; when
    false, the store knows the batch is not stored.
    """

    def __init__(self, message: str, *, transient: bool = True, maybe_stored: bool = False) -> None:
        super().__init__(message)
        self.transient = transient
        self.maybe_stored = maybe_stored


class _UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out; SQLite stores them naive (as UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_Id = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements INTEGER keys only

metadata = MetaData()
_REQUEST_ID_MAX = 128  # a client's X-Request-Id may be longer: stored cut to this
_PATTERN_MAX = 1000  # characters of a differing pattern kept (a JSON key may be longer)

comparisons = Table(
    "comparisons",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("time", _UtcDateTime(), nullable=False),
    Column("route", String(200), nullable=False),
    Column("method", String(16), nullable=False),
    Column("path", String(1000), nullable=False),
    Column("request_path", Text, nullable=False),
    Column("status_primary", Integer),
    Column("status_candidate", Integer),
    Column("latency_primary_ms", Float),
    Column("latency_candidate_ms", Float),
    Column("outcome", String(20), nullable=False),
    Column("diff_count", Integer, nullable=False),
    Column("noise_count", Integer, nullable=False),
    Column("diff_paths", Text, nullable=False),  # JSON list, for display; aggregate the table below
    Column("primary_body", LargeBinary),
    Column("candidate_body", LargeBinary),
    Column("request_id", String(_REQUEST_ID_MAX), nullable=False),
    Column("mode", String(16), nullable=False),
    Column("config_version", String(64), nullable=False),
    Column("detail", Text, nullable=False),
    Index("ix_comparisons_route_time", "route", "time"),
    Index("ix_comparisons_time", "time"),
)

# One row per (comparison, kind, pattern); route and time are copied so aggregation needs no join.
comparison_paths = Table(
    "comparison_paths",
    metadata,
    Column(
        "comparison_id",
        _Id,
        ForeignKey("comparisons.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("kind", String(8), primary_key=True),  # diff | noise
    Column("pattern", String(_PATTERN_MAX), primary_key=True),
    Column("route", String(200), nullable=False),
    Column("time", _UtcDateTime(), nullable=False),
    Column("example", Text),  # JSON DiffExample, redacted by the recorder's caller
    Index("ix_comparison_paths_route_time", "route", "time"),
    Index("ix_comparison_paths_time", "time"),
)

# Shadow copies that ended without a comparison row, added up per write: (route, reason,
# how many since the writing recorder's previous batch). The report's `dropped` is their
# sum. A recorder numbers its batches (writer, seq) and resends one until it is confirmed:
# the unique key makes a resent batch that had committed after all change nothing.
shadow_drops = Table(
    "shadow_drops",
    metadata,
    Column("time", _UtcDateTime(), nullable=False),
    Column("route", String(200), nullable=False),
    Column("reason", String(40), nullable=False),
    Column("copies", BigInteger, nullable=False),
    Column("writer", String(32), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Index("ix_shadow_drops_route_time", "route", "time"),
    Index("ix_shadow_drops_time", "time"),
    Index("ux_shadow_drops_batch", "writer", "seq", "route", "reason", unique=True),
)

route_changes = Table(
    "route_changes",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("time", _UtcDateTime(), nullable=False),
    Column("route", String(200), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("from_mode", String(16)),
    Column("to_mode", String(16), nullable=False),
    Column("from_percent", Float),
    Column("to_percent", Float),
    Column("evidence", Text, nullable=False),
    Index("ix_route_changes_route_time", "route", "time"),
)

SCHEMA_VERSION = max(m.version for m in migrations())
_CHUNK_ROWS = 100
_ROW_COLUMNS = tuple(c.name for c in comparisons.columns if c.name != "id")
# The hot insert of SQLite rows skips SQLAlchemy's per-row bind processing: the values are
# converted once here (time as the text the DateTime type stores) and handed to the driver.
_SQLITE_INSERT = (
    f"INSERT INTO comparisons ({', '.join(_ROW_COLUMNS)})"
    f" VALUES ({', '.join('?' for _ in _ROW_COLUMNS)})"
)
_PATH_COLUMNS = ("comparison_id", "kind", "pattern", "route", "time", "example")
_SQLITE_PATHS_INSERT = (
    f"INSERT INTO comparison_paths ({', '.join(_PATH_COLUMNS)})"
    f" VALUES ({', '.join('?' for _ in _PATH_COLUMNS)})"
)
_DROP_COLUMNS = ("time", "route", "reason", "copies", "writer", "seq")
_SQLITE_DROPS_INSERT = (
    f"INSERT OR IGNORE INTO shadow_drops ({', '.join(_DROP_COLUMNS)})"
    f" VALUES ({', '.join('?' for _ in _DROP_COLUMNS)})"
)
# The ids of a batch and what tells its attempt's transaction apart on the server (the
# backend's pid and the transaction's start, as pg_stat_activity shows them): one round trip.
_RESERVE_IDS = text(
    "SELECT pg_backend_pid(), now(), ARRAY(SELECT nextval(pg_get_serial_sequence("
    "'comparisons', 'id')) FROM generate_series(1, :n))"
)
_ATTEMPT = text("SELECT pg_backend_pid(), now()")
# Ends an earlier attempt's transaction if it is still open. Another session that got the
# same pid since has another transaction start, and is left alone. (Not the 2-argument
# pg_terminate_backend that waits: PostgreSQL 14 and later only.)
_ATTEMPT_OPEN = (
    " FROM pg_stat_activity WHERE pid = :pid AND xact_start = :start AND pid <> pg_backend_pid()"
)
_END_ATTEMPT = text(f"SELECT count(pg_terminate_backend(pid)){_ATTEMPT_OPEN}")
# pg_stat_activity is read once per transaction unless its snapshot is cleared
_ATTEMPT_STILL_OPEN = text(f"SELECT pg_stat_clear_snapshot(), EXISTS (SELECT 1{_ATTEMPT_OPEN})")
_END_ATTEMPT_WAIT = 2.0  # seconds an ended attempt's backend is given to exit
_V = TypeVar("_V")
_UNCONFIRMED_MAX = 8  # batches whose ids are kept for a retry (the recorder retries one)
# A retry waits no longer than this for a lock on its ids (none should be held any more)
_RETRY_LOCK_TIMEOUT = text("SET LOCAL lock_timeout = '2s'")
_MIGRATION_LOCK = 0x5354524E  # pg advisory lock id, so concurrent starts migrate once
_TRANSIENT = (
    exc.OperationalError,
    exc.InterfaceError,
    exc.DisconnectionError,
    exc.TimeoutError,
    OSError,
    TimeoutError,
)


def mask_url(url: str) -> str:
    """`url` with any password (in its user part or its query) replaced by `***`."""
    return mask_secrets(url)


def normalize_url(url: str) -> str:
    """The async-driver form of a store URL (`sqlite:///x` -> `sqlite+aiosqlite:///x`)."""
    for plain, driver in (
        ("sqlite://", "sqlite+aiosqlite://"),
        ("postgresql://", "postgresql+psycopg://"),
        ("postgres://", "postgresql+psycopg://"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    return url


def sqlite_file(url: str | URL) -> str:
    """The file a SQLite store URL names directly, or "" for any other: `:memory:`, a
    `file:` URI (SQLite decides what that opens), PostgreSQL, or a URL that does not parse
    (`Store` says what is wrong with it)."""
    if isinstance(url, str):
        try:
            url = make_url(normalize_url(url))
        except Exception:
            return ""
    if url.get_backend_name() != "sqlite":
        return ""
    db = url.database or ""
    return "" if db in ("", ":memory:") or db.startswith("file:") else db


def _row(rec: ComparisonRecord) -> dict[str, Any]:
    return dict(zip(_ROW_COLUMNS, _row_values(rec), strict=True))


def _row_values(rec: ComparisonRecord, when: Any = None) -> tuple[Any, ...]:
    """The `comparisons` columns of `rec` (but `id`), in table order; `when`: the time
    column's value if not `rec.time` (SQLite's text). Built in one step: one per stored
    comparison, no intermediate tuple, no call for a text without NUL."""
    diff_paths = rec.diff_paths
    request_path = rec.request_path
    request_id = rec.request_id[:_REQUEST_ID_MAX]  # a client's X-Request-Id may be any length
    detail = rec.detail
    primary = rec.primary_body
    candidate = rec.candidate_body
    return (
        rec.time if when is None else when,
        rec.route,
        rec.method,
        rec.path,
        _text(request_path) if "\x00" in request_path else request_path,
        rec.status_primary,
        rec.status_candidate,
        rec.latency_primary_ms,
        rec.latency_candidate_ms,
        rec.outcome,
        len(diff_paths),
        len(rec.noise),
        orjson.dumps(list(diff_paths)).decode() if diff_paths else "[]",
        primary.encode("utf-8", "replace") if isinstance(primary, str) else primary,
        candidate.encode("utf-8", "replace") if isinstance(candidate, str) else candidate,
        _text(request_id) if "\x00" in request_id else request_id,
        rec.mode,
        rec.config_version,
        _text(detail) if "\x00" in detail else detail,
    )


def _sqlite_time(value: datetime) -> str:
    """`value` as the naive-UTC text SQLAlchemy's SQLite DateTime stores and reads back."""
    if value.tzinfo is UTC:  # the common case, with the second's text cached
        second = (value.day, value.hour, value.minute, value.second, value.month, value.year)
        prefix = _SECOND_TEXT.get(second)
        if prefix is None:
            _SECOND_TEXT.clear()  # only the current second or so is ever asked for
            prefix = _SECOND_TEXT[second] = (
                f"{value.year:04d}-{value.month:02d}-{value.day:02d}"
                f" {value.hour:02d}:{value.minute:02d}:{value.second:02d}"
            )
        # zero-padded to 6 digits by the 7th (format's "06d" spec parser costs 5 times more)
        return f"{prefix}.{str(value.microsecond + 1_000_000)[1:]}"
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None).isoformat(" ", "microseconds")


_SECOND_TEXT: dict[tuple[int, ...], str] = {}


def _sqlite_row(rec: ComparisonRecord) -> tuple[Any, ...]:
    """`_row_values` with the time as SQLite's text."""
    return _row_values(rec, _sqlite_time(rec.time))


def _sqlite_path_rows(cid: int, rec: ComparisonRecord) -> list[tuple[Any, ...]]:
    return [
        tuple(_sqlite_time(v) if k == "time" else v for k, v in row.items())
        for row in _path_rows(cid, rec)
    ]


def _text(value: str) -> str:
    """`value` storable in any text column: PostgreSQL's text holds no NUL, so a NUL (a JSON
    key may hold one) is written as the JSON escape `\\u0000`, on SQLite too."""
    return value.replace("\x00", "\\u0000") if "\x00" in value else value


def _pattern(pattern: str) -> str:
    """A differing pattern as its column holds it: NULs escaped, cut to the column's length
    (a long JSON key must not make its comparison unstorable) with a trailing `…`."""
    pattern = _text(pattern)
    if len(pattern) > _PATTERN_MAX:
        return pattern[: _PATTERN_MAX - 1] + "\u2026"
    return pattern


def _path_rows(cid: int, rec: ComparisonRecord) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for kind, patterns in (("diff", rec.diff_paths), ("noise", rec.noise)):
        stored: dict[str, str] = {}  # column value -> first pattern: unique, first-seen order
        for pattern in patterns:
            stored.setdefault(_pattern(pattern), pattern)
        for column, pattern in stored.items():
            example = rec.example_for(pattern) if kind == "diff" else None
            rows.append(
                {
                    "comparison_id": cid,
                    "kind": kind,
                    "pattern": column,
                    "route": rec.route,
                    "time": rec.time,
                    "example": _example_json(example) if example else None,
                }
            )
    return rows


_EXAMPLE_DEPTH = 250  # deeper example values are stored as a note (readers recurse)


def _example_json(example: DiffExample) -> str:
    """An example as its column holds it. Integers past 64 bits (which orjson refuses) are
    written by the standard library, exactly; a value nested past 250 levels is kept as a
    note, so that no reader (report, dashboard, browser) recurses that deep."""
    data = example.to_json()
    for side in ("primary", "candidate"):
        if _deeper_than(data[side], _EXAMPLE_DEPTH):
            data[side] = f"(nested deeper than {_EXAMPLE_DEPTH} levels)"
    try:
        return orjson.dumps(data, default=str).decode()
    except orjson.JSONEncodeError:
        return json.dumps(data, default=str, separators=(",", ":"))


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays and objects nest more than `limit` levels in `value` (no recursion)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict):
            v = list(v.values())
        if isinstance(v, list | tuple):
            if depth > limit:
                return True
            stack.extend((x, depth + 1) for x in v if isinstance(x, dict | list | tuple))
    return False


def _change(row: Any) -> RouteChange:
    return RouteChange(
        id=row.id,
        time=row.time,
        route=row.route,
        actor=row.actor,
        kind=row.kind,
        from_mode=row.from_mode,
        to_mode=row.to_mode,
        from_percent=row.from_percent,
        to_percent=row.to_percent,
        evidence=orjson.loads(row.evidence),
    )


class Store:
    """Durable comparisons and the route-change audit log behind one async engine.

    `create=False`: open an existing store only (see the module's docstring); a strangler
    store of an older version is still brought up to date.
    """

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 5,
        max_overflow: int = 5,
        connect_timeout: float = 5.0,
        create: bool = True,
    ) -> None:
        url = normalize_url(url)
        try:
            parsed = make_url(url)
        except exc.ArgumentError as e:
            raise StoreError(f"bad store URL {mask_url(url)!r}: {e}", transient=False) from None
        backend = parsed.get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise StoreError(
                f"unsupported store URL {parsed.render_as_string()!r}:"
                " use sqlite+aiosqlite:///FILE or postgresql+psycopg://USER@HOST/DB",
                transient=False,
            )
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if backend == "postgresql":
            kwargs.update(
                pool_size=pool_size,
                max_overflow=max_overflow,
                connect_args={"connect_timeout": max(1, round(connect_timeout))},
            )
        else:
            kwargs["connect_args"] = {"timeout": connect_timeout}
        try:
            self._engine = create_async_engine(url, **kwargs)
        except (exc.ArgumentError, exc.NoSuchModuleError, exc.InvalidRequestError) as e:
            raise StoreError(f"bad store URL {mask_url(url)!r}: {e}", transient=False) from None
        self._url = parsed
        self._create = create
        self._file = ""  # a SQLite store's file, if it is one
        self._writer: SqliteWriter | None = None
        # PostgreSQL: the ids given to batches whose write failed, by the batch's identity (a
        # caller that retries sends the same sequence again, as the recorder does)
        self._unconfirmed: dict[int, _Unconfirmed] = {}
        # SQLite through the engine: a batch's write still running, by the batch's identity
        self._sqlite_attempts: dict[
            int, tuple[Sequence[ComparisonRecord], asyncio.Future[None]]
        ] = {}
        if backend == "sqlite":
            sync = self._engine.sync_engine
            # Switching a file to WAL is a lasting change of it: only for a store we may make.
            event.listen(sync, "connect", _sqlite_pragmas if create else _sqlite_reader_pragmas)
            db = sqlite_file(parsed)
            if db:
                self._file = db
                self._writer = SqliteWriter(db)
                if not create:  # opened read-write, never created (a race with a delete)
                    uri = rw_uri(db)

                    def _existing_only(
                        _dialect: Any, _rec: Any, cargs: list[Any], cparams: dict[str, Any]
                    ) -> None:
                        cargs[:] = [uri]
                        cparams["uri"] = True

                    event.listen(sync, "do_connect", _existing_only)

    def write_whole_batches(self) -> None:
        """SQLite: write each batch in one step instead of chunks that yield to the loop.

        For a process that serves no user traffic (a shadow helper): there the chunks only
        let the copies it runs outpace its writer until the recorder's buffer is full and
        records of compared copies are dropped. PostgreSQL writes are not chunked anyway.
        """
        if self._writer is not None:
            self._writer.chunk_rows = 0

    @classmethod
    async def open(cls, url: str, **kwargs: Any) -> Store:
        """A store whose schema is ready; closes the engine again if that fails."""
        store = cls(url, **kwargs)
        try:
            await store.init()
        except BaseException:
            await store.close()
            raise
        return store

    @property
    def engine(self) -> AsyncEngine:
        """The async engine, for read-only queries such as reports."""
        return self._engine

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`."""
        return self._engine.dialect.name

    @property
    def url(self) -> str:
        """The store URL with any password hidden (in its user part or its query)."""
        return mask_url(self._url.render_as_string(hide_password=True))

    async def init(self) -> None:
        """Create (SQLite) or migrate (PostgreSQL) the schema; with `create=False`, check
        that the database is a strangler store first (a `non-transient` StoreError if not)."""
        if not self._create and self._file and not os.path.exists(self._file):
            raise StoreError(
                f"no strangler store at {self.url}: no such database file {self._file!r}",
                transient=False,
            )
        try:
            async with self._engine.begin() as conn:
                if self.dialect == "postgresql":
                    await _migrate_pg(conn, create=self._create)
                else:
                    await _create_sqlite(conn, create=self._create)
        except _NotAStore as e:
            raise StoreError(
                f"not a strangler store at {self.url}: {e}; point at the store.url the proxy"
                " writes (`strangler serve` creates its tables when it starts)",
                transient=False,
            ) from None
        except exc.SQLAlchemyError as e:
            raise self._error("cannot initialise the store", e) from e
        except OSError as e:
            raise StoreError(f"cannot initialise the store at {self.url}: {e}") from e

    async def schema_version(self) -> int:
        """The applied schema version (SQLite: always the current one)."""
        if self.dialect != "postgresql":
            return SCHEMA_VERSION
        async with self._engine.connect() as conn:
            found = await conn.scalar(text("SELECT max(version) FROM schema_version"))
        return int(found or 0)

    async def insert_batch(self, records: Sequence[ComparisonRecord]) -> int:
        """Write `records` (and their path rows) in one transaction; return how many.

        The same sequence sent again after a failed attempt is stored at most once: on
        PostgreSQL a batch keeps the ids it was given for as long as it is sent again, so an
        attempt whose COMMIT went through but whose answer was lost (a cut connection, a
        timeout) is found by them; and a retry first ends the earlier attempt's transaction
        if the server still has it open (its COMMIT may yet arrive), so that one cannot
        commit after the retry.
        """
        if not records:
            return 0
        if self._writer is not None:
            try:
                await self._writer.write(
                    _SQLITE_INSERT,
                    records,
                    _sqlite_row,
                    _SQLITE_PATHS_INSERT,
                    lambda first: [
                        p
                        for i, r in enumerate(records)
                        if r.diff_paths or r.noise
                        for p in _sqlite_path_rows(first + i, r)
                    ],
                )
            except SqliteWriterError as e:
                raise StoreError(
                    f"cannot write {len(records)} comparisons at {self.url}: {e}",
                    transient=e.transient,
                ) from e
            return len(records)
        if self.dialect == "sqlite":
            await self._insert_sqlite_once(records)
            return len(records)
        again = self._unconfirmed.get(id(records))
        if again is not None and again.records is not records:
            again = None
        batch = again
        # Whether the batch may be stored if this attempt fails: an earlier attempt may
        # still commit until this one has ended it, and this one may once its COMMIT is sent.
        doubt = again is not None and again.maybe_stored
        try:
            async with self._engine.begin() as conn:
                rows = [_row(r) for r in records]
                if again is not None:
                    ids = again.ids
                    await self._end_earlier_attempt(conn, again)
                    found = select(comparisons.c.id).where(comparisons.c.id == ids[0])
                    if await conn.scalar(found) is not None:
                        raise _AlreadyStored
                    doubt = False  # the earlier attempt ended without storing it, for good
                    await conn.execute(_RETRY_LOCK_TIMEOUT)
                else:
                    # Reserve ids from the sequence in one round trip, then COPY: far
                    # cheaper (on the shared event loop too) than INSERT ... RETURNING.
                    result = await conn.execute(_RESERVE_IDS, {"n": len(rows)})
                    pid, start, reserved = result.one()
                    ids = [int(i) for i in reserved]
                    batch = _Unconfirmed(records, ids, pid, start)
                    self._remember(batch)
                for row, cid in zip(rows, ids, strict=True):
                    row["id"] = cid
                paths = [p for cid, r in zip(ids, records, strict=True) for p in _path_rows(cid, r)]
                try:
                    await _copy_pg(conn, comparisons, rows)
                except StoreError as e:
                    # The earlier attempt, still committing when this one looked, holds
                    # these ids now: it was stored.
                    if again is not None and _duplicate_key(e):
                        raise _AlreadyStored from e
                    raise
                await _copy_pg(conn, comparison_paths, paths)
                doubt = True  # leaving the block sends COMMIT: an error may come after it
        except _AlreadyStored:
            pass
        except StoreError as e:
            e.maybe_stored = doubt
            self._settle(records, e)
            raise
        except exc.SQLAlchemyError as e:
            error = self._error(f"cannot write {len(records)} comparisons", e)
            error.maybe_stored = doubt
            raise self._settle(records, error) from e
        except OSError as e:
            raise StoreError(
                f"cannot write comparisons to {self.url}: {e}", maybe_stored=doubt
            ) from e
        except Exception:  # not a store error: nothing was written
            self._unconfirmed.pop(id(records), None)
            raise
        finally:
            if batch is not None:  # what the next attempt must settle (cancelled too)
                batch.maybe_stored = doubt
        self._unconfirmed.pop(id(records), None)
        return len(records)

    async def _insert_sqlite_once(self, records: Sequence[ComparisonRecord]) -> None:
        """SQLite through the engine (a `file:` URI, `:memory:`): write `records`, or, when
        they are sent again while an earlier attempt still runs, wait for that one.

        aiosqlite runs each statement on a thread of its own, which a cancelled caller (the
        recorder's write timeout) does not stop: a COMMIT under way still goes through, and
        a retry under new rowids would store the batch twice. So the write runs as a task
        the caller's cancellation leaves alone, and a retry takes its outcome: stored, or
        failed (and then written again). SQLite waits for no network, so it always ends.
        """
        key = id(records)
        earlier = self._sqlite_attempts.get(key)
        if earlier is not None and earlier[0] is records:
            await asyncio.wait({earlier[1]})  # a cancelled retry leaves it running too
            if not earlier[1].cancelled() and earlier[1].exception() is None:
                self._sqlite_attempts.pop(key, None)
                return
            # it failed: write the batch again
        attempt = asyncio.ensure_future(self._insert_sqlite(records))
        attempt.add_done_callback(_retrieved)
        _keep_few(self._sqlite_attempts, key, (records, attempt))
        await asyncio.wait({attempt})  # cancelled: the attempt runs on, for a retry to join
        self._sqlite_attempts.pop(key, None)
        if attempt.cancelled():  # its statement may still run on aiosqlite's thread
            raise StoreError(
                f"writing {len(records)} comparisons at {self.url} was cancelled",
                maybe_stored=True,
            )
        attempt.result()  # its StoreError, if any

    async def _insert_sqlite(self, records: Sequence[ComparisonRecord]) -> None:
        """Write `records` (and their path rows) in one transaction through the engine."""
        try:
            async with self._engine.begin() as conn:
                # One executemany (RETURNING would cost a statement per row). The write
                # lock is ours until commit, so the new rowids are the last len(rows).
                values = [_sqlite_row(r) for r in records]
                for start in range(0, len(values), _CHUNK_ROWS):
                    await conn.exec_driver_sql(_SQLITE_INSERT, values[start : start + _CHUNK_ROWS])
                last = int(await conn.scalar(select(func.max(comparisons.c.id))) or 0)
                ids = range(last - len(values) + 1, last + 1)
                paths = [p for cid, r in zip(ids, records, strict=True) for p in _path_rows(cid, r)]
                await _insert_chunked(conn, comparison_paths, paths)
        except exc.SQLAlchemyError as e:
            raise self._error(f"cannot write {len(records)} comparisons", e) from e
        except OSError as e:
            raise StoreError(f"cannot write comparisons to {self.url}: {e}") from e

    def _settle(self, records: Sequence[ComparisonRecord], error: StoreError) -> StoreError:
        """`error`, having forgotten the ids of `records` if the store refused them for good
        (nothing was written, and the batch will not be sent again whole)."""
        if not error.transient:
            self._unconfirmed.pop(id(records), None)
        return error

    def _remember(self, batch: _Unconfirmed) -> None:
        """Keep the ids of a batch being written until it is confirmed (a few at most)."""
        _keep_few(self._unconfirmed, id(batch.records), batch)

    async def _end_earlier_attempt(self, conn: AsyncConnection, batch: _Unconfirmed) -> None:
        """Make sure the last attempt at `batch` can no longer commit, and make the attempt
        on `conn` the last one.

        An earlier attempt whose client gave up may still be open on the server: its COMMIT
        on the way (late, over a slow network) or a session cut off by a partition, which
        holds the batch's ids for hours. Its backend is ended (its transaction then either
        committed before, and the batch is found, or never will), so the batch keeps its
        ids: under new ones, a late COMMIT would store it twice.
        """
        pid, start = (await conn.execute(_ATTEMPT)).one()
        earlier = {"pid": batch.pid, "start": batch.start}
        if await conn.scalar(_END_ATTEMPT, earlier):
            deadline = asyncio.get_running_loop().time() + _END_ATTEMPT_WAIT
            pause = 0.005
            while (await conn.execute(_ATTEMPT_STILL_OPEN, earlier)).one()[1]:
                if asyncio.get_running_loop().time() >= deadline:
                    raise StoreError(
                        f"cannot write {len(batch.records)} comparisons at {self.url}: an"
                        f" earlier attempt (backend {batch.pid}) is still ending"
                    )
                await asyncio.sleep(pause)  # the backend exits on its own, soon
                pause = min(pause * 2, 0.1)
        batch.pid, batch.start = pid, start

    async def insert_drops(
        self, writer: str, seq: int, drops: Sequence[tuple[str, str, int]]
    ) -> None:
        """Add batch `seq` of `writer`: (route, reason, copies) rows of dropped shadow
        copies, stamped now. A batch already stored (sent again after a lost answer) is
        left as it is."""
        if not drops:
            return
        now = datetime.now(UTC)
        if self._writer is not None:  # the file the comparisons go to, without waiting
            values = [(_sqlite_time(now), r, why, n, writer, seq) for r, why, n in drops]
            try:
                await self._writer.insert(_SQLITE_DROPS_INSERT, values)
            except SqliteWriterError as e:
                raise StoreError(
                    f"cannot write {len(values)} drop counts at {self.url}: {e}",
                    transient=e.transient,
                ) from e
            return
        rows = [
            {"time": now, "route": r, "reason": why, "copies": n, "writer": writer, "seq": seq}
            for r, why, n in drops
        ]
        upsert = pg_insert if self.dialect == "postgresql" else sqlite_insert
        try:
            async with self._engine.begin() as conn:
                await conn.execute(upsert(shadow_drops).on_conflict_do_nothing(), rows)
        except exc.SQLAlchemyError as e:
            raise self._error(f"cannot write {len(rows)} drop counts", e) from e
        except OSError as e:
            raise StoreError(f"cannot write drop counts to {self.url}: {e}") from e

    async def count(self, route: str | None = None) -> int:
        """How many comparisons are stored (for one route, or all)."""
        query = select(func.count()).select_from(comparisons)
        if route is not None:
            query = query.where(comparisons.c.route == route)
        async with self._engine.connect() as conn:
            return int(await conn.scalar(query) or 0)

    async def delete_before(self, cutoff: datetime) -> int:
        """Delete comparisons (their path rows and the drop counts too) older than `cutoff`;
        return how many comparisons."""
        try:
            async with self._engine.begin() as conn:
                await conn.execute(delete(comparison_paths).where(comparison_paths.c.time < cutoff))
                await conn.execute(delete(shadow_drops).where(shadow_drops.c.time < cutoff))
                result = await conn.execute(delete(comparisons).where(comparisons.c.time < cutoff))
        except exc.SQLAlchemyError as e:
            raise self._error("cannot delete old comparisons", e) from e
        return int(result.rowcount or 0)

    async def record_route_change(
        self,
        *,
        route: str,
        to_mode: str,
        actor: str = "",
        kind: str = "manual",
        from_mode: str | None = None,
        from_percent: float | None = None,
        to_percent: float | None = None,
        evidence: dict[str, Any] | None = None,
        time: datetime | None = None,
    ) -> RouteChange:
        """Append one entry to the route-change audit log and return it with its id."""
        change = RouteChange(
            route=route,
            to_mode=to_mode,
            actor=actor,
            kind=kind,
            from_mode=from_mode,
            from_percent=from_percent,
            to_percent=to_percent,
            evidence=dict(evidence or {}),
            time=time or datetime.now(UTC),
        )
        values = {
            "time": change.time,
            "route": route,
            "actor": actor,
            "kind": kind,
            "from_mode": from_mode,
            "to_mode": to_mode,
            "from_percent": from_percent,
            "to_percent": to_percent,
            "evidence": orjson.dumps(change.evidence, default=str).decode(),
        }
        try:
            async with self._engine.begin() as conn:
                new_id = await conn.scalar(
                    insert(route_changes).values(values).returning(route_changes.c.id)
                )
        except exc.SQLAlchemyError as e:
            raise self._error("cannot record the route change", e) from e
        return RouteChange(**{**_fields(change), "id": int(new_id or 0)})

    async def route_changes(self, route: str | None = None, limit: int = 100) -> list[RouteChange]:
        """The latest route changes, newest first."""
        query = select(route_changes).order_by(route_changes.c.id.desc()).limit(limit)
        if route is not None:
            query = query.where(route_changes.c.route == route)
        try:
            async with self._engine.connect() as conn:
                rows = (await conn.execute(query)).all()
        except exc.SQLAlchemyError as e:
            raise self._error("cannot read route changes", e) from e
        return [_change(r) for r in rows]

    async def last_route_change(self, route: str) -> RouteChange | None:
        """The newest change of `route`, or None."""
        found = await self.route_changes(route, limit=1)
        return found[0] if found else None

    async def close(self) -> None:
        """Dispose of the engine and its pooled connections."""
        if self._writer is not None:
            await self._writer.close()
        # a write whose caller gave up still ends (SQLite: within the busy timeout)
        running = [attempt for _, attempt in self._sqlite_attempts.values()]
        self._sqlite_attempts.clear()
        await asyncio.gather(*running, return_exceptions=True)
        await self._engine.dispose()

    async def __aenter__(self) -> Store:
        await self.init()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _error(self, what: str, e: exc.SQLAlchemyError) -> StoreError:
        detail = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        return StoreError(f"{what} at {self.url}: {detail}", transient=isinstance(e, _TRANSIENT))


def _keep_few(batches: dict[int, _V], key: int, value: _V) -> None:
    """`batches[key] = value`, the oldest forgotten first past _UNCONFIRMED_MAX entries."""
    while len(batches) >= _UNCONFIRMED_MAX:
        del batches[next(iter(batches))]
    batches[key] = value


class _NotAStore(Exception):
    """A database opened with `create=False` holds no strangler store; says where it looked."""


class _AlreadyStored(Exception):
    """A batch sent again turned out to be stored by an earlier attempt."""


def _duplicate_key(e: BaseException) -> bool:
    """Whether PostgreSQL refused `e`'s rows for a key already taken."""
    import psycopg.errors

    return isinstance(e.__cause__, psycopg.errors.UniqueViolation)


def _retrieved(attempt: asyncio.Future[None]) -> None:
    """Mark the outcome of a write as seen (its caller may have gone: no warning then)."""
    if not attempt.cancelled():
        attempt.exception()


@dataclass(slots=True, eq=False)
class _Unconfirmed:
    """A PostgreSQL batch not confirmed yet: its ids, and the server transaction of its last
    attempt (backend pid and transaction start)."""

    records: Sequence[ComparisonRecord]
    ids: list[int]
    pid: int
    start: datetime
    # whether that attempt may yet commit, or did (its COMMIT sent, no answer heard)
    maybe_stored: bool = False


def _fields(change: RouteChange) -> dict[str, Any]:
    return {name: getattr(change, name) for name in RouteChange.__dataclass_fields__}


async def _insert_chunked(conn: AsyncConnection, table: Table, rows: list[dict[str, Any]]) -> None:
    # Parameter processing runs on the event loop; small statements keep each stall short
    # (the proxy shares the loop), while the batch stays one transaction.
    for start in range(0, len(rows), _CHUNK_ROWS):
        await conn.execute(insert(table), rows[start : start + _CHUNK_ROWS])


async def _copy_pg(conn: AsyncConnection, table: Table, rows: list[dict[str, Any]]) -> None:
    import psycopg

    if not rows:
        return
    names = [c.name for c in table.columns]
    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection  # psycopg.AsyncConnection, in SQLAlchemy's transaction
    columns = ", ".join(f'"{name}"' for name in names)
    try:
        async with (
            driver.cursor() as cursor,
            cursor.copy(f'COPY "{table.name}" ({columns}) FROM STDIN') as copy,
        ):
            for row in rows:
                await copy.write_row([row.get(name) for name in names])
    except psycopg.Error as e:
        # Below SQLAlchemy here: classify the error ourselves and drop a broken connection.
        transient = isinstance(e, psycopg.OperationalError | psycopg.InterfaceError)
        if transient or driver.closed:
            await conn.invalidate()
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise StoreError(f"cannot copy into {table.name}: {detail}", transient=transient) from e


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets a report read while the proxy writes; busy_timeout rides out short write locks.
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
    finally:
        cursor.close()
    _sqlite_reader_pragmas(dbapi_conn, _record)


def _sqlite_reader_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # Settings of the connection only: nothing is written to the file.
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


async def _create_sqlite(conn: AsyncConnection, *, create: bool) -> None:
    found = set(await conn.scalars(text("SELECT name FROM sqlite_master WHERE type = 'table'")))
    if found >= set(metadata.tables):
        return
    if not create and comparisons.name not in found:
        raise _NotAStore(f"it has no {comparisons.name} table")
    # Other processes may be opening the new file too (`serve --workers`): look again and
    # create under the write lock (waiting for it up to the busy timeout), so one of them
    # creates the tables and the others find them.
    await conn.exec_driver_sql("BEGIN IMMEDIATE")
    await conn.run_sync(metadata.create_all)


async def _migrate_pg(conn: AsyncConnection, *, create: bool = True) -> None:
    # A store already at this version needs no lock and no DDL, so a reader that may not
    # write (a role with SELECT only, a hot standby: how CI gates usually read) can open it.
    # Looked up in the connection's own schema only: a current store later on the
    # search_path (another deployment's, in `public`) is not this one.
    own = await conn.scalar(text("SELECT quote_ident(current_schema())"))
    table = f"{own}.schema_version"  # quoted by the server: safe as an identifier
    if own and await conn.scalar(text("SELECT to_regclass(:t) IS NOT NULL"), {"t": table}):
        found = await conn.scalar(text(f"SELECT max(version) FROM {table}"))
        if int(found or 0) >= SCHEMA_VERSION:
            return
    elif not create:
        where = f"schema {own}" if own else "no schema (an empty search_path)"
        raise _NotAStore(f"no schema_version table in {where}")
    await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
    await conn.execute(
        text(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version INTEGER PRIMARY KEY, name VARCHAR(200) NOT NULL,"
            " applied_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now())"
        )
    )
    current = int(await conn.scalar(text("SELECT coalesce(max(version), 0) FROM schema_version")))
    for migration in migrations():
        if migration.version <= current:
            continue
        for statement in migration.statements:
            await conn.execute(text(statement))
        await conn.execute(
            text("INSERT INTO schema_version (version, name) VALUES (:v, :n)"),
            {"v": migration.version, "n": migration.name},
        )
