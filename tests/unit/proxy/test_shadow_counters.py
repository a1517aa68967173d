"""The shadow counters the metrics publish balance: started = recorded + dropped + failed."""

from __future__ import annotations

import asyncio

from shadow.record import ComparisonRecord
from shadow.recorder import Recorder
from tests.unit.proxy.shadow_plans import NoStore, hub_and_plan


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
