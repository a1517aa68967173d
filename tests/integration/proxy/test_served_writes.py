"""Writes the candidate serves (canary, extracted) reach the store, the report and the gates.

Their background legs compare safe methods only, so a served POST, PUT, PATCH or DELETE
is stored as it was served: `candidate_error` (5xx, reset), `candidate_timeout`, else
`skipped`; with the candidate's status and latency and no legacy side.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from click.testing import CliRunner

from proxy.app import Proxy
from proxy.cli import main
from shadow.recorder import RouteCounters
from tests.integration.migrate.helpers import migrate, write_config
from tests.integration.proxy.shadow_support import shadow_config, shadow_stack
from tests.support import wait_until

CANARY_ALL = """
  - name: orders
    match: {path: /api/*}
    mode: canary
    candidate: orders
    canary: {percent: 100, sticky: {header: X-User-Id}}
    shadow: {percent: 100, timeout: 1s}
    promotion: {steps: [25, 100], min_samples: 3, max_mismatch_rate: 0, max_error_rate: 0.01,
                max_p99_ratio: 1000}
    compare:
      ignore_headers: [date, server, content-length]
"""

EXTRACTED = """
  - name: orders
    match: {path: /api/*}
    mode: extracted
    candidate: orders
    shadow: {percent: 100, timeout: 1s}
    promotion: {max_p99_ratio: 1000}
    compare:
      ignore_headers: [date, server, content-length]
"""

USER = {"X-User-Id": "user-1"}
N = 4  # below the 5 consecutive failures that open the candidate's breaker


def _counters(proxy: Proxy) -> RouteCounters:
    assert proxy.recorder is not None
    return proxy.recorder.counters().get("orders") or RouteCounters()


async def _stored(proxy: Proxy, n: int) -> RouteCounters:
    """The route's counters once `n` copies ended and everything queued is written."""
    await wait_until(lambda: _counters(proxy).recorded + _counters(proxy).dropped_total >= n)
    assert proxy.recorder is not None
    assert await proxy.recorder.flush(5)
    c = _counters(proxy)
    assert c.balanced, c
    return c


async def _send(port: int, method: str, path: str) -> int:
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, f"http://127.0.0.1:{port}{path}", json={"x": 1}, headers=USER) as r,
    ):
        await r.read()
        return r.status


def _rows(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return list(
            conn.execute(
                "SELECT method, outcome, status_primary, status_candidate, latency_primary_ms,"
                " latency_candidate_ms, mode, primary_body, candidate_body, detail"
                " FROM comparisons ORDER BY id"
            )
        )


@pytest.mark.parametrize(("route", "mode"), [(CANARY_ALL, "canary"), (EXTRACTED, "extracted")])
async def test_served_writes_that_fail_are_stored_as_candidate_errors(
    tmp_path: Path, route: str, mode: str
) -> None:
    db = tmp_path / "w.db"
    async with shadow_stack(route, f"sqlite+aiosqlite:///{db}") as (proxy, legacy, _):
        port = proxy.address[1]
        methods = ["POST", "PUT", "PATCH", "DELETE"]
        for i in range(N):
            assert await _send(port, methods[i], f"/api/err/{i}") == 500  # served as it came
        c = await _stored(proxy, N)
        assert c.started == c.recorded == N
        assert c.outcomes == {"candidate_error": N}
        assert legacy.seen == []  # no legacy call for a served write
    rows = _rows(db)
    assert [r[0] for r in rows] == methods[:N]
    for _, outcome, s_p, s_c, l_p, l_c, row_mode, b_p, b_c, detail in rows:
        assert (outcome, s_p, s_c, l_p, row_mode, b_p, b_c) == (
            "candidate_error",
            None,
            500,
            None,
            mode,
            None,
            None,
        )
        assert l_c is not None and l_c > 0
        assert "500" in detail


@pytest.mark.parametrize(("route", "mode"), [(CANARY_ALL, "canary"), (EXTRACTED, "extracted")])
async def test_served_writes_that_succeed_are_stored_as_skipped(
    tmp_path: Path, route: str, mode: str
) -> None:
    db = tmp_path / "s.db"
    async with shadow_stack(route, f"sqlite+aiosqlite:///{db}") as (proxy, legacy, _):
        port = proxy.address[1]
        for i in range(N):
            assert await _send(port, "POST", f"/api/created/{i}") == 201
        c = await _stored(proxy, N)
        assert c.started == c.recorded == N
        assert c.outcomes == {"skipped": N}
        assert legacy.seen == []
    rows = _rows(db)
    expected = ("skipped", None, 201, None, mode)
    assert [(r[1], r[2], r[3], r[4], r[6]) for r in rows] == [expected] * N
    assert all(r[5] is not None for r in rows)


async def test_a_served_write_reset_or_timed_out_is_an_error_or_a_timeout(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    store = f"sqlite+aiosqlite:///{db}"
    async with shadow_stack(CANARY_ALL, store, candidate_timeout="300ms") as (proxy, _, candidate):
        port = proxy.address[1]
        assert await _send(port, "POST", "/api/reset/1") == 502
        assert await _send(port, "POST", "/api/slow/1") == 504
        candidate.release.set()
        c = await _stored(proxy, 2)
        assert c.outcomes == {"candidate_error": 1, "candidate_timeout": 1}
    assert [(r[1], r[3]) for r in _rows(db)] == [
        ("candidate_error", None),  # no answer from the candidate: no status of its own
        ("candidate_timeout", None),
    ]


def _report(store: str) -> dict[str, Any]:
    result = CliRunner().invoke(
        main, ["report", "--store", store, "--format", "json"], catch_exceptions=False
    )
    document: dict[str, Any] = orjson.loads(result.stdout)
    return document


async def test_failing_served_writes_show_in_the_report_and_stop_migrate(tmp_path: Path) -> None:
    """Matching reads alone would pass the gate: the failing writes must refuse the step."""
    db = tmp_path / "g.db"
    store = f"sqlite+aiosqlite:///{db}"
    async with shadow_stack(CANARY_ALL, store) as (proxy, legacy, candidate):
        port = proxy.address[1]
        for i in range(5):
            assert await _send(port, "GET", f"/api/o{i}") == 200
        for i in range(N):
            assert await _send(port, "POST", f"/api/err/{i}") == 500
        for i in range(2):  # served well: calls in the error rate's count as well
            assert await _send(port, "POST", f"/api/created/{i}") == 201
        c = await _stored(proxy, 5 + N + 2)
        assert c.outcomes == {"match": 5, "candidate_error": N, "skipped": 2}
        config = write_config(tmp_path, shadow_config(legacy, candidate, CANARY_ALL, store))
    report = await asyncio.to_thread(_report, store)
    (row,) = report["routes"]
    assert row["candidate_errors"] == N and row["samples"] == 5
    assert row["served"] == 2 and row["skipped"] == 2
    assert row["error_rate"] == pytest.approx(N / (5 + N + 2))
    args = ("advance", "orders", "--config", config, "--store", store)
    result = await asyncio.to_thread(migrate, *args)
    assert result.exit_code == 1, result.output
    assert "error rate over" in result.stdout


async def test_a_full_buffer_drops_and_counts_served_writes_and_never_holds_them(
    tmp_path: Path,
) -> None:
    """A store that cannot be reached keeps the rows in the buffer: the writes past its
    bound are dropped and counted, and every one is served at once."""
    dead = "postgresql+psycopg://postgres@127.0.0.1:1/test"  # nothing listens on port 1
    store = f"{dead}\n  buffer_size: 2"  # the rest of the config's store block
    async with shadow_stack(CANARY_ALL, store) as (proxy, _, _):
        port = proxy.address[1]
        for i in range(N):
            assert await _send(port, "POST", f"/api/err/{i}") == 500
        c = _counters(proxy)
        assert c.started == N and c.recorded == 0
        assert c.dropped == {"buffer_full": N - 2}, c
        assert c.outcomes == {"candidate_error": 2}


@pytest.mark.parametrize("percent", [0, 50])
async def test_served_writes_are_sampled_at_the_routes_shadow_percent(
    tmp_path: Path, percent: int
) -> None:
    """Like the reads: a route verified at 50 % by user stores the writes of the users in
    that half (every worker and replica deciding alike), one at 0 % stores none."""
    from proxy.shadowing import bucket

    route = CANARY_ALL.replace(
        "shadow: {percent: 100, timeout: 1s}",
        f"shadow: {{percent: {percent}, timeout: 1s, sample_key: X-User-Id}}",
    )
    users = [f"user-{i}" for i in range(20)]
    wanted = sum(1 for u in users if bucket(u.encode()) < percent * 100)
    assert percent == 0 or 0 < wanted < len(users)  # the test tells sampled from not
    async with shadow_stack(route, f"sqlite+aiosqlite:///{tmp_path / 's.db'}") as (proxy, _, _):
        port = proxy.address[1]
        async with aiohttp.ClientSession() as s:
            for i, user in enumerate(users):
                url = f"http://127.0.0.1:{port}/api/created/{i}"
                async with s.post(url, json={"x": 1}, headers={"X-User-Id": user}) as r:
                    assert r.status == 201
        assert proxy.recorder is not None
        assert await proxy.recorder.flush(5)
        c = _counters(proxy)
        assert (c.started, c.recorded) == (wanted, wanted)
        assert c.outcomes == ({"skipped": wanted} if wanted else {})
