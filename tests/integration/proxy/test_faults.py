"""Upstream faults: down, hung, reset mid-body, and a client that goes away."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import orjson
import pytest
from prometheus_client import generate_latest

from proxy.accesslog import AccessLog
from proxy.app import Proxy, create_proxy
from proxy.settings import loads
from tests.integration.proxy.conftest import Stack, proxy_config
from tests.support import stop_after_test, wait_until
from tests.upstreams import EchoUpstream, RawResponse, raw_exchange, read_response

GET = b"GET /%s HTTP/1.1\r\nHost: shop.example\r\n\r\n"


@pytest.fixture
async def down_proxy() -> AsyncIterator[Proxy]:
    # Nothing listens on port 1, and no bind to port 0 is ever given it: a port that was
    # merely free could become this very proxy's listen port (it then forwards to itself)
    dead = 1
    proxy = create_proxy(
        loads(proxy_config(f"http://127.0.0.1:{dead}"), "t.yaml"),
        access_log=AccessLog(enabled=False),
    )
    await proxy.start()
    yield proxy
    await stop_after_test(proxy, 1.0)


async def test_backend_down_gives_502_json_naming_backend(down_proxy: Proxy) -> None:
    start = time.monotonic()
    resp = await raw_exchange(down_proxy.address[1], GET % b"echo")
    elapsed = time.monotonic() - start
    assert resp.status == 502
    body = orjson.loads(resp.body)
    assert body["error"]["backend"] == "legacy"
    assert body["error"]["code"] == "bad_gateway"
    assert body["error"]["request_id"]
    assert resp.header(b"content-type") == [b"application/json"]
    assert elapsed < 0.3 + 0.5  # connect_timeout is 300ms; a refused port fails at once


async def test_hung_backend_gives_504_at_timeout(stack: Stack) -> None:
    start = time.monotonic()
    resp = await raw_exchange(stack.port, GET % b"hang")
    elapsed = time.monotonic() - start
    assert resp.status == 504
    body = orjson.loads(resp.body)
    assert body["error"]["backend"] == "legacy"
    assert body["error"]["code"] == "gateway_timeout"
    assert 0.9 <= elapsed < 2.0  # backend timeout is 1s


async def test_reset_mid_body_aborts_client_connection(stack: Stack) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    writer.write(GET % b"reset-mid")
    resp = await asyncio.wait_for(read_response(reader), 5)
    writer.close()
    assert resp.status == 200
    assert not resp.complete  # the client sees a broken response, never a whole one
    assert len(resp.body) < 1000


async def test_client_disconnect_cancels_upstream_request(stack: Stack) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    writer.write(GET % b"hang")
    await writer.drain()
    await asyncio.wait_for(stack.upstream.hung.wait(), 5)
    stack.upstream.lost.clear()
    writer.transport.abort()
    await asyncio.wait_for(stack.upstream.lost.wait(), 5)
    assert stack.upstream.behaviour.aborted.is_set() or stack.upstream.received[-1].complete


async def test_connection_reused_after_error_response(stack: Stack) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    writer.write(GET % b"status/503")
    first = await asyncio.wait_for(read_response(reader), 5)
    writer.write(GET % b"echo")
    second = await asyncio.wait_for(read_response(reader), 5)
    writer.close()
    assert (first.status, second.status) == (503, 200)


async def test_stale_pooled_connection_retried_once_for_get(stack: Stack) -> None:
    assert (await raw_exchange(stack.port, GET % b"echo")).status == 200
    # the upstream drops its idle keep-alive connections behind the proxy's back
    for t in list(stack.upstream.transports):
        t.close()
    resp = await raw_exchange(stack.port, GET % b"echo")
    assert resp.status == 200


async def test_malformed_request_gets_400_and_is_not_forwarded(stack: Stack) -> None:
    resp = await raw_exchange(
        stack.port,
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    assert resp.status == 400
    assert stack.upstream.received == []


def _errors(proxy: Proxy, kind: str) -> float:
    proxy.metrics.flush()
    text = generate_latest(proxy.metrics.registry).decode()
    prefix = f'strangler_upstream_errors_total{{backend="legacy",kind="{kind}"}} '
    return sum(float(ln[len(prefix) :]) for ln in text.splitlines() if ln.startswith(prefix))


async def test_failed_connect_retried_once_for_every_method(upstream: object) -> None:
    from tests.upstreams import EchoUpstream

    assert isinstance(upstream, EchoUpstream)
    proxy = create_proxy(
        loads(proxy_config("http://127.0.0.1:1"), "t.yaml"),  # refused, as in down_proxy
        access_log=AccessLog(enabled=False),
    )
    await proxy.start()
    try:
        get = await raw_exchange(proxy.address[1], GET % b"echo")
        post = await raw_exchange(
            proxy.address[1], b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx"
        )
        assert (get.status, post.status) == (502, 502), (get.body, post.body)
        # nothing was sent on a refused connect: GET and POST alike get one more try
        assert _errors(proxy, "connect") == 4
    finally:
        await stop_after_test(proxy, 1.0)


def _listen_overflows() -> int:
    """Linux's count of SYNs dropped because a listener's accept queue was full."""
    with open("/proc/net/netstat") as fh:
        lines = fh.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=True):
        if names.startswith("TcpExt:"):
            return int(
                dict(zip(names.split()[1:], values.split()[1:], strict=True))["ListenOverflows"]
            )
    raise AssertionError("no TcpExt line in /proc/net/netstat")


def _syn_sent_to(port: int) -> bool:
    """Whether a connect to 127.0.0.1:`port` waits for its handshake (state SYN_SENT)."""
    with open("/proc/net/tcp") as fh:
        rows = [line.split() for line in fh.readlines()[1:]]
    return any(r[2] == f"0100007F:{port:04X}" and r[3] == "02" for r in rows)


def _full_listener() -> tuple[socket.socket, socket.socket]:
    """A listener whose accept queue is full (one connection nobody accepts): the kernel
    drops further SYNs. The listener and the connection that fills it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)  # room for one queued connection
    listener.setblocking(False)
    filler = socket.socket()
    filler.connect(listener.getsockname())  # fills the queue
    return listener, filler


