"""The shared-database phase: both sides on one database see and answer the same orders."""

from __future__ import annotations

from typing import Any

import pytest

from extracted.app import FEE_ROUNDING_ENV, create_app
from tests.integration.orders.harness import (
    FakeClock,
    MakeClient,
    database_url,
    make_client,
    new_order,
    normalise,
)


def _paths(a: Any, b: Any, here: str = "$") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [p for k in keys for p in _paths(a.get(k), b.get(k), f"{here}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            p
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for p in _paths(x, y, f"{here}[{i}]")
        ]
    return [] if a == b else [here]


@pytest.mark.parametrize("db", ["sqlite", "pg"])
async def test_sides_share_orders_ids_and_idempotency_keys(
    aiohttp_client: MakeClient, request: pytest.FixtureRequest, db: str
) -> None:
    url = database_url(request, db)
    clock = FakeClock()
    old = await make_client(aiohttp_client, "legacy", url, clock)
    new = await make_client(aiohttp_client, "extracted", url, clock)
    created = await normalise(
        await old.post("/api/v1/orders", json=new_order(), headers={"Idempotency-Key": "a"})
    )
    assert created.status == 201
    replay = await normalise(
        await new.post("/api/v1/orders", json=new_order(), headers={"Idempotency-Key": "a"})
    )
    assert (replay.status, replay.body) == (200, created.body)
    reused = await new.post(
        "/api/v1/orders", json=new_order(unit_price="1.00"), headers={"Idempotency-Key": "a"}
    )
    assert reused.status == 422
    clock.tick()
    made = await normalise(
        await new.post("/api/v1/orders", json=new_order(9), headers={"Idempotency-Key": "a"})
    )
    assert made.status == 201 and made.body["id"] == created.body["id"] + 1
    clock.tick()
    assert (await old.post(f"/api/v1/orders/{made.body['id']}/ship", json={})).status == 200
    clock.tick()
    assert (await new.post(f"/api/v1/orders/{made.body['id']}/deliver", json={})).status == 200
    for path in [
        "/api/v1/orders",
        "/api/v1/orders/1",
        "/api/v1/orders/2",
        "/api/v1/orders/2/events",
    ]:
        a, b = await normalise(await old.get(path)), await normalise(await new.get(path))
        assert a == b, path


async def test_half_even_port_differs_only_in_the_fee_on_some_orders(
    aiohttp_client: MakeClient, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    monkeypatch.setenv(FEE_ROUNDING_ENV, "half_even")
    old = await make_client(aiohttp_client, "legacy", sqlite_url, clock)
    port = await make_client(aiohttp_client, "extracted", sqlite_url, clock)
    fixed = await make_client(aiohttp_client, "extracted", sqlite_url, clock, fee_rounding="legacy")
    # 12.50 + 2 x 8.00 = 28.50: 5 % is 1.425, where half-up and half-even part ways.
    await old.post(
        "/api/v1/orders", json=new_order(unit_price="12.50"), headers={"Idempotency-Key": "x"}
    )
    await old.post(
        "/api/v1/orders", json=new_order(unit_price="40.00"), headers={"Idempotency-Key": "y"}
    )
    legacy_1 = (await normalise(await old.get("/api/v1/orders/1"))).body
    port_1 = (await normalise(await port.get("/api/v1/orders/1"))).body
    assert _paths(legacy_1, port_1) == ["$.amounts.buyer_protection_fee"]
    assert (
        legacy_1["amounts"]["buyer_protection_fee"],
        port_1["amounts"]["buyer_protection_fee"],
    ) == (
        "2.13",
        "2.12",
    )
    assert (await normalise(await fixed.get("/api/v1/orders/1"))).body == legacy_1
    for client in (port, fixed):
        assert await normalise(await client.get("/api/v1/orders/2")) == await normalise(
            await old.get("/api/v1/orders/2")
        )


def test_unknown_fee_rounding_is_refused(monkeypatch: pytest.MonkeyPatch, sqlite_url: str) -> None:
    monkeypatch.setenv(FEE_ROUNDING_ENV, "bankers")
    with pytest.raises(ValueError, match="fee rounding must be one of legacy, half_even"):
        create_app(sqlite_url)
