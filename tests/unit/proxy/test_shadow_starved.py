"""A shadow helper kept off the CPU does not blame the candidate for its own late timers."""

from __future__ import annotations

import asyncio

import pytest

from proxy.shadowing import ShadowCall, ShadowHub, ShadowPlan
from tests.unit.proxy.shadow_plans import hub_and_plan


def _failed_call(hub: ShadowHub, plan: ShadowPlan, error: str) -> ShadowCall:
    call = hub.start_call(plan, "GET", "/orders/7", "rid", b"")
    call.served_status, call.served_done = 200, True
    leg = call.leg
    leg.error, leg.done, leg.ms = error, True, 600.0
    return call


def _outcomes(hub: ShadowHub, plan: ShadowPlan) -> tuple[dict[str, int], dict[str, int]]:
    counters = hub.recorder.counters()[plan.route]
    return counters.outcomes, counters.dropped


@pytest.mark.parametrize("starved_s_ago", [0.2, None])
def test_a_leg_error_during_starvation_is_dropped_not_recorded(
    loop: asyncio.AbstractEventLoop, starved_s_ago: float | None
) -> None:
    hub, plan = hub_and_plan(loop)
    hub.shed_on_lag = False  # as in a helper
    if starved_s_ago is not None:  # within the leg's 600 ms
        hub.starved_at = loop.time() - starved_s_ago
    hub.complete(_failed_call(hub, plan, "connect"))
    outcomes, dropped = _outcomes(hub, plan)
    if starved_s_ago is None:
        assert outcomes == {"candidate_error": 1}
        assert dropped == {}
    else:
        assert outcomes == {}
        assert dropped == {"starved": 1}


def test_a_late_tick_marks_starvation_only_in_a_helper(loop: asyncio.AbstractEventLoop) -> None:
    for helper in (True, False):
        hub, _ = hub_and_plan(loop)
        hub.shed_on_lag = not helper
        hub._lag_expected = loop.time() - 0.5  # this tick ran half a second late
        hub._lag_tick()
        assert (loop.time() - hub.starved_at < 1.0) is helper
        hub.stop()


def test_an_expired_call_is_starved_when_the_helper_was_off_cpu(
    loop: asyncio.AbstractEventLoop,
) -> None:
    hub, plan = hub_and_plan(loop)
    hub.shed_on_lag = False
    call = hub.start_call(plan, "GET", "/orders/7", "rid", b"")
    hub.watch(call)
    now = loop.time() + plan.timeout + 1.0  # the first tick after a long time off the CPU
    hub.starved_at = now
    hub.expire(now)
    assert call.finished
    assert _outcomes(hub, plan) == ({}, {"starved": 1})


@pytest.mark.parametrize(
    ("exc", "detail"),
    [
        (TimeoutError(), "connect failed: TimeoutError"),
        (
            ConnectionRefusedError(111, "Connection refused"),
            "connect failed: [Errno 111] Connection refused",
        ),
    ],
)
def test_a_failed_connect_names_its_cause_even_without_a_message(
    loop: asyncio.AbstractEventLoop, exc: OSError, detail: str
) -> None:
    hub, plan = hub_and_plan(loop)
    call = hub.start_call(plan, "GET", "/orders/7", "rid", b"")
    call.leg.connect_failed(exc)
    assert call.leg.error == detail
    hub.stop()