async def test_a_second_connect_has_the_backend_timeout_anew() -> None:
    # connect_timeout 400ms, timeout 600ms, no connect ever completes: the retry started
    # at 0.4 s must end as the connect failure it is (502 at 0.8 s), not be cut by the
    # backend timeout at 0.6 s as a 504 for a backend that "did not answer".
    listener, filler = _full_listener()
    text = proxy_config(f"http://127.0.0.1:{listener.getsockname()[1]}")
    text = text.replace(
        "timeout: 1s\n    connect_timeout: 300ms", "timeout: 600ms\n    connect_timeout: 400ms"
    )
    proxy = create_proxy(loads(text, "t.yaml"), access_log=AccessLog(enabled=False))
    await proxy.start()
    try:
        resp = await raw_exchange(proxy.address[1], GET % b"x")
        assert resp.status == 502, resp.body
        assert b"timed out" in resp.body
        assert _errors(proxy, "timeout") == 2
    finally:
        filler.close()
        listener.close()
        await stop_after_test(proxy, 1.0)


@pytest.mark.parametrize(
    "request_bytes",
    [GET % b"x", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nok"],
    ids=["GET", "POST"],
)
async def test_a_connect_whose_syn_was_dropped_is_tried_again(request_bytes: bytes) -> None:
    # A backend whose accept queue is full (a burst of new connections): Linux drops the
    # SYN and resends it only after 1 s, past connect_timeout (300ms). Once the queue has
    # room, a second connect gets through at once: the user is served, not sent a 502.
    loop = asyncio.get_running_loop()
    listener, filler = _full_listener()
    port = listener.getsockname()[1]
    proxy = create_proxy(
        loads(proxy_config(f"http://127.0.0.1:{port}"), "t.yaml"),
        access_log=AccessLog(enabled=False),
    )
    await proxy.start()
    try:
        before = _listen_overflows()
        answer = asyncio.create_task(raw_exchange(proxy.address[1], request_bytes))
        # the proxy's connect under way, and its SYN dropped (the count is the namespace's,
        # hence both)
        await wait_until(lambda: _syn_sent_to(port) and _listen_overflows() > before)
        queued, _ = await loop.sock_accept(listener)  # room again
        queued.close()
        conn, _ = await asyncio.wait_for(loop.sock_accept(listener), 5)
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += await loop.sock_recv(conn, 65536)
            assert head.split(b" ", 1)[0] == request_bytes.split(b" ", 1)[0]
            await loop.sock_sendall(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
            resp = await answer
        assert (resp.status, resp.body) == (200, b"hi")
        assert _errors(proxy, "timeout") == 1  # the first connect did time out
    finally:
        filler.close()
        listener.close()
        await stop_after_test(proxy, 1.0)


@dataclass
class _Queued:
    """A one-connection proxy: `GET /hold` has the connection (its answer is held back in
    `held`), `GET /echo` waits in the pool for it."""

    proxy: Proxy
    held: asyncio.Transport
    first: asyncio.Future[RawResponse]
    second: asyncio.Future[RawResponse]


@asynccontextmanager
async def _queued_behind_one(upstream: EchoUpstream) -> AsyncIterator[_Queued]:
    held: list[asyncio.Transport] = []
    upstream.extra[b"/hold"] = lambda t, rec: held.append(t)
    text = proxy_config(upstream.url).replace("max_connections: 50", "max_connections: 1")
    proxy = create_proxy(loads(text, "t.yaml"), access_log=AccessLog(enabled=False))
    await proxy.start()
    try:
        port = proxy.address[1]
        first = asyncio.ensure_future(raw_exchange(port, GET % b"hold"))
        await wait_until(lambda: bool(held), timeout=5)
        second = asyncio.ensure_future(raw_exchange(port, GET % b"echo"))
        [pool] = proxy.pools()
        await wait_until(lambda: len(pool._waiters) == 1, timeout=5)  # it waits for the one
        yield _Queued(proxy, held[0], first, second)
    finally:
        await stop_after_test(proxy, 1.0)


@pytest.mark.parametrize(
    "extra",
    [
        b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nforged",  # a response nobody asked for
        b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: x\r\n\r\nforged",
        b"forged",  # not HTTP at all
    ],
)
async def test_bytes_after_a_response_never_become_the_next_users_response(
    upstream: EchoUpstream, extra: bytes
) -> None:
    """An upstream that sends more than its response (a wrong Content-Length, a response
    nobody asked for) poisons that connection: a request waiting for it must not be sent on
    it, nor be answered with those bytes."""
    async with _queued_behind_one(upstream) as q:
        q.held.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok" + extra)
        a, b = await asyncio.wait_for(asyncio.gather(q.first, q.second), 5)
    assert (a.status, a.body) == (200, b"ok")
    assert b.status == 200 and b.body != b"forged"
    assert orjson.loads(b.body)["target"] == "/echo"  # its own answer, from the upstream
    assert upstream.connections == 2  # sent on a new connection, not the poisoned one


async def test_a_head_answer_with_a_body_closes_its_connection(stack: Stack) -> None:
    def head_with_body(t: asyncio.Transport, rec: object) -> None:
        t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")  # a body HEAD never has

    stack.upstream.extra[b"/headbody"] = head_with_body
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    writer.write(b"HEAD /headbody HTTP/1.1\r\nHost: shop.example\r\n\r\n")
    first = await asyncio.wait_for(read_response(reader, head_only=True), 5)
    assert (first.status, first.body) == (200, b"")
    writer.write(GET % b"echo")
    second = await asyncio.wait_for(read_response(reader), 5)
    assert orjson.loads(second.body)["target"] == "/echo"
    assert stack.upstream.connections == 2  # never reused after bytes it was not asked for
    writer.close()


async def test_requests_waiting_on_a_replaced_backend_are_still_served(
    upstream: EchoUpstream,
) -> None:
    """A reload that replaces the backend closes its pool; requests already routed to it
    and waiting for a connection are served by it, not left to time out."""
    other = await EchoUpstream().start()
    try:
        async with _queued_behind_one(upstream) as q:
            [pool] = q.proxy.pools()
            await q.proxy.reload(loads(proxy_config(other.url), "t.yaml"))
            assert pool._closed
            q.held.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            a, b = await asyncio.wait_for(asyncio.gather(q.first, q.second), 3)
    finally:
        await other.close()
    assert (a.status, a.body) == (200, b"ok")
    assert b.status == 200  # not a 504 after the backend's timeout (1 s)
    assert orjson.loads(b.body)["target"] == "/echo"
    assert upstream.connections == 2 and other.connections == 0  # where it was routed


async def _head_then_get(port: int, head_path: bytes, get_path: bytes) -> tuple[bytes, bytes]:
    """HEAD then GET on one kept-alive connection: the raw head of the HEAD's answer and
    the first line of what follows it (the GET's answer, if nothing came in between)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"HEAD /%s HTTP/1.1\r\nHost: shop.example\r\n\r\n" % head_path)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.write(GET % get_path)
        after = await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()
    return head, after


async def test_a_head_answered_502_by_the_proxy_has_no_body(down_proxy: Proxy) -> None:
    # The JSON error body once followed the head of a HEAD answer on a kept-alive
    # connection: the client read it as the start of its next response.
    head, after = await _head_then_get(down_proxy.address[1], b"echo", b"echo")
    assert head.startswith(b"HTTP/1.1 502 ") and b"\r\ncontent-length: " in head
    assert after.startswith(b"HTTP/1.1 502 ")


async def test_a_head_answered_504_by_the_proxy_has_no_body(stack: Stack) -> None:
    head, after = await _head_then_get(stack.port, b"hang", b"echo")
    assert head.startswith(b"HTTP/1.1 504 ")
    assert after.startswith(b"HTTP/1.1 200 ")


async def test_a_head_refused_by_the_proxy_has_no_body(stack: Stack) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    try:
        writer.write(b"HEAD /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        async with asyncio.timeout(5):
            answer = await reader.read()  # everything until the proxy closes
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 400 ") and b"\r\ncontent-length: " in answer
    assert answer.endswith(b"\r\n\r\n")


async def test_a_hung_backend_gives_504_at_timeout_after_a_request_body(stack: Stack) -> None:
    # Each body read once set the upstream's last activity to the body deadline (30 s
    # ahead): a request with a body got its 504 after timeout + body_timeout.
    start = time.monotonic()
    resp = await raw_exchange(
        stack.port, b"POST /hang HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 4\r\n\r\nbody"
    )
    elapsed = time.monotonic() - start
    assert resp.status == 504
    assert 0.9 <= elapsed < 2.0  # backend timeout is 1s


async def test_a_client_pausing_mid_body_past_the_backend_timeout_is_no_504(stack: Stack) -> None:
    # The backend timeout (1 s) ran while the body was still coming from the client: a
    # client that paused mid-upload got a 504 and its backend half a body, counted as a
    # backend timeout. The client's own body deadline (30 s) covers that time.
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    try:
        writer.write(b"POST /up HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 10\r\n\r\nfirst")
        await writer.drain()
        await wait_until(lambda: len(stack.upstream.received) == 1, timeout=5)
        await asyncio.sleep(1.6)  # the client's pause under test, past the backend timeout
        writer.write(b"-last")
        resp = await asyncio.wait_for(read_response(reader), 5)
    finally:
        writer.close()
    assert resp.status == 200
    [rec] = stack.upstream.received
    assert rec.complete and rec.body_len == 10


async def test_a_head_answer_body_sent_late_never_reaches_the_next_request(stack: Stack) -> None:
    # A backend that sends a body after its answer to a HEAD (in a later read than the
    # head) once had that connection pooled: the next request sent on it got those bytes.
    headed: set[asyncio.Transport] = set()

    def head_then_late_body(t: asyncio.Transport, rec: object) -> None:
        t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 45\r\n\r\n")
        headed.add(t)

    def next_answer(t: asyncio.Transport, rec: object) -> None:
        if t in headed:  # the HEAD's body comes now, ahead of this answer
            t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nforged")
        t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nreal")

    stack.upstream.extra[b"/headlate"] = head_then_late_body
    stack.upstream.extra[b"/next"] = next_answer
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    try:
        writer.write(b"HEAD /headlate HTTP/1.1\r\nHost: shop.example\r\n\r\n")
        first = await asyncio.wait_for(read_response(reader, head_only=True), 5)
        assert (first.status, first.body) == (200, b"")
        writer.write(GET % b"next")
        second = await asyncio.wait_for(read_response(reader), 5)
    finally:
        writer.close()
    assert (second.status, second.body) == (200, b"real")
    assert stack.upstream.connections == 2  # a connection that answered a HEAD is not reused


async def test_an_answer_before_the_upload_ends_says_close_and_lets_the_body_finish(
    stack: Stack,
) -> None:
    # A backend answering 413 from the head (its body limit) left the client thinking the
    # connection was reusable, then reset it while the rest of the upload was still coming:
    # a client that sends its whole body before reading saw a reset, never the 413.
    async def answer_early() -> None:
        await stack.upstream.got_request.wait()
        t = next(iter(stack.upstream.transports))
        t.write(b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 2\r\n\r\n{}")

    answering = asyncio.create_task(answer_early())
    total = 8 << 20  # more than the loopback buffers hold
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    try:
        writer.write(b"POST /big HTTP/1.1\r\nHost: a\r\ncontent-length: %d\r\n\r\n" % total)
        writer.write(b"x" * 1000)
        resp = await asyncio.wait_for(read_response(reader), 5)
        assert (resp.status, resp.header(b"connection")) == (413, [b"close"])
        chunk = b"x" * (256 << 10)
        for _ in range((total - 1000) // len(chunk)):
            writer.write(chunk)
            await writer.drain()  # the rest of the upload is read (and dropped), not reset
        writer.write(b"x" * ((total - 1000) % len(chunk)))
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # then a clean close
    finally:
        await answering
        writer.transport.abort()
