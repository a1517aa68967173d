"""Candidate faults at the byte level: the user's response is legacy's, unchanged and on time.

A raw loopback server plays a broken candidate (endless body, slow-loris head or body,
garbage, close at accept); legacy is the recording echo upstream. Each shadowed request
must get legacy's 200 well before the shadow timeout, and its shadow copy must end as a
counted candidate error or timeout (started = recorded + dropped + failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast

import pytest

from proxy.accesslog import AccessLog
from proxy.app import Proxy, create_proxy
from proxy.settings import loads
from shadow.recorder import RouteCounters
from tests.support import stop_after_test, wait_until
from tests.upstreams import EchoUpstream, raw_exchange

SHADOW_TIMEOUT = 0.5


class _BrokenCandidate(asyncio.Protocol):
    """Answers every connection with one fault, chosen by the server."""

    def __init__(
        self, fault: str, tasks: set[asyncio.Task[None]], open_: set[asyncio.Transport]
    ) -> None:
        self.fault = fault
        self.tasks = tasks
        self.open = open_
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.open.add(self.transport)
        if self.fault == "close-at-accept":
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.open.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        t = self.transport
        if t is None or b"\r\n\r\n" not in data or self.fault == "close-at-accept":
            return
        if self.fault == "garbage":
            t.write(b"\x16\x03\x01\x02\x00not http at all\r\n\r\n")
            return
        if self.fault == "reset-after-head":
            t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{")
            t.abort()
            return
        self.tasks.add(asyncio.get_running_loop().create_task(self._stream(t)))

    async def _stream(self, t: asyncio.Transport) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            if self.fault == "endless-body":
                t.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
                t.write(b"transfer-encoding: chunked\r\n\r\n")
                chunk = b"%x\r\n%s\r\n" % (65536, b"[" * 65536)
                while not t.is_closing():
                    t.write(chunk)
                    await asyncio.sleep(0.001)
            elif self.fault == "slow-loris-head":
                for byte in b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}":
                    if t.is_closing():
                        return
                    t.write(bytes([byte]))
                    await asyncio.sleep(0.05)
            elif self.fault == "slow-loris-body":
                t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
                while not t.is_closing():
                    t.write(b" ")
                    await asyncio.sleep(0.05)


@asynccontextmanager
async def _stack(tmp_path: Path, fault: str) -> AsyncIterator[tuple[Proxy, EchoUpstream]]:
    legacy = await EchoUpstream().start()
    tasks: set[asyncio.Task[None]] = set()
    open_: set[asyncio.Transport] = set()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _BrokenCandidate(fault, tasks, open_), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = f"""
listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
backends:
  legacy:
    url: {legacy.url}
    timeout: 2s
  orders:
    url: http://127.0.0.1:{port}
    timeout: 2s
default_backend: legacy
store:
  url: sqlite+aiosqlite:///{tmp_path / "faults.db"}
access_log: false
routes:
  - name: orders
    match: {{path: /api/*}}
    mode: shadow
    candidate: orders
    shadow: {{percent: 100, timeout: {int(SHADOW_TIMEOUT * 1000)}ms}}
"""
    proxy = create_proxy(loads(config, "faults.yaml"), access_log=AccessLog(enabled=False))
    await proxy.start()
    try:
        yield proxy, legacy
    finally:
        # Cut the candidate's side first: a connection the proxy failed to close (see the
        # garbage case) then closes on its own instead of leaking into later tests.
        for t in list(open_):
            t.abort()
        pool = proxy._backends["orders"].pool
        await wait_until(lambda: pool.active == 0 and not open_, timeout=5)
        await stop_after_test(proxy, 1.0)
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
        await legacy.close()


def _counters(proxy: Proxy) -> RouteCounters:
    assert proxy.recorder is not None
    return proxy.recorder.counters().get("orders") or RouteCounters()


@pytest.mark.parametrize(
    "fault",
    [
        "endless-body",
        "slow-loris-head",
        "slow-loris-body",
        "garbage",
        "reset-after-head",
        "close-at-accept",
    ],
)
async def test_candidate_fault_leaves_the_user_response_alone(tmp_path: Path, fault: str) -> None:
    async with _stack(tmp_path, fault) as (proxy, legacy):
        n = 5
        start = time.monotonic()
        for i in range(n):
            resp = await raw_exchange(
                proxy.address[1], b"GET /api/orders/%d HTTP/1.1\r\nHost: a\r\n\r\n" % i
            )
            assert resp.status == 200
            assert resp.json()["target"] == f"/api/orders/{i}"  # type: ignore[index]
        # the users never waited for the candidate
        assert time.monotonic() - start < SHADOW_TIMEOUT
        assert len(legacy.received) == n

        def settled() -> bool:
            c = _counters(proxy)
            return (
                c.started == n and c.balanced and proxy.hub is not None and not proxy.hub.in_flight
            )

        await wait_until(settled, timeout=5 + SHADOW_TIMEOUT * n)
        # every candidate connection was closed: no socket or pool slot leaks
        await wait_until(lambda: proxy._backends["orders"].pool.active == 0, timeout=1.5)
        c = _counters(proxy)
        bad = c.outcomes.get("candidate_error", 0) + c.outcomes.get("candidate_timeout", 0)
        assert bad + c.dropped_total + c.failed == n, c
        assert c.outcomes.get("match", 0) == 0
