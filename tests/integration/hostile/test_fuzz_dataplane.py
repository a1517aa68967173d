"""Hypothesis fuzzing of the data plane over real loopback sockets.

Each example writes a stream of valid, mutated and truncated requests, pipelined on one
connection and cut at random points into separate writes, then half-closes and reads
until the proxy closes. A reference parse of the same bytes (llhttp, strict, as one
buffer) says which messages were whole and valid. Checked per example: the upstream saw
complete requests only for those messages, each with its own method, target and body
(no bytes of one message inside another), incomplete ones only for messages whose head
was valid, and the proxy still answers a fresh request. Checked over the run: no
exception escaped a callback (loop exception handler) and nothing was logged at ERROR.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import cast

import httptools
import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.accesslog import AccessLog
from proxy.app import Proxy, create_proxy
from proxy.settings import loads
from tests.integration.proxy.conftest import proxy_config
from tests.support import close_writer
from tests.upstreams import EchoUpstream, _UpstreamProtocol, raw_exchange

_METHODS = [b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"HEAD"]
_TOKEN = st.text("abcdefghijklmnopqrstuvwxyz-0123456789", min_size=1, max_size=12)
_VALUE = st.text("abcdefghijklmnopqrstuvwxyz ABC=;,/-0123456789", max_size=24)
_NOISE = [
    b"\r",
    b"\n",
    b"\r\n",
    b"\x00",
    b" ",
    b"\t",
    b":",
    b"0",
    b"-1",
    b"ffffffffffffffffff",
    b"\r\nTransfer-Encoding: chunked",
    b"\r\nContent-Length: 5",
    b"\r\nContent-Length: 0",
    b"\r\n\r\n",
    b"GET /injected HTTP/1.1\r\nHost: x\r\n\r\n",
]


class _AnyLoopProtocol(_UpstreamProtocol):
    """The recording upstream's protocol, accepting uvloop's transports too."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections += 1
        self.server.transports.add(self.transport)


class _Upstream(EchoUpstream):
    """EchoUpstream on any event loop."""

    async def start(self) -> _Upstream:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _AnyLoopProtocol(self), "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self


@st.composite
def _valid(draw: st.DrawFn, ident: int) -> bytes:
    method = draw(st.sampled_from(_METHODS))
    query = draw(st.sampled_from([b"", b"?a=1", b"?a=1&a=2&b=", b"?x=%2F+y"]))
    head = [b"%s /echo/m%d%s HTTP/1.1\r\nHost: fuzz\r\n" % (method, ident, query)]
    for name, value in draw(st.lists(st.tuples(_TOKEN, _VALUE), max_size=4)):
        head.append(b"x-%s: %s\r\n" % (name.encode(), value.strip().encode()))
    body = b"" if method == b"HEAD" else draw(st.binary(max_size=64))
    if body and draw(st.booleans()):
        cuts = sorted(draw(st.lists(st.integers(1, len(body)), max_size=3, unique=True)))
        chunks, last = [], 0
        for cut in [*cuts, len(body)]:
            if cut > last:
                chunks.append(b"%x\r\n%s\r\n" % (cut - last, body[last:cut]))
                last = cut
        head.append(b"transfer-encoding: chunked\r\n\r\n")
        return b"".join(head) + b"".join(chunks) + b"0\r\n\r\n"
    if body or method in (b"POST", b"PUT", b"PATCH"):
        head.append(b"content-length: %d\r\n" % len(body))
    return b"".join(head) + b"\r\n" + body


@st.composite
def _mutated(draw: st.DrawFn, ident: int) -> bytes:
    raw = bytearray(draw(_valid(ident)))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(raw)))
        op = draw(st.sampled_from(["flip", "insert", "delete"]))
        if op == "flip" and at < len(raw):
            raw[at] = draw(st.integers(0, 255))
        elif op == "insert":
            raw[at:at] = draw(st.sampled_from(_NOISE))
        else:
            raw[at : at + draw(st.integers(1, 8))] = b""
    return bytes(raw)


@st.composite
def _stream(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    parts = []
    for ident in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["valid", "valid", "mutated", "truncated"]))
        raw = draw(_mutated(ident) if kind == "mutated" else _valid(ident))
        if kind == "truncated":
            raw = raw[: draw(st.integers(0, max(0, len(raw) - 1)))]
        parts.append(raw)
    data = b"".join(parts)
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=6))))
    return data, cuts


