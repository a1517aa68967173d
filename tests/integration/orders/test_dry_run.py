"""Dry runs: every write answers as the real call would, and the database stays unchanged."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict

from extracted.app import DRY_RUN_HEADER
from tests.integration.orders.harness import (
    FakeClock,
    MakeClient,
    Reply,
    dump_tables,
    make_client,
    new_order,
    normalise,
)

Client = TestClient[web.Request, web.Application]
DRY = {DRY_RUN_HEADER: "1"}

# action -> (the actions that bring a fresh order to where `action` applies, request body)
WRITES: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "ship": ((), {"tracking_number": "TRK9", "actor": "seller:3"}),
    "cancel": ((), {"reason": "out of stock"}),
    "deliver": (("ship",), {}),
    "complete": (("ship", "deliver"), {}),
    "dispute": (("ship", "deliver"), {"reason": "broken"}),
    "refund": (("ship", "deliver", "dispute"), {"amount": "5.00"}),
    "resolve": (("ship", "deliver", "dispute"), {}),
}


def _without_ids(reply: Reply) -> Any:
    # PostgreSQL sequences are not transactional: a rolled-back insert still uses up its id.
    body = dict(reply.body)
    body.pop("id")
    body["items"] = [{k: v for k, v in item.items() if k != "id"} for item in body["items"]]
    return reply.status, body


async def _prepare(client: Client, key: str, actions: tuple[str, ...]) -> int:
    created = await client.post(
        "/api/v1/orders", json=new_order(), headers={"Idempotency-Key": key}
    )
    order_id = int((await created.json())["id"])
    for action in actions:
        assert (await client.post(f"/api/v1/orders/{order_id}/{action}")).status == 200
    return order_id


@pytest.mark.parametrize("db", ["sqlite", "pg"])
async def test_dry_run_of_every_write_changes_nothing(
    aiohttp_client: MakeClient, request: pytest.FixtureRequest, db: str
) -> None:
    db_url = request.getfixturevalue("sqlite_url" if db == "sqlite" else "pg_url")
    clock = FakeClock()
    client = await make_client(aiohttp_client, "extracted", db_url, clock)
    targets = {action: await _prepare(client, action, pre) for action, (pre, _) in WRITES.items()}
    clock.tick()

    before = await dump_tables(db_url)
    create: dict[str, Any] = {"json": new_order(11), "headers": {"Idempotency-Key": "fresh"}}
    dry_create = await normalise(
        await client.post(
            "/api/v1/orders", json=new_order(11), headers={"Idempotency-Key": "fresh", **DRY}
        )
    )
    replay: dict[str, Any] = {"json": new_order(), "headers": {"Idempotency-Key": "ship", **DRY}}
    dry_replay = await normalise(await client.post("/api/v1/orders", **replay))
    dry_moves = {
        action: await normalise(
            await client.post(f"/api/v1/orders/{targets[action]}/{action}", json=body, headers=DRY)
        )
        for action, (_, body) in WRITES.items()
    }
    refused = await client.post(f"/api/v1/orders/{targets['ship']}/complete", headers=DRY)
    assert refused.status == 409
    assert await dump_tables(db_url) == before

    assert dry_create.status == 201 and dry_replay.status == 200
    real_create = await normalise(await client.post("/api/v1/orders", **create))
    if db == "pg":
        assert _without_ids(dry_create) == _without_ids(real_create)
    else:
        assert dry_create == real_create
    for action, (_, body) in WRITES.items():
        real = await normalise(
            await client.post(f"/api/v1/orders/{targets[action]}/{action}", json=body)
        )
        assert (real.status, real.body) == (dry_moves[action].status, dry_moves[action].body)
        assert real.status == 200, action
    assert await dump_tables(db_url) != before


async def test_the_monolith_ignores_the_dry_run_header(
    aiohttp_client: MakeClient, sqlite_url: str
) -> None:
    client = await make_client(aiohttp_client, "legacy", sqlite_url, FakeClock())
    headers = {"Idempotency-Key": "k", **DRY}
    assert (await client.post("/api/v1/orders", json=new_order(), headers=headers)).status == 201
    assert len((await dump_tables(sqlite_url))["orders"]) == 1


async def test_any_dry_run_field_makes_a_dry_run(
    aiohttp_client: MakeClient, sqlite_url: str
) -> None:
    """Whatever came before it, a field saying 1 is a dry run: reading only the first one let
    an earlier `0` turn a copy's dry run into a real write."""
    client = await make_client(aiohttp_client, "extracted", sqlite_url, FakeClock())
    order_id = await _prepare(client, "k", ("ship", "deliver", "dispute"))
    before = await dump_tables(sqlite_url)
    fields = CIMultiDict([(DRY_RUN_HEADER, "0"), (DRY_RUN_HEADER, "1")])
    refund = await client.post(
        f"/api/v1/orders/{order_id}/refund", json={"amount": "5.00"}, headers=fields
    )
    assert refund.status == 200
    assert await dump_tables(sqlite_url) == before
