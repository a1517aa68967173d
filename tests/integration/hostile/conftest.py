"""Fixtures for hostile-input tests: proxies over recording upstreams, and a bait server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import BinaryIO

import pytest

from proxy.accesslog import AccessLog
from proxy.app import Proxy, create_proxy
from proxy.settings import loads
from tests.integration.proxy.conftest import proxy_config
from tests.support import stop_after_test
from tests.upstreams import EchoUpstream, raw_exchange


@dataclass
class Hostile:
    """A started proxy with its `legacy` upstream (and `orders`, when configured)."""

    proxy: Proxy
    legacy: EchoUpstream
    orders: EchoUpstream

    @property
    def port(self) -> int:
        return self.proxy.address[1]

    def total(self) -> int:
        """Requests both upstreams have seen so far."""
        return len(self.legacy.received) + len(self.orders.received)

    async def warm(self) -> None:
        """Leave an idle pooled connection to legacy, so a forwarded head leaves at once."""
        resp = await raw_exchange(self.port, b"GET /warm HTTP/1.1\r\nHost: a\r\n\r\n")
        assert resp.status == 200

    async def barrier(self) -> None:
        """Send a valid request and wait until legacy saw it: earlier bytes have landed."""
        before = len(self.legacy.received)
        resp = await raw_exchange(self.port, b"GET /barrier HTTP/1.1\r\nHost: a\r\n\r\n")
        assert resp.status == 200
        assert self.legacy.received[before:][-1].target == b"/barrier"


def hostile_config(legacy_url: str, orders_url: str, extra: str = "") -> str:
    """legacy as default; `/api/v1/orders/*` and `/api/v1/items/{id}` to `orders`."""
    backend_extra = f"""  orders:
    url: {orders_url}
    timeout: 1s
    connect_timeout: 300ms"""
    routes = """
routes:
  - name: orders
    match: {path: /api/v1/orders/*}
    backend: orders
    mode: legacy
  - name: item
    match: {path: "/api/v1/items/{item_id}"}
    backend: orders
    mode: legacy
"""
    return proxy_config(legacy_url, extra + routes, backend_extra=backend_extra)


@asynccontextmanager
async def hostile_stack(
    extra: str = "", log: BinaryIO | None = None, *, access: bool = False
) -> AsyncIterator[Hostile]:
    """A proxy with routes to two recording upstreams and `extra` top-level YAML; `log`
    gets its events (and, with `access`, its access log lines too)."""
    legacy = await EchoUpstream().start()
    orders = await EchoUpstream().start()
    try:
        proxy = create_proxy(
            loads(hostile_config(legacy.url, orders.url, extra), "hostile.yaml"),
            access_log=AccessLog(log, enabled=access),
        )
        await proxy.start()
        try:
            yield Hostile(proxy, legacy, orders)
        finally:
            await stop_after_test(proxy, 1.0)
    finally:
        await legacy.close()
        await orders.close()


@pytest.fixture
async def hostile() -> AsyncIterator[Hostile]:
    async with hostile_stack() as h:
        yield h


class Bait:
    """A loopback server that counts every connection: the proxy must never dial it."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> Bait:
        async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nevil")
            writer.close()

        self._server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def bait() -> AsyncIterator[Bait]:
    server = await Bait().start()
    yield server
    await server.close()
