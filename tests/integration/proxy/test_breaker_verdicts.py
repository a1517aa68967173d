"""What a client's way of ending a request tells the candidate's breaker (found in reviews).

A candidate that stops reading an upload holds the user back: the body deadline that then
fires is the candidate's failure, not the user's. A user who cancels their own upload to a
healthy candidate is no verdict on it.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from proxy.accesslog import AccessLog
from proxy.app import Proxy, create_proxy
from proxy.breaker import CLOSED, HALF_OPEN
from proxy.settings import loads
from tests.support import reset_while_waiting, stop_after_test, wait_until
from tests.upstreams import EchoUpstream, raw_exchange, read_responses


class _Stall(asyncio.Protocol):
    """Reads a request's first bytes, then stops reading (a stuck upload)."""

    def __init__(self, transports: list[asyncio.Transport]) -> None:
        self.transports = transports
        self.got = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.transports.append(transport)

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        if self.got > 1000:
            self.transport.pause_reading()


def _config(legacy: str, candidate: str, body_timeout: str) -> str:
    db = os.path.join(tempfile.gettempdir(), f"strangler-test-{uuid.uuid4().hex[:12]}.db")
    return f"""
listen: 127.0.0.1:0
admin: {{listen: 127.0.0.1:0}}
backends:
  legacy: {{url: "{legacy}", timeout: 5s}}
  orders: {{url: "{candidate}", timeout: 5s}}
default_backend: legacy
store: {{url: "sqlite+aiosqlite:///{db}"}}
access_log: false
limits: {{body_timeout: {body_timeout}}}
routes:
  - name: orders
    match: {{path: /api/*}}
    mode: extracted
    candidate: orders
    shadow: {{percent: 0}}
"""


@pytest.fixture
async def legacy() -> AsyncIterator[EchoUpstream]:
    up = await EchoUpstream().start()
    yield up
    await up.close()


async def _proxy(text: str) -> Proxy:
    proxy = create_proxy(loads(text, "t.yaml"), access_log=AccessLog(enabled=False))
    await proxy.start()
    return proxy


