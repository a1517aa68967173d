"""Flow control: reads paused on one side resume when the other side drains."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Self, cast

import pytest
from prometheus_client import generate_latest

from proxy.app import Proxy
from tests.integration.proxy.conftest import Stack, proxy_before, proxy_to
from tests.support import close_writer, wait_until
from tests.upstreams import EchoUpstream, Received, read_response


class _StreamServer:
    """A backend on a loopback port of its own; `_serve` handles each connection."""

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class GatedUpload(_StreamServer):
    """A backend that reads a request head, then waits for `go` before reading its body,
    and answers with the number of body bytes it got."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        super().__init__()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await self.go.wait()
            body = await reader.readexactly(length)
            answer = b"%d" % len(body)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(answer), answer))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            await close_writer(writer)


def _reads_paused(proxy: Proxy) -> bool:
    plane = proxy.plane
    assert plane is not None
    return any(c.reading_paused_for is not None for c in plane.connections)


@pytest.mark.parametrize(
    "request_line",
    [b"POST /up HTTP/1.0\r\n", b"POST /up HTTP/1.1\r\nConnection: close\r\n"],
    ids=["http10", "connection-close"],
)
async def test_an_upload_paused_mid_body_resumes_for_a_closing_client(
    request_line: bytes,
) -> None:
    # A client that will close after this request once had its reads paused (the backend
    # was slow to read) and never resumed: the upload hung, then got 408.
    size = 32 << 20  # more than the loopback buffers between proxy and backend hold
    backend = await GatedUpload().start()
    try:
        async with proxy_to(backend.port, "limits:\n  body_timeout: 3s\n") as proxy:
            reader, writer = await asyncio.open_connection(*proxy.address)
            writer.write(request_line + b"Host: a\r\nContent-Length: %d\r\n\r\n" % size)
            writer.write(b"u" * size)
            try:
                await wait_until(lambda: _reads_paused(proxy), timeout=10)
                backend.go.set()
                resp = await asyncio.wait_for(read_response(reader), 15)
            finally:
                await close_writer(writer)
            assert resp.status == 200
            assert resp.body == b"%d" % size
    finally:
        await backend.close()


async def test_a_client_reading_slowly_still_gets_the_whole_response(stack: Stack) -> None:
    # The backend timeout (1 s) once ran while the client's reads were paused: a healthy
    # response was cut, and counted as a backend timeout (a breaker failure).
    size = 32 << 20  # more than the loopback buffers between proxy and client hold

    def big(t: asyncio.Transport, rec: Received) -> None:
        t.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size + b"y" * size)

    stack.upstream.extra[b"/big"] = big
    plane = stack.proxy.plane
    assert plane is not None
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", stack.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        writer.write(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        await wait_until(lambda: any(c.write_paused for c in plane.connections), timeout=10)
        await asyncio.sleep(1.5)  # the scenario itself: the client reads nothing for 1.5 s
        resp = await asyncio.wait_for(read_response(reader), 20)
    finally:
        await close_writer(writer)
    assert resp.complete and len(resp.body) == size
    text = generate_latest(stack.proxy.metrics_registry()).decode()
    assert not [ln for ln in text.splitlines() if ln.startswith("strangler_upstream_errors")]


async def test_a_client_that_stops_reading_is_cut_at_the_body_timeout(
    upstream: EchoUpstream,
) -> None:
    # The bound that replaces the backend timeout while the client is not reading: the
    # stalled client is cut as the slow one, never counted against the backend.
    size = 32 << 20

    def big(t: asyncio.Transport, rec: Received) -> None:
        t.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size + b"y" * size)

    upstream.extra[b"/big"] = big
    async with proxy_to(upstream.port, "limits:\n  body_timeout: 2s\n") as proxy:
        plane = proxy.plane
        assert plane is not None
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, proxy.address)
        _, writer = await asyncio.open_connection(sock=sock)
        try:
            writer.write(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
            await wait_until(lambda: any(c.write_paused for c in plane.connections), timeout=10)
            start = time.monotonic()
            await wait_until(lambda: not plane.connections, timeout=10)
            elapsed = time.monotonic() - start
        finally:
            await close_writer(writer)
        text = generate_latest(proxy.metrics_registry()).decode()
    assert 1.5 < elapsed < 4.0  # body_timeout 2 s, not the backend's 1 s
    assert 'strangler_client_errors_total{kind="timeout"} 1.0' in text
    assert not [ln for ln in text.splitlines() if ln.startswith("strangler_upstream_errors")]


class _TwoAnswers(_StreamServer):
    """`/first` is answered in 16 KiB chunks until the proxy holds bytes its client has not
    read, then ends with one 128 KiB chunk (the read that passes the client's high-water
    mark ends the response); `/second` streams up to `limit` bytes as fast as it may."""

    def __init__(self, client_buffered: Callable[[], int], limit: int) -> None:
        self.client_buffered = client_buffered
        self.limit = limit
        self.sent_second = 0
        super().__init__()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if head.startswith(b"GET /first "):
                    writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                    for _ in range(4096):  # at most 64 MiB before the proxy buffers
                        if self.client_buffered() > 0:
                            break
                        writer.write(b"4000\r\n" + b"a" * 0x4000 + b"\r\n")
                        await writer.drain()
                        await asyncio.sleep(0)  # the proxy's turn to forward it
                    writer.write(b"20000\r\n" + b"b" * 0x20000 + b"\r\n0\r\n\r\n")
                    await writer.drain()
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % self.limit)
                    chunk = b"c" * 65536
                    while self.sent_second < self.limit:
                        writer.write(chunk)
                        self.sent_second += len(chunk)
                        await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            await close_writer(writer)


