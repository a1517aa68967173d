"""Legacy (primary) faults not covered in tests/integration/proxy/test_faults.py.

An invalid response and a backend that closes at accept must each give a prompt 502 (or
an aborted client connection once the response started), free the pool slot, and never
let an exception escape a callback, on the asyncio loop and on uvloop (what `serve` runs).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Callable
from typing import cast

import pytest
import uvloop

from proxy.accesslog import AccessLog
from proxy.app import create_proxy
from proxy.settings import loads
from tests.integration.proxy.conftest import proxy_before, proxy_config
from tests.support import stop_after_test, wait_until
from tests.upstreams import RawResponse, raw_exchange

_LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


class _Faulty(asyncio.Protocol):
    """`/good` gets a 200; anything else gets the fault (close-at-accept: every connection)."""

    def __init__(self, fault: str, open_: set[asyncio.Transport], accepted: list[int]) -> None:
        self.fault = fault
        self.open = open_
        self.accepted = accepted
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.open.add(self.transport)
        self.accepted[0] += 1
        if self.fault == "close-at-accept":
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.open.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        t = self.transport
        if t is None or t.is_closing() or b"\r\n\r\n" not in data:
            return
        if data.startswith(b"GET /good "):
            t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        elif self.fault == "garbage-head":
            t.write(b"\x16\x03\x01 not http\r\n\r\n")
        elif self.fault == "garbage-body":
            t.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\n")


def _run(loop_kind: str, fault: str) -> tuple[list[tuple[int, bool, float]], int, list[str]]:
    """Three faulty requests, then a good one; (status, complete, s) each, active, errors."""
    loop = _LOOPS[loop_kind]()
    errors: list[str] = []
    loop.set_exception_handler(lambda _, ctx: errors.append(str(ctx.get("message"))))

    async def scenario() -> tuple[list[tuple[int, bool, float]], int]:
        open_: set[asyncio.Transport] = set()
        accepted = [0]
        server = await loop.create_server(lambda: _Faulty(fault, open_, accepted), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        cfg = (
            proxy_config(f"http://127.0.0.1:{port}")
            .replace("max_connections: 50", "max_connections: 2")
            .replace("timeout: 1s", "timeout: 400ms")
        )
        proxy = create_proxy(loads(cfg, "faults.yaml"), access_log=AccessLog(enabled=False))
        await proxy.start()
        results = []
        try:
            for path in (b"/bad1", b"/bad2", b"/bad3", b"/good"):
                start = time.monotonic()
                resp: RawResponse = await raw_exchange(
                    proxy.address[1], b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % path
                )
                results.append((resp.status, resp.complete, time.monotonic() - start))
            active = proxy._backends["legacy"].pool.active
        finally:
            for t in list(open_):
                t.abort()
            await wait_until(lambda: not open_, timeout=5)
            await stop_after_test(proxy, 1.0)
            server.close()
            await server.wait_closed()
        return results, active

    try:
        results, active = loop.run_until_complete(scenario())
    finally:
        loop.close()
    return results, active, errors


@pytest.mark.parametrize(
    ("loop_kind", "fault"),
    [
        ("asyncio", "garbage-head"),
        ("uvloop", "garbage-head"),
        ("asyncio", "garbage-body"),
        ("uvloop", "garbage-body"),
        ("asyncio", "close-at-accept"),
        ("uvloop", "close-at-accept"),
    ],
)
def test_broken_backend_gives_prompt_502_and_frees_the_pool(loop_kind: str, fault: str) -> None:
    results, active, errors = _run(loop_kind, fault)
    bad, good = results[:3], results[3]
    for status, complete, elapsed in bad:
        # before the response started: a 502; after: an aborted (incomplete) response
        assert (status == 502 and complete) or (status in (0, 200) and not complete)
        assert elapsed < 0.35
    if fault == "close-at-accept":
        assert good[:2] == (502, True)
    else:
        assert good[:2] == (200, True), "the pool is exhausted by broken connections"
    assert good[2] < 0.35
    assert active <= 1
    assert errors == []


_CLOSE_DELIMITED = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\npartial"
_CHUNKED = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n7\r\npartial\r\n"


def _cut_close_delimited(
    loop_kind: str, version: bytes, head: bytes = _CLOSE_DELIMITED, *, by_stop: bool = False
) -> tuple[bytes, bool]:
    """A body without a length (`head` and its first bytes), cut by a reset once the client
    got its first bytes (or, `by_stop`, by the proxy's stop past its grace): what the
    client got, and whether its connection was reset."""
    loop = _LOOPS[loop_kind]()

    async def scenario() -> tuple[bytes, bool]:
        held: list[asyncio.StreamWriter] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(head)
            held.append(writer)

        try:
            async with proxy_before(serve) as proxy:
                reader, writer = await asyncio.open_connection(*proxy.address)
                writer.write(b"GET /cut %s\r\nHost: a\r\n\r\n" % version)
                got, reset = b"", False
                async with asyncio.timeout(5):
                    while b"partial" not in got:
                        got += await reader.read(65536)
                    if by_stop:  # the backend goes on holding the rest; the grace runs out
                        stopping = asyncio.ensure_future(proxy.stop(0.2))
                    else:
                        sock = held[0].get_extra_info("socket")
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                        held[0].transport.abort()  # RST: the body is cut, not ended
                    try:  # until the end, or the last chunk (a kept-alive connection stays)
                        while not got.endswith(b"0\r\n\r\n") and (
                            chunk := await reader.read(65536)
                        ):
                            got += chunk
                    except ConnectionResetError:
                        reset = True
                    if by_stop:
                        await stopping
                writer.close()
        finally:
            for w in held:
                w.transport.abort()
        return got, reset

    try:
        return loop.run_until_complete(scenario())
    finally:
        loop.close()


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
@pytest.mark.parametrize("version", [b"HTTP/1.1", b"HTTP/1.0"])
def test_a_close_delimited_body_cut_by_a_reset_is_never_delivered_whole(
    loop_kind: str, version: bytes
) -> None:
    # The reset once ended the body like a clean close: an HTTP/1.1 client got the last
    # chunk, an HTTP/1.0 one a clean close, and both took a truncated body for the whole.
    got, reset = _cut_close_delimited(loop_kind, version)
    assert b"partial" in got
    assert not got.endswith(b"0\r\n\r\n")  # HTTP/1.1: no last chunk, so not whole
    if version == b"HTTP/1.0":
        assert reset  # its body ends at the close: only a reset shows it was cut


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_a_chunked_body_cut_by_a_reset_is_never_delivered_whole_to_http10(loop_kind: str) -> None:
    # An HTTP/1.0 client's body ends at our close whatever the backend's framing: a chunked
    # body cut by the backend ended with a clean FIN, and the client took it for the whole.
    got, reset = _cut_close_delimited(loop_kind, b"HTTP/1.0", _CHUNKED)
    assert b"partial" in got
    assert reset  # its body ends at the close: only a reset shows it was cut


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
@pytest.mark.parametrize("head", [_CLOSE_DELIMITED, _CHUNKED], ids=["close", "chunked"])
def test_a_stop_past_its_grace_never_delivers_an_http10_body_whole(
    loop_kind: str, head: bytes
) -> None:
    # A stop closed the connections still busy at the end of its grace with a plain FIN: an
    # HTTP/1.0 client reading its body to the close took the cut body for the whole one.
    got, reset = _cut_close_delimited(loop_kind, b"HTTP/1.0", head, by_stop=True)
    assert b"partial" in got
    assert reset
