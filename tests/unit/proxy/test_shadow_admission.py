"""Adaptive admission of shadow copies: fewer when the process is over its CPU budget."""

from __future__ import annotations

import asyncio

from proxy.metrics import Metrics
from proxy.shadowing import ShadowHub
from shadow.recorder import Recorder
from shadow.redact import Redactor


class _NoStore:
    async def insert_batch(self, records: object) -> int:
        return 0


def _hub() -> ShadowHub:
    loop = asyncio.new_event_loop()
    hub = ShadowHub(
        Recorder(_NoStore()), Redactor(key=b"k"), Metrics(), loop, config_version=lambda: "v"
    )
    loop.close()
    return hub


def test_admissions_are_spread_at_the_admit_share() -> None:
    hub = _hub()
    hub.admit = 0.25
    admitted = [hub._admitted() for _ in range(100)]
    assert sum(admitted) == 25
    assert admitted[:8] == [False, False, False, True] * 2


def test_full_admission_when_there_is_room() -> None:
    hub = _hub()
    assert all(hub._admitted() for _ in range(50))
