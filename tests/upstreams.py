"""Purpose-built loopback servers and a raw HTTP/1.1 client for proxy tests.

`EchoUpstream` records every request exactly as it arrived (method, raw target, header
list in order, body) and answers by path: `/echo...` echoes as JSON, and a handful of
behaviours (gzip, cookies, redirects, slow chunks, hangs, resets) exercise the proxy.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import httptools
import orjson

from tests.support import close_writer

__all__ = [
    "EchoUpstream",
    "RawResponse",
    "Received",
    "raw_exchange",
    "read_response",
]

GZIP_BODY = gzip.compress(b'{"hello": "world"}' * 50, mtime=0)


@dataclass
class Received:
    """One request as the upstream saw it."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body_len: int = 0
    body_sha: str = ""
    complete: bool = False

    def header(self, name: bytes) -> list[bytes]:
        """Every value of a header, in order."""
        return [v for n, v in self.headers if n.lower() == name.lower()]


@dataclass
class _Behaviour:
    release: asyncio.Event = field(default_factory=asyncio.Event)
    first_chunk_sent: asyncio.Event = field(default_factory=asyncio.Event)
    aborted: asyncio.Event = field(default_factory=asyncio.Event)


class _UpstreamProtocol(asyncio.Protocol):
    def __init__(self, server: EchoUpstream) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.current: Received | None = None
        self._hash = hashlib.sha256()
        self._url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.connections += 1
        self.server.transports.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.server.transports.discard(self.transport)
        if self.current is not None and not self.current.complete:
            self.server.behaviour.aborted.set()
        self.server.lost.set()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            rest = data[exc.args[0] :]
            assert self.transport is not None
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\n"
            )
            self.server.tunnel_started.set()
            if rest:
                self.transport.write(rest)
            self.data_received = self._echo_raw  # type: ignore[method-assign]
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def _echo_raw(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def on_message_begin(self) -> None:
        self._url = b""
        self._hash = hashlib.sha256()
        self.current = Received(b"", b"", [])

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None
        self.current.headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self.current is not None
        self.current.method = self.parser.get_method()
        self.current.target = self._url
        self.server.received.append(self.current)
        self.server.got_request.set()
        path = self._url.split(b"?", 1)[0]
        if path == b"/hang":
            self.server.hung.set()
        if path == b"/expect" and self.current.header(b"expect"):
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        assert self.current is not None
        self.current.body_len += len(body)
        if self.current.body_len <= (1 << 20):
            self._hash.update(body)

    def on_message_complete(self) -> None:
        assert self.current is not None and self.transport is not None
        self.current.complete = True
        self.current.body_sha = self._hash.hexdigest()
        if not self.parser.should_upgrade():
            self.server.respond(self, self.current)


def _resp(
    status: int, headers: list[tuple[bytes, bytes]], body: bytes, reason: bytes = b"OK"
) -> bytes:
    head = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    for name, value in headers:
        head.append(name + b": " + value + b"\r\n")
    head.append(b"\r\n")
    return b"".join(head) + body


class EchoUpstream:
    """A loopback upstream that records requests and answers by path."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.got_request = asyncio.Event()
        self.hung = asyncio.Event()
        self.lost = asyncio.Event()
        self.tunnel_started = asyncio.Event()
        self.behaviour = _Behaviour()
        self.connections = 0
        self.transports: set[asyncio.Transport] = set()
        self.port = 0
        self._server: asyncio.Server | None = None
        self.extra: dict[bytes, Callable[[asyncio.Transport, Received], None]] = {}

    async def start(self) -> EchoUpstream:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _UpstreamProtocol(self), "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self.transports):
                t.abort()
            await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def respond(self, proto: _UpstreamProtocol, rec: Received) -> None:
        t = proto.transport
        assert t is not None
        path = rec.target.split(b"?", 1)[0]
        if path in self.extra:
            self.extra[path](t, rec)
            return
        if path == b"/hang":
            return
        if path.startswith(b"/status/"):
            code = int(path.rsplit(b"/", 1)[1])
            if code in (204, 304):
                t.write(_resp(code, [(b"etag", b'"abc"')], b"", b"X"))
            else:
                t.write(_resp(code, [(b"content-length", b"2")], b"{}", b"X"))
            return
        if path == b"/gzip":
            t.write(
                _resp(
                    200,
                    [
                        (b"content-type", b"application/json"),
                        (b"content-encoding", b"gzip"),
                        (b"content-length", str(len(GZIP_BODY)).encode()),
                    ],
                    GZIP_BODY,
                )
            )
            return
        if path == b"/cookies":
            t.write(
                _resp(
                    200,
                    [
                        (b"Set-Cookie", b"a=1; Path=/"),
                        (b"Set-Cookie", b"b=2, c=3; Path=/; HttpOnly"),
                        (b"content-length", b"0"),
                    ],
                    b"",
                )
            )
            return
        if path == b"/redirect":
            t.write(
                _resp(
                    302,
                    [(b"location", b"/elsewhere"), (b"content-length", b"0")],
                    b"",
                    b"Found",
                )
            )
            return
        if path == b"/hop":
            t.write(
                _resp(
                    200,
                    [
                        (b"connection", b"keep-alive, x-secret"),
                        (b"x-secret", b"1"),
                        (b"keep-alive", b"timeout=5"),
                        (b"content-length", b"2"),
                    ],
                    b"ok",
                )
            )
            return
        if path == b"/slow-chunks":
            t.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            self.behaviour.first_chunk_sent.set()
            loop = asyncio.get_running_loop()

            async def rest() -> None:
                await self.behaviour.release.wait()
                if not t.is_closing():
                    t.write(b"4\r\nlast\r\n0\r\n\r\n")

            task = loop.create_task(rest())
            proto.__dict__["_rest_task"] = task
            return
        if path == b"/reset-mid":
            t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"x" * 100)
            loop = asyncio.get_running_loop()
            loop.call_soon(t.abort)
            return
        if path == b"/close-delimited":
            t.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil close")
            t.close()
            return
        body = orjson.dumps(
            {
                "method": rec.method.decode(),
                "target": rec.target.decode("latin-1"),
                "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in rec.headers],
                "body_len": rec.body_len,
                "body_sha": rec.body_sha,
            }
        )
        if rec.method == b"HEAD":
            t.write(
                _resp(
                    200,
                    [
                        (b"content-type", b"application/json"),
                        (b"content-length", b"%d" % len(body)),
                    ],
                    b"",
                )
            )
            return
        t.write(
            _resp(
                200,
                [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))],
                body,
            )
        )


@dataclass
class RawResponse:
    """A parsed response as the client received it."""

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    complete: bool

    def header(self, name: bytes) -> list[bytes]:
        """Every value of a header, in order."""
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def json(self) -> object:
        return orjson.loads(self.body)


class _RespCollector:
    parser: httptools.HttpResponseParser

    def __init__(self, head_only: bool, skip_interim: bool) -> None:
        self.skip_interim = skip_interim
        self.interim = 0
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.done = False
        self.headers_done = False
        self.head_only = head_only

    def on_status(self, reason: bytes) -> None:
        self.reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if self.skip_interim and 100 <= status < 200 and status != 101:
            self.interim += 1
            self.headers = []
            return
        self.status = status
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.headers_done:
            self.done = True


async def read_response(
    reader: asyncio.StreamReader, *, head_only: bool = False, skip_interim: bool = True
) -> RawResponse:
    """Read one response from a stream; `complete` is False if the connection broke first."""
    col = _RespCollector(head_only, skip_interim)
    parser = httptools.HttpResponseParser(col)
    col.parser = parser
    stopped = await _feed(reader, parser, lambda: col.done or (head_only and col.headers_done))
    if isinstance(stopped, httptools.HttpParserUpgrade):
        col.done = True
    elif stopped is not None:
        raise stopped
    return RawResponse(
        col.status, col.reason, col.headers, b"".join(col.body), col.done or head_only
    )


async def raw_exchange(
    port: int, request: bytes, *, head_only: bool = False, host: str = "127.0.0.1"
) -> RawResponse:
    """Send raw request bytes on a new connection and read one response."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(read_response(reader, head_only=head_only), 10)
    finally:
        await close_writer(writer)


class _MultiCollector:
    """Collects consecutive responses on one connection with one parser."""

    def __init__(self) -> None:
        self.done: list[RawResponse] = []
        self._reset()

    def _reset(self) -> None:
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.status = 0

    parser: httptools.HttpResponseParser

    def on_status(self, reason: bytes) -> None:
        self.reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done.append(
            RawResponse(self.status, self.reason, self.headers, b"".join(self.body), True)
        )
        self._reset()


async def read_responses(reader: asyncio.StreamReader, count: int) -> list[RawResponse]:
    """Read up to `count` whole responses (pipelining); fewer if the connection ends first."""
    col = _MultiCollector()
    parser = httptools.HttpResponseParser(col)
    col.parser = parser
    await _feed(reader, parser, lambda: len(col.done) >= count)  # a parse error ends it too
    return col.done[:count]


async def _feed(
    reader: asyncio.StreamReader,
    parser: httptools.HttpResponseParser,
    enough: Callable[[], bool],
) -> Exception | None:
    """Feed `parser` from `reader` until `enough()` or the stream ends; returns the parser
    exception (error or upgrade) that stopped it, if any."""
    while not enough():
        try:
            chunk = await reader.read(65536)
        except ConnectionError:
            return None
        if not chunk:
            return None
        try:
            parser.feed_data(chunk)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as e:
            return e
    return None
