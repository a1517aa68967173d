"""Request smuggling, control characters and size limits: refused, and never forwarded."""

from __future__ import annotations

import asyncio
import io

import orjson
import pytest

from tests.integration.hostile.cases import CASES, KNOWN_GAPS, HostileCase
from tests.integration.hostile.conftest import Hostile, hostile_stack
from tests.support import close_writer
from tests.upstreams import raw_exchange, read_response, read_responses


# Errors llhttp finds only after `on_headers_complete`: with a warm pool the head is
# already on its way to the backend when the body turns out malformed.
def _param(case: HostileCase) -> object:
    reason = KNOWN_GAPS.get(case.name)
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(case, id=case.name, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
async def test_hostile_request_is_refused_and_never_forwarded(
    hostile: Hostile, case: HostileCase
) -> None:
    await hostile.warm()
    before = hostile.total()
    resp = await raw_exchange(hostile.port, case.request)
    assert resp.status == case.status, resp.body[:200]
    assert resp.header(b"connection") == [b"close"]
    await hostile.barrier()
    seen = [r.target for r in hostile.legacy.received[before:]] + [
        r.target for r in hostile.orders.received
    ]
    assert seen == [b"/barrier"], f"{case.why}: reached the upstream"


_PIPELINE = (
    b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n"
    b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n"
    b"\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
)


async def _pipeline(hostile: Hostile) -> list[int]:
    reader, writer = await asyncio.open_connection("127.0.0.1", hostile.port)
    writer.write(_PIPELINE)
    responses = await asyncio.wait_for(read_responses(reader, 3), 5)
    await close_writer(writer)
    return [r.status for r in responses]


async def test_smuggled_request_in_a_pipeline_is_not_forwarded(hostile: Hostile) -> None:
    statuses = await _pipeline(hostile)
    assert statuses[-1] == 400
    await hostile.barrier()
    assert [r.target for r in hostile.legacy.received if r.complete] in (
        [b"/barrier"],
        [b"/first", b"/barrier"],
    )


async def test_a_bad_pipelined_request_leaves_the_earlier_one_answered(hostile: Hostile) -> None:
    assert await _pipeline(hostile) == [200, 400]


async def test_body_error_after_a_streamed_head_never_completes_upstream(
    hostile: Hostile,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", hostile.port)
    writer.write(b"POST /stream HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    writer.write(b"3\r\nabc\r\n")
    await asyncio.wait_for(hostile.legacy.got_request.wait(), 5)
    hostile.legacy.lost.clear()
    writer.write(b"zz\r\nGET /smuggled HTTP/1.1\r\n\r\n")
    resp = await asyncio.wait_for(read_response(reader), 5)
    await close_writer(writer)
    assert resp.status == 400
    await asyncio.wait_for(hostile.legacy.lost.wait(), 5)  # the upstream leg is cut
    assert [(r.target, r.complete) for r in hostile.legacy.received] == [(b"/stream", False)]
    await hostile.barrier()
    assert b"/smuggled" not in [r.target for r in hostile.legacy.received]


_HEAD = b"GET /h HTTP/1.1\r\nHost: a\r\n"


@pytest.mark.parametrize(
    ("limits", "request_bytes", "status"),
    [
        ("max_url_bytes: 300", b"GET /" + b"u" * 320 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
        ("max_url_bytes: 300", b"GET /" + b"u" * 280 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 200),
        ("max_header_bytes: 1024", _HEAD + b"X-A: " + b"v" * 1100 + b"\r\n\r\n", 431),
        ("max_header_bytes: 1024", _HEAD + b"X-A: " + b"v" * 900 + b"\r\n\r\n", 200),
    ],
    ids=["url-over", "url-under", "headers-over", "headers-under"],
)
async def test_configured_limits_apply(limits: str, request_bytes: bytes, status: int) -> None:
    async with hostile_stack(f"limits:\n  {limits}\n") as h:
        resp = await raw_exchange(h.port, request_bytes)
        assert resp.status == status
        assert len(h.legacy.received) == (1 if status == 200 else 0)


async def test_a_body_found_malformed_is_logged_with_the_400_the_client_got() -> None:
    log = io.BytesIO()
    async with hostile_stack(log=log, access=True) as h:
        await h.warm()
        request = b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        resp = await raw_exchange(h.port, request + b"zz\r\nabc\r\n0\r\n\r\n")
        assert resp.status == 400
    lines = [e for e in map(orjson.loads, log.getvalue().splitlines()) if e.get("path")]
    assert [(e["path"], e["status"], e.get("error")) for e in lines if e["method"] == "POST"] == [
        ("/upload", 400, "bad_request")
    ]


_SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"


@pytest.mark.parametrize("named", [b"Content-Length", b"Host", b"close, content-length, host"])
async def test_connection_header_never_removes_framing_or_host(
    hostile: Hostile, named: bytes
) -> None:
    # Connection: Content-Length once left the body unframed: the backend read it as a
    # second request on the pooled connection and its answer went to the next user.
    await hostile.warm()
    request = (
        b"POST /echo HTTP/1.1\r\nHost: a\r\nConnection: %s\r\nContent-Length: %d\r\n\r\n%s"
        % (named, len(_SMUGGLED), _SMUGGLED)
    )
    resp = await raw_exchange(hostile.port, request)
    assert resp.status == 200
    assert orjson.loads(resp.body)["body_len"] == len(_SMUGGLED)
    rec = hostile.legacy.received[-1]
    assert rec.target == b"/echo" and rec.complete
    assert rec.header(b"content-length") == [b"%d" % len(_SMUGGLED)]
    assert rec.header(b"host") == [b"a"]
    await hostile.barrier()
    assert b"/smuggled" not in [r.target for r in hostile.legacy.received]


async def test_a_response_connection_header_never_removes_its_content_length(
    hostile: Hostile,
) -> None:
    def answer(t: asyncio.Transport, rec: object) -> None:
        t.write(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Content-Length\r\n"
            b"Content-Length: 5\r\n\r\nfirst"
        )

    hostile.legacy.extra[b"/named"] = answer
    reader, writer = await asyncio.open_connection("127.0.0.1", hostile.port)
    try:
        writer.write(b"GET /named HTTP/1.1\r\nHost: a\r\n\r\nGET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
        first, second = await asyncio.wait_for(read_responses(reader, 2), 5)
    finally:
        await close_writer(writer)
    assert first.header(b"content-length") == [b"5"] and first.body == b"first"
    assert second.status == 200 and orjson.loads(second.body)["target"] == "/echo"
