"""Slow and idle clients: header, body and keep-alive deadlines, and the connection cap."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import AsyncIterator, Callable

import orjson

from proxy.dataplane import ClientConnection
from tests.integration.hostile.conftest import Hostile, hostile_stack
from tests.support import close_writer, wait_until
from tests.upstreams import read_response

LIMITS = """
limits:
  header_timeout: 500ms
  body_timeout: 500ms
  keepalive_timeout: 700ms
  max_connections: 3
"""
_SWEEP = 0.25  # the data plane checks deadlines four times a second
_SLACK = 0.6  # two shared cores: scheduling noise


async def _eof_within(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything the server sends until it closes; fails if it stays open past `timeout`."""
    chunks = []
    async with asyncio.timeout(timeout):
        while chunk := await reader.read(65536):
            chunks.append(chunk)
    return b"".join(chunks)


_Held = tuple[Hostile, asyncio.StreamReader, ClientConnection, Callable[[bytes], None]]


@contextlib.asynccontextmanager
async def _behind_a_held_answer(requests: bytes) -> AsyncIterator[_Held]:
    """`GET /held` and then `requests`, pipelined on one connection, once the backend holds
    /held's answer: the stack, the client's reader, the proxy's side of the connection, and
    what writes the held answer."""
    held: list[asyncio.Transport] = []
    async with hostile_stack(LIMITS) as h:
        h.legacy.extra[b"/held"] = lambda t, rec: held.append(t)
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        try:
            writer.write(b"GET /held HTTP/1.1\r\nHost: a\r\n\r\n" + requests)
            await wait_until(lambda: bool(held), timeout=5)
            plane = h.proxy.plane
            assert plane is not None
            yield h, reader, next(iter(plane.connections)), held[0].write
        finally:
            await close_writer(writer)


async def test_trickled_headers_get_408_at_the_header_timeout() -> None:
    async with hostile_stack(LIMITS) as h:
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        start = time.monotonic()
        request = b"GET /slow HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"p" * 200 + b"\r\n\r\n"
        status = 0
        for byte in request:  # one byte every 20 ms: 4+ s for the whole head
            if reader.at_eof() or writer.is_closing():
                break
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:
                break
            try:
                resp = await asyncio.wait_for(read_response(reader), 0.02)
            except TimeoutError:
                continue
            status = resp.status
            break
        elapsed = time.monotonic() - start
        await close_writer(writer)
        assert status == 408
        assert 0.5 <= elapsed < 0.5 + _SWEEP + _SLACK
        assert h.total() == 0


async def test_a_silent_connection_is_closed_at_the_header_timeout() -> None:
    async with hostile_stack(LIMITS) as h:
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        start = time.monotonic()
        await _eof_within(reader, 3)
        elapsed = time.monotonic() - start
        await close_writer(writer)
        assert 0.5 <= elapsed < 0.5 + _SWEEP + _SLACK


