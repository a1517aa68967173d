"""Store outage: PostgreSQL unreachable for a while (a relay in front of it is cut), then back.

The shared test PostgreSQL is not ours to stop, so the proxy reaches it through a loopback
relay this test controls: `down()` refuses new connections and aborts live ones, as a
stopped server would; `up()` listens again on the same port. During the outage the proxy
keeps serving, the recorder buffers; afterwards it catches up, nothing is lost, and
started = recorded + dropped + failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

import aiohttp
import psycopg

from tests.integration.proxy.shadow_support import shadow_stack
from tests.integration.proxy.test_shadow import SHADOW_ROUTE, _counters, _ended
from tests.support import free_port, wait_until

OUTAGE_S = float(os.environ.get("STRANGLER_TEST_STORE_OUTAGE_S", "3"))
# Requests sent during the outage stop at this count even if OUTAGE_S has not passed: the
# recorder's buffer (10,000 by default) must hold every copy, and a fast machine serves
# ~3,300 shadowed requests a second here.
OUTAGE_MAX = 5000


class _Relay:
    """A TCP relay to PostgreSQL that can be taken down and brought back."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._live: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def down(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for w in list(self._live):
            w.transport.abort()
        self._live.clear()

    async def close(self) -> None:
        await self.down()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._live |= {writer, up_writer}
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        self._tasks.update(pumps)
        await asyncio.gather(*pumps, return_exceptions=True)
        self._tasks.difference_update(pumps)
        for w in (writer, up_writer):
            self._live.discard(w)
            w.transport.abort()

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        dst.transport.abort()


async def _burst(session: aiohttp.ClientSession, port: int, first: int, count: int) -> list[int]:
    sem = asyncio.Semaphore(8)

    async def one(i: int) -> int:
        async with sem, session.get(f"http://127.0.0.1:{port}/api/o{i}") as r:
            await r.read()
            return r.status

    return await asyncio.gather(*(one(i) for i in range(first, first + count)))


async def test_store_outage_keeps_serving_buffers_and_recovers(pg_url: str) -> None:
    relay = _Relay(("127.0.0.1", 5432))
    await relay.up()
    store_url = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{relay.port}", 1)
    assert store_url != pg_url
    per_phase = 300
    try:
        async with (
            shadow_stack(SHADOW_ROUTE, store_url) as (proxy, legacy, candidate),
            aiohttp.ClientSession() as s,
        ):
            legacy.release.set()
            candidate.release.set()
            port = proxy.address[1]
            assert proxy.recorder is not None
            assert await _burst(s, port, 0, per_phase) == [200] * per_phase
            # Every copy of the first phase ended (stored, or shed on a busy machine's lag).
            await wait_until(lambda: _ended(proxy, per_phase), timeout=15)
            assert _counters(proxy).recorded > 0

            await relay.down()
            outage_start = time.monotonic()
            served = 0
            while time.monotonic() - outage_start < OUTAGE_S and served < OUTAGE_MAX:
                statuses = await _burst(s, port, per_phase + served, 50)
                assert statuses == [200] * 50  # the proxy keeps serving
                served += 50
            recorded_during = _counters(proxy).recorded
            await relay.up()

            n = 2 * per_phase + served
            assert await _burst(s, port, per_phase + served, per_phase) == [200] * per_phase
            await wait_until(lambda: _ended(proxy, n), timeout=30)
            assert await proxy.recorder.flush(30)
            c = _counters(proxy)
            retries = proxy.recorder.retries
    finally:
        await relay.close()
    dsn = pg_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM comparisons").fetchone()
    assert row is not None
    print(
        f"store outage {OUTAGE_S:g}s: {n} requests ({served} during the outage), started="
        f"{c.started} recorded={c.recorded} (at outage end {recorded_during}) dropped="
        f"{c.dropped} failed={c.failed} rows={row[0]} write_retries={retries}"
    )
    assert c.started == n
    assert c.balanced
    # the buffer held the whole outage: nothing failed or overflowed (copies shed for
    # event-loop lag on a busy machine are counted drops, unrelated to the store)
    assert c.failed == 0
    assert set(c.dropped) <= {"shed"}
    assert c.recorded >= n // 10  # copies shed for event-loop lag on a busy machine are counted
    assert recorded_during < per_phase + served  # the outage was real: records waited
    assert row[0] == c.recorded
    assert retries >= 1