async def _stuck_upload(port: int, path: str) -> bytes:
    """A 16 MiB POST the backend stops reading; the status line the client gets."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    total = 16 << 20
    writer.write(f"POST {path} HTTP/1.1\r\nHost: a\r\ncontent-length: {total}\r\n\r\n".encode())

    async def pump() -> None:
        chunk = b"x" * (256 << 10)
        for _ in range(total // len(chunk)):
            writer.write(chunk)
            await writer.drain()

    sending = asyncio.create_task(pump())
    try:
        return await asyncio.wait_for(reader.readline(), 10)
    finally:
        sending.cancel()
        writer.transport.abort()


async def test_a_candidate_that_stops_reading_uploads_opens_its_breaker(
    legacy: EchoUpstream,
) -> None:
    loop = asyncio.get_running_loop()
    transports: list[asyncio.Transport] = []
    server = await loop.create_server(lambda: _Stall(transports), "127.0.0.1", 0)
    port_c = server.sockets[0].getsockname()[1]
    proxy = await _proxy(_config(legacy.url, f"http://127.0.0.1:{port_c}", "300ms"))
    try:
        assert proxy.hub is not None and proxy.plane is not None
        plane, breaker = proxy.plane, proxy.hub.breakers["orders"]
        for i in range(5):
            line = await _stuck_upload(proxy.address[1], f"/api/up{i}")
            assert line.startswith(b"HTTP/1.1 408")
            await wait_until(lambda: plane.in_flight == 0)
        assert breaker.state == 1  # open: the candidate held five users back
    finally:
        await stop_after_test(proxy, 0.5)
        for t in transports:
            t.abort()
        server.close()


async def _cancel_upload(port: int, path: str, seen: Callable[[], bool]) -> None:
    head = f"POST {path} HTTP/1.1\r\nHost: a\r\ncontent-length: 100000\r\n\r\n"
    await reset_while_waiting(port, head.encode() + b"x" * 1000, seen)


async def test_users_cancelling_their_uploads_are_no_verdict(legacy: EchoUpstream) -> None:
    candidate = await EchoUpstream().start()
    proxy = await _proxy(_config(legacy.url, candidate.url, "30s"))
    try:
        assert proxy.hub is not None and proxy.plane is not None
        plane, breaker = proxy.plane, proxy.hub.breakers["orders"]
        for i in range(5):
            target = f"/api/cancel{i}".encode()
            await _cancel_upload(
                proxy.address[1],
                target.decode(),
                lambda t=target: any(r.target == t for r in candidate.received),  # type: ignore[misc]
            )
            await wait_until(lambda: plane.in_flight == 0)
        assert (breaker.state, breaker.consecutive, breaker.failures_in_window) == (0, 0, 0)
    finally:
        await stop_after_test(proxy, 0.5)
        await candidate.close()


async def test_a_request_from_before_the_breaker_opened_never_frees_the_probe_turn(
    legacy: EchoUpstream,
) -> None:
    candidate = await EchoUpstream().start()
    candidate.extra[b"/api/hang"] = lambda t, rec: None  # the probe is never answered
    proxy = await _proxy(_config(legacy.url, candidate.url, "30s"))
    port = proxy.address[1]
    try:
        assert proxy.hub is not None and proxy.plane is not None
        plane, breaker = proxy.plane, proxy.hub.breakers["orders"]
        # an upload admitted while the breaker is closed, still being sent
        head = b"POST /api/upload HTTP/1.1\r\nHost: a\r\ncontent-length: 100000\r\n\r\n"
        _, up_writer = await asyncio.open_connection("127.0.0.1", port)
        up_writer.write(head + b"x" * 1000)
        await wait_until(lambda: any(r.target == b"/api/upload" for r in candidate.received))
        breaker._open()  # the breaker opens, and its open time passes
        breaker._opened_at -= breaker.open_s
        _, probe_writer = await asyncio.open_connection("127.0.0.1", port)
        probe_writer.write(b"GET /api/hang HTTP/1.1\r\nHost: a\r\n\r\n")
        await wait_until(lambda: any(r.target == b"/api/hang" for r in candidate.received))
        assert breaker.state == HALF_OPEN
        up_writer.transport.abort()  # the user cancels the upload: no verdict
        await wait_until(lambda: plane.in_flight == 1)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /api/next HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 200")
        writer.close()
        # served by legacy: the probe's turn was still taken
        assert [r.target for r in legacy.received] == [b"/api/next"]
        assert not any(r.target == b"/api/next" for r in candidate.received)
        probe_writer.transport.abort()
    finally:
        await stop_after_test(proxy, 0.5)
        await candidate.close()


async def test_a_refused_request_gives_the_probe_turn_back(legacy: EchoUpstream) -> None:
    """A request refused after the route chose the candidate (two Host headers) never
    reaches it: the half-open breaker's probe turn goes to the next request (it was kept
    for `open_s`, so one bad request every few seconds kept a healthy candidate off)."""
    candidate = await EchoUpstream().start()
    proxy = await _proxy(_config(legacy.url, candidate.url, "30s"))
    port = proxy.address[1]
    try:
        assert proxy.hub is not None
        breaker = proxy.hub.breakers["orders"]
        breaker._open()  # open, and its open time has passed
        breaker._opened_at -= breaker.open_s
        bad = b"GET /api/bad HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
        assert (await raw_exchange(port, bad)).status == 400
        good = await raw_exchange(port, b"GET /api/good HTTP/1.1\r\nHost: a\r\n\r\n")
        assert good.status == 200
        assert [r.target for r in candidate.received] == [b"/api/good"]
        assert breaker.state == CLOSED  # the probe answered
    finally:
        await stop_after_test(proxy, 0.5)
        await candidate.close()


async def test_a_coding_an_http10_client_cannot_receive_is_no_verdict(
    legacy: EchoUpstream,
) -> None:
    """A candidate's answer in a transfer coding other than chunked cannot reach an
    HTTP/1.0 client (502, or legacy for a safe request): that is the client's protocol
    version, not the candidate failing, so its breaker stays closed."""
    candidate = await EchoUpstream().start()

    def gzip_coded(t: asyncio.Transport, rec: object) -> None:
        t.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\ncoded")
        t.close()

    candidate.extra[b"/api/coded"] = gzip_coded
    proxy = await _proxy(_config(legacy.url, candidate.url, "30s"))
    try:
        assert proxy.hub is not None
        breaker = proxy.hub.breakers["orders"]
        for _ in range(3):
            got = await raw_exchange(proxy.address[1], b"GET /api/coded HTTP/1.0\r\n\r\n")
            assert got.status == 200  # served by legacy
            assert (breaker.state, breaker.consecutive, breaker.failures_in_window) == (0, 0, 0)
            post = b"POST /api/coded HTTP/1.0\r\ncontent-length: 0\r\n\r\n"
            assert (await raw_exchange(proxy.address[1], post)).status == 502
            assert (breaker.state, breaker.consecutive, breaker.failures_in_window) == (0, 0, 0)
        assert len(legacy.received) == 3
    finally:
        await stop_after_test(proxy, 0.5)
        await candidate.close()


async def test_a_pipelined_request_waiting_when_the_breaker_opens_goes_to_legacy(
    legacy: EchoUpstream,
) -> None:
    """A request queued behind another on its connection was chosen for the candidate when
    it arrived; if the breaker opens while it waits, it goes to legacy like any request
    arriving then (it was sent to the candidate the breaker had just taken off)."""
    candidate = await EchoUpstream().start()
    held: list[asyncio.Transport] = []
    candidate.extra[b"/api/first"] = lambda t, rec: held.append(t)
    proxy = await _proxy(_config(legacy.url, candidate.url, "30s"))
    try:
        assert proxy.hub is not None and proxy.plane is not None
        plane, breaker = proxy.plane, proxy.hub.breakers["orders"]
        reader, writer = await asyncio.open_connection(*proxy.address)
        writer.write(
            b"GET /api/first HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /api/second HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        await wait_until(lambda: bool(held) and any(c.queue for c in plane.connections))
        breaker._open()  # opened by other users' failures while /api/second waits
        held[0].write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        answers = await asyncio.wait_for(read_responses(reader, 2), 5)
        writer.close()
        assert [r.status for r in answers] == [200, 200]
        assert [r.target for r in candidate.received] == [b"/api/first"]
        assert [r.target for r in legacy.received] == [b"/api/second"]
    finally:
        await stop_after_test(proxy, 0.5)
        await candidate.close()
