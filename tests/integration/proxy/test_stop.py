"""`Proxy.stop(grace_s)`: every phase shares one deadline, so a stop has a known bound."""

from __future__ import annotations

import asyncio
import time

import pytest

from proxy.accesslog import AccessLog
from proxy.app import STOP_OVERRUN_S, create_proxy
from proxy.settings import loads
from tests.integration.proxy.conftest import proxy_config
from tests.support import close_writer, wait_until
from tests.upstreams import EchoUpstream, Received


async def test_a_stop_ends_within_grace_and_its_overrun(
    upstream: EchoUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Draining a request that never ends took the whole grace, then the recorder got the
    whole grace again (and the helper and audits too): a worker's stop took up to 3x grace
    while the supervisor SIGKILLed it at grace + 5 s, losing what it had not flushed."""
    text = proxy_config(upstream.url).replace("timeout: 1s", "timeout: 60s")
    proxy, grace = create_proxy(loads(text, "test.yaml"), access_log=AccessLog(enabled=False)), 5.0
    await proxy.start()
    assert proxy.recorder is not None
    real_stop = proxy.recorder.stop

    async def hung_store(timeout: float = 5.0) -> None:  # uses every second it is given
        await asyncio.sleep(timeout)
        await real_stop(0.0)

    monkeypatch.setattr(proxy.recorder, "stop", hung_store)
    held: list[Received] = []
    upstream.extra[b"/held"] = lambda _t, rec: held.append(rec)  # never answered
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", proxy.address[1])
        writer.write(b"GET /held HTTP/1.1\r\nhost: x\r\n\r\n")
        await wait_until(lambda: bool(held))
        started = time.monotonic()
        await proxy.stop(grace)
        took = time.monotonic() - started
        await close_writer(writer)
    finally:
        if proxy.store is not None:  # not stopped: the test failed before
            await proxy.stop(0.0)
    print(f"stop({grace}) with a held request and a hung store took {took:.2f} s")
    assert took < grace + STOP_OVERRUN_S
