"""`host_header` of one backend never reaches another: fallbacks and shadow copies carry the
Host of the backend they go to, or the client's (found in review: a fallback to legacy and
a copy sent the serving backend's override)."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator

import pytest

from proxy.accesslog import AccessLog
from proxy.app import Proxy, create_proxy
from proxy.settings import loads
from tests.support import stop_after_test, wait_until
from tests.upstreams import EchoUpstream, Received, raw_exchange


def _config(
    legacy: EchoUpstream, cand: EchoUpstream, mode: str, legacy_host: str, baseline: bool = False
) -> str:
    db = os.path.join(tempfile.gettempdir(), f"strangler-test-{uuid.uuid4().hex[:12]}.db")
    legacy_extra = f"\n    host_header: {legacy_host}" if legacy_host else ""
    return f"""
listen: 127.0.0.1:0
admin: {{listen: 127.0.0.1:0}}
backends:
  legacy:
    url: {legacy.url}
    timeout: 2s{legacy_extra}
  orders:
    url: {cand.url}
    timeout: 2s
    host_header: orders.internal
default_backend: legacy
store: {{url: "sqlite+aiosqlite:///{db}"}}
access_log: false
limits: {{shadow_cpu_budget: 1}}  # shares this test process: shed on lag only
routes:
  - name: orders
    match: {{path: /api/*}}
    mode: {mode}
    candidate: orders
    shadow: {{percent: 100, timeout: 1s}}
    compare: {{noise_baseline: {"true" if baseline else "false"}}}
"""


@pytest.fixture
async def sides() -> AsyncIterator[tuple[EchoUpstream, EchoUpstream]]:
    legacy, cand = await EchoUpstream().start(), await EchoUpstream().start()
    yield legacy, cand
    await legacy.close()
    await cand.close()


async def _proxy(text: str) -> Proxy:
    proxy = create_proxy(loads(text, "t.yaml"), access_log=AccessLog(enabled=False))
    await proxy.start()
    return proxy


def _hosts(side: EchoUpstream, target: bytes) -> list[list[bytes]]:
    return [r.header(b"host") for r in side.received if r.target == target]


@pytest.mark.parametrize("legacy_host", ["legacy.internal", ""])
async def test_a_fallback_to_legacy_carries_legacys_host(
    sides: tuple[EchoUpstream, EchoUpstream], legacy_host: str
) -> None:
    legacy, cand = sides
    cand.extra[b"/api/x"] = lambda t, rec: t.abort()  # fails before any response byte
    proxy = await _proxy(_config(legacy, cand, "extracted", legacy_host))
    try:
        got = await raw_exchange(
            proxy.address[1], b"GET /api/x HTTP/1.1\r\nHost: shop.example\r\n\r\n"
        )
        assert got.status == 200  # legacy answered in-line
        assert _hosts(cand, b"/api/x")[0] == [b"orders.internal"]
        served = [h for h in _hosts(legacy, b"/api/x")]
        assert served[0] == [legacy_host.encode() or b"shop.example"]
    finally:
        await stop_after_test(proxy, 0.5)


@pytest.mark.parametrize("baseline", [False, True])
@pytest.mark.parametrize("legacy_host", ["legacy.internal", ""])
async def test_shadow_copies_carry_the_host_of_the_backend_they_go_to(
    sides: tuple[EchoUpstream, EchoUpstream], legacy_host: str, baseline: bool
) -> None:
    # a noise baseline goes to legacy again, with the Host of the user's request
    legacy, cand = sides
    proxy = await _proxy(_config(legacy, cand, "shadow", legacy_host, baseline))
    try:
        got = await raw_exchange(
            proxy.address[1], b"GET /api/o1 HTTP/1.1\r\nHost: shop.example\r\n\r\n"
        )
        assert got.status == 200
        legs = 2 if baseline else 1
        await wait_until(
            lambda: bool(_hosts(cand, b"/api/o1")) and len(_hosts(legacy, b"/api/o1")) == legs
        )
        served = [legacy_host.encode() or b"shop.example"]
        assert _hosts(legacy, b"/api/o1") == [served] * legs
        assert _hosts(cand, b"/api/o1") == [[b"orders.internal"]]
    finally:
        await stop_after_test(proxy, 0.5)


async def test_an_http10_request_without_host_gets_the_host_of_the_backend_it_goes_to(
    sides: tuple[EchoUpstream, EchoUpstream],
) -> None:
    # HTTP/1.0 allows a request without Host; it was forwarded as HTTP/1.1 without one,
    # which backends refuse (400). A fallback must not carry the candidate's either.
    legacy, cand = sides
    cand.extra[b"/api/x"] = lambda t, rec: t.abort()  # fails before any response byte
    text = _config(legacy, cand, "extracted", "").replace("    host_header: orders.internal\n", "")
    proxy = await _proxy(text)
    try:
        plain = await raw_exchange(proxy.address[1], b"GET /plain HTTP/1.0\r\n\r\n")
        assert plain.status == 200
        assert _hosts(legacy, b"/plain") == [[b"127.0.0.1:%d" % legacy.port]]
        fell_back = await raw_exchange(proxy.address[1], b"GET /api/x HTTP/1.0\r\n\r\n")
        assert fell_back.status == 200  # legacy answered in-line
        assert _hosts(cand, b"/api/x") == [[b"127.0.0.1:%d" % cand.port]]
        # legacy's own, on the fallback and on the verification copy (if it went out first)
        assert _hosts(legacy, b"/api/x")
        assert all(h == [b"127.0.0.1:%d" % legacy.port] for h in _hosts(legacy, b"/api/x"))
    finally:
        await stop_after_test(proxy, 0.5)


@pytest.mark.parametrize("cand_host", ["orders.internal", ""])
@pytest.mark.parametrize("legacy_host", ["legacy.internal", ""])
async def test_an_http10_request_without_host_is_copied_with_each_backends_host(
    sides: tuple[EchoUpstream, EchoUpstream], legacy_host: str, cand_host: str
) -> None:
    # The copy to the candidate went without any Host when legacy had an override, and the
    # noise baseline (legacy again) got the candidate's address as its Host.
    legacy, cand = sides
    text = _config(legacy, cand, "shadow", legacy_host, baseline=True)
    if not cand_host:
        text = text.replace("    host_header: orders.internal\n", "")
    proxy = await _proxy(text)
    try:
        got = await raw_exchange(proxy.address[1], b"GET /api/o1 HTTP/1.0\r\n\r\n")
        assert got.status == 200
        await wait_until(
            lambda: bool(_hosts(cand, b"/api/o1")) and len(_hosts(legacy, b"/api/o1")) == 2
        )
        legacy_auth = b"127.0.0.1:%d" % legacy.port
        cand_auth = b"127.0.0.1:%d" % cand.port
        assert _hosts(legacy, b"/api/o1") == [[legacy_host.encode() or legacy_auth]] * 2
        assert _hosts(cand, b"/api/o1") == [[cand_host.encode() or cand_auth]]
    finally:
        await stop_after_test(proxy, 0.5)


@pytest.mark.parametrize("baseline", [False, True])
async def test_shadow_copies_carry_the_served_requests_forwarded_headers(
    sides: tuple[EchoUpstream, EchoUpstream], baseline: bool
) -> None:
    # the copy and the noise baseline see what the served request saw: the load balancer's
    # X-Forwarded-Proto / -Host kept, the client's address appended to X-Forwarded-For
    legacy, cand = sides
    proxy = await _proxy(_config(legacy, cand, "shadow", "", baseline))
    try:
        got = await raw_exchange(
            proxy.address[1],
            b"GET /api/o2 HTTP/1.1\r\nHost: shop.internal\r\nX-Forwarded-Proto: https\r\n"
            b"X-Forwarded-Host: www.shop.example\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n",
        )
        assert got.status == 200
        legs = 2 if baseline else 1

        def seen() -> list[Received]:
            return [r for r in legacy.received + cand.received if r.target == b"/api/o2"]

        await wait_until(lambda: len(seen()) == legs + 1)
        for rec in seen():
            assert rec.header(b"x-forwarded-proto") == [b"https"]
            assert rec.header(b"x-forwarded-host") == [b"www.shop.example"]
            assert rec.header(b"x-forwarded-for") == [b"203.0.113.7, 127.0.0.1"]
    finally:
        await stop_after_test(proxy, 0.5)
