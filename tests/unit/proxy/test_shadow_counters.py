"""The shadow counters the metrics publish balance: started = recorded + dropped + failed."""

from __future__ import annotations

import asyncio

from proxy.settings import loads
from shadow.record import ComparisonRecord
from shadow.recorder import Recorder
from shadow.rollback import RollbackWindow
from tests.unit.proxy.shadow_plans import CONFIG, NoStore, hub_and_plan


def test_drops_decided_by_the_recorder_reach_the_metrics_once(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """A full buffer drops records inside the recorder; the published counters still
    balance: started = recorded + dropped + failed."""
    hub, plan = hub_and_plan(loop)
    hub.recorder = Recorder(NoStore(), buffer_size=1)
    for _ in range(3):
        hub.recorder.record(ComparisonRecord(route=plan.route, outcome="match"), started=True)
    value = hub.metrics.registry.get_sample_value
    labels = {"route": plan.route, "reason": "buffer_full"}
    for _ in range(2):  # published once, however often the counters are synced
        hub.sync_counters()
        assert value("strangler_shadow_dropped_total", labels) == 2
        assert value("strangler_shadow_started_total", {"route": plan.route}) == 3


def test_a_helper_acknowledges_only_ends_the_metrics_already_show(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """What a shadow helper tells its worker has ended must never run ahead of (or behind)
    its published counters: the worker counts the rest as lost if the helper dies."""
    hub, plan = hub_and_plan(loop)
    acks: list[dict[str, int]] = []
    hub.published = lambda: acks.append(hub.published_ends())
    hub.drop_started(plan.state, "stale")  # counted, published by the next tick
    assert hub.published_ends().get(plan.route, 0) == 0
    hub._lag_tick()
    assert acks[-1] == {plan.route: 1}
    hub.recorder._counters(plan.route).recorded += 2  # as a finished batch write does
    hub._lag_tick()
    assert acks[-1] == {plan.route: 1}  # recorded rows are published by the sync
    hub.sync_counters()
    assert acks[-1] == {plan.route: 3}
    value = hub.metrics.registry.get_sample_value
    recorded = value("strangler_shadow_recorded_total", {"route": plan.route})
    dropped = value("strangler_shadow_dropped_total", {"route": plan.route, "reason": "stale"})
    assert (recorded, dropped) == (2, 1)
    hub.stop()


def test_a_failing_rollback_check_after_the_record_counts_the_copy_once(
    loop: asyncio.AbstractEventLoop,
) -> None:
    hub, plan = hub_and_plan(loop)
    plan.state.window = RollbackWindow(loads(CONFIG).routes[0].promotion)  # one to feed
    calls: list[object] = []

    def broken(*args: object, **kwargs: object) -> None:
        calls.append(args)
        raise RuntimeError("the hold board is not writable")

    hub.observe = broken  # type: ignore[method-assign]
    hub.recorder.note_started(plan.route)
    call = hub.start_call(plan, "GET", "/orders/7", "rid-1", b"GET /orders/7 HTTP/1.1\r\n\r\n")
    call.served_head(200, [])
    call.served_chunk(b"{}")
    call.sent = True
    leg = call.leg
    leg.status, leg.body, leg.done = 200, [b"{}"], True
    call.served_end(True)
    counters = hub.recorder.counters()[plan.route]
    assert len(calls) == 1  # the check ran, and failed
    assert counters.outcomes == {"match": 1} and counters.dropped == {}
