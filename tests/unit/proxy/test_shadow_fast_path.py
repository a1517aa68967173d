"""The byte-equal fast path of `ShadowHub.complete` records what the full comparison would."""

from __future__ import annotations

import asyncio
import gc
import gzip
from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.shadowing import ShadowCall, ShadowHub, ShadowPlan, _header_values, _Leg
from shadow.record import ComparisonRecord
from tests.unit.proxy.shadow_plans import hub_and_plan

Headers = list[tuple[bytes, bytes]]
JSON: Headers = [(b"Content-Type", b"application/json"), (b"Date", b"Thu, 26 Nov 2026")]


def _hub(loop: asyncio.AbstractEventLoop, *, fast: bool) -> tuple[ShadowHub, ShadowPlan]:
    hub, plan = hub_and_plan(loop)
    if not fast:  # the full comparison only
        hub._complete_equal = lambda call: False  # type: ignore[method-assign]
    return hub, plan


def _complete(
    hub: ShadowHub,
    plan: ShadowPlan,
    served: tuple[int, Headers, Sequence[bytes]],
    candidate: tuple[int, Headers, Sequence[bytes]],
) -> ComparisonRecord:
    call = ShadowCall(hub, plan, "GET", "/orders/7?mail=ann@example.com", "rid-1", b"")
    call.served_status, call.served_headers, body = served
    call.served_body = list(body)
    call.served_done = True
    leg = call.leg
    leg.status, leg.headers, cbody = candidate
    leg.body = list(cbody)
    leg.done = True
    hub.complete(call)
    records = list(hub.recorder._buf)
    assert len(records) == 1
    return records[0]


CASES = {
    "equal in one chunk": ((200, JSON, [b'{"a":1}']), (200, JSON, [b'{"a":1}'])),
    "equal in other chunks": ((200, JSON, [b'{"a"', b":1}"]), (200, JSON, [b'{"a":1', b"}"])),
    "ignored header differs": (
        (200, JSON, [b"{}"]),
        (200, [(b"content-type", b"application/json"), (b"Date", b"Fri")], [b"{}"]),
    ),
    "content-type case differs": (
        (200, JSON, [b"{}"]),
        (200, [(b"Content-Type", b"Application/JSON")], [b"{}"]),
    ),
    "body differs": ((200, JSON, [b'{"a":1}']), (200, JSON, [b'{"a":2}'])),
    "same JSON, other bytes": ((200, JSON, [b'{"a": 1}']), (200, JSON, [b'{"a":1}'])),
    "status differs": ((200, JSON, [b"{}"]), (404, JSON, [b"{}"])),
    "location differs": (
        (302, [(b"Location", b"/a")], [b""]),
        (302, [(b"Location", b"/b")], [b""]),
    ),
    # the same bytes say one thing gzip-encoded and another as they are
    "content-encoding differs": (
        (200, [*JSON, (b"Content-Encoding", b"gzip")], [gzip.compress(b'{"a":1}')]),
        (200, JSON, [gzip.compress(b'{"a":1}')]),
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_fast_path_records_what_the_full_comparison_records(
    loop: asyncio.AbstractEventLoop, case: str
) -> None:
    served, candidate = CASES[case]
    hub, plan = _hub(loop, fast=True)
    taken: list[bool] = []
    equal = hub._complete_equal

    def spy(call: ShadowCall) -> bool:
        taken.append(equal(call))
        return taken[-1]

    hub._complete_equal = spy  # type: ignore[method-assign]
    fast = _complete(hub, plan, served, candidate)
    full = _complete(*_hub(loop, fast=False), served, candidate)
    assert replace(fast, time=full.time) == full
    assert "ann@example.com" not in fast.request_path
    byte_equal = case in ("equal in one chunk", "equal in other chunks", "ignored header differs")
    assert taken == ([True] if byte_equal else [False] if case != "status differs" else [])
    assert fast.outcome == (
        "mismatch"
        if "differs" in case
        and case != "ignored header differs"
        and case != "content-type case differs"
        else "match"
    )


def test_an_ended_call_leaves_no_cycle_for_the_collector(loop: asyncio.AbstractEventLoop) -> None:
    # A helper ends thousands of copies a second: reference counting must free each one
    # (a call and its legs refer to each other until the call ends).
    hub, plan = _hub(loop, fast=True)
    gc.collect()
    gc.disable()
    try:
        call = hub.start_call(plan, "GET", "/orders/7", "rid-1", b"GET / HTTP/1.1\r\n\r\n")
        call.served_head(200, JSON)
        call.served_chunk(b'{"a":1}')
        leg = call.leg
        baseline = call.baseline = _Leg(call, plan.target_pool)  # a noise baseline too
        for each in (leg, baseline):
            each.status, each.headers, each.body = 200, JSON, [b'{"a":1}']
        call.sent = True
        call.served_end(True)  # the legs have not ended yet: nothing recorded
        leg._end(None)
        assert not hub.recorder._buf
        baseline._end(None)
        assert [r.outcome for r in hub.recorder._buf] == ["match"]
        assert leg.call is None and baseline.call is None
        del call, leg, baseline, each
        assert gc.collect() == 0
    finally:
        gc.enable()


_names = st.sampled_from([b"Content-Type", b"content-type", b"Location", b"Date", b"X-A"])
_values = st.sampled_from([b"a", b" a", b"a ", b"b", b"", b"A"])
_fields = st.lists(st.tuples(_names, _values), max_size=4)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(_fields, st.data())
def test_headers_compare_as_their_compared_values_do(
    loop: asyncio.AbstractEventLoop, ours: Headers, data: st.DataObject
) -> None:
    # often the same names in the same order (the candidate runs the same server software)
    theirs = data.draw(
        st.one_of(
            _fields,
            st.lists(_values, min_size=len(ours), max_size=len(ours)).map(
                lambda values: [(name, v) for (name, _), v in zip(ours, values, strict=True)]
            ),
        )
    )
    hub, plan = _hub(loop, fast=True)
    call = ShadowCall(hub, plan, "GET", "/orders/7", "rid-1", b"")
    call.served_headers, call.leg.headers = ours, theirs
    call.served_body, call.leg.body = [b"{}"], [b"{}"]
    names = plan.compared_headers
    want = _header_values(ours, names) == _header_values(theirs, names)
    assert hub._complete_equal(call) == want
