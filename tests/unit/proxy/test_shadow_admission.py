"""Adaptive admission of shadow copies: fewer when the process is over its CPU budget."""

from __future__ import annotations

import asyncio
import time

import pytest

from proxy.shadowing import ShadowHub, ShadowPlan
from tests.unit.proxy.shadow_plans import hub_and_plan


def _admitted(hub: ShadowHub, plan: ShadowPlan, n: int) -> list[bool]:
    out = []
    for i in range(n):
        call = hub.begin(plan, "GET", "/orders/1", f"rid-{i}", [], b"")
        out.append(call is not None)
        if call is not None:
            call.drop("test")  # frees its in-flight slot
    return out


def test_admissions_are_spread_at_the_admit_share(loop: asyncio.AbstractEventLoop) -> None:
    hub, plan = hub_and_plan(loop)
    hub.admit = 0.25
    admitted = _admitted(hub, plan, 100)
    assert sum(admitted) == 25
    assert admitted[:8] == [False, False, False, True] * 2


def test_full_admission_when_there_is_room(loop: asyncio.AbstractEventLoop) -> None:
    hub, plan = hub_and_plan(loop)
    assert all(_admitted(hub, plan, 50))


def test_shed_copies_are_counted_started_and_dropped_at_the_next_flush(
    loop: asyncio.AbstractEventLoop,
) -> None:
    hub, plan = hub_and_plan(loop)
    hub.admit = 0.5
    _admitted(hub, plan, 10)
    before = hub.recorder.counters().get("show")
    assert before is None or before.dropped.get("shed", 0) == 0  # not yet counted
    hub.sync_counters()
    counters = hub.recorder.counters()["show"]
    assert counters.dropped == {"shed": 5, "test": 5}
    assert counters.started == 10
    assert counters.balanced


def test_over_budget_cuts_admission_and_headroom_restores_it(
    loop: asyncio.AbstractEventLoop,
) -> None:
    hub, _ = hub_and_plan(loop)
    hub.cpu_budget = 0.85
    hub.cpu = 1.0
    hub._adjust_admission()
    assert hub.admit == 0.25  # saturated: a quarter at once
    hub.cpu = 0.9
    hub._adjust_admission()
    assert hub.admit == 0.125  # over budget: halved
    hub.cpu = 0.45
    for _ in range(10):
        hub._adjust_admission()
    assert hub.admit == 1.0  # back to full within 100 ms of headroom


def _tick(hub: ShadowHub, monkeypatch: pytest.MonkeyPatch, smoothed: float, share: float) -> None:
    """One admission tick after 10 ms in which this process used `share` of a core."""
    hub.cpu = smoothed
    now = hub.loop.time()
    monkeypatch.setattr(time, "process_time", lambda: 100.0)
    hub._cpu_mark = (now - 0.01, 100.0 - share * 0.01)
    hub._lag_expected = now + 1.0  # no lag
    hub._lag_tick()
    hub.stop()


def test_a_burst_from_idle_is_cut_on_its_first_tick(
    loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The smoothed share still says idle; the tick alone says the core is saturated.
    hub, _ = hub_and_plan(loop)
    hub.cpu_budget = 0.85
    _tick(hub, monkeypatch, smoothed=0.05, share=1.0)  # smoothed: 0.525, under budget
    assert hub.admit <= 0.5  # cut (a quarter when the tick read over 0.95)


def test_one_busy_tick_under_steady_load_is_judged_smoothed(
    loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Near the budget, one busy tick (a pause, a batch) must not cut admission by itself.
    hub, _ = hub_and_plan(loop)
    hub.cpu_budget = 0.85
    hub.admit = 0.5
    _tick(hub, monkeypatch, smoothed=0.6, share=0.9)  # smoothed: 0.75 at most, under budget
    assert hub.admit > 0.5


def test_a_jump_is_judged_tick_by_tick_while_it_stays_busy(
    loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub, _ = hub_and_plan(loop)
    hub.cpu_budget = 0.85
    _tick(hub, monkeypatch, smoothed=0.05, share=1.0)
    first = hub.admit
    _tick(hub, monkeypatch, smoothed=0.5, share=1.0)  # smoothed: 0.75, still under budget
    assert hub.admit < first  # cut again, not grown
