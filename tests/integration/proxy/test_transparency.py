"""A request through strangler must look like a direct one, apart from documented headers.

Documented proxy headers: requests gain `X-Forwarded-For` (appended), `X-Forwarded-Proto` and
`X-Forwarded-Host` (when absent), `Via` and `X-Request-Id` (when absent); hop-by-hop headers are
removed. Responses gain `Via` and lose hop-by-hop headers.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import resource
from pathlib import Path

import pytest

from proxy.accesslog import AccessLog
from proxy.app import create_proxy
from proxy.settings import loads
from tests.integration.proxy.conftest import Stack, proxy_before, proxy_config
from tests.support import stop_after_test
from tests.upstreams import (
    GZIP_BODY,
    EchoUpstream,
    RawResponse,
    Received,
    raw_exchange,
    read_response,
)

PROXY_REQ_HEADERS = {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"via"}
HOP = {b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade"}


def _req_view(
    rec: Received, *, drop_rid: bool
) -> tuple[bytes, bytes, list[tuple[bytes, bytes]], str]:
    drop = PROXY_REQ_HEADERS | HOP | ({b"x-request-id"} if drop_rid else set())
    headers = [(n.lower(), v) for n, v in rec.headers if n.lower() not in drop]
    return rec.method, rec.target, headers, rec.body_sha


def _resp_view(resp: RawResponse) -> tuple[int, bytes, list[tuple[bytes, bytes]], bytes]:
    headers = [(n.lower(), v) for n, v in resp.headers if n.lower() not in HOP | {b"via"}]
    return resp.status, resp.reason, headers, resp.body


async def _both(
    stack: Stack, request: bytes, *, head_only: bool = False
) -> tuple[RawResponse, Received, RawResponse, Received]:
    up = stack.upstream
    direct = await raw_exchange(up.port, request, head_only=head_only)
    rec_direct = up.received[-1]
    proxied = await raw_exchange(stack.port, request, head_only=head_only)
    rec_proxied = up.received[-1]
    return direct, rec_direct, proxied, rec_proxied


def _req(method: str, target: str, headers: list[tuple[str, str]] = (), body: bytes = b"") -> bytes:  # type: ignore[assignment]
    lines = [f"{method} {target} HTTP/1.1", "Host: shop.example"]
    lines += [f"{n}: {v}" for n, v in headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


ECHO_CASES = {
    "get": _req("GET", "/echo"),
    "post-json": _req("POST", "/echo", [("Content-Type", "application/json")], b'{"a": 1}'),
    "put": _req("PUT", "/echo/1", [], b"replace"),
    "patch": _req("PATCH", "/echo/1", [], b'{"op": "x"}'),
    "delete-with-body": _req("DELETE", "/echo/1", [], b'{"reason": "dup"}'),
    "options-with-body": _req("OPTIONS", "/echo", [], b"probe"),
    "repeated-query-keys": _req("GET", "/echo?a=1&a=2&a=3"),
    "empty-query-values": _req("GET", "/echo?a=&b&=c&&"),
    "encoded-slash": _req("GET", "/echo/a%2Fb?x=%2F"),
    "plus-and-space": _req("GET", "/echo?q=a+b%20c"),
    "non-ascii-encoded": _req("GET", "/echo?name=%C3%A9l%C3%A8ve&city=K%C3%B8benhavn"),
    "odd-order-and-case": _req("GET", "/echo?Z=1&a=2&A=3"),
    "repeated-headers": _req(
        "GET",
        "/echo",
        [
            ("Accept", "text/html"),
            ("X-Tag", "one"),
            ("Accept", "application/json"),
            ("X-Tag", "two"),
        ],
    ),
    "header-case-kept": _req("GET", "/echo", [("X-MiXeD-CaSe", "Value")]),
    "cookie-header": _req("GET", "/echo", [("Cookie", "a=1; b=2")]),
    "request-id-passthrough": _req("GET", "/echo", [("X-Request-Id", "client-chosen-id")]),
    "empty-post": _req("POST", "/echo", [("Content-Length", "0")]),
}


@pytest.mark.parametrize("case", sorted(ECHO_CASES))
async def test_echoed_request_is_identical(stack: Stack, case: str) -> None:
    request = ECHO_CASES[case]
    direct, rec_direct, proxied, rec_proxied = await _both(stack, request)
    assert proxied.status == direct.status == 200
    keep_rid = case == "request-id-passthrough"
    assert _req_view(rec_proxied, drop_rid=not keep_rid) == _req_view(
        rec_direct, drop_rid=not keep_rid
    )
    assert rec_proxied.header(b"via") == [b"1.1 strangler"]
    assert rec_proxied.header(b"x-forwarded-proto") == [b"http"]
    assert rec_proxied.header(b"x-forwarded-host") == [b"shop.example"]
    assert rec_proxied.header(b"x-forwarded-for") == [b"127.0.0.1"]
    if keep_rid:
        assert rec_proxied.header(b"x-request-id") == [b"client-chosen-id"]
    else:
        assert len(rec_proxied.header(b"x-request-id")) == 1


@pytest.mark.parametrize(
    "request_bytes",
    [
        _req("GET", "/status/204"),
        _req("GET", "/status/304", [("If-None-Match", '"abc"')]),
        _req("GET", "/status/404"),
        _req("GET", "/status/503"),
        _req("GET", "/cookies"),
        _req("GET", "/redirect"),
        _req("GET", "/gzip", [("Accept-Encoding", "gzip")]),
    ],
    ids=["204", "304", "404", "503", "set-cookie", "302-not-followed", "gzip"],
)
async def test_response_is_identical(stack: Stack, request_bytes: bytes) -> None:
    direct, _, proxied, _ = await _both(stack, request_bytes)
    assert _resp_view(proxied) == _resp_view(direct)
    assert proxied.header(b"via") == [b"1.1 strangler"]


async def test_head_has_no_body_and_same_headers(stack: Stack) -> None:
    request = _req("HEAD", "/echo")
    direct, _, proxied, _ = await _both(stack, request, head_only=True)
    assert proxied.status == direct.status == 200
    # the echoed length differs by the proxy headers; what matters is that it is kept
    assert len(proxied.header(b"content-length")) == len(direct.header(b"content-length")) == 1
    assert proxied.body == b""
    # the connection stays usable after a HEAD
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    writer.write(request)
    first = await read_response(reader, head_only=True)
    writer.write(_req("GET", "/echo"))
    second = await read_response(reader)
    writer.close()
    assert first.status == 200 and second.status == 200 and second.complete


async def test_gzip_bytes_untouched(stack: Stack) -> None:
    resp = await raw_exchange(stack.port, _req("GET", "/gzip", [("Accept-Encoding", "gzip")]))
    assert resp.body == GZIP_BODY
    assert resp.header(b"content-encoding") == [b"gzip"]
    assert gzip.decompress(resp.body).startswith(b'{"hello"')


async def test_multiple_set_cookie_kept_separate(stack: Stack) -> None:
    resp = await raw_exchange(stack.port, _req("GET", "/cookies"))
    assert resp.header(b"set-cookie") == [b"a=1; Path=/", b"b=2, c=3; Path=/; HttpOnly"]


async def test_redirect_not_followed(stack: Stack) -> None:
    resp = await raw_exchange(stack.port, _req("GET", "/redirect"))
    assert resp.status == 302
    assert resp.header(b"location") == [b"/elsewhere"]
    assert [r.target for r in stack.upstream.received] == [b"/redirect"]


async def test_hop_by_hop_request_headers_do_not_reach_upstream(stack: Stack) -> None:
    request = _req(
        "GET",
        "/echo",
        [
            ("Connection", "keep-alive, X-Foo"),
            ("X-Foo", "secret"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Proxy-Connection", "keep-alive"),
            ("X-Bar", "kept"),
        ],
    )
    await raw_exchange(stack.port, request)
    rec = stack.upstream.received[-1]
    names = {n.lower() for n, _ in rec.headers}
    assert not names & {b"connection", b"x-foo", b"keep-alive", b"te", b"proxy-connection"}
    assert rec.header(b"x-bar") == [b"kept"]


async def test_hop_by_hop_response_headers_removed(stack: Stack) -> None:
    resp = await raw_exchange(stack.port, _req("GET", "/hop"))
    names = {n.lower() for n, _ in resp.headers}
    assert b"x-secret" not in names and b"keep-alive" not in names
    assert resp.body == b"ok"


async def test_x_forwarded_for_appended(stack: Stack) -> None:
    await raw_exchange(stack.port, _req("GET", "/echo", [("X-Forwarded-For", "203.0.113.7")]))
    assert stack.upstream.received[-1].header(b"x-forwarded-for") == [b"203.0.113.7, 127.0.0.1"]


async def test_chunked_first_chunk_arrives_before_upstream_finishes(stack: Stack) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    writer.write(_req("GET", "/slow-chunks"))
    await writer.drain()
    await asyncio.wait_for(stack.upstream.behaviour.first_chunk_sent.wait(), 5)
    got = b""
    while b"first" not in got:
        chunk = await asyncio.wait_for(reader.read(4096), 5)
        assert chunk, "connection closed before the first chunk"
        got += chunk
    # the upstream has not finished: it waits on `release`
    assert not stack.upstream.behaviour.release.is_set()
    assert b"0\r\n\r\n" not in got
    stack.upstream.behaviour.release.set()
    while not got.endswith(b"0\r\n\r\n"):
        chunk = await asyncio.wait_for(reader.read(4096), 5)
        assert chunk
        got += chunk
    assert b"last" in got
    writer.close()


async def test_chunked_request_body_streamed(stack: Stack) -> None:
    body = (
        b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (b"hello ", b"chunked ", b"world"))
        + b"0\r\n\r\n"
    )
    request = (
        b"POST /echo HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    )
    _, rec_direct, proxied, rec_proxied = await _both(stack, request)
    assert proxied.status == 200
    assert rec_proxied.body_sha == rec_direct.body_sha
    assert rec_proxied.body_len == len(b"hello chunked world")


async def test_expect_100_continue(stack: Stack) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    writer.write(
        b"POST /expect HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 5\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    await writer.drain()
    interim = await asyncio.wait_for(read_response(reader, skip_interim=False), 5)
    assert interim.status == 100
    writer.write(b"hello")
    final = await asyncio.wait_for(read_response(reader), 5)
    assert final.status == 200
    assert stack.upstream.received[-1].body_len == 5
    writer.close()


async def test_keep_alive_and_pipelining(stack: Stack) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    writer.write(_req("GET", "/echo?n=1") + _req("GET", "/echo?n=2") + _req("GET", "/echo?n=3"))
    await writer.drain()
    targets = []
    for _ in range(3):
        resp = await asyncio.wait_for(read_response(reader), 5)
        assert resp.status == 200
        targets.append(resp.json()["target"])  # type: ignore[index]
    assert targets == ["/echo?n=1", "/echo?n=2", "/echo?n=3"]
    assert stack.upstream.connections == 1  # each next request waited for the same one
    writer.close()


async def test_upgrade_tunnels_raw_bytes(stack: Stack) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: shop.example\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101")
    writer.write(b"\x00raw frame bytes\xff")
    await writer.drain()
    echoed = await asyncio.wait_for(reader.readexactly(17), 5)
    assert echoed == b"\x00raw frame bytes\xff"
    writer.close()


async def test_bytes_sent_right_after_an_upgrade_request_reach_the_tunnel(stack: Stack) -> None:
    # Bytes in the same read as the upgrade request (a client need not wait for the 101)
    # were lost; only those sent after the tunnel opened went through.
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    try:
        writer.write(
            b"GET /ws HTTP/1.1\r\nHost: shop.example\r\nConnection: Upgrade\r\n"
            b"Upgrade: echo\r\n\r\nEARLY-FRAME"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101")
        assert await asyncio.wait_for(reader.readexactly(11), 5) == b"EARLY-FRAME"
        writer.write(b"LATER-FRAME")
        assert await asyncio.wait_for(reader.readexactly(11), 5) == b"LATER-FRAME"
    finally:
        writer.close()


class _Declining:
    """A backend that answers every request, upgrade or not, with 200 and its path."""

    def __init__(self) -> None:
        self.targets: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> _Declining:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                target = head.split(b" ", 2)[1]
                self.targets.append(target)
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(target), target)
                )
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


_H2C = b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
_H2C += b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"


@pytest.mark.parametrize("together", [False, True], ids=["after-answer", "pipelined"])
async def test_a_declined_upgrade_leaves_the_connection_usable(together: bool) -> None:
    # A backend that declines an upgrade (answers 200, not 101) left the client connection
    # dead: its next request was never read, and the connection was reset.
    backend = await _Declining().start()
    settings = loads(proxy_config(f"http://127.0.0.1:{backend.port}"), "t.yaml")
    proxy = create_proxy(settings, access_log=AccessLog(enabled=False))
    await proxy.start()
    try:
        reader, writer = await asyncio.open_connection(*proxy.address)
        try:
            second = b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n"
            writer.write(_H2C + second if together else _H2C)
            first = await asyncio.wait_for(read_response(reader), 5)
            if not together:
                writer.write(second)
            after = await asyncio.wait_for(read_response(reader), 5)
        finally:
            writer.close()
        assert (first.status, first.body) == (200, b"/a")
        assert (after.status, after.body) == (200, b"/b")
        assert backend.targets == [b"/a", b"/b"]
    finally:
        await stop_after_test(proxy, 1.0)
        await backend.close()


async def test_close_delimited_response_becomes_chunked(stack: Stack) -> None:
    resp = await raw_exchange(stack.port, _req("GET", "/close-delimited"))
    assert resp.complete and resp.body == b"until close"


_CODED = {
    # a transfer coding before chunked; a coding alone: the body ends at the close
    b"/te-gzip-chunked": b"transfer-encoding: gzip, chunked\r\n\r\n4\r\nGZIP\r\n0\r\n\r\n",
    b"/te-gzip": b"transfer-encoding: gzip\r\n\r\nGZIP",
}


@pytest.mark.parametrize("path", list(_CODED))
@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
async def test_transfer_codings_other_than_chunked_are_kept(
    stack: Stack, path: bytes, version: str
) -> None:
    # The codings were dropped with the chunked framing: the client got gzip bytes
    # labelled as plain ones. An HTTP/1.0 client cannot take a transfer coding: 502.
    def coded(t: asyncio.Transport, rec: Received) -> None:
        t.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n" + _CODED[path])
        if path == b"/te-gzip":
            t.close()

    stack.upstream.extra[path] = coded
    request = _req("GET", path.decode()).replace(b"HTTP/1.1", version.encode(), 1)
    resp = await raw_exchange(stack.port, request)
    if version == "HTTP/1.0":
        assert resp.status == 502 and resp.complete
        return
    assert resp.status == 200 and resp.complete
    assert resp.header(b"transfer-encoding") == [b"gzip, chunked"]
    assert resp.body == b"GZIP"


def _rss_kb() -> int:
    with open(f"/proc/{os.getpid()}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def test_large_upload_streamed_with_bounded_memory(stack: Stack) -> None:
    size = 100 * 1024 * 1024
    chunk = b"z" * (256 * 1024)
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: shop.example\r\nContent-Length: %d\r\n\r\n" % size)
    before = _rss_kb()
    peak = before
    sent = 0
    while sent < size:
        writer.write(chunk)
        sent += len(chunk)
        await writer.drain()
        if sent % (8 * len(chunk)) == 0:
            peak = max(peak, _rss_kb())
    resp = await asyncio.wait_for(read_response(reader), 30)
    peak = max(peak, _rss_kb())
    writer.close()
    assert resp.status == 200
    assert resp.json()["body_len"] == size  # type: ignore[index]
    # client, proxy and upstream all live in this process: the whole test's growth counts
    growth_mb = (peak - before) / 1024
    print(f"100 MB upload: RSS growth {growth_mb:.1f} MB")
    assert growth_mb < 50


async def test_host_rewritten_per_backend_when_configured(upstream: EchoUpstream) -> None:
    settings = loads(
        proxy_config(upstream.url, backend_extra="    host_header: legacy.internal"), "h.yaml"
    )
    proxy = create_proxy(settings, access_log=AccessLog(enabled=False))
    await proxy.start()
    try:
        await raw_exchange(proxy.address[1], _req("GET", "/echo"))
    finally:
        await stop_after_test(proxy, 1.0)
    rec = upstream.received[-1]
    assert rec.header(b"host") == [b"legacy.internal"]
    assert rec.header(b"x-forwarded-host") == [b"shop.example"]


async def test_trailers_of_a_response_never_reach_the_next_one(stack: Stack) -> None:
    # a chunked answer with a trailer field, then another request on the same connection
    def trailers(t: asyncio.Transport, rec: object) -> None:
        t.write(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n"
            b"2\r\nok\r\n0\r\nx-checksum: abc123\r\n\r\n"
        )

    stack.upstream.extra[b"/trailers"] = trailers
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    writer.write(_req("GET", "/trailers"))
    first = await asyncio.wait_for(read_response(reader), 5)
    assert (first.status, first.body) == (200, b"ok")
    connections = stack.upstream.connections
    writer.write(_req("GET", "/echo"))
    second = await asyncio.wait_for(read_response(reader), 5)
    assert stack.upstream.connections == connections  # the same upstream connection, reused
    assert second.status == 200
    assert second.header(b"x-checksum") == []
    writer.close()


def _keepalive_armed(local_port: int, remote_port: int) -> bool | None:
    """Whether the kernel runs a keepalive timer on the loopback TCP socket between the two
    ports (/proc/net/tcp's timer column: 2), or None when there is no such socket."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, timer = fields[1], fields[2], fields[5]
        if (
            int(local.split(":")[1], 16) == local_port
            and int(remote.split(":")[1], 16) == remote_port
        ):
            return timer.split(":")[0] == "02"
    return None


async def test_a_tunnel_probes_both_of_its_connections_with_tcp_keepalive(stack: Stack) -> None:
    # A tunnel's peer that vanished without a FIN (a laptop closed, a NAT timeout) held both
    # sockets forever: no timeout of ours may cut a quiet WebSocket, so the kernel probes.
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    try:
        client_port = writer.get_extra_info("sockname")[1]
        assert _keepalive_armed(stack.port, client_port) is False  # plain HTTP: no probes
        writer.write(
            b"GET /ws HTTP/1.1\r\nHost: shop.example\r\nConnection: Upgrade\r\n"
            b"Upgrade: echo\r\n\r\n"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101")
        assert _keepalive_armed(stack.port, client_port) is True
        proxy_side = [
            int(line.split()[1].split(":")[1], 16)
            for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
            if int(line.split()[2].split(":")[1], 16) == stack.upstream.port
        ]
        assert proxy_side, "no connection from the proxy to the upstream"
        assert any(_keepalive_armed(p, stack.upstream.port) for p in proxy_side)
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("headers", "proto", "host"),
    [
        ([("X-Forwarded-Proto", "https")], [b"https"], [b"shop.example"]),
        ([("X-Forwarded-Host", "www.shop.example")], [b"http"], [b"www.shop.example"]),
        (
            [("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "www.shop.example:443")],
            [b"https"],
            [b"www.shop.example:443"],
        ),
        # a chain of proxies: passed on as they came, for the backend to read as it would
        # without strangler in front (frameworks take the hop they trust, often the last)
        (
            [
                ("X-Forwarded-Proto", " https , http"),
                ("X-Forwarded-Host", "www.shop.example, lb.internal"),
                ("X-Forwarded-Proto", "http"),
                ("X-Forwarded-Host", "other.internal"),
            ],
            [b"https , http", b"http"],
            [b"www.shop.example, lb.internal", b"other.internal"],
        ),
        # an empty one is passed on too: the backend sees what it would see directly
        ([("X-Forwarded-Proto", "")], [b""], [b"shop.example"]),
        # named hop-by-hop by the client's Connection header: removed, so ours are set
        (
            [
                ("Connection", "x-forwarded-proto, X-Forwarded-Host"),
                ("X-Forwarded-Proto", "https"),
                ("X-Forwarded-Host", "evil.example"),
            ],
            [b"http"],
            [b"shop.example"],
        ),
    ],
    ids=["proto", "host", "both", "chain", "empty", "hop-by-hop"],
)
async def test_incoming_x_forwarded_proto_and_host_are_kept(
    stack: Stack, headers: list[tuple[str, str]], proto: list[bytes], host: list[bytes]
) -> None:
    # behind a TLS-terminating load balancer the monolith must still see https (found in
    # review: both were replaced by http and the Host, so redirects went to http://)
    await raw_exchange(stack.port, _req("GET", "/echo", headers))
    rec = stack.upstream.received[-1]
    assert rec.header(b"x-forwarded-proto") == proto
    assert rec.header(b"x-forwarded-host") == host
    assert rec.header(b"x-forwarded-for") == [b"127.0.0.1"]


async def test_a_status_line_without_a_reason_keeps_none_of_an_earlier_one(stack: Stack) -> None:
    # A reason phrase is optional (RFC 9112 4): one left out was filled with the previous
    # response's on that upstream connection (another user's "404 Not Found"), or with the
    # interim "Continue" before it.
    answers = {
        b"/notfound": b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
        b"/bare": b"HTTP/1.1 200\r\ncontent-length: 2\r\n\r\nok",
        b"/interim": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201\r\ncontent-length: 0\r\n\r\n",
    }
    for path, answer in answers.items():

        def write(t: asyncio.Transport, rec: Received, answer: bytes = answer) -> None:
            t.write(answer)

        stack.upstream.extra[path] = write
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    try:
        got = []
        for path in (b"/notfound", b"/bare", b"/interim"):
            writer.write(_req("GET", path.decode()))
            async with asyncio.timeout(5):
                head = await reader.readuntil(b"\r\n\r\n")
                if path == b"/interim":
                    head = await reader.readuntil(b"\r\n\r\n")  # after the 100's
                if path == b"/bare":
                    await reader.readexactly(2)
            got.append(head.split(b"\r\n", 1)[0])
    finally:
        writer.close()
    assert stack.upstream.connections == 1  # one upstream connection served all three
    assert got == [b"HTTP/1.1 404 Not Found", b"HTTP/1.1 200 ", b"HTTP/1.1 201 "]


async def test_a_reason_phrase_split_across_reads_arrives_whole(stack: Stack) -> None:
    # The parser hands a reason phrase over in the pieces the reads cut it into: only the
    # last piece reached the client ("404 und").
    def write(t: asyncio.Transport, rec: Received) -> None:
        t.write(b"HTTP/1.1 404 Not Fo")  # the rest in a later read
        rest = b"und\r\ncontent-length: 0\r\n\r\n"
        asyncio.get_running_loop().call_later(0.05, t.write, rest)

    stack.upstream.extra[b"/split"] = write
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    try:
        writer.write(_req("GET", "/split"))
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()
    assert head.split(b"\r\n", 1)[0] == b"HTTP/1.1 404 Not Found"


async def test_a_tunnel_client_that_half_closes_still_gets_the_backends_answer() -> None:
    # A client's FIN inside a tunnel closed both connections at once: the backend's answer
    # to everything it was sent (a last frame, a summary) was cut with a reset.
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching\r\nconnection: upgrade\r\nupgrade: x\r\n\r\n")
        got = await reader.read()  # to the client's end of data
        writer.write(b"got %d bytes" % len(got))
        await writer.drain()
        writer.close()

    async with proxy_before(serve) as proxy:
        reader, writer = await asyncio.open_connection(*proxy.address)
        writer.write(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n")
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 ")
            writer.write(b"x" * 1000)
            writer.write_eof()
            try:
                rest = await reader.read()
            except ConnectionResetError:
                rest = b"<reset>"
        writer.close()
    assert rest == b"got 1000 bytes"


async def test_trailer_fields_of_a_chunked_response_reach_the_client(stack: Stack) -> None:
    # The trailer section of a chunked answer (a checksum, a final status) was dropped: the
    # client got the last chunk alone.
    def trailers(t: asyncio.Transport, rec: object) -> None:
        t.write(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            b"2\r\nok\r\n0\r\nX-Checksum: abc123\r\nServer-Timing: db;dur=5\r\n"
            b"X-Checksum: second\r\n\r\n"
        )

    stack.upstream.extra[b"/trailers"] = trailers
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    try:
        writer.write(_req("GET", "/trailers"))
        async with asyncio.timeout(5):
            await reader.readuntil(b"\r\n\r\n")  # the head
            body = await reader.readuntil(b"\r\n0\r\n")
            tail = b""
            while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
                tail += line  # the trailer section, to its empty line
        writer.write(_req("GET", "/echo"))
        second = await asyncio.wait_for(read_response(reader), 5)
    finally:
        writer.close()
    assert body == b"2\r\nok\r\n0\r\n"
    assert tail == b"X-Checksum: abc123\r\nServer-Timing: db;dur=5\r\nX-Checksum: second\r\n"
    assert second.status == 200 and second.header(b"x-checksum") == []


async def test_trailer_fields_of_a_chunked_request_reach_the_backend(stack: Stack) -> None:
    # A client's trailer section (a checksum of the upload) was dropped on the way.
    request = (
        b"POST /echo HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nX-Sum: 5d41402a\r\nX-Sum: again\r\n\r\n"
    )
    _, rec_direct, proxied, rec_proxied = await _both(stack, request)
    assert proxied.status == 200
    assert rec_direct.header(b"x-sum") == [b"5d41402a", b"again"]  # as the upstream reads it
    assert rec_proxied.header(b"x-sum") == [b"5d41402a", b"again"]
    assert rec_proxied.body_len == 5


@pytest.mark.parametrize(
    "name", [b"X-Strangler-Dry-Run", b"X-Strangler-Shadow", b"X-Forwarded-For", b"Connection"]
)
async def test_a_request_trailer_the_head_would_drop_is_dropped(stack: Stack, name: bytes) -> None:
    # The proxy's own request headers (a dry-run flag a candidate obeys, the client address
    # it vouches for) and hop-by-hop fields are dropped from the head: in a trailer too.
    request = (
        b"POST /echo HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n" + name + b": 1\r\nX-Sum: 5d41402a\r\n\r\n"
    )
    _, _, proxied, rec_proxied = await _both(stack, request)
    assert proxied.status == 200
    assert rec_proxied.header(b"x-sum") == [b"5d41402a"]
    assert b"1" not in rec_proxied.header(name), rec_proxied.headers
