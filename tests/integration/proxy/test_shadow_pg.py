"""10,000 shadowed requests with the store on PostgreSQL, whose connections get killed mid-run."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import psycopg

from tests.integration.proxy.shadow_support import shadow_stack
from tests.integration.proxy.test_shadow import SHADOW_ROUTE, _counters, _ended
from tests.support import wait_until


async def test_store_connections_killed_mid_run_lose_nothing(pg_url: str) -> None:
    app_name = f"strangler-{uuid.uuid4().hex[:8]}"
    store_url = f"{pg_url}&application_name={app_name}"
    n = 10_000
    killed = 0
    async with shadow_stack(SHADOW_ROUTE, store_url) as (proxy, legacy, candidate):
        legacy.release.set()
        candidate.release.set()
        port = proxy.address[1]
        done = 0
        kill_at = n // 3
        sem = asyncio.Semaphore(32)
        connector = aiohttp.TCPConnector(limit=32)
        async with aiohttp.ClientSession(connector=connector) as s:

            async def one(i: int) -> int:
                nonlocal done, killed
                async with sem, s.get(f"http://127.0.0.1:{port}/api/o{i}") as r:
                    await r.read()
                    done += 1
                    if done == kill_at:
                        killed = await _terminate(pg_url, app_name)
                    return r.status

            statuses = await asyncio.gather(*(one(i) for i in range(n)))
        assert statuses == [200] * n
        await wait_until(lambda: _ended(proxy, n), timeout=60)
        assert proxy.recorder is not None
        assert await proxy.recorder.flush(30)
        c = _counters(proxy)
        retries = proxy.recorder.retries
    dsn = pg_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(dsn) as conn:
        stored = conn.execute("SELECT count(*) FROM comparisons").fetchone()
    assert stored is not None
    print(
        f"PG store: {n} requests, started={c.started} recorded={c.recorded} "
        f"dropped={c.dropped} failed={c.failed} stored_rows={stored[0]} "
        f"killed_connections={killed} write_retries={retries}"
    )
    assert killed >= 1
    assert c.started == n
    assert c.started == c.recorded + c.dropped_total + c.failed
    assert c.failed == 0  # the buffer held everything while the store reconnected
    assert stored[0] == c.recorded


async def _terminate(pg_url: str, app_name: str) -> int:
    dsn = pg_url.split("?", 1)[0].replace("postgresql+psycopg://", "postgresql://", 1)

    def kill() -> int:
        with psycopg.connect(dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s",
                (app_name,),
            ).fetchall()
        return len(rows)

    return await asyncio.to_thread(kill)
