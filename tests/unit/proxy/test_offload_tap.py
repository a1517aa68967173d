"""A worker's tap for its shadow helper: references to what was served, one frame at the end."""

from __future__ import annotations

import asyncio

from proxy.offload import OffloadCall, OffloadFeed, decode_frames
from proxy.upstream import UpstreamConnection
from tests.unit.proxy.shadow_plans import hub_and_plan

HEAD = b"GET /orders/7 HTTP/1.1\r\nhost: shop\r\nx-request-id: r-7\r\n\r\n"


class Pipe:
    """The socket toward the helper: keeps what is written."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return False


def _feed(loop: asyncio.AbstractEventLoop) -> tuple[OffloadFeed, Pipe, OffloadCall]:
    hub, plan = hub_and_plan(loop)
    feed = OffloadFeed(hub, "unused.yaml", loop)
    pipe = Pipe()
    feed.transport = pipe  # type: ignore[assignment]
    call = feed.call(plan, "r-7", HEAD)
    assert call is not None
    return feed, pipe, call


def test_the_served_reads_go_over_as_they_came(loop: asyncio.AbstractEventLoop) -> None:
    feed, pipe, call = _feed(loop)
    call.request_done()
    call.raw_chunk(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n")
    call.raw_chunk(b"done")
    call.served_end(True)
    feed._flush()
    [frame] = decode_frames(pipe.data)
    assert (frame.route, frame.request_id, frame.head) == ("show", "r-7", HEAD)
    assert frame.raw == b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndone"
    assert not frame.too_large
    assert frame.request_line() == ("GET", "/orders/7")


def test_a_response_past_the_bound_is_handed_over_as_too_large(
    loop: asyncio.AbstractEventLoop,
) -> None:
    feed, pipe, call = _feed(loop)
    call.request_done()
    limit = 2 * call.plan.max_body + (64 << 10)  # a head and chunk framing over 2x the body
    piece = b"x" * (1 << 16)
    held = 0
    while held <= limit:
        call.raw_chunk(piece)
        held += len(piece)
    assert call.too_large and call.raw == []  # the worker holds nothing more of it
    call.served_end(True)
    feed._flush()
    [frame] = decode_frames(pipe.data)
    assert frame.too_large and frame.raw == b""


def test_reads_after_a_drop_are_not_kept(loop: asyncio.AbstractEventLoop) -> None:
    feed, pipe, call = _feed(loop)
    call.drop("upgrade")
    call.raw_chunk(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
    assert call.raw == []
    call.served_end(True)
    feed._flush()
    assert pipe.data == b""  # a dropped copy never reaches the helper


def test_a_connection_back_in_its_pool_tees_to_no_one(loop: asyncio.AbstractEventLoop) -> None:
    # the next exchange (or a shadow leg) on it must not feed this request's tap
    _, _, call = _feed(loop)
    pool = call.plan.target_pool
    conn = UpstreamConnection(pool)
    conn.tee = call
    pool.release(conn)
    assert conn.tee is None
