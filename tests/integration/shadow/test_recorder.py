"""The recorder against real stores that fail: closed ports, cut connections, terminated
backends. Per route, started = recorded + dropped + failed, and stored rows = recorded."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import psycopg
import pytest
from sqlalchemy import event, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.util.concurrency import await_

from shadow.compare import CompareRules
from shadow.http_compare import HttpResponse
from shadow.record import ComparisonRecord, DiffExample
from shadow.recorder import Recorder, RouteCounters
from shadow.redact import Redactor
from shadow.report import build_report
from shadow.store import Store, StoreError, shadow_drops
from shadow.verdict import build_record, judge
from tests.support import free_port, wait_for, wait_until

ROUTES = ("order-show", "order-list", "order-create")


def _rec(i: int) -> ComparisonRecord:
    return ComparisonRecord(
        route=ROUTES[i % len(ROUTES)],
        outcome="mismatch" if i % 10 == 0 else "match",
        time=datetime.now(UTC),
        diff_paths=("$.total",) if i % 10 == 0 else (),
        request_id=f"r{i}",
    )


def _feed(recorder: Recorder, start: int, n: int) -> None:
    for i in range(start, start + n):
        recorder.note_started(ROUTES[i % len(ROUTES)])
        recorder.record(_rec(i))


def _totals(counters: dict[str, RouteCounters]) -> tuple[int, int, int, int]:
    c = counters.values()
    return (
        sum(x.started for x in c),
        sum(x.recorded for x in c),
        sum(x.dropped_total for x in c),
        sum(x.failed for x in c),
    )


def _assert_balanced(recorder: Recorder) -> None:
    for route, c in recorder.counters().items():
        assert c.balanced, (route, c)


async def _start_flush_stop(recorder: Recorder) -> None:
    """Start the writer on what is buffered, flush it all, and stop."""
    await recorder.start()
    try:
        assert await recorder.flush(10)
    finally:
        await recorder.stop(5)


class _Streams(NamedTuple):
    """One relayed connection: the client's side, then the server's."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    up_reader: asyncio.StreamReader
    up_writer: asyncio.StreamWriter


