"""`strangler serve --workers 2` as a real process tree: shared metrics, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.integration.proxy.conftest import proxy_config
from tests.support import free_port, start_serve, stop_process, wait_admin_ready, wait_for
from tests.upstreams import EchoUpstream, Received


@pytest.fixture
async def served(
    tmp_path: Path, upstream: EchoUpstream
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int, int]]:
    port, admin = free_port(), free_port()
    text = proxy_config(upstream.url).replace("listen: 127.0.0.1:0", f"listen: 127.0.0.1:{port}", 1)
    text = text.replace("  listen: 127.0.0.1:0", f"  listen: 127.0.0.1:{admin}", 1)
    text = text.replace("timeout: 1s", "timeout: 10s")
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(text)
    proc = await start_serve(cfg, "--workers", "2", env={"STRANGLER_GRACE_S": "10"})
    await wait_admin_ready(admin)
    yield proc, port, admin
    await stop_process(proc)


def _prefix(rec: Received) -> bytes:
    return rec.header(b"x-request-id")[0][:12]


async def test_metrics_count_requests_of_both_workers(
    served: tuple[asyncio.subprocess.Process, int, int], upstream: EchoUpstream
) -> None:
    _, port, admin = served
    n = 200
    connector = aiohttp.TCPConnector(force_close=True)  # new connections spread over workers
    async with aiohttp.ClientSession(connector=connector) as s:

        async def one(i: int) -> int:
            async with s.get(f"http://127.0.0.1:{port}/echo?i={i}") as r:
                await r.read()
                return r.status

        statuses = await asyncio.gather(*(one(i) for i in range(n)))
        assert statuses == [200] * n
        total = 0.0

        async def counted() -> bool:
            nonlocal total
            async with s.get(f"http://127.0.0.1:{admin}/-/metrics") as r:
                text = await r.text()
            total = sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("strangler_requests_total{")
            )
            return total >= n

        # workers publish their counts every 250 ms
        await wait_for(counted, timeout=10)
    prefixes = {_prefix(rec) for rec in upstream.received}
    print(f"--workers 2: {int(total)} requests counted, {len(prefixes)} workers served")
    assert total == n
    assert len(prefixes) == 2


async def test_sigterm_completes_inflight_requests(
    served: tuple[asyncio.subprocess.Process, int, int], upstream: EchoUpstream
) -> None:
    proc, port, _ = served
    gate = asyncio.Event()
    held: list[asyncio.Transport] = []

    def hold(t: asyncio.Transport, rec: Received) -> None:
        held.append(t)

        async def later() -> None:
            await gate.wait()
            t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndone")

        asyncio.get_running_loop().create_task(later())

    upstream.extra[b"/held"] = hold
    n = 20
    connector = aiohttp.TCPConnector(force_close=True, limit=n)
    async with aiohttp.ClientSession(connector=connector) as s:

        async def one() -> tuple[int, bytes]:
            async with s.get(f"http://127.0.0.1:{port}/held") as r:
                return r.status, await r.read()

        tasks = [asyncio.create_task(one()) for _ in range(n)]
        deadline = time.monotonic() + 10
        while len(held) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert len(held) == n
        proc.send_signal(signal.SIGTERM)

        # new connections are refused once the workers stopped accepting
        async def refused() -> bool:
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return True
            w.close()
            return False

        await wait_for(refused, timeout=10)
        gate.set()
        results = await asyncio.gather(*tasks)
    assert results == [(200, b"done")] * n
    assert await asyncio.wait_for(proc.wait(), 20) == 0


async def test_watch_reloads_a_changed_file_and_keeps_the_last_good_one(
    tmp_path: Path, upstream: EchoUpstream
) -> None:
    port, admin = free_port(), free_port()
    text = proxy_config(upstream.url).replace("listen: 127.0.0.1:0", f"listen: 127.0.0.1:{port}", 1)
    text = text.replace("  listen: 127.0.0.1:0", f"  listen: 127.0.0.1:{admin}", 1)
    route = "routes:\n  - {name: NAME, match: {path: /echo/*}, mode: legacy}\n"
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(text + route.replace("NAME", "first"))
    proc = await start_serve(cfg, "--watch")
    try:
        async with aiohttp.ClientSession() as s:

            async def route_is(name: str) -> bool:
                try:
                    async with s.get(f"http://127.0.0.1:{admin}/-/config") as r:
                        return bool((await r.json())["routes"][0]["name"] == name)
                except aiohttp.ClientError:
                    return False

            await wait_for(lambda: route_is("first"), timeout=20)
            cfg.write_text(text + route.replace("NAME", "second"))
            await wait_for(lambda: route_is("second"), timeout=10)
            cfg.write_text(text + route.replace("NAME", "third") + "  - {broken\n")

            async def rejected() -> bool:
                async with s.get(f"http://127.0.0.1:{admin}/-/config") as r:
                    return bool((await r.json())["last_reload_error"])

            await wait_for(rejected, timeout=10)
            assert await route_is("second")
    finally:
        assert await stop_process(proc) == 0


async def test_serve_runs_in_process_handlers_on_uvloop(
    tmp_path: Path, upstream: EchoUpstream
) -> None:
    from extracted.schema import create_schema

    db = f"sqlite+aiosqlite:///{tmp_path / 'orders.db'}"
    await create_schema(db)
    port, admin = free_port(), free_port()
    text = proxy_config(
        upstream.url,
        backend_extra=f"  orders:\n    handlers: extracted.app\n    db: {db}\n",
        extra="routes:\n  - {name: show, match: {path: '/api/v1/orders/{id}'}, "
        "mode: extracted, candidate: orders}\n",
    )
    text = text.replace("listen: 127.0.0.1:0", f"listen: 127.0.0.1:{port}", 1)
    text = text.replace("  listen: 127.0.0.1:0", f"  listen: 127.0.0.1:{admin}", 1)
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(text)
    proc = await start_serve(cfg)
    try:
        async with aiohttp.ClientSession() as s:

            async def answered() -> bool:
                try:
                    async with s.get(f"http://127.0.0.1:{port}/api/v1/orders/424242") as r:
                        body = await r.json()
                        return r.status == 404 and body["error"]["code"] == "not_found"
                except aiohttp.ClientError:
                    return False

            await wait_for(answered, timeout=20)
    finally:
        assert await stop_process(proc) == 0
