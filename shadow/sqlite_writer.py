"""The comparison writer of the embedded SQLite store: short chunks on the event loop.

Through SQLAlchemy and aiosqlite a stored comparison cost about 17 us of CPU, half of it
in per-row bind processing and in the hand-offs between the loop and aiosqlite's thread,
which also take the GIL from the data plane at random moments. SQLite itself needs about
8 us per row. So the shadow path's rows go straight to the driver: a plain `sqlite3`
connection of the loop's thread inserts a batch in chunks of `chunk_rows` rows and yields to
the loop between chunks, so one stall is bounded by a chunk (a fraction of a millisecond)
rather than by a batch. Nothing here waits on a lock: another writer (a second worker,
the audit log) makes BEGIN fail at once, and the batch is retried a few milliseconds later.
Checkpoints, the only step that syncs to disk in WAL mode, run in a worker thread on a
connection of their own, never on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

__all__ = ["SqliteWriter", "SqliteWriterError"]

_CHECKPOINT_EVERY_S = 1.0
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
        self._last_checkpoint = clock()
        self._checkpoint: asyncio.Future[None] | None = None
        self._lock = asyncio.Lock()

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            # timeout=0: a locked database fails at once instead of blocking the loop.
            db = sqlite3.connect(self.path, timeout=0, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute("PRAGMA wal_autocheckpoint=0")  # see _maybe_checkpoint
            except sqlite3.Error:
                db.close()
                raise
            self._db = db
        return self._db

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
        async with self._lock:  # one transaction at a time on the one connection
            try:
                db = self._connection()
                await self._begin(db)
            except sqlite3.Error as e:
                raise _error(e) from e
            try:
                await self._insert(db, rows_sql, items, row)
                last = int(db.execute("SELECT max(rowid) FROM comparisons").fetchone()[0] or 0)
                await self._insert(db, paths_sql, path_rows(last - len(items) + 1), tuple)
                db.execute("COMMIT")
            except BaseException as e:  # cancelled too: never leave the transaction open
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
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
                if "locked" not in str(e) and "busy" not in str(e):
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
        step = self.chunk_rows
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
    """Copy the WAL back into the database file (on a worker thread, its own connection)."""
    with (
        contextlib.suppress(sqlite3.Error),
        contextlib.closing(sqlite3.connect(path, timeout=1)) as db,
    ):
        db.execute("PRAGMA wal_checkpoint(PASSIVE)")


def _error(e: sqlite3.Error) -> SqliteWriterError:
    transient = isinstance(e, sqlite3.OperationalError)  # locked, I/O, full disk, gone...
    return SqliteWriterError(str(e) or type(e).__name__, transient=transient)
