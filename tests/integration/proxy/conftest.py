"""Fixtures: a recording loopback upstream and a proxy in front of it."""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxy.accesslog import AccessLog
from proxy.app import Proxy, create_proxy
from proxy.settings import Settings, loads
from tests.support import stop_after_test
from tests.upstreams import EchoUpstream


def proxy_config(
    upstream_url: str, extra: str = "", backend_extra: str = "", store_url: str | None = None
) -> str:
    """A config text with one `legacy` backend at `upstream_url` on ephemeral ports."""
    if store_url is None:
        db = os.path.join(tempfile.gettempdir(), f"strangler-test-{uuid.uuid4().hex[:12]}.db")
        store_url = f"sqlite+aiosqlite:///{db}"
    return f"""
listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
backends:
  legacy:
    url: {upstream_url}
    timeout: 1s
    connect_timeout: 300ms
    max_connections: 50
{backend_extra}
default_backend: legacy
store:
  url: {store_url}
access_log: false
{extra}
"""


@asynccontextmanager
async def proxy_to(port: int, extra: str = "") -> AsyncIterator[Proxy]:
    """A proxy (access log off) in front of a backend on loopback `port`, `extra` config
    added, stopped at the end."""
    settings = loads(proxy_config(f"http://127.0.0.1:{port}", extra), "t.yaml")
    proxy = create_proxy(settings, access_log=AccessLog(enabled=False))
    await proxy.start()
    try:
        yield proxy
    finally:
        await stop_after_test(proxy, 1.0)


@asynccontextmanager
async def proxy_before(
    serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[Proxy]:
    """`proxy_to` a backend on a loopback port of its own whose connections `serve` handles."""
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        async with proxy_to(server.sockets[0].getsockname()[1]) as proxy:
            yield proxy
    finally:
        server.close()
        await server.wait_closed()


def write_served_config(tmp_path: Path, upstream_url: str, port: int, admin: int) -> Path:
    """`proxy_config` on the given data and admin ports, written to tmp_path/routes.yaml."""
    text = proxy_config(upstream_url).replace("listen: 127.0.0.1:0", f"listen: 127.0.0.1:{port}", 1)
    text = text.replace("  listen: 127.0.0.1:0", f"  listen: 127.0.0.1:{admin}", 1)
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(text)
    return cfg


@dataclass
class Stack:
    """A started proxy and the upstream behind it."""

    proxy: Proxy
    upstream: EchoUpstream

    @property
    def port(self) -> int:
        return self.proxy.address[1]


@pytest.fixture
async def upstream() -> AsyncIterator[EchoUpstream]:
    up = await EchoUpstream().start()
    yield up
    await up.close()


@pytest.fixture
async def stack(upstream: EchoUpstream) -> AsyncIterator[Stack]:
    settings = loads(proxy_config(upstream.url), "test.yaml")
    proxy = create_proxy(settings, access_log=AccessLog(enabled=False))
    await proxy.start()
    yield Stack(proxy, upstream)
    await stop_after_test(proxy, 1.0)


StackFactory = Callable[[Settings], Proxy]