class Forwarder:
    """A loopback TCP relay to PostgreSQL that can be taken down (every connection cut)."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port = port
        self._target = target
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        await self._relay(_Streams(reader, writer, up_reader, up_writer))
        for w in (writer, up_writer):
            w.close()

    async def _relay(self, conn: _Streams) -> None:
        """Relay one connection until either direction ends; a relay that tampers with the
        traffic overrides it."""
        reader, writer, up_reader, up_writer = conn
        await self._run_pipes(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _run_pipes(
        self, upstream: Coroutine[Any, Any, None], downstream: Coroutine[Any, Any, None]
    ) -> asyncio.Task[None]:
        """Run a connection's two directions until either ends; the upstream task."""
        up = asyncio.create_task(upstream)
        pipes = [up, asyncio.create_task(downstream)]
        self._tasks.update(pipes)
        await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        return up

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()

    async def stop(self) -> None:
        """Stop listening and cut every relayed connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in self._writers:
            w.transport.abort()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._writers.clear()
        self._tasks.clear()


def _via(pg_url: str, port: int) -> tuple[str, tuple[str, int]]:
    url = make_url(pg_url)
    target = (url.host or "127.0.0.1", url.port or 5432)
    return url.set(host="127.0.0.1", port=port).render_as_string(hide_password=False), target


_F = TypeVar("_F", bound=Forwarder)


async def _behind_relay(
    pg_url: str, relay_class: Callable[[int, tuple[str, int]], _F]
) -> tuple[Store, _F, Store]:
    """A store opened directly (schema ready), a relay to PostgreSQL not started yet, and a
    store whose every connection goes through that relay."""
    direct = await Store.open(pg_url)
    port = free_port()
    relay_url, target = _via(pg_url, port)
    return direct, relay_class(port, target), Store(relay_url, connect_timeout=2)


@contextlib.asynccontextmanager
async def _recording(relay: Forwarder, store: Store, **settings: Any) -> AsyncIterator[Recorder]:
    """A started recorder writing to `store` through `relay`; at the end the recorder is
    stopped, then the relay, then the store closed."""
    recorder = Recorder(store, **settings)
    await recorder.start()
    try:
        yield recorder
    finally:
        await recorder.stop(5)
        await relay.stop()
        await store.close()


async def test_everything_recorded_on_a_healthy_store(sqlite_url: str) -> None:
    store = await Store.open(sqlite_url)
    recorder = Recorder(store, buffer_size=5000, batch_size=200)
    await recorder.start()
    try:
        _feed(recorder, 0, 3000)
        assert await recorder.flush(10)
        assert _totals(recorder.counters()) == (3000, 3000, 0, 0)
        assert await store.count() == 3000
        assert recorder.counters()["order-show"].outcomes == {"mismatch": 100, "match": 900}
    finally:
        await recorder.stop(5)
        await store.close()
    _assert_balanced(recorder)


async def test_a_full_buffer_drops_and_counts(sqlite_url: str) -> None:
    store = await Store.open(sqlite_url)
    recorder = Recorder(store, buffer_size=100, batch_size=50)
    _feed(recorder, 0, 150)  # the writer is not running yet: the buffer fills
    assert recorder.buffered == 100
    recorder.note_started("order-show")
    recorder.note_dropped("order-show", "max_concurrency")  # a drop before any record exists
    await _start_flush_stop(recorder)
    started, recorded, dropped, failed = _totals(recorder.counters())
    assert (started, recorded, dropped, failed) == (151, 100, 51, 0)
    assert recorder.counters()["order-show"].dropped == {"buffer_full": 16, "max_concurrency": 1}
    assert await store.count() == 100
    await store.close()
    _assert_balanced(recorder)


async def test_store_down_at_start_then_up_keeps_what_fits(pg_url: str) -> None:
    # the schema exists; the recorder's path to it does not (the relay is not started)
    direct, relay, store = await _behind_relay(pg_url, Forwarder)
    async with _recording(
        relay, store, buffer_size=500, batch_size=100, backoff_max=0.2
    ) as recorder:
        _feed(recorder, 0, 300)
        await wait_until(lambda: recorder.retries >= 2, timeout=10)
        assert recorder.store_down_for is not None and recorder.last_error
        _feed(recorder, 300, 400)  # only 200 more fit
        assert recorder.buffered == 500
        await relay.start()
        assert await recorder.flush(20)
        assert recorder.store_down_for is None
    assert _totals(recorder.counters()) == (700, 500, 200, 0)
    assert await direct.count() == 500
    await direct.close()
    _assert_balanced(recorder)


async def test_connections_cut_mid_run_lose_nothing_the_buffer_holds(pg_url: str) -> None:
    direct, relay, store = await _behind_relay(pg_url, Forwarder)
    await relay.start()
    async with _recording(
        relay, store, buffer_size=5000, batch_size=100, backoff_max=0.2
    ) as recorder:
        _feed(recorder, 0, 1000)
        assert await recorder.flush(20)
        await relay.stop()  # the network to the store goes away, mid-run
        _feed(recorder, 1000, 1000)
        await wait_until(lambda: recorder.retries >= 1, timeout=10)
        await relay.start()
        _feed(recorder, 2000, 1000)
        assert await recorder.flush(20)
    assert _totals(recorder.counters()) == (3000, 3000, 0, 0)
    assert await direct.count() == 3000
    await direct.close()
    _assert_balanced(recorder)


async def test_terminated_backends_lose_nothing(pg_url: str) -> None:
    app = f"strangler-recorder-{free_port()}"
    url = f"{pg_url}&application_name={app}"
    store = await Store.open(url)
    recorder = Recorder(store, buffer_size=20_000, batch_size=200, backoff_max=0.1)
    await recorder.start()
    dsn = make_url(pg_url).set(drivername="postgresql", query={}).render_as_string(False)
    killed = 0
    try:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
            for burst in range(30):  # until a write failed because its backend was killed
                _feed(recorder, burst * 1000, 1000)
                await wait_until(lambda: recorder.in_flight > 0, timeout=10)
                cur = await admin.execute(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))"
                    " FROM pg_stat_activity WHERE application_name = %s AND state <> 'idle'",
                    (app,),
                )
                row = await cur.fetchone()
                killed += row[0] if row else 0
                if recorder.retries >= 1 and burst >= 4:
                    break
        assert await recorder.flush(30)
    finally:
        await recorder.stop(5)
    started = _totals(recorder.counters())[0]
    assert killed >= 1 and recorder.retries >= 1
    assert _totals(recorder.counters()) == (started, started, 0, 0)
    assert await store.count() == started  # nothing lost, nothing written twice
    await store.close()
    _assert_balanced(recorder)


async def test_stop_with_the_store_down_counts_failures() -> None:
    store = Store(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test")
    recorder = Recorder(store, buffer_size=100, batch_size=10, backoff_max=0.05)
    await recorder.start()
    _feed(recorder, 0, 50)
    await wait_until(lambda: recorder.retries >= 1, timeout=10)
    await recorder.stop(0.2)
    assert _totals(recorder.counters()) == (50, 0, 0, 50)
    recorder.record(_rec(0), started=True)  # after stop: dropped, never queued
    assert recorder.counters()["order-show"].dropped == {"stopped": 1}
    assert recorder.buffered == 0
    await store.close()
    _assert_balanced(recorder)


async def test_a_bad_record_fails_alone(pg_url: str) -> None:
    store = await Store.open(pg_url)
    recorder = Recorder(store, buffer_size=100, batch_size=100)
    _feed(recorder, 0, 9)
    bad = ComparisonRecord(route="x" * 300, outcome="match")  # longer than the column
    recorder.record(bad, started=True)
    await _start_flush_stop(recorder)
    assert _totals(recorder.counters()) == (10, 9, 0, 1)
    assert recorder.counters()["x" * 300].failed == 1
    assert await store.count() == 9
    await store.close()
    _assert_balanced(recorder)


async def test_record_never_raises_and_counters_are_snapshots(sqlite_url: str) -> None:
    store = await Store.open(sqlite_url)
    recorder = Recorder(store, buffer_size=10, batch_size=5)
    recorder.record(None)  # type: ignore[arg-type]
    _feed(recorder, 0, 1)
    snapshot = recorder.counters()
    snapshot["order-show"].started = 99
    assert recorder.counters()["order-show"].started == 1
    assert recorder.stats() == recorder.counters()
    await recorder.start()
    assert await recorder.flush(5)
    await recorder.stop(5)
    await store.close()
    _assert_balanced(recorder)


@pytest.mark.parametrize("sizes", [(0, 1), (1, 0)])
def test_sizes_must_be_positive(sizes: tuple[int, int]) -> None:
    with pytest.raises(ValueError):
        Recorder(Store("sqlite:///unused.db"), *sizes)


class _ListSink:
    """A sink that keeps the records it is given in `written`, and no drop counts."""

    def __init__(self) -> None:
        self.written: list[ComparisonRecord] = []

    async def insert_batch(self, records: Sequence[ComparisonRecord]) -> int:
        self.written.extend(records)
        return len(records)

    async def insert_drops(
        self, writer: str, seq: int, drops: Sequence[tuple[str, str, int]]
    ) -> None:
        pass


class _StuckThenWorking(_ListSink):
    """A sink whose first write never returns (a silent network), then works."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def insert_batch(self, records: Sequence[ComparisonRecord]) -> int:
        self.calls += 1
        if self.calls == 1:
            await asyncio.Event().wait()
        return await super().insert_batch(records)


