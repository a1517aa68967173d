"""Several processes opening one new SQLite store at once (`strangler serve --workers 4` on a
fresh file): each one's first open succeeds and the schema comes out whole."""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
import threading
from pathlib import Path
from typing import Any

from shadow.store import Store, metadata

OPENERS = 8
ROUNDS = 6


def _open_together(url: str, barrier: Any, errors: list[BaseException]) -> None:
    async def run() -> None:
        store = Store(url)
        try:
            await asyncio.to_thread(barrier.wait)  # every opener starts at once
            await store.init()
            assert await store.count() == 0
        finally:
            await store.close()

    try:
        asyncio.run(run())
    except BaseException as e:
        errors.append(e)


def _schema(path: Path) -> tuple[set[str], str]:
    db = sqlite3.connect(path)
    try:
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return names, str(db.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        db.close()


def test_openers_racing_on_a_new_file_all_succeed(tmp_path: Path) -> None:
    for round_ in range(ROUNDS):
        path = tmp_path / f"store{round_}.db"
        url = f"sqlite+aiosqlite:///{path}"
        barrier = threading.Barrier(OPENERS, timeout=30)
        errors: list[BaseException] = []
        threads = [
            threading.Thread(target=_open_together, args=(url, barrier, errors))
            for _ in range(OPENERS)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)
        assert errors == [], [str(e) for e in errors]
        assert _schema(path) == (set(metadata.tables), "wal")


def _process_opener(url: str, barrier: Any, results: Any) -> None:
    errors: list[BaseException] = []
    _open_together(url, barrier, errors)
    results.put(str(errors[0]) if errors else "")


def test_worker_processes_racing_on_a_new_file_all_succeed(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")  # as `serve --workers`: separate processes
    for round_ in range(3):
        path = tmp_path / f"store{round_}.db"
        url = f"sqlite+aiosqlite:///{path}"
        barrier = ctx.Barrier(4, timeout=60)
        results = ctx.Queue()
        procs = [
            ctx.Process(target=_process_opener, args=(url, barrier, results)) for _ in range(4)
        ]
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=90) for _ in procs]
        for p in procs:
            p.join(30)
        assert [p.exitcode for p in procs] == [0] * 4
        assert outcomes == [""] * 4
        assert _schema(path) == (set(metadata.tables), "wal")
