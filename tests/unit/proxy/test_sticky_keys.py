"""Which canary requests carry a sticky key: an empty one is no key, and stays on legacy."""

from __future__ import annotations

from typing import cast

import pytest

from proxy.dataplane import KIND_CANARY, RouteEntry, RoutePlan

LEGACY = cast(RoutePlan, object())
CANDIDATE = cast(RoutePlan, object())


def _entry(header: str | None = None, cookie: str | None = None) -> RouteEntry:
    # at 100 % every request with a key goes to the candidate
    return RouteEntry(
        "orders",
        LEGACY,
        kind=KIND_CANARY,
        candidate=CANDIDATE,
        canary_percent=100.0,
        sticky_header=header,
        sticky_cookie=cookie,
    )


@pytest.mark.parametrize(
    ("headers", "side"),
    [
        ([], LEGACY),
        ([(b"X-User-Id", b"u1")], CANDIDATE),
        ([(b"x-user-id", b"u1")], CANDIDATE),
        ([(b"X-User-Id", b"")], LEGACY),
        ([(b"X-User-Id", b"   ")], LEGACY),
    ],
)
def test_header_keys(headers: list[tuple[bytes, bytes]], side: RoutePlan) -> None:
    assert _entry(header="X-User-Id").choose(headers) is side


@pytest.mark.parametrize(
    ("cookie", "side"),
    [
        (b"a=1", LEGACY),
        (b"a=1; session_id=s1", CANDIDATE),
        (b"session_id=", LEGACY),
        (b"a=1; session_id=; b=2", LEGACY),
    ],
)
def test_cookie_keys(cookie: bytes, side: RoutePlan) -> None:
    assert _entry(cookie="session_id").choose([(b"Cookie", cookie)]) is side