async def test_a_write_that_never_returns_is_timed_out_and_retried() -> None:
    sink = _StuckThenWorking()
    recorder = Recorder(sink, buffer_size=100, batch_size=100, write_timeout=0.2)
    await recorder.start()
    _feed(recorder, 0, 30)
    assert await recorder.flush(10)
    await recorder.stop(5)
    assert sink.calls == 2 and len(sink.written) == 30
    assert recorder.retries == 1
    assert _totals(recorder.counters()) == (30, 30, 0, 0)


async def _stored_drops(store: Store) -> dict[tuple[str, str], int]:
    query = select(shadow_drops.c.route, shadow_drops.c.reason, func.sum(shadow_drops.c.copies))
    async with store.engine.connect() as conn:
        rows = await conn.execute(query.group_by(shadow_drops.c.route, shadow_drops.c.reason))
    return {(route, reason): int(n) for route, reason, n in rows}


async def _stored_is(store: Store, want: dict[tuple[str, str], int]) -> bool:
    return await _stored_drops(store) == want


def _counted_drops(recorder: Recorder) -> dict[tuple[str, str], int]:
    return {
        (route, reason): n
        for route, c in recorder.counters().items()
        for reason, n in c.dropped.items()
    }


async def test_drop_counts_are_stored_once_each(store_url: str) -> None:
    store = await Store.open(store_url)
    recorder = Recorder(store, buffer_size=10, batch_size=5, drops_every=0.05)
    await recorder.start()
    try:
        recorder.note_shed("order-show", "shed", 5)
        recorder.note_started("order-list")
        recorder.note_dropped("order-list", "timeout")
        want = {("order-show", "shed"): 5, ("order-list", "timeout"): 1}
        await wait_for(lambda: _stored_is(store, want))
        recorder.note_shed("order-show", "shed", 2)  # only the new ones are added
        _feed(recorder, 0, 30)  # 20 of them find the buffer full
        await recorder.stop(5)
        assert await _stored_drops(store) == _counted_drops(recorder)
        assert _counted_drops(recorder)[("order-show", "shed")] == 7
        assert sum(_counted_drops(recorder).values()) == 7 + 1 + 20
    finally:
        await store.close()
    _assert_balanced(recorder)


async def test_drop_counts_wait_for_a_store_that_is_down(pg_url: str) -> None:
    direct, relay, store = await _behind_relay(pg_url, Forwarder)
    want = {("order-show", "shed"): 3, ("order-show", "concurrency"): 4}
    async with _recording(relay, store, buffer_size=10, batch_size=5, drops_every=0.05) as recorder:
        recorder.note_shed("order-show", "shed", 3)
        await wait_until(lambda: recorder.store_down_for is not None, timeout=10)
        recorder.note_shed("order-show", "concurrency", 4)
        await relay.start()
        await wait_for(lambda: _stored_is(direct, want), timeout=10)
        await wait_until(lambda: recorder.store_down_for is None)
    assert await _stored_drops(direct) == want  # nothing twice
    await direct.close()


class _AnswerLost:
    """A store whose first drop batch commits but whose answer never arrives (a timeout, a
    cut connection after COMMIT): the recorder sends the batch again."""

    def __init__(self, store: Store, *, hang: bool) -> None:
        self.store = store
        self.hang = hang
        self.calls: list[int] = []

    async def insert_batch(self, records: Sequence[ComparisonRecord]) -> int:
        return await self.store.insert_batch(records)

    async def insert_drops(
        self, writer: str, seq: int, drops: Sequence[tuple[str, str, int]]
    ) -> None:
        self.calls.append(seq)
        await self.store.insert_drops(writer, seq, drops)
        if len(self.calls) == 1:
            if self.hang:
                await asyncio.Event().wait()
            raise OSError("connection reset after commit")


@pytest.mark.parametrize("hang", [False, True])
async def test_a_drop_batch_whose_answer_was_lost_is_stored_once(
    store_url: str, hang: bool
) -> None:
    store = await Store.open(store_url)
    sink = _AnswerLost(store, hang=hang)
    recorder = Recorder(sink, buffer_size=10, batch_size=5, drops_every=0.05, write_timeout=0.2)
    await recorder.start()
    try:
        recorder.note_shed("order-show", "shed", 5)
        await wait_until(lambda: len(sink.calls) >= 2, timeout=10)
        recorder.note_shed("order-show", "shed", 2)
        await recorder.stop(5)
        assert sink.calls[:2] == [1, 1]  # the same batch, under the same number
        assert await _stored_drops(store) == {("order-show", "shed"): 7}
        assert recorder.drops_unstored == 0
    finally:
        await store.close()


class _BrokenDrops:
    """A sink whose drop counts fail with a bug's exception, or never answer."""

    def __init__(self, hang: bool) -> None:
        self.hang = hang
        self.written = 0

    async def insert_batch(self, records: Sequence[ComparisonRecord]) -> int:
        self.written += len(records)
        return len(records)

    async def insert_drops(
        self, writer: str, seq: int, drops: Sequence[tuple[str, str, int]]
    ) -> None:
        if self.hang:
            await asyncio.Event().wait()
        raise RuntimeError("a bug in the sink")


