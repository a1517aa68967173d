"""Pipelined requests are each answered by their own terms: version, keep-alive, close."""

from __future__ import annotations

import asyncio

from tests.integration.hostile.conftest import hostile_stack
from tests.support import close_writer
from tests.upstreams import read_responses


async def _all_bytes(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    async with asyncio.timeout(5):
        while chunk := await reader.read(65536):
            chunks.append(chunk)
    return b"".join(chunks)


async def test_a_close_on_the_last_pipelined_request_closes_after_its_answer() -> None:
    async with hostile_stack() as h:
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        writer.write(
            b"GET /r1 HTTP/1.1\r\nHost: a\r\n\r\nGET /r2 HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /r3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        answers = await asyncio.wait_for(read_responses(reader, 3), 5)
        assert [r.status for r in answers] == [200, 200, 200]
        assert [b'"/r%d"' % i in r.body for i, r in enumerate(answers, 1)] == [True] * 3
        assert [r.header(b"connection") for r in answers] == [[], [], [b"close"]]
        assert await _all_bytes(reader) == b""  # then closed
        await close_writer(writer)


async def test_requests_before_a_half_close_are_all_answered() -> None:
    async with hostile_stack() as h:
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        writer.write(b"GET /r1 HTTP/1.1\r\nHost: a\r\n\r\nGET /r2 HTTP/1.1\r\nHost: a\r\n\r\n")
        writer.write_eof()
        answers = await asyncio.wait_for(read_responses(reader, 2), 5)
        assert [r.status for r in answers] == [200, 200]
        assert [r.header(b"connection") for r in answers] == [[], [b"close"]]
        await close_writer(writer)


async def test_an_http_1_0_request_is_answered_in_1_0_terms_whatever_follows_it() -> None:
    async with hostile_stack() as h:

        def early(t: asyncio.Transport, rec: object) -> None:
            t.write(b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n")
            t.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil close")
            t.close()

        h.legacy.extra[b"/early"] = early
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        writer.write(
            b"GET /early HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
            b"GET /r2 HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        data = await _all_bytes(reader)
        await close_writer(writer)
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")  # no 103: a 1.0 client reads it as the answer
        assert b"transfer-encoding" not in head.lower()  # no chunks for a 1.0 client
        assert body == b"until close"
