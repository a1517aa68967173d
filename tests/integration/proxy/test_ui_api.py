"""The dashboard's JSON API on the admin listener, over plain HTTP, with a real SQLite store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from proxy.accesslog import AccessLog
from proxy.app import Proxy, create_proxy
from proxy.settings import load
from shadow.record import ComparisonRecord
from shadow.store import Store
from tests.integration.proxy.conftest import proxy_config
from tests.support import stop_after_test
from tests.upstreams import EchoUpstream


def _config(upstream: EchoUpstream, store_url: str) -> str:
    return (
        proxy_config(upstream.url, store_url=store_url)
        + """
routes:
  - name: orders
    match: {path: /api/v1/orders/*}
    mode: shadow
    candidate: legacy
  - name: payments
    match: {path: /api/v1/payments/*}
    mode: extracted
    candidate: legacy
    shadow: {percent: 5}
"""
    )


@asynccontextmanager
async def _admin(
    tmp_path: Path, upstream: EchoUpstream, records: Sequence[ComparisonRecord] = ()
) -> AsyncIterator[tuple[Proxy, str]]:
    store_url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    async with Store(store_url) as store:
        await store.insert_batch(records)
    path = tmp_path / "routes.yaml"
    path.write_text(_config(upstream, store_url), encoding="utf-8")
    proxy = create_proxy(load(str(path)), access_log=AccessLog(enabled=False))
    await proxy.start()
    host, port = proxy.admin_address
    try:
        yield proxy, f"http://{host}:{port}"
    finally:
        await stop_after_test(proxy, 1.0)


async def _get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        text = await r.text()
        try:
            return r.status, orjson.loads(text)
        except orjson.JSONDecodeError:
            return r.status, text


def _mismatch(request_path: str, legacy: bytes, candidate: bytes) -> ComparisonRecord:
    return ComparisonRecord(
        route="orders",
        outcome="mismatch",
        path="/api/v1/orders/*",
        request_path=request_path,
        diff_paths=("$",),
        primary_body=legacy,
        candidate_body=candidate,
    )


async def test_route_detail_shows_a_mismatch_whose_bodies_nest_deep(
    tmp_path: Path, upstream: EchoUpstream
) -> None:
    # A backend's answer nested 1,000 deep (JSON parsers take it) made the route's page a
    # 500 for as long as the mismatch was among the latest: every other figure was hidden.
    deep = 1000
    records = [
        _mismatch("/api/v1/orders/1", b'{"total": 10}', b'{"total": 11}'),
        _mismatch(
            "/api/v1/orders/2", b"[" * deep + b"1" + b"]" * deep, b"[" * deep + b"2" + b"]" * deep
        ),
    ]
    async with _admin(tmp_path, upstream, records) as (_, base):
        status, body = await _get(base + "/-/api/routes/orders")
    assert status == 200, body
    assert body["store"]["ok"] is True
    recent = {m["request_path"]: m for m in body["recent"]}
    assert set(recent) == {"/api/v1/orders/1", "/api/v1/orders/2"}
    nested = recent["/api/v1/orders/2"]["bodies"]
    assert nested["legacy"]["format"] == "text"
    assert nested["legacy"]["value"].startswith("[[[") and nested["legacy"]["value"].endswith("]]]")
    assert recent["/api/v1/orders/1"]["differences"][0]["path"] == "$.total"


async def test_a_window_longer_than_time_is_a_bad_request_not_a_500(
    tmp_path: Path, upstream: EchoUpstream
) -> None:
    async with _admin(tmp_path, upstream, [_mismatch("/api/v1/orders/1", b"{}", b"[]")]) as (
        _,
        base,
    ):
        for url in (
            "/-/api/overview?since=99999999999d",
            "/-/api/overview?since=999999999h",
            "/-/api/routes/orders?since=99999999999d",
        ):
            status, body = await _get(base + url)
            assert status == 400, (url, body)
            assert body["error"]["code"] == "bad_request"
            assert "'all'" in body["error"]["message"]
        status, body = await _get(base + "/-/api/overview?since=all")
        assert status == 200 and body["routes"][0]["mismatches"] == 1


async def test_an_extracted_route_has_no_gate_as_in_the_report(
    tmp_path: Path, upstream: EchoUpstream
) -> None:
    # `report --config` and `migrate` leave an extracted route's verification outside the
    # gate; the dashboard showed it failing (below min_samples) and counted it in
    # "Gates passing".
    verification = [
        ComparisonRecord(
            route="payments",
            outcome="match",
            path="/api/v1/payments/*",
            request_path=f"/api/v1/payments/{n}",
        )
        for n in range(3)
    ]
    async with _admin(tmp_path, upstream, verification) as (_, base):
        status, overview = await _get(base + "/-/api/overview")
        assert status == 200
        payments = next(r for r in overview["routes"] if r["name"] == "payments")
        assert payments["samples"] == 3
        assert payments["gate"]["verdict"] == "n/a", payments["gate"]
        status, detail = await _get(base + "/-/api/routes/payments")
        assert status == 200 and detail["route"]["gate"]["verdict"] == "n/a"