@pytest.mark.parametrize("hang", [False, True])
async def test_drop_counts_that_fail_never_stop_the_writer_nor_hang_stop(hang: bool) -> None:
    sink = _BrokenDrops(hang)
    recorder = Recorder(sink, buffer_size=100, batch_size=10, drops_every=0.05, write_timeout=0.2)
    await recorder.start()
    recorder.note_shed("order-show", "shed", 3)
    await wait_until(lambda: recorder.last_error != "", timeout=10)
    _feed(recorder, 0, 20)  # comparisons are still written
    assert await recorder.flush(10)
    started = time.monotonic()
    await recorder.stop(1.0)
    assert time.monotonic() - started < 3.0
    assert sink.written == 20 and recorder.drops_unstored == 3
    _assert_balanced(recorder)


async def test_mismatches_with_long_or_nul_paths_are_stored_and_reported(store_url: str) -> None:
    """A JSON key of 1,200 characters, or with a NUL in it, made the whole comparison
    unstorable on PostgreSQL (a path column of 1,000, text without NUL): the mismatch was
    counted `failed` and the report passed on the matches alone."""
    long_key = '$.labels["' + "k" * 1200 + '"]'
    nul_key = '$.labels["a\x00b"]'
    mismatches = [
        ComparisonRecord(
            route="order-show",
            outcome="mismatch",
            diff_paths=(long_key, long_key + ".x", "$.total"),
            noise=(nul_key,),
            diff_examples=(DiffExample(long_key, long_key, 1, 2),),
        ),
        ComparisonRecord(route="order-show", outcome="mismatch", diff_paths=(nul_key,)),
        ComparisonRecord(
            route="order-show", outcome="candidate_error", detail="bad byte \x00 in answer"
        ),
    ]
    store = await Store.open(store_url)
    recorder = Recorder(store, buffer_size=100, batch_size=100)
    for rec in [*mismatches, ComparisonRecord(route="order-show", outcome="match")]:
        recorder.record(rec, started=True)
    await _start_flush_stop(recorder)
    try:
        report = await build_report(store, thresholds_by_route={}, now=datetime.now(UTC))
    finally:
        await store.close()
    c = recorder.counters()["order-show"]
    assert (c.started, c.recorded, c.failed) == (4, 4, 0), recorder.last_error
    route = report.routes[0]
    assert (route.mismatches, route.matches, route.candidate_errors) == (2, 1, 1)
    patterns = {p.pattern for p in route.top_paths}
    assert "$.total" in patterns and '$.labels["a\\u0000b"]' in patterns
    assert any(p.startswith('$.labels["kkkk') and len(p) <= 1000 for p in patterns)


class _CommitRelay(Forwarder):
    """A relay to PostgreSQL that, once `armed`, acts on the next COMMIT it relays."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        super().__init__(port, target)
        self.armed = False

    def _takes_commit(self, data: bytes) -> bool:
        """Whether `data`, on its way to the server, is the COMMIT to act on (it disarms)."""
        if self.armed and b"COMMIT\x00" in data:
            self.armed = False
            return True
        return False


async def _stored_once(recorder: Recorder, direct: Store, n: int) -> None:
    """The `n` comparisons were all recorded, and stored once each (read through `direct`,
    which is closed then)."""
    assert _totals(recorder.counters()) == (n, n, 0, 0)
    stored = await direct.count()
    await direct.close()
    assert stored == n  # nothing written twice


async def _warm_then_arm(
    recorder: Recorder, relay: _CommitRelay, acted: asyncio.Event, more: int = 50
) -> None:
    """Store 10 comparisons (the connection is up and warm), arm the relay, feed `more`
    and wait until the relay acted on their COMMIT."""
    _feed(recorder, 0, 10)
    assert await recorder.flush(10)  # the connection is up and warm
    relay.armed = True
    _feed(recorder, 10, more)
    await asyncio.wait_for(acted.wait(), 10)


class _CommitAnswerLost(_CommitRelay):
    """A relay to PostgreSQL that, once armed, lets the next COMMIT through and cuts the
    connection when the server answers it: the batch is stored, its writer hears an error."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        super().__init__(port, target)
        self.cut = asyncio.Event()

    async def _relay(self, conn: _Streams) -> None:
        reader, writer, up_reader, up_writer = conn
        committing = asyncio.Event()

        async def upstream() -> None:
            with contextlib.suppress(OSError):
                while data := await reader.read(65536):
                    up_writer.write(data)
                    await up_writer.drain()
                    if self._takes_commit(data):
                        committing.set()

        async def downstream() -> None:
            with contextlib.suppress(OSError):
                while data := await up_reader.read(65536):
                    if committing.is_set():  # the COMMIT's answer: never delivered
                        writer.transport.abort()
                        up_writer.transport.abort()
                        self.cut.set()
                        return
                    writer.write(data)
                    await writer.drain()

        await self._run_pipes(upstream(), downstream())


async def test_a_batch_whose_commit_answer_was_lost_is_stored_once(pg_url: str) -> None:
    """The connection to PostgreSQL breaks after COMMIT reached the server: the retried batch
    was stored a second time (every comparison counted twice in the report)."""
    direct, relay, store = await _behind_relay(pg_url, _CommitAnswerLost)
    await relay.start()
    async with _recording(
        relay, store, buffer_size=1000, batch_size=100, backoff_max=0.05
    ) as recorder:
        await _warm_then_arm(recorder, relay, relay.cut)
        assert await recorder.flush(10)
    assert recorder.retries >= 1
    await _stored_once(recorder, direct, 60)
    _assert_balanced(recorder)


