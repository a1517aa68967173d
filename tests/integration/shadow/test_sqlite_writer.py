"""The embedded store's writer: chunks that yield to the loop, no waiting on a lock, clean
rollback when cancelled."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from shadow.record import ComparisonRecord
from shadow.sqlite_writer import _checkpoint
from shadow.store import Store, StoreError


def _records(n: int, outcome: str = "match") -> list[ComparisonRecord]:
    return [
        ComparisonRecord(
            route="r",
            outcome=outcome,  # type: ignore[arg-type]
            request_id=f"id-{i}",
            diff_paths=("$.a",) if outcome == "mismatch" else (),
        )
        for i in range(n)
    ]


def _count(path: Path, table: str = "comparisons") -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


async def test_a_batch_is_written_in_chunks_that_let_the_loop_run(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    async with Store(f"sqlite+aiosqlite:///{db}") as store:
        assert store._writer is not None
        store._writer.chunk_rows = 10
        ran_between: list[int] = []
        write = asyncio.ensure_future(store.insert_batch(_records(100, "mismatch")))
        while not write.done():  # each turn of the loop sees how far the batch got
            ran_between.append(_count(db))
            await asyncio.sleep(0)
        assert write.result() == 100
        # Other callbacks ran while the batch was being written, and it committed once.
        assert len(ran_between) >= 10
        assert set(ran_between) == {0}
        assert _count(db) == 100
        assert _count(db, "comparison_paths") == 100


async def test_whole_batches_are_written_in_one_step(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    async with Store(f"sqlite+aiosqlite:///{db}") as store:
        store.write_whole_batches()  # a shadow helper's store: no user traffic to yield to
        turns = 0

        async def count_turns() -> None:
            nonlocal turns
            while True:
                turns += 1
                await asyncio.sleep(0)

        counter = asyncio.ensure_future(count_turns())
        await asyncio.sleep(0)
        before = turns
        assert await store.insert_batch(_records(100, "mismatch")) == 100
        counter.cancel()
        # BEGIN, the rows, their paths and COMMIT without a chunk boundary in between
        assert turns - before <= 1
        assert _count(db) == 100
        assert _count(db, "comparison_paths") == 100


async def test_a_locked_database_is_waited_for_without_blocking_the_loop(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    async with Store(f"sqlite+aiosqlite:///{db}") as store:
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another worker holds the write lock
        write = asyncio.ensure_future(store.insert_batch(_records(5)))
        turns = 0
        while turns < 50:  # the loop keeps turning while the write waits
            await asyncio.sleep(0.001)
            turns += 1
        assert not write.done()
        other.execute("COMMIT")
        other.close()
        assert await asyncio.wait_for(write, 5) == 5
        assert _count(db) == 5


async def test_a_lock_held_too_long_is_a_transient_error(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    async with Store(f"sqlite+aiosqlite:///{db}") as store:
        assert store._writer is not None
        store._writer.busy_wait_s = 0.05
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreError) as caught:
                await store.insert_batch(_records(3))
            assert caught.value.transient
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert await store.insert_batch(_records(3)) == 3  # the writer is usable again


async def test_a_cancelled_batch_leaves_nothing_behind(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    async with Store(f"sqlite+aiosqlite:///{db}") as store:
        assert store._writer is not None
        store._writer.chunk_rows = 5
        write = asyncio.ensure_future(store.insert_batch(_records(100)))
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # a few chunks in, the transaction still open
        assert not write.done()
        write.cancel()
        with pytest.raises(asyncio.CancelledError):
            await write
        assert _count(db) == 0
        assert await store.insert_batch(_records(7)) == 7
        assert _count(db) == 7


async def test_a_replaced_file_is_reopened_and_a_missing_one_is_not_recreated(
    tmp_path: Path,
) -> None:
    db = tmp_path / "s.db"
    url = f"sqlite+aiosqlite:///{db}"
    async with Store(url) as store:
        assert await store.insert_batch(_records(3)) == 3
        await store.engine.dispose()  # nothing else holds the old file open
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        with pytest.raises(StoreError) as caught:
            await store.insert_batch(_records(2))  # the file is gone: not recorded
        assert caught.value.transient
        assert not db.exists()  # and no empty stray database was created in its place
        await (await Store.open(url)).close()  # an operator restores a store at the path
        assert await store.insert_batch(_records(4)) == 4
        assert _count(db) == 4  # written to the file that is there now


async def test_shutdown_accounts_for_copies_still_waiting(tmp_path: Path) -> None:
    from tests.unit.proxy.shadow_plans import hub_and_plan

    hub, plan = hub_and_plan(asyncio.get_running_loop())
    call = hub.begin(plan, "GET", "/orders/1", "rid", [], b"GET /orders/1 HTTP/1.1\r\n\r\n")
    assert call is not None
    call.request_done()  # the copy is on its way to a candidate that will never answer
    hub.stop()
    counters = hub.recorder.counters()["show"]
    assert counters.dropped == {"stopped": 1}
    assert counters.balanced


async def test_a_checkpoint_never_holds_writers_back_for_a_reader(tmp_path: Path) -> None:
    """A report (or the dashboard) reads under one snapshot for seconds; the writer's
    once-a-second RESTART checkpoint took the write lock and then waited up to a second for
    that reader, so every worker's writes stalled for as long as reports ran (2 workers at
    2,000 copies/s with 2,000-row buffers dropped 40 % of their comparisons)."""
    db = tmp_path / "s.db"
    async with Store(f"sqlite+aiosqlite:///{db}") as store:
        assert store._writer is not None
        await store.insert_batch(_records(100))
        reader = sqlite3.connect(db)
        try:
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM comparisons").fetchone()  # its snapshot
            await store.insert_batch(_records(100))  # newer than what the reader sees
            store._writer.busy_wait_s = 0.0  # a write that finds the lock taken fails at once
            checkpoint = asyncio.ensure_future(asyncio.to_thread(_checkpoint, str(db)))
            written = refused = 0
            while not checkpoint.done():
                try:
                    written += await store.insert_batch(_records(5))
                except StoreError:
                    refused += 1
                await asyncio.sleep(0)
            await checkpoint
        finally:
            reader.rollback()
            reader.close()
    assert refused == 0, f"{refused} writes found the lock taken by the checkpoint"
    assert _count(db) == 200 + written
