"""The comparison writer of the embedded SQLite store: short chunks on the event loop.

Through SQLAlchemy and aiosqlite a stored comparison cost about 17 us of CPU, half of it
in per-row bind processing and in the hand-offs between the loop and aiosqlite's thread,
which also take the GIL from the data plane at random moments. SQLite itself needs about
8 us per row. So the shadow path's rows go straight to the driver: a plain `sqlite3`
connection of the loop's thread inserts a batch in chunks of `chunk_rows` rows and yields to
the loop between chunks, so one stall is bounded by a chunk (a fraction of a millisecond)
rather than by a batch. A process with no user traffic to yield to (a shadow helper) writes
each batch at once (`chunk_rows = 0`): there, yielding only lets new copies outrun the writer.
Nothing here waits on a lock: another writer (a second worker, the audit log) makes BEGIN
fail at once, and the batch is retried a few milliseconds later.
Checkpoints, the only step that syncs to disk in WAL mode, run once a second in a worker
thread on a connection of their own (RESTART, so the WAL starts over even under steady
writes, unless a reader still needs older frames), never on the loop. The file is opened
read-write only (a missing store is an error, never a new empty file), and a file deleted
or replaced since it was opened is reopened.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["SqliteWriter", "SqliteWriterError", "rw_uri"]


def _null(value: None) -> None:
    return value


def _blob(value: bytes) -> bytes:
    return value


# sqlite3 binds int, float, str and bytearray as they are, but sends None and bytes through
# its adapter protocol first: a registry miss, then two failed attribute lookups (on Python
# 3.11 one of them formats an AttributeError), about 3,000 instructions per NULL or blob of a
# stored row (measured with callgrind). An identity adapter makes that one dict hit; it
# changes no value, so nothing else in the process that uses sqlite3 sees a difference.
sqlite3.register_adapter(type(None), _null)
sqlite3.register_adapter(bytes, _blob)

_CHECKPOINT_EVERY_S = 1.0
_JOURNAL_SIZE_LIMIT = 64 << 20  # bytes a restarted WAL file is cut back to
T = TypeVar("T")


class SqliteWriterError(Exception):
    """A write failed; `transient` says whether retrying the same rows may succeed."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class SqliteWriter:
    """Inserts rows into one SQLite file from the event loop's thread, a chunk at a time."""

    def __init__(
        self,
        path: str,
        *,
        chunk_rows: int = 32,
        busy_wait_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.chunk_rows = chunk_rows
        self.busy_wait_s = busy_wait_s
        self._clock = clock
        self._db: sqlite3.Connection | None = None
        self._inode = 0  # of the file the connection opened: a replaced file is reopened
        self._last_checkpoint = clock()
        self._checkpoint: asyncio.Future[None] | None = None
        self._lock = asyncio.Lock()

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            # mode=rw: never create a stray empty database where the store's file went
            # missing. timeout=0: a locked database fails at once instead of blocking the loop.
            db = sqlite3.connect(rw_uri(self.path), timeout=0, isolation_level=None, uri=True)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute("PRAGMA wal_autocheckpoint=0")  # see _maybe_checkpoint
                db.execute(f"PRAGMA journal_size_limit={_JOURNAL_SIZE_LIMIT}")
                self._inode = os.stat(self.path).st_ino
            except (sqlite3.Error, OSError):
                db.close()
                raise
            self._db = db
        return self._db

    def _replaced(self) -> bool:
        """Whether the file was deleted or swapped since the connection opened it."""
        try:
            return os.stat(self.path).st_ino != self._inode
        except OSError:
            return True

    def _drop_connection(self) -> None:
        """Forget the connection (the next write opens the file afresh)."""
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None

    async def write(
        self,
        rows_sql: str,
        items: Sequence[T],
        row: Callable[[T], tuple[Any, ...]],
        paths_sql: str,
        path_rows: Callable[[int], Sequence[tuple[Any, ...]]],
    ) -> None:
        """Insert `row(item)` for each item into `comparisons`, then `path_rows(first_new_id)`
        (rows that refer to the new ids), in one transaction.

        The write lock is held from BEGIN IMMEDIATE to COMMIT, so the new rowids are the
        last len(rows) ones (INTEGER PRIMARY KEY allocates max(rowid) + 1).
        """

        async def body(db: sqlite3.Connection) -> None:
            await self._insert(db, rows_sql, items, row)
            last = int(db.execute("SELECT max(rowid) FROM comparisons").fetchone()[0] or 0)
            await self._insert(db, paths_sql, path_rows(last - len(items) + 1), tuple)

        await self._transaction(body)

    async def insert(self, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
        """Insert `rows` with `sql` in one transaction (a few rows: not chunked)."""

        async def body(db: sqlite3.Connection) -> None:
            db.executemany(sql, rows)

        await self._transaction(body)

    async def _transaction(self, body: Callable[[sqlite3.Connection], Awaitable[None]]) -> None:
        async with self._lock:  # one transaction at a time on the one connection
            try:
                if self._db is not None and self._replaced():
                    self._drop_connection()  # write to what is there now, not to a ghost
                db = self._connection()
                await self._begin(db)
            except (sqlite3.Error, OSError) as e:
                if not _locked(e):
                    self._drop_connection()
                raise _error(e) from e
            try:
                await body(db)
                db.execute("COMMIT")
            except BaseException as e:  # cancelled too: never leave the transaction open
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                if db.in_transaction or isinstance(e, sqlite3.Error):
                    # A transaction that would not end keeps the lock from every other
                    # writer: close it. Any other error may mean a replaced or broken file.
                    self._drop_connection()
                if isinstance(e, sqlite3.Error):
                    raise _error(e) from e
                raise
        self._maybe_checkpoint()

    async def _begin(self, db: sqlite3.Connection) -> None:
        deadline = self._clock() + self.busy_wait_s
        pause = 0.002
        while True:
            try:
                db.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as e:
                if not _locked(e):
                    raise
                if self._clock() >= deadline:
                    raise
            await asyncio.sleep(pause)  # another writer holds the lock: let it finish
            pause = min(pause * 2, 0.05)

    async def _insert(
        self,
        db: sqlite3.Connection,
        sql: str,
        items: Sequence[T],
        row: Callable[[T], tuple[Any, ...]],
    ) -> None:
        step = self.chunk_rows or max(1, len(items))  # 0: the whole batch at once
        for start in range(0, len(items), step):
            if start:
                await asyncio.sleep(0)  # let the data plane run between chunks
            db.executemany(sql, map(row, items[start : start + step]))

    def _maybe_checkpoint(self) -> None:
        now = self._clock()
        if now - self._last_checkpoint < _CHECKPOINT_EVERY_S:
            return
        if self._checkpoint is not None and not self._checkpoint.done():
            return
        self._last_checkpoint = now
        self._checkpoint = asyncio.ensure_future(asyncio.to_thread(_checkpoint, self.path))

    async def close(self) -> None:
        """Wait for a running checkpoint, then close the connection."""
        if self._checkpoint is not None:
            with contextlib.suppress(Exception):
                await self._checkpoint
            self._checkpoint = None
        if self._db is not None:
            self._db.close()
            self._db = None


def _checkpoint(path: str) -> None:
    """Copy the WAL back into the database file and restart it (on a worker thread, its own
    connection). RESTART waits up to a second for writers to pause (they retry meanwhile):
    a PASSIVE checkpoint under steady writes never lets the WAL start over, so it grows.
    But RESTART holds the write lock while it waits for readers, so it runs only when a
    PASSIVE pass copied every frame: a frame left over means a reader (a report, the
    dashboard) still reads an older snapshot, and waiting for it would hold back every
    writer of the file for the whole second, each second, for as long as it reads."""
    with (
        contextlib.suppress(sqlite3.Error),
        contextlib.closing(sqlite3.connect(rw_uri(path), timeout=1, uri=True)) as db,
    ):
        _, frames, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if frames >= 0 and copied >= frames:
            db.execute("PRAGMA wal_checkpoint(RESTART)")


def rw_uri(path: str) -> str:
    """The `file:` URI that opens `path` read-write, failing where there is no file."""
    return Path(path).absolute().as_uri() + "?mode=rw"


def _locked(e: BaseException) -> bool:
    text = str(e)
    return isinstance(e, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


def _error(e: sqlite3.Error | OSError) -> SqliteWriterError:
    # locked, I/O, full disk, file gone...: worth retrying; a constraint or type error is not
    transient = isinstance(e, sqlite3.OperationalError | OSError)
    return SqliteWriterError(str(e) or type(e).__name__, transient=transient)