class _SilentBeforeCommit(_CommitRelay):
    """A relay to PostgreSQL that, once armed, goes silent both ways on the connection that
    next sends COMMIT, before it (a network partition): the server keeps that session, its
    transaction open and holding the rows it wrote, until it notices the peer is gone (hours
    by default)."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        super().__init__(port, target)
        self.silenced = asyncio.Event()

    async def _relay(self, conn: _Streams) -> None:
        reader, writer, up_reader, up_writer = conn
        silent = False

        async def upstream() -> None:
            nonlocal silent
            with contextlib.suppress(OSError):
                while data := await reader.read(65536):
                    if silent:
                        continue
                    if self._takes_commit(data):
                        silent = True  # the rows are in, the COMMIT never arrives
                        self.silenced.set()
                        continue
                    up_writer.write(data)
                    await up_writer.drain()
            if silent:  # the client gave up; across the partition the server never hears
                await asyncio.Event().wait()

        async def downstream() -> None:
            with contextlib.suppress(OSError):
                while data := await up_reader.read(65536):
                    if not silent:
                        writer.write(data)
                        await writer.drain()
            if silent:
                await asyncio.Event().wait()

        await self._run_pipes(upstream(), downstream())


async def test_a_write_cut_off_before_commit_does_not_wedge_the_retries(pg_url: str) -> None:
    """A batch keeps its ids for its retries; the server session of an attempt cut off by a
    partition keeps those rows locked, and a retry must not wait for it for good (it ends
    that session)."""
    direct, relay, store = await _behind_relay(pg_url, _SilentBeforeCommit)
    await relay.start()
    async with _recording(
        relay, store, buffer_size=1000, batch_size=100, backoff_max=0.05, write_timeout=4
    ) as recorder:
        await _warm_then_arm(recorder, relay, relay.silenced)
        assert await recorder.flush(20), recorder.last_error
    await _stored_once(recorder, direct, 60)


class _DownWhileSplitting:
    """A store behind a relay that goes down just as a batch with a bad record is split into
    single writes (an outage of a second, the usual kind)."""

    def __init__(self, store: Store, relay: Forwarder) -> None:
        self.store = store
        self.relay = relay
        self.cut = False

    async def insert_batch(self, records: Sequence[ComparisonRecord]) -> int:
        try:
            return await self.store.insert_batch(records)
        except StoreError as e:
            if not e.transient and len(records) > 1 and not self.cut:
                self.cut = True
                await self.relay.stop()
            raise

    async def insert_drops(
        self, writer: str, seq: int, drops: Sequence[tuple[str, str, int]]
    ) -> None:
        await self.store.insert_drops(writer, seq, drops)


async def test_a_split_batch_waits_for_a_store_that_is_down(pg_url: str) -> None:
    """Once a bad record split its batch, every single write got one try: an outage then
    lost the batch's good comparisons (counted failed) instead of retrying them."""
    direct, relay, store = await _behind_relay(pg_url, Forwarder)
    await relay.start()
    sink = _DownWhileSplitting(store, relay)
    recorder = Recorder(sink, buffer_size=100, batch_size=100, backoff_max=0.05)
    _feed(recorder, 0, 9)
    recorder.record(ComparisonRecord(route="x" * 300, outcome="match"), started=True)
    await recorder.start()
    try:
        await wait_until(lambda: sink.cut and recorder.retries >= 1, timeout=10)
        await relay.start()
        assert await recorder.flush(10)
    finally:
        await recorder.stop(5)
        await relay.stop()
        await store.close()
    assert _totals(recorder.counters()) == (10, 9, 0, 1)
    assert await direct.count() == 9
    await direct.close()
    _assert_balanced(recorder)


