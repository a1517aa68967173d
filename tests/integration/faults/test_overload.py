"""Overload: a candidate that cannot keep up is shed, primary traffic is served, memory holds.

The candidate answers nothing until the load is over. With `shadow.max_concurrency: 4`
and 32 concurrent clients, every user request must still get legacy's 200 promptly, the
shadow copies beyond 4 must be dropped and counted (never queued), and the accounting
invariant (started = recorded + dropped + failed) must hold once the candidate answers.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import cast

from proxy.accesslog import AccessLog
from proxy.app import create_proxy
from proxy.settings import loads
from shadow.recorder import RouteCounters
from tests.support import stop_after_test, wait_until
from tests.upstreams import EchoUpstream, raw_exchange


class _Stalled(asyncio.Protocol):
    """Answers each request with `{}` only once `release` is set."""

    def __init__(self, release: asyncio.Event, tasks: set[asyncio.Task[None]]) -> None:
        self.release = release
        self.tasks = tasks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.tasks.add(asyncio.get_running_loop().create_task(self._answer()))

    async def _answer(self) -> None:
        await self.release.wait()
        if not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def test_shadow_work_is_shed_first_and_primary_traffic_served(tmp_path: Path) -> None:
    legacy = await EchoUpstream().start()
    release, tasks = asyncio.Event(), set[asyncio.Task[None]]()
    server = await asyncio.get_running_loop().create_server(
        lambda: _Stalled(release, tasks), "127.0.0.1", 0
    )
    config = f"""
listen: 127.0.0.1:0
admin: {{listen: 127.0.0.1:0}}
backends:
  legacy: {{url: "{legacy.url}", timeout: 5s}}
  orders: {{url: "http://127.0.0.1:{server.sockets[0].getsockname()[1]}", timeout: 5s}}
default_backend: legacy
store: {{url: "sqlite+aiosqlite:///{tmp_path / "overload.db"}"}}
access_log: false
routes:
  - name: orders
    match: {{path: /api/*}}
    mode: shadow
    candidate: orders
    shadow: {{percent: 100, timeout: 4s, max_concurrency: 4}}
"""
    proxy = create_proxy(loads(config, "overload.yaml"), access_log=AccessLog(enabled=False))
    await proxy.start()
    try:
        assert proxy.hub is not None and proxy.recorder is not None
        state = proxy.hub.route_state("orders")
        rss0, peak_shadow, latencies = _rss_kb(), 0, list[float]()
        n, clients = 600, 32
        todo = iter(range(n))

        async def client() -> None:
            nonlocal peak_shadow
            for i in todo:
                start = time.monotonic()
                resp = await raw_exchange(
                    proxy.address[1], b"GET /api/o/%d HTTP/1.1\r\nHost: a\r\n\r\n" % i
                )
                latencies.append(time.monotonic() - start)
                assert resp.status == 200
                peak_shadow = max(peak_shadow, state.in_flight)

        await asyncio.gather(*(client() for _ in range(clients)))
        rss1 = _rss_kb()
        release.set()

        def settled() -> bool:
            c = (proxy.recorder.counters() if proxy.recorder else {}).get("orders")
            return c is not None and c.started == n and c.balanced and state.in_flight == 0

        await wait_until(settled, timeout=10)
        c = proxy.recorder.counters().get("orders") or RouteCounters()
        latencies.sort()
        print(
            f"overload: {n} requests, p50 {latencies[n // 2] * 1000:.1f} ms,"
            f" max {latencies[-1] * 1000:.1f} ms, shadow in flight peak {peak_shadow},"
            f" dropped {c.dropped}, recorded {c.recorded}, RSS +{(rss1 - rss0) / 1024:.1f} MB"
        )
        assert len(latencies) == n
        assert latencies[-1] < 1.0  # nobody waited for the stalled candidate
        assert peak_shadow <= 4
        # past the stalled four, copies are dropped at the concurrency bound, or shed first
        # when the loop lags (a busy machine): dropped and counted either way
        assert c.dropped.get("concurrency", 0) + c.dropped.get("shed", 0) >= n - 4 * 2
        assert c.recorded >= 1
        assert rss1 - rss0 < 50 * 1024
    finally:
        release.set()
        await stop_after_test(proxy, 1.0)
        server.close()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
        await legacy.close()
