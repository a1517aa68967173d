"""Racing requests: transitions apply once, refunds stay within the total, creates dedupe."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.integration.orders.harness import (
    FakeClock,
    MakeClient,
    database_url,
    make_client,
    new_order,
)

Client = TestClient[web.Request, web.Application]
SIDES_AND_DBS = pytest.mark.parametrize(
    ("side", "db"),
    [("extracted", "sqlite"), ("extracted", "pg"), ("legacy", "sqlite"), ("legacy", "pg")],
)


async def _order(client: Client, *actions: str) -> int:
    resp = await client.post(
        "/api/v1/orders", json=new_order(), headers={"Idempotency-Key": "setup"}
    )
    assert resp.status == 201
    order_id = int((await resp.json())["id"])
    for action in actions:
        assert (await client.post(f"/api/v1/orders/{order_id}/{action}")).status == 200
    return order_id


async def _post(client: Client, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with client.post(path, **kwargs) as resp:
        return resp.status, await resp.json()


async def _events(client: Client, order_id: int) -> list[dict[str, Any]]:
    doc = await (await client.get(f"/api/v1/orders/{order_id}/events")).json()
    return list(doc["items"])


@SIDES_AND_DBS
async def test_fifty_racing_completes_apply_once(
    aiohttp_client: MakeClient, request: pytest.FixtureRequest, side: str, db: str
) -> None:
    client = await make_client(aiohttp_client, side, database_url(request, db), FakeClock())
    order_id = await _order(client, "ship", "deliver")
    results = await asyncio.gather(
        *(_post(client, f"/api/v1/orders/{order_id}/complete") for _ in range(50))
    )
    assert Counter(status for status, _ in results) == {200: 1, 409: 49}
    assert {body["error"]["status"] for status, body in results if status == 409} == {"completed"}
    events = await _events(client, order_id)
    assert [e["type"] for e in events].count("completed") == 1


@pytest.mark.parametrize("db", ["sqlite", "pg"])
async def test_racing_completes_across_both_sides_apply_once(
    aiohttp_client: MakeClient, request: pytest.FixtureRequest, db: str
) -> None:
    db_url, clock = database_url(request, db), FakeClock()
    old = await make_client(aiohttp_client, "legacy", db_url, clock)
    new = await make_client(aiohttp_client, "extracted", db_url, clock)
    order_id = await _order(old, "ship", "deliver")
    path = f"/api/v1/orders/{order_id}/complete"
    results = await asyncio.gather(*(_post(c, path) for _ in range(25) for c in (old, new)))
    assert Counter(status for status, _ in results) == {200: 1, 409: 49}
    assert [e["type"] for e in await _events(new, order_id)].count("completed") == 1


@SIDES_AND_DBS
async def test_racing_partial_refunds_never_exceed_the_total(
    aiohttp_client: MakeClient, request: pytest.FixtureRequest, side: str, db: str
) -> None:
    client = await make_client(aiohttp_client, side, database_url(request, db), FakeClock())
    order_id = await _order(client, "ship", "deliver", "dispute")
    total = 3562  # 28.50 goods + 4.99 shipping + 2.13 buyer protection
    amounts = [f"{3 + n % 4}.{n * 7 % 100:02d}" for n in range(20)]
    results = await asyncio.gather(
        *(_post(client, f"/api/v1/orders/{order_id}/refund", json={"amount": a}) for a in amounts)
    )
    applied = [
        int(a.replace(".", ""))
        for a, (status, _) in zip(amounts, results, strict=True)
        if status == 200
    ]
    assert sum(int(a.replace(".", "")) for a in amounts) > total
    assert Counter(status for status, _ in results).keys() == {200, 422}
    assert 0 < sum(applied) <= total
    order = await (await client.get(f"/api/v1/orders/{order_id}")).json()
    assert int(order["amounts"]["refunded"].replace(".", "")) == sum(applied)
    refunds = [e for e in await _events(client, order_id) if e["type"] == "refunded"]
    assert sorted(int(e["amount"].replace(".", "")) for e in refunds) == sorted(applied)


@SIDES_AND_DBS
async def test_twenty_racing_creates_with_one_key_make_one_order(
    aiohttp_client: MakeClient, request: pytest.FixtureRequest, side: str, db: str
) -> None:
    client = await make_client(aiohttp_client, side, database_url(request, db), FakeClock())
    results = await asyncio.gather(
        *(
            _post(client, "/api/v1/orders", json=new_order(), headers={"Idempotency-Key": "once"})
            for _ in range(20)
        )
    )
    assert Counter(status for status, _ in results) == {201: 1, 200: 19}
    bodies = [{k: v for k, v in body.items() if k != "meta"} for _, body in results]
    assert all(body == bodies[0] for body in bodies)
    listing = await client.get("/api/v1/orders")
    assert listing.headers["X-Total-Count"] == "1"
