"""Idempotency-Key on transitions: a retried refund is answered from the first, never re-applied."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

import extracted.app
from extracted.app import DRY_RUN_HEADER
from tests.integration.orders.harness import (
    FakeClock,
    MakeClient,
    database_url,
    make_client,
    new_order,
)

Client = TestClient[web.Request, web.Application]
DBS = pytest.mark.parametrize("db", ["sqlite", "pg"])


async def _disputed(client: Client) -> int:
    resp = await client.post(
        "/api/v1/orders", json=new_order(), headers={"Idempotency-Key": "setup"}
    )
    assert resp.status == 201
    order_id = int((await resp.json())["id"])
    for action in ("ship", "deliver", "dispute"):
        assert (await client.post(f"/api/v1/orders/{order_id}/{action}")).status == 200
    return order_id


async def _post(client: Client, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with client.post(path, **kwargs) as resp:
        return resp.status, await resp.json()


async def _refunds(client: Client, order_id: int) -> list[str]:
    doc = await (await client.get(f"/api/v1/orders/{order_id}/events")).json()
    return [e["amount"] for e in doc["items"] if e["type"] == "refunded"]


def _no_meta(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "meta"}


@DBS
async def test_a_retried_refund_with_its_key_is_applied_once(
    aiohttp_client: MakeClient, request: pytest.FixtureRequest, db: str
) -> None:
    clock = FakeClock()
    client = await make_client(aiohttp_client, "extracted", database_url(request, db), clock)
    order_id = await _disputed(client)
    path, key = f"/api/v1/orders/{order_id}/refund", {"Idempotency-Key": "refund-1"}
    first = await _post(client, path, json={"amount": "10.00"}, headers=key)
    clock.tick()
    again = await _post(client, path, json={"amount": "10.00"}, headers=key)
    assert first[0] == again[0] == 200
    assert _no_meta(again[1]) == _no_meta(first[1])
    assert first[1]["amounts"]["refunded"] == "10.00"
    order = await (await client.get(f"/api/v1/orders/{order_id}")).json()
    assert order["amounts"]["refunded"] == "10.00"
    assert await _refunds(client, order_id) == ["10.00"]


@DBS
async def test_racing_retries_of_one_refund_apply_once(
    aiohttp_client: MakeClient, request: pytest.FixtureRequest, db: str
) -> None:
    client = await make_client(aiohttp_client, "extracted", database_url(request, db), FakeClock())
    order_id = await _disputed(client)
    path, key = f"/api/v1/orders/{order_id}/refund", {"Idempotency-Key": "refund-race"}
    results = await asyncio.gather(
        *(_post(client, path, json={"amount": "5.00"}, headers=key) for _ in range(10))
    )
    assert Counter(status for status, _ in results) == {200: 10}
    assert {body["amounts"]["refunded"] for _, body in results} == {"5.00"}
    assert await _refunds(client, order_id) == ["5.00"]


@DBS
async def test_a_key_reused_for_another_request_is_refused(
    aiohttp_client: MakeClient, request: pytest.FixtureRequest, db: str
) -> None:
    client = await make_client(aiohttp_client, "extracted", database_url(request, db), FakeClock())
    order_id = await _disputed(client)
    path, key = f"/api/v1/orders/{order_id}/refund", {"Idempotency-Key": "k"}
    assert (await _post(client, path, json={"amount": "5.00"}, headers=key))[0] == 200
    status, body = await _post(client, path, json={"amount": "6.00"}, headers=key)
    assert (status, body["error"]["code"]) == (422, "idempotency_key_reused")
    status, body = await _post(client, f"/api/v1/orders/{order_id}/resolve", headers=key)
    assert (status, body["error"]["code"]) == (422, "idempotency_key_reused")
    assert await _refunds(client, order_id) == ["5.00"]


@DBS
async def test_distinct_keys_and_no_key_each_apply(
    aiohttp_client: MakeClient, request: pytest.FixtureRequest, db: str
) -> None:
    client = await make_client(aiohttp_client, "extracted", database_url(request, db), FakeClock())
    order_id = await _disputed(client)
    path = f"/api/v1/orders/{order_id}/refund"
    for headers in ({"Idempotency-Key": "a"}, {"Idempotency-Key": "b"}, {}):
        assert (await _post(client, path, json={"amount": "1.00"}, headers=headers))[0] == 200
    assert await _refunds(client, order_id) == ["1.00", "1.00", "1.00"]
    status, body = await _post(client, path, json={}, headers={"Idempotency-Key": " "})
    assert (status, body["error"]["code"]) == (400, "invalid_idempotency_key")
    assert await _refunds(client, order_id) == ["1.00", "1.00", "1.00"]


async def test_a_refused_transition_leaves_its_key_free(
    aiohttp_client: MakeClient, sqlite_url: str
) -> None:
    client = await make_client(aiohttp_client, "extracted", sqlite_url, FakeClock())
    order_id = await _disputed(client)
    path, key = f"/api/v1/orders/{order_id}/refund", {"Idempotency-Key": "big"}
    status, body = await _post(client, path, json={"amount": "999.00"}, headers=key)
    assert (status, body["error"]["code"]) == (422, "refund_exceeds_paid")
    status, body = await _post(client, path, json={"amount": "2.00"}, headers=key)
    assert status == 200
    assert await _refunds(client, order_id) == ["2.00"]


@DBS
async def test_a_dry_run_with_a_key_stores_nothing(
    aiohttp_client: MakeClient, request: pytest.FixtureRequest, db: str
) -> None:
    client = await make_client(aiohttp_client, "extracted", database_url(request, db), FakeClock())
    order_id = await _disputed(client)
    path, key = f"/api/v1/orders/{order_id}/refund", {"Idempotency-Key": "dry"}
    dry = await _post(client, path, json={"amount": "3.00"}, headers={**key, DRY_RUN_HEADER: "1"})
    assert dry[0] == 200
    assert await _refunds(client, order_id) == []
    real = await _post(client, path, json={"amount": "3.00"}, headers=key)
    again = await _post(client, path, json={"amount": "3.00"}, headers=key)
    assert real[0] == again[0] == 200
    assert await _refunds(client, order_id) == ["3.00"]


@DBS
async def test_a_database_made_before_transition_keys_gets_the_table_at_start(
    aiohttp_client: MakeClient, request: pytest.FixtureRequest, db: str
) -> None:
    """A proxy's `handlers: extracted.app` never runs create_schema: on a database made
    before `transition_keys` existed, every keyed transition failed with a 500."""
    from sqlalchemy import text

    from extracted.db import create_engine
    from extracted.schema import create_schema

    url = database_url(request, db)
    await create_schema(url)
    engine = create_engine(url)
    async with engine.begin() as conn:
        await conn.execute(text("DROP TABLE transition_keys"))
    await engine.dispose()
    app = extracted.app.create_app(url, clock=FakeClock())
    client = await aiohttp_client(app)
    order_id = await _disputed(client)
    path, key = f"/api/v1/orders/{order_id}/refund", {"Idempotency-Key": "refund-1"}
    first = await _post(client, path, json={"amount": "10.00"}, headers=key)
    again = await _post(client, path, json={"amount": "10.00"}, headers=key)
    assert first[0] == again[0] == 200, (first, again)
    assert await _refunds(client, order_id) == ["10.00"]