class _HangsAfter(_ListSink):
    """A sink that refuses batches of more than one record for good (bad data), stores
    `n` single records, then never answers again (a silent network)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    async def insert_batch(self, records: Sequence[ComparisonRecord]) -> int:
        if len(records) > 1:
            raise StoreError("value too long", transient=False)
        if len(self.written) >= self.n:
            await asyncio.Event().wait()
        return await super().insert_batch(records)


async def test_stop_while_a_split_batch_hangs_counts_each_comparison_once() -> None:
    """Stopping while the single writes of a split batch hung counted the ones already
    stored as failed too: recorded + failed exceeded started."""
    sink = _HangsAfter(4)
    recorder = Recorder(sink, buffer_size=100, batch_size=100, write_timeout=60)
    _feed(recorder, 0, 10)
    await recorder.start()
    await wait_until(lambda: len(sink.written) == 4, timeout=10)
    await recorder.stop(0.2)
    assert _totals(recorder.counters()) == (10, 4, 0, 6)
    _assert_balanced(recorder)


def _judged(legacy: bytes, candidate: bytes, route: str = "order-show") -> ComparisonRecord:
    """The record the shadow path builds for two JSON answers."""
    headers = [("content-type", "application/json")]
    primary, other = HttpResponse(200, headers, legacy), HttpResponse(200, headers, candidate)
    return build_record(
        Redactor(key=b"k" * 32),
        judge(primary, other, None, CompareRules(), ()),
        route=route,
        method="GET",
        path_template="/api/v1/orders/{order_id}",
        request_path="/api/v1/orders/1",
        legacy=primary,
        candidate=other,
        legacy_ms=1.0,
        candidate_ms=1.0,
        request_id="r",
        mode="shadow",
        config_version="v1",
    )


async def test_a_mismatch_on_a_wide_integer_or_a_deep_value_loses_nothing(store_url: str) -> None:
    """An example value orjson cannot write (an integer past 64 bits, nesting past 255
    levels) raised a TypeError inside the store's write: the recorder failed the whole
    batch, up to 500 comparisons of every route, and the report never saw the mismatch."""
    wide = _judged(
        b'{"id": 123456789012345678901234567890}', b'{"id": 123456789012345678901234567891}'
    )
    deep = _judged(b'{"a": 1}', b'{"a": ' + b"[" * 300 + b"1" + b"]" * 300 + b"}")
    store = await Store.open(store_url)
    recorder = Recorder(store, buffer_size=100, batch_size=100)
    _feed(recorder, 0, 9)
    recorder.record(wide, started=True)
    recorder.record(deep, started=True)
    raw_int = ComparisonRecord(  # built by hand: a raw wide integer in the example itself
        route="order-list",
        outcome="mismatch",
        diff_paths=("$.id",),
        diff_examples=(DiffExample("$.id", "$.id", 10**30, 1),),
    )
    recorder.record(raw_int, started=True)
    await _start_flush_stop(recorder)
    try:
        report = await build_report(store, routes=["order-show"], now=datetime.now(UTC))
    finally:
        await store.close()
    assert _totals(recorder.counters()) == (12, 12, 0, 0)
    show = report.routes[0]
    assert show.mismatches == 1 + 2  # _feed's own mismatch of order-show, and these two
    example = {p.pattern: p.example for p in show.top_paths}["$.id"]
    assert example is not None
    assert (example.primary, example.candidate) == (  # read back exactly, as integers
        123456789012345678901234567890,
        123456789012345678901234567891,
    )
    _assert_balanced(recorder)


async def test_copies_the_store_refused_are_in_the_report(store_url: str) -> None:
    """Copies the store refused for good (counted `failed`) were in no report figure: the
    report showed 7 compared, 0 dropped, total 7 out of 10 started, as if nothing was lost.
    They are stored as drop counts (reason `store_failed`) and every format shows them."""
    from sqlalchemy import text

    from shadow.report_format import render

    store = await Store.open(store_url)
    refuse = (
        "ALTER TABLE comparisons ADD CONSTRAINT refuse_bad CHECK (request_id NOT LIKE 'bad%')"
        if store.dialect == "postgresql"
        else "CREATE TRIGGER refuse_bad BEFORE INSERT ON comparisons"
        " WHEN NEW.request_id LIKE 'bad%' BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    async with store.engine.begin() as conn:
        await conn.execute(text(refuse))
    recorder = Recorder(store, buffer_size=100, batch_size=100, drops_every=0.05)
    for i in range(10):
        rec = ComparisonRecord(
            route="order-show",
            outcome="match",
            time=datetime.now(UTC),
            request_id=f"bad{i}" if i % 3 == 0 else f"ok{i}",
        )
        recorder.record(rec, started=True)
    await _start_flush_stop(recorder)
    try:
        c = recorder.counters()["order-show"]
        assert (c.started, c.recorded, c.failed, c.dropped_total) == (10, 6, 4, 0)
        assert await _stored_drops(store) == {("order-show", "store_failed"): 4}
        report = await build_report(store)
    finally:
        await store.close()
    (show,) = report.routes
    assert (show.samples, show.dropped, show.total) == (6, 4, 10)
    assert report.to_json()["routes"][0]["dropped"] == 4
    assert "dropped=4" in render(report, "junit")
    assert "| 6 | 0 |" in render(report, "markdown") and "| 4 |" in render(report, "markdown")
    assert "<td>4</td>" in render(report, "html")
    _assert_balanced(recorder)


class _LateCommit(_CommitRelay):
    """A relay to PostgreSQL that, once armed, holds the next COMMIT (and whatever its
    client sends after it) until `release` is set, then delivers it: a network that delays a
    packet for longer than the writer waits. The server session is kept open meanwhile,
    even when the client gives up and closes its side."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        super().__init__(port, target)
        self.held = asyncio.Event()
        self.release = asyncio.Event()
        self.settled = asyncio.Event()  # the late COMMIT was answered, or refused

    async def _relay(self, conn: _Streams) -> None:
        reader, writer, up_reader, up_writer = conn
        held = bytearray()
        holding = False

        async def upstream() -> None:
            nonlocal holding
            with contextlib.suppress(OSError):
                while data := await reader.read(65536):
                    if not holding and self._takes_commit(data):
                        holding = True
                        self.held.set()
                    if holding:
                        held.extend(data)
                        continue
                    up_writer.write(data)
                    await up_writer.drain()
            if holding:  # the client gave up: the COMMIT still arrives, late
                await self.release.wait()
                with contextlib.suppress(OSError):
                    up_writer.write(bytes(held))
                    await up_writer.drain()
                await self.settled.wait()

        async def downstream() -> None:
            with contextlib.suppress(OSError):
                while data := await up_reader.read(65536):
                    if holding and self.release.is_set():
                        self.settled.set()  # the late COMMIT's answer
                    with contextlib.suppress(OSError):  # the client may be gone
                        writer.write(data)
                        await writer.drain()
            if holding:  # the end of a dead session
                self.settled.set()
                await asyncio.Event().wait()  # upstream() ends this connection

        up = await self._run_pipes(upstream(), downstream())
        if holding and not up.done():
            await asyncio.wait([up])


# PostgreSQL 13 and older have no pg_terminate_backend(pid, timeout): emulated in a test's
# own schema, searched before pg_catalog, by one that fails as a server without it does.
_NO_TERMINATE_TIMEOUT = """
CREATE FUNCTION pg_terminate_backend(integer, bigint) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION USING ERRCODE = 'undefined_function',
    MESSAGE = 'function pg_terminate_backend(integer, integer) does not exist';
END $$
"""


