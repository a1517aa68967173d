"""SSRF: nothing in a request (absolute URI, Host, forwarding headers) picks the address dialled."""

from __future__ import annotations

import pytest

from tests.integration.hostile.conftest import Bait, Hostile
from tests.upstreams import raw_exchange

_EVIL = "127.0.0.1:{port}"

# (request template, upstream that must get it, raw target it must get); {evil} = bait address
CASES = [
    ("GET http://{evil}/x HTTP/1.1\r\nHost: {evil}\r\n\r\n", "legacy", b"/x"),
    (
        "GET http://{evil}/api/v1/orders/1 HTTP/1.1\r\nHost: a\r\n\r\n",
        "orders",
        b"/api/v1/orders/1",
    ),
    ("GET http://user@{evil}/x?q=1 HTTP/1.1\r\nHost: a\r\n\r\n", "legacy", b"/x?q=1"),
    ("GET https://{evil}/x HTTP/1.1\r\nHost: {evil}\r\n\r\n", "legacy", b"/x"),
    ("GET /x HTTP/1.1\r\nHost: {evil}\r\n\r\n", "legacy", b"/x"),
    ("GET /x HTTP/1.1\r\nHost: a\r\nX-Forwarded-Host: {evil}\r\n\r\n", "legacy", b"/x"),
    ("GET /x HTTP/1.1\r\nHost: a\r\nForwarded: host={evil};proto=http\r\n\r\n", "legacy", b"/x"),
    ("GET /x HTTP/1.1\r\nHost: a\r\nX-Original-URL: http://{evil}/y\r\n\r\n", "legacy", b"/x"),
    ("GET /x HTTP/1.1\r\nHost: a\r\nX-Rewrite-URL: http://{evil}/y\r\n\r\n", "legacy", b"/x"),
    ("GET /x HTTP/1.0\r\nHost: {evil}\r\n\r\n", "legacy", b"/x"),
]


@pytest.mark.parametrize(("template", "upstream", "target"), CASES, ids=range(len(CASES)))
async def test_request_cannot_choose_the_address_dialled(
    hostile: Hostile, bait: Bait, template: str, upstream: str, target: bytes
) -> None:
    evil = _EVIL.format(port=bait.port)
    resp = await raw_exchange(hostile.port, template.replace("{evil}", evil).encode())
    assert bait.connections == 0, "the proxy dialled an address the request named"
    assert resp.status == 200
    assert b"evil" not in resp.body
    await hostile.barrier()
    got = [("legacy", r.target) for r in hostile.legacy.received if r.target != b"/barrier"]
    got += [("orders", r.target) for r in hostile.orders.received]
    assert got == [(upstream, target)]
    assert bait.connections == 0


async def test_connect_is_refused_and_dials_nothing(hostile: Hostile, bait: Bait) -> None:
    evil = _EVIL.format(port=bait.port).encode()
    resp = await raw_exchange(
        hostile.port, b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (evil, evil)
    )
    assert resp.status == 405
    await hostile.barrier()
    assert bait.connections == 0
    assert [r.target for r in hostile.legacy.received] == [b"/barrier"]


async def test_absolute_uri_does_not_change_the_route(hostile: Hostile, bait: Bait) -> None:
    # The authority is ignored for routing as well as for dialling: the path alone decides.
    evil = _EVIL.format(port=bait.port).encode()
    for path, upstream in ((b"/api/v1/items/3", "orders"), (b"/elsewhere", "legacy")):
        req = b"GET http://%s%s HTTP/1.1\r\nHost: a\r\n\r\n" % (evil, path)
        assert (await raw_exchange(hostile.port, req)).status == 200
        side = hostile.orders if upstream == "orders" else hostile.legacy
        assert side.received[-1].target == path
    assert bait.connections == 0