@dataclass
class _Ref:
    """One message as the reference parse saw it."""

    method: bytes = b""
    target: bytes = b""
    body: bytearray = field(default_factory=bytearray)
    head_ok: bool = False
    complete: bool = False


class _Reference:
    """Parses the whole stream once, strictly, recording each message's fate."""

    def __init__(self, data: bytes) -> None:
        self.messages: list[_Ref] = []
        self._url = b""
        self.parser = httptools.HttpRequestParser(self)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError:
            pass

    def on_message_begin(self) -> None:
        self._url = b""
        self.messages.append(_Ref())

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_headers_complete(self) -> None:
        ref = self.messages[-1]
        ref.method = self.parser.get_method()
        ref.target = self._url
        ref.head_ok = True

    def on_body(self, body: bytes) -> None:
        self.messages[-1].body += body

    def on_message_complete(self) -> None:
        self.messages[-1].complete = True


@contextmanager
def _captured_errors(loop: asyncio.AbstractEventLoop) -> Iterator[list[str]]:
    errors: list[str] = []

    def on_loop_error(_: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        errors.append(f"loop: {context.get('message')} {context.get('exception')!r}")

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            errors.append(f"log: {record.getMessage()}")

    handler = _Collect(logging.ERROR)
    root = logging.getLogger()
    root.addHandler(handler)
    loop.set_exception_handler(on_loop_error)
    try:
        yield errors
    finally:
        root.removeHandler(handler)


async def _run_example(
    proxy: Proxy, up: EchoUpstream, data: bytes, cuts: list[int], tally: dict[str, int]
) -> None:
    up.received.clear()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.address[1])
    try:
        last = 0
        for cut in [*cuts, len(data)]:
            writer.write(data[last:cut])
            last = cut
            await writer.drain()
            await asyncio.sleep(0)  # give the proxy a read per piece where it can
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(5):
            while await reader.read(65536):
                pass
    except OSError:  # the proxy may close first (400), even before our half-close
        pass
    finally:
        await close_writer(writer)
    alive = await raw_exchange(proxy.address[1], b"GET /alive HTTP/1.1\r\nHost: a\r\n\r\n")
    assert alive.status == 200, "the proxy stopped answering"
    seen = [r for r in up.received if r.target != b"/alive"]
    ref = _Reference(data).messages
    whole = {(m.method, m.target, hashlib.sha256(m.body).hexdigest()) for m in ref if m.complete}
    heads = {(m.method, m.target) for m in ref if m.head_ok}
    for rec in seen:
        if rec.complete:
            got = (rec.method, rec.target, rec.body_sha)
            assert got in whole, f"forwarded {got} that was not a whole, valid message"
        else:
            assert (rec.method, rec.target) in heads, f"forwarded a head never valid: {rec}"
    done = [(r.method, r.target, r.body_sha) for r in seen if r.complete]
    assert len(done) == len(set(done)), "one message forwarded twice"
    tally["forwarded"] += len(done)
    tally["cut"] += len(seen) - len(done)
    tally["invalid"] += sum(1 for m in ref if not m.complete)


_LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


@pytest.mark.parametrize("loop_kind", list(_LOOPS))
def test_fuzzed_streams_never_break_the_data_plane(loop_kind: str) -> None:
    loop = _LOOPS[loop_kind]()
    tally = {"forwarded": 0, "cut": 0, "invalid": 0}
    with _captured_errors(loop) as errors:

        async def start() -> tuple[Proxy, EchoUpstream]:
            up = await _Upstream().start()
            cfg = proxy_config(up.url, "limits:\n  body_timeout: 300ms\n")
            cfg = cfg.replace("timeout: 1s", "timeout: 300ms")
            proxy = create_proxy(loads(cfg, "fuzz.yaml"), access_log=AccessLog(enabled=False))
            await proxy.start()
            return proxy, up

        proxy, up = loop.run_until_complete(start())
        try:

            @settings(
                max_examples=150,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(_stream())
            def example(stream: tuple[bytes, list[int]]) -> None:
                loop.run_until_complete(_run_example(proxy, up, *stream, tally))

            example()
        finally:
            loop.run_until_complete(proxy.stop(1.0))
            loop.run_until_complete(up.close())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
    print(f"fuzz {loop_kind}: {tally}")
    assert errors == []
    assert tally["forwarded"] > 30 and tally["invalid"] > 30  # both kinds were exercised
