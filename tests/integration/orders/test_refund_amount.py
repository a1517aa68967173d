"""A refund's amount: omitted means all that is left (documented); an explicit null is refused."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.integration.orders.harness import (
    FakeClock,
    MakeClient,
    database_url,
    dump_tables,
    make_client,
    new_order,
)

Client = TestClient[web.Request, web.Application]


async def _post(client: Client, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with client.post(path, **kwargs) as resp:
        return resp.status, await resp.json()


async def _disputed(client: Client) -> int:
    status, doc = await _post(
        client, "/api/v1/orders", json=new_order(), headers={"Idempotency-Key": "setup"}
    )
    assert status == 201
    for action in ("ship", "deliver", "dispute"):
        assert (await _post(client, f"/api/v1/orders/{doc['id']}/{action}"))[0] == 200
    return int(doc["id"])


@pytest.mark.parametrize("side", ["legacy", "extracted"])
@pytest.mark.parametrize("db", ["sqlite", "pg"])
async def test_a_refund_with_a_null_amount_refunds_nothing(
    aiohttp_client: MakeClient, request: pytest.FixtureRequest, side: str, db: str
) -> None:
    """`"amount": null` is what a client sends when its amount variable is unset: it refunded
    the whole order (an omitted amount's meaning) instead of the partial sum meant."""
    db_url = database_url(request, db)
    client = await make_client(aiohttp_client, side, db_url, FakeClock())
    order_id = await _disputed(client)
    path = f"/api/v1/orders/{order_id}/refund"
    before = await dump_tables(db_url)
    status, doc = await _post(client, path, json={"amount": None, "reason": "broken lens"})
    assert status == 422, (status, doc["amounts"]["refunded"] if status == 200 else doc)
    assert doc["error"] == {
        "code": "validation_error",
        "message": 'amount: must be a decimal string like "12.50"',
    }
    assert await dump_tables(db_url) == before
    status, doc = await _post(client, path, json={"reason": "broken lens"})
    assert (status, doc["amounts"]["refunded"]) == (200, doc["amounts"]["total"])
