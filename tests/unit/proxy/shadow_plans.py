"""A shadow hub and the plan of a one-route shadow config, for unit tests (no sockets)."""

from __future__ import annotations

import asyncio

from proxy.metrics import Metrics
from proxy.settings import loads
from proxy.shadowing import ShadowHub, ShadowPlan
from proxy.upstream import UpstreamPool
from shadow.compare import CompareRules
from shadow.recorder import Recorder
from shadow.redact import Redactor

CONFIG = """
listen: 127.0.0.1:1
backends:
  legacy: {url: "http://127.0.0.1:2"}
  orders: {url: "http://127.0.0.1:3"}
default_backend: legacy
routes:
  - name: show
    match: {path: "/orders/{id}"}
    mode: shadow
    candidate: orders
"""


class NoStore:
    """A record sink that stores nothing (these tests read the recorder's buffer)."""

    async def insert_batch(self, records: object) -> int:
        return 0

    async def insert_drops(self, writer: str, seq: int, drops: object) -> None:
        pass


def hub_and_plan(loop: asyncio.AbstractEventLoop) -> tuple[ShadowHub, ShadowPlan]:
    """A hub with an in-memory recorder and the plan of the config's `show` route."""
    hub = ShadowHub(
        Recorder(NoStore()), Redactor(key=b"k"), Metrics(), loop, config_version=lambda: "v1"
    )
    route = loads(CONFIG).routes[0]
    pool = UpstreamPool(
        "orders",
        "127.0.0.1",
        3,
        connect_timeout=1.0,
        timeout=1.0,
        max_connections=1,
        idle_timeout=1.0,
        loop=loop,
    )
    plan = ShadowPlan(
        route,
        hub.route_state(route.name),
        target_pool=pool,
        baseline_pool=None,
        swapped=False,
        record_mode="shadow",
        percent=100.0,
        rules=CompareRules(),
        breaker=None,
    )
    return hub, plan