async def test_a_stalled_body_times_out_and_the_upstream_leg_is_cut() -> None:
    log = io.BytesIO()
    async with hostile_stack(LIMITS, log=log, access=True) as h:
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        writer.write(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc")
        await asyncio.wait_for(h.legacy.got_request.wait(), 5)
        start = time.monotonic()
        data = await _eof_within(reader, 3)
        elapsed = time.monotonic() - start
        await close_writer(writer)
        assert data.startswith(b"HTTP/1.1 408 ")
        assert elapsed < 0.5 + _SWEEP + _SLACK
        await asyncio.wait_for(h.legacy.lost.wait(), 5)
        assert [(r.target, r.complete) for r in h.legacy.received] == [(b"/upload", False)]
    # logged with the status the client was sent
    [line] = [e for e in map(orjson.loads, log.getvalue().splitlines()) if e.get("path")]
    assert (line["path"], line["status"], line["error"]) == ("/upload", 408, "client_timeout")


async def test_a_client_that_half_closes_mid_body_ends_its_exchange_at_once() -> None:
    """A body cut short by the client's FIN can never complete: the exchange ends then (as
    a client gone), not at the body deadline, and the backend's connection is cut."""
    log = io.BytesIO()
    async with hostile_stack(
        LIMITS.replace("body_timeout: 500ms", "body_timeout: 30s"), log=log, access=True
    ) as h:
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        writer.write(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc")
        await asyncio.wait_for(h.legacy.got_request.wait(), 5)
        writer.write_eof()
        assert await _eof_within(reader, 3) == b""  # closed, nothing sent
        await asyncio.wait_for(h.legacy.lost.wait(), 5)
        plane = h.proxy.plane
        assert plane is not None and plane.in_flight == 0
        await close_writer(writer)
        # a whole request before the FIN is still answered (half-close)
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        writer.write(b"GET /whole HTTP/1.1\r\nHost: a\r\n\r\n")
        writer.write_eof()
        assert (await _eof_within(reader, 3)).startswith(b"HTTP/1.1 200 ")
        await close_writer(writer)
    lines = [e for e in map(orjson.loads, log.getvalue().splitlines()) if e.get("path")]
    assert [(e["path"], e["status"], e.get("error")) for e in lines] == [
        ("/upload", 499, "client_disconnected"),
        ("/whole", 200, None),
    ]


async def _idle_after_one_request() -> tuple[bytes, float]:
    async with hostile_stack(LIMITS) as h:
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        writer.write(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
        resp = await asyncio.wait_for(read_response(reader), 5)
        assert resp.status == 200
        start = time.monotonic()
        rest = await _eof_within(reader, 3)
        elapsed = time.monotonic() - start
        await close_writer(writer)
        return rest, elapsed


async def test_idle_keep_alive_connection_is_closed_at_the_keepalive_timeout() -> None:
    _, elapsed = await _idle_after_one_request()
    assert 0.7 - 0.05 <= elapsed < 0.7 + _SWEEP + _SLACK


async def test_idle_keep_alive_connection_is_closed_silently() -> None:
    rest, _ = await _idle_after_one_request()
    assert rest == b""


async def test_connections_over_the_cap_get_503_and_are_logged() -> None:
    log = io.BytesIO()
    async with hostile_stack(LIMITS, log=log) as h:
        held = [await asyncio.open_connection("127.0.0.1", h.port) for _ in range(3)]
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        refused = await _eof_within(reader, 3)
        await close_writer(writer)
        assert refused.startswith(b"HTTP/1.1 503 ")
        assert h.total() == 0
        # the held connections are served, and a freed slot is usable again
        r0, w0 = held[0]
        w0.write(b"GET /held HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert (await asyncio.wait_for(read_response(r0), 5)).status == 200
        await _eof_within(r0, 3)
        for _, w in held:
            await close_writer(w)
        assert h.proxy.plane is not None
        deadline = time.monotonic() + 5
        while len(h.proxy.plane.connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        writer.write(b"GET /again HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await asyncio.wait_for(read_response(reader), 5)).status == 200
        await close_writer(writer)
    events = [orjson.loads(line) for line in log.getvalue().splitlines()]
    assert {"event": "connection_limit", "limit": 3} in [
        {k: e[k] for k in ("event", "limit") if k in e} for e in events
    ]


async def test_a_header_line_that_never_ends_is_refused_as_it_grows() -> None:
    """The parser keeps a header line until it ends, so the limit checked per whole header
    never saw one that does not end: megabytes a second were held (and copied again at
    every read) until the header deadline. It is refused once the head passes its limit."""
    async with hostile_stack() as h:  # header_timeout 10 s: the deadline is not what ends it
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        writer.write(b"GET /big HTTP/1.1\r\nHost: a\r\nX-Endless: ")
        chunk = b"v" * 65536
        sent = 0
        answer = b""
        async with asyncio.timeout(8):
            while sent < 8 << 20 and not answer:  # at most 8 MiB
                try:
                    writer.write(chunk)
                    await writer.drain()
                except ConnectionError:
                    break
                sent += len(chunk)
                try:
                    answer = await asyncio.wait_for(reader.read(65536), 0.01)
                except TimeoutError:
                    pass
        if not answer:
            try:
                answer = await asyncio.wait_for(reader.read(65536), 1)
            except TimeoutError:
                pass
        await close_writer(writer)
        assert answer.startswith(b"HTTP/1.1 431 "), (sent, answer[:40])
        assert sent <= 1 << 20  # long before the end: the 64 KiB limit and a read or two
        assert h.total() == 0


async def test_a_stalled_body_behind_a_pipelined_request_still_times_out() -> None:
    """The body deadline of a request read while an earlier one was still being answered
    was dropped: once that answer went out, the stalled request went to the backend and
    held its connection for as long as the client liked (no body deadline, no backend one)."""
    upload = b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc"
    async with _behind_a_held_answer(upload) as (h, reader, conn, answer):
        await wait_until(lambda: conn.deadline == 0.0, timeout=5)  # the body deadline passed
        answer(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        data = b""
        try:
            async with asyncio.timeout(3):
                while chunk := await reader.read(65536):
                    data += chunk
        except TimeoutError:
            data += b"<still open>"
        forwarded = [r.target for r in h.legacy.received]
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\n\r\nokHTTP/1.1 408 " in data, (data[-60:], forwarded)
    assert forwarded == [b"/held"]  # the stalled upload never reached the backend


async def test_an_upload_the_proxy_itself_holds_back_is_not_timed_out() -> None:
    """A pipelined upload waiting its turn is read up to 1 MiB, then the proxy stops reading
    it: its body deadline ran on regardless, and an answer before it that took longer than
    the body timeout had the upload dropped with a 408 (the client's fault it was not)."""
    size = 3 << 20
    upload = b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size
    async with _behind_a_held_answer(upload + b"u" * size) as (_, reader, conn, answer):
        await wait_until(lambda: conn.reading_paused_for is not None, timeout=5)
        paused_at = conn.deadline
        await wait_until(lambda: conn.deadline != paused_at, timeout=5)  # it ran out
        answer(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        async with asyncio.timeout(10):
            first = await read_response(reader)
            second = await read_response(reader)
    assert (first.status, first.body) == (200, b"ok")
    assert second.status == 200, second.body[:200]
    assert orjson.loads(second.body)["body_len"] == size


async def test_an_owed_400_stays_a_400_past_the_header_deadline() -> None:
    """A malformed request behind one still being answered is owed a 400 after that answer:
    its header deadline stayed set, and an answer slower than the header timeout had the
    400 replaced by a 408 (the error counted twice)."""
    bad = b"GET /x HTTP/1.1\r\nHost: a\r\nBad Header: 1\r\n\r\n"
    async with _behind_a_held_answer(bad) as (_, reader, conn, answer):
        await wait_until(lambda: conn.error_after is not None, timeout=5)
        # the malformed head's header deadline is gone with it: none can answer it again
        # (one swept while the answer before it was slow made the owed 400 a 408)
        assert conn.deadline == 0.0
        answer(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        data = await _eof_within(reader, 5)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\n\r\nokHTTP/1.1 400 " in data, data[-80:]
