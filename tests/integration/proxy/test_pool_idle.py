"""Pooled upstream connections: reused while fresh, closed by the sweep once idle too long."""

from __future__ import annotations

import time

from proxy.accesslog import AccessLog
from proxy.app import create_proxy
from proxy.settings import loads
from tests.integration.proxy.conftest import proxy_config
from tests.support import stop_after_test, wait_until
from tests.upstreams import EchoUpstream, raw_exchange

GET = b"GET /pool HTTP/1.1\r\nHost: shop.test\r\n\r\n"


async def test_idle_connection_is_reused_then_closed_after_idle_timeout(
    upstream: EchoUpstream,
) -> None:
    settings = loads(proxy_config(upstream.url, backend_extra="    idle_timeout: 300ms"))
    proxy = create_proxy(settings, access_log=AccessLog(enabled=False))
    await proxy.start()
    try:
        port = proxy.address[1]
        for _ in range(3):
            assert (await raw_exchange(port, GET)).status == 200
        assert upstream.connections == 1  # one pooled connection served all three
        idle_from = time.monotonic()
        await wait_until(lambda: not upstream.transports, timeout=3.0)
        idle_for = time.monotonic() - idle_from
        assert 0.2 <= idle_for <= 1.0, idle_for  # 300 ms, checked every 50 ms
        assert (await raw_exchange(port, GET)).status == 200
        assert upstream.connections == 2  # a fresh one after the expiry
    finally:
        await stop_after_test(proxy, 1.0)