async def test_a_pipelined_response_waits_for_a_client_that_stopped_reading() -> None:
    # The client stopped reading during the first response: its upstream was paused, but
    # the next pipelined request's upstream was not, and its response piled up in the
    # proxy's memory as fast as the backend sent it (no timeout: it kept sending).
    plane_box: list[Proxy] = []

    def client_buffered() -> int:
        plane = plane_box[0].plane
        assert plane is not None
        return max(
            (c.transport.get_write_buffer_size() for c in plane.connections if c.transport),
            default=0,
        )

    limit = 256 << 20
    backend = await _TwoAnswers(client_buffered, limit).start()
    try:
        async with proxy_to(backend.port, "limits:\n  body_timeout: 30s") as proxy:
            plane_box.append(proxy)
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, proxy.address)
            reader, writer = await asyncio.open_connection(sock=sock)
            cast(asyncio.ReadTransport, writer.transport).pause_reading()  # reads nothing now
            writer.write(
                b"GET /first HTTP/1.1\r\nHost: a\r\n\r\nGET /second HTTP/1.1\r\nHost: a\r\n\r\n"
            )
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and backend.sent_second < limit:
                if client_buffered() > 32 << 20:
                    break
                await asyncio.sleep(0.01)
            buffered = client_buffered()
            cast(asyncio.ReadTransport, writer.transport).resume_reading()  # it reads again
            got = b""
            async with asyncio.timeout(10):
                while b"c" * 65536 not in got[-200_000:]:
                    got = got[-200_000:] + await reader.read(1 << 20)
            writer.close()
    finally:
        await backend.close()
    assert buffered < 8 << 20, f"{buffered} bytes held for a client that reads nothing"


async def test_a_tunnel_waits_for_a_backend_that_stopped_reading() -> None:
    # Past a 101 the client's bytes went to the backend's connection with no flow control:
    # a backend that stopped reading had them pile up in the proxy's memory.
    held: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        cast(asyncio.ReadTransport, writer.transport).pause_reading()  # the kernel buffers fill
        writer.write(b"HTTP/1.1 101 Switching\r\nconnection: upgrade\r\nupgrade: x\r\n\r\n")
        held.append(writer)

    try:
        async with proxy_before(serve) as proxy:
            reader, writer = await asyncio.open_connection(*proxy.address)
            writer.write(
                b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n"
            )
            async with asyncio.timeout(5):
                await reader.readuntil(b"\r\n\r\n")
            sent, chunk = 0, b"t" * 65536
            deadline = time.monotonic() + 3
            # the client sends until its own buffers fill (the proxy stopped reading it)
            while sent < 256 << 20 and time.monotonic() < deadline:
                writer.write(chunk)
                sent += len(chunk)
                try:
                    await asyncio.wait_for(writer.drain(), 0.2)
                except TimeoutError:
                    break
            plane = proxy.plane
            assert plane is not None
            tunnels = [c._tunnel for c in plane.connections if c._tunnel is not None]
            [up] = tunnels
            assert up.transport is not None
            buffered = up.transport.get_write_buffer_size()
            writer.transport.abort()
    finally:
        for w in held:
            w.transport.abort()
    assert buffered < 8 << 20, f"{buffered} bytes held for a backend that reads nothing"
