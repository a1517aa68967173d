"""Flow control: reads paused on one side resume when the other side drains."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from proxy.accesslog import AccessLog
from proxy.app import Proxy, create_proxy
from proxy.settings import loads
from tests.integration.proxy.conftest import proxy_config
from tests.support import close_writer, wait_until
from tests.upstreams import read_response


class GatedUpload:
    """A backend that reads a request head, then waits for `go` before reading its body,
    and answers with the number of body bytes it got."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> GatedUpload:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

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

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@asynccontextmanager
async def _proxy_to(port: int, extra: str = "") -> AsyncIterator[Proxy]:
    settings = loads(proxy_config(f"http://127.0.0.1:{port}", extra), "flow.yaml")
    proxy = create_proxy(settings, access_log=AccessLog(enabled=False))
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop(1.0)


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
        async with _proxy_to(backend.port, "limits:\n  body_timeout: 3s\n") as proxy:
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