@pytest.mark.parametrize("server", ["current", "pg13"])
async def test_a_batch_whose_first_commit_lands_late_is_stored_once(
    pg_url: str, server: str
) -> None:
    """The first attempt's COMMIT reaches PostgreSQL only after the writer gave up on it and
    a retry stored the batch: a retry that had waited 2 s for the earlier attempt wrote the
    batch under new ids, and the late COMMIT stored it a second time. On PostgreSQL 13 and
    older, the retry's pg_terminate_backend(pid, timeout) did not exist: every retry failed
    for good and the batch was split under new ids, with the same double store."""
    if server == "pg13":
        from sqlalchemy import text

        pg_url += "%2Cpg_catalog"  # the schema first, then the built-in functions
    direct, relay, store = await _behind_relay(pg_url, _LateCommit)
    if server == "pg13":
        async with direct.engine.begin() as conn:
            await conn.execute(text(_NO_TERMINATE_TIMEOUT))
    await relay.start()
    async with _recording(
        relay, store, buffer_size=1000, batch_size=100, backoff_max=0.05, write_timeout=3
    ) as recorder:
        try:
            await _warm_then_arm(recorder, relay, relay.held)
            assert await recorder.flush(30), recorder.last_error
            relay.release.set()
            await asyncio.wait_for(relay.settled.wait(), 10)
        finally:
            relay.release.set()
    assert recorder.retries >= 1
    await _stored_once(recorder, direct, 60)
    _assert_balanced(recorder)


def _write_cancelled() -> bool:
    """Whether the writer's timeout has cancelled a write that has not ended yet."""
    return any(
        t.cancelling() and getattr(t.get_coro(), "__qualname__", "") == "Store.insert_batch"
        for t in asyncio.all_tasks()
    )


async def test_a_sqlite_uri_batch_whose_commit_ends_after_the_timeout_is_stored_once(
    tmp_path: Path,
) -> None:
    """A store opened by a `file:` URI writes through aiosqlite's thread: a COMMIT still
    running when the writer's timeout cancelled it went through afterwards, and the retry
    stored the batch a second time."""
    url = f"sqlite+aiosqlite:///file:{tmp_path / 'store.db'}?mode=rwc&uri=true"
    store = Store(url)
    armed, held, release = threading.Event(), threading.Event(), threading.Event()

    def trace(sql: str) -> None:  # on aiosqlite's thread, as each statement starts
        if sql == "COMMIT" and armed.is_set():
            armed.clear()
            held.set()
            release.wait(30)  # a slow disk: the COMMIT ends after the timeout

    def traced(dbapi_conn: Any, _record: Any) -> None:
        await_(dbapi_conn.driver_connection.set_trace_callback(trace))

    event.listen(store.engine.sync_engine, "connect", traced)
    await store.init()
    recorder = Recorder(
        store, buffer_size=1000, batch_size=100, backoff_max=0.05, write_timeout=0.2
    )
    await recorder.start()
    try:
        _feed(recorder, 0, 10)
        assert await recorder.flush(10)
        armed.set()
        _feed(recorder, 10, 50)
        await wait_until(held.is_set, timeout=10)
        await wait_until(lambda: recorder.retries >= 1 or _write_cancelled(), timeout=10)
        release.set()
        assert await recorder.flush(10), recorder.last_error
        stored = await store.count()
    finally:
        release.set()
        await recorder.stop(5)
        await store.close()
    assert _totals(recorder.counters()) == (60, 60, 0, 0)
    assert stored == 60  # nothing written twice
    _assert_balanced(recorder)


async def test_a_batch_in_flight_at_stop_is_not_also_stored_as_failed(pg_url: str) -> None:
    """A stop whose grace ran out while a batch's COMMIT was on its way counted that batch
    `failed` and stored it as `store_failed` drop counts; the COMMIT then landed, and the
    report counted each of those copies twice (a row and a drop). A copy whose write may
    yet land is only in the metrics' `failed`; copies never sent are stored drops still."""
    direct, relay, store = await _behind_relay(pg_url, _LateCommit)
    await relay.start()
    async with _recording(
        relay, store, buffer_size=1000, batch_size=20, linger=0, drops_every=3600
    ) as recorder:
        try:
            # a batch of 20 (its COMMIT held), 10 left in the buffer
            await _warm_then_arm(recorder, relay, relay.held, more=30)
            await recorder.stop(0.5)  # SIGTERM with little grace left
            relay.release.set()
            await asyncio.wait_for(relay.settled.wait(), 10)
        finally:
            relay.release.set()
    assert _totals(recorder.counters()) == (40, 10, 0, 30)  # the metrics: 30 failed
    stored, drops, (samples, _, total) = await _figures(direct)
    assert stored == 30  # the late COMMIT landed
    assert sum(drops.values()) == 10 and {r for _, r in drops} == {"store_failed"}
    assert samples == 30
    assert total == 40  # every copy started, none twice
    _assert_balanced(recorder)


