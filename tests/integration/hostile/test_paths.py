"""Path confusion: no spelling of a path routes one way and reads another way at a backend.

Routes: `/api/v1/orders/*` and `/api/v1/items/{item_id}` go to `orders`; everything else to
`legacy`. For every hostile target the proxy must either refuse it (400, nothing forwarded)
or forward it to the backend that every plausible backend reading of the forwarded path
would route to: RFC 3986 normalisation, merged slashes (nginx), decoded `%2F` and `%5C`,
and stripped `;params` (Java servlet containers, common in monoliths).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import unquote

import pytest

from tests.integration.hostile.conftest import Hostile
from tests.upstreams import raw_exchange


def _decode_unreserved(path: str) -> str:
    return re.sub(
        r"%([0-9A-Fa-f]{2})",
        lambda m: (
            chr(int(m[1], 16))
            if re.fullmatch(r"[A-Za-z0-9\-._~]", chr(int(m[1], 16)))
            else m[0].upper()
        ),
        path,
    )


def _remove_dots(path: str) -> str:
    """RFC 3986 5.2.4."""
    out: list[str] = []
    for seg in path.split("/")[1:]:
        if seg == "..":
            if out:
                out.pop()
        elif seg != ".":
            out.append(seg)
    tail = "/" if path.rsplit("/", 1)[-1] in (".", "..") else ""
    return "/" + "/".join(out) + tail


def _rfc3986(path: str) -> str:
    return _remove_dots(_decode_unreserved(path))


def _merged(path: str) -> str:
    return re.sub("/{2,}", "/", path)


def _slashes_decoded(path: str) -> str:
    return re.sub("%(2[fF]|5[cC])", "/", path).replace("\\", "/")


def _params_stripped(path: str) -> str:
    return "/".join(seg.split(";", 1)[0] for seg in path.split("/"))


_VIEWS: tuple[Callable[[str], str], ...] = (
    lambda p: p,
    _rfc3986,
    lambda p: _rfc3986(_merged(p)),
    lambda p: _rfc3986(_merged(_slashes_decoded(p))),
    lambda p: _rfc3986(_merged(_params_stripped(p))),
    lambda p: _remove_dots(_merged(unquote(p))),
)

# Targets that must pass through, and where they must go.
PLAIN = [
    ("/api/v1/orders/1", "orders"),
    ("/api/v1/items/7", "orders"),
    ("/api/v1/other", "legacy"),
    ("/API/V1/ORDERS/1", "legacy"),  # paths are case-sensitive (RFC 3986 6.2.2.1)
    ("/api/v1/other?next=/api/v1/orders/1", "legacy"),
    ("/api/v1/orders/1?x=%2F..%2F", "orders"),  # the query is not the path
]

_DOTS = "dot segments are forwarded raw: the backend resolves them outside the matched route"
_SLASHES = "`//` is matched raw; a backend that merges slashes reads another route"
_ENCODED_SLASH = "`%2F`/`%5C` are one segment here; a decoding backend splits them"
_PARAMS = "`;params` are part of the segment here; a servlet backend strips them"
_ESCAPES = "percent-escaped unreserved characters are matched undecoded"

HOSTILE = [
    ("/api/v1/orders/../../admin", _DOTS),
    ("/api/v1/x/../orders/1", _DOTS),
    ("/api/v1/./orders/1", _DOTS),
    ("/api/v1/items/..", _DOTS),
    ("/api/v1/orders/%2e%2e/%2e%2e/admin", _DOTS),
    ("/api/v1/orders/%2E%2E/secret", _DOTS),
    ("/api/v1/x/.%2e/orders/1", _DOTS),
    ("/api/v1//orders/1", _SLASHES),
    ("//api/v1/orders/1", _SLASHES),
    ("/api/v1/orders%2F1", _ENCODED_SLASH),
    ("/api/v1/items/7%2F..%2F..%2Fadmin", _ENCODED_SLASH),
    ("/api/v1/x%5C..%5Corders/1", _ENCODED_SLASH),
    ("/api/v1/orders;jsessionid=1/1", _PARAMS),
    ("/api/v1;x=1/orders/1", _PARAMS),
    ("/api/v1/%6Frders/1", _ESCAPES),
    ("/api/v1/items/%37", None),
]


def _backend(h: Hostile, path: str) -> str:
    assert h.proxy.plane is not None
    route = h.proxy.plane.state.table.match("GET", path)
    return "legacy" if route is None else "orders"


async def _send(h: Hostile, target: str) -> tuple[int, list[tuple[str, bytes]]]:
    """Send one GET; return its status and (upstream, raw target) of what arrived."""
    resp = await raw_exchange(h.port, b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % target.encode())
    await h.barrier()
    got = [("legacy", r.target) for r in h.legacy.received if r.target != b"/barrier"]
    got += [("orders", r.target) for r in h.orders.received]
    return resp.status, got


@pytest.mark.parametrize(("target", "backend"), PLAIN, ids=[t for t, _ in PLAIN])
async def test_plain_paths_reach_their_route_byte_for_byte(
    hostile: Hostile, target: str, backend: str
) -> None:
    status, got = await _send(hostile, target)
    assert (status, got) == (200, [(backend, target.encode())])


@pytest.mark.parametrize(
    "target",
    [pytest.param(t, id=t) for t, _ in HOSTILE],
)
async def test_confusing_path_is_refused_or_routed_as_every_backend_reads_it(
    hostile: Hostile, target: str
) -> None:
    status, got = await _send(hostile, target)
    if status == 400:
        assert got == [], "refused, yet forwarded"
        return
    assert status == 200
    assert len(got) == 1
    upstream, raw = got[0]
    path = raw.decode("latin-1").split("?", 1)[0]
    readings = {view(path): _backend(hostile, view(path)) for view in _VIEWS}
    assert set(readings.values()) == {upstream}, f"{upstream} got {raw!r}, read as {readings}"


@pytest.mark.parametrize("target", ["/api/v1/items/7#x", "/static#/../api/v1/items/7", "/a?b#c"])
async def test_a_fragment_in_the_target_is_refused(hostile: Hostile, target: str) -> None:
    """A backend ends the path at `#` (aiohttp read /api/v1/orders#x as /api/v1/orders) while
    routing saw the whole target: another route's backend could get it."""
    status, got = await _send(hostile, target)
    assert (status, got) == (400, [])