class _CutAtCopy(Forwarder):
    """A relay to PostgreSQL that, once `armed`, cuts every connection as it starts to copy
    comparisons, before any COMMIT: each attempt at a batch fails, and stores nothing."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        super().__init__(port, target)
        self.armed = False

    async def _relay(self, conn: _Streams) -> None:
        reader, writer, up_reader, up_writer = conn

        async def upstream() -> None:
            with contextlib.suppress(OSError):
                while data := await reader.read(65536):
                    if self.armed and b'COPY "comparisons"' in data:
                        writer.transport.abort()
                        up_writer.transport.abort()
                        return
                    up_writer.write(data)
                    await up_writer.drain()

        await self._run_pipes(upstream(), self._pipe(up_reader, writer))


async def _figures(direct: Store) -> tuple[int, dict[tuple[str, str], int], tuple[int, int, int]]:
    """Comparisons stored, drop counts stored, and the report's (samples, dropped, total)
    summed over routes, read through `direct`, which is closed then."""
    try:
        stored = await direct.count()
        drops = await _stored_drops(direct)
        report = await build_report(direct)
    finally:
        await direct.close()
    routes = report.routes
    return (
        stored,
        drops,
        (
            sum(r.samples for r in routes),
            sum(r.dropped for r in routes),
            sum(r.total for r in routes),
        ),
    )


async def test_a_batch_that_failed_for_sure_before_stop_is_in_the_report(pg_url: str) -> None:
    """A stop that landed while the writer waited to retry a batch whose write had failed
    before its COMMIT (so not stored) counted the batch `in_doubt`, as if a COMMIT were on
    its way, and stored no drop counts for it: the report showed 10 of 60 started copies."""
    direct, relay, store = await _behind_relay(pg_url, _CutAtCopy)
    await relay.start()
    async with _recording(
        relay, store, buffer_size=1000, batch_size=100, backoff_initial=60, drops_every=3600
    ) as recorder:
        _feed(recorder, 0, 10)
        assert await recorder.flush(10)  # the connection is up and warm
        relay.armed = True
        _feed(recorder, 10, 50)
        await wait_until(lambda: recorder.retries >= 1, timeout=10)  # napping after a failure
        await recorder.stop(2)
    assert _totals(recorder.counters()) == (60, 10, 0, 50)  # the metrics: 50 failed
    stored, drops, (samples, dropped, total) = await _figures(direct)
    assert stored == 10
    assert sum(drops.values()) == 50 and {r for _, r in drops} == {"store_failed"}
    assert (samples, dropped, total) == (10, 50, 60)  # every copy started, once
    _assert_balanced(recorder)


async def test_a_stop_settles_a_batch_whose_commit_answer_was_lost(pg_url: str) -> None:
    """A stop that landed while the writer waited to retry a batch whose COMMIT answer was
    lost counted it failed (in doubt) though it was stored: the stop retries it at once,
    under the same ids, and the store's answer settles it (stored once, recorded)."""
    direct, relay, store = await _behind_relay(pg_url, _CommitAnswerLost)
    await relay.start()
    async with _recording(
        relay, store, buffer_size=1000, batch_size=100, backoff_initial=60, drops_every=3600
    ) as recorder:
        await _warm_then_arm(recorder, relay, relay.cut)
        await wait_until(lambda: recorder.retries >= 1, timeout=10)  # napping after the cut
        await recorder.stop(5)
    assert _totals(recorder.counters()) == (60, 60, 0, 0)
    stored, drops, figures = await _figures(direct)
    assert (stored, drops, figures) == (60, {}, (60, 0, 60))
    _assert_balanced(recorder)


class _FailingSink(_ListSink):
    """A sink whose writes all fail with `error`, and which keeps the drop counts."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error
        self.drops: dict[str, int] = {}

    async def insert_batch(self, records: Sequence[ComparisonRecord]) -> int:
        raise self.error

    async def insert_drops(
        self, writer: str, seq: int, drops: Sequence[tuple[str, str, int]]
    ) -> None:
        for _, reason, n in drops:
            self.drops[reason] = self.drops.get(reason, 0) + n


@pytest.mark.parametrize(
    ("error", "stored_failed"),
    [
        (StoreError("refused before commit"), 30),
        (OSError("connection refused"), 30),
        (StoreError("answer lost after COMMIT", maybe_stored=True), 0),
        (TimeoutError(), 0),
    ],
)
async def test_a_stop_during_the_retry_wait_stores_failures_that_are_certain(
    error: Exception, stored_failed: int
) -> None:
    """Copies whose last write failed for sure are stored drops at stop; those whose write
    may have landed (a COMMIT sent, a write timed out) are not."""
    sink = _FailingSink(error)
    recorder = Recorder(sink, buffer_size=100, batch_size=100, backoff_initial=60)
    await recorder.start()
    _feed(recorder, 0, 30)
    await wait_until(lambda: recorder.retries >= 1, timeout=10)  # napping after a failure
    await recorder.stop(0.5)
    assert _totals(recorder.counters()) == (30, 0, 0, 30)
    assert sink.drops.get("store_failed", 0) == stored_failed
    _assert_balanced(recorder)


class _FailsOnceWhenLetGo(_ListSink):
    """A sink whose first write waits for `go`, then fails (before any commit); later writes
    work."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.go = asyncio.Event()

    async def insert_batch(self, records: Sequence[ComparisonRecord]) -> int:
        self.calls += 1
        if self.calls == 1:
            await self.go.wait()
            raise StoreError("refused before commit")
        return await super().insert_batch(records)


async def test_a_stop_during_a_write_that_then_fails_retries_at_once() -> None:
    """A stop that came while the write was under way: its failure is retried at once, not
    after the retry wait (60 s here, past the stop's grace), so the batch is stored."""
    sink = _FailsOnceWhenLetGo()
    recorder = Recorder(sink, buffer_size=100, batch_size=100, backoff_initial=60)
    await recorder.start()
    _feed(recorder, 0, 30)
    await wait_until(lambda: sink.calls == 1)  # the write under way
    stopping = asyncio.create_task(recorder.stop(5))
    await wait_until(lambda: recorder._stopping.is_set())
    sink.go.set()  # ... and it fails
    await asyncio.wait_for(stopping, 10)
    assert _totals(recorder.counters()) == (30, 30, 0, 0)
    assert len(sink.written) == 30
    _assert_balanced(recorder)
