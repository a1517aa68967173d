"""Text a database cannot store (NUL) is refused up front on both sides, never a 500."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.integration.orders.harness import (
    FakeClock,
    MakeClient,
    dump_tables,
    make_client,
    new_order,
)

Client = TestClient[web.Request, web.Application]
SIDES_AND_DBS = [
    pytest.mark.parametrize("side", ["legacy", "extracted"]),
    pytest.mark.parametrize("db", ["sqlite", "pg"]),
]


def _db_url(request: pytest.FixtureRequest, db: str) -> str:
    return str(request.getfixturevalue("sqlite_url" if db == "sqlite" else "pg_url"))


def _order_with(path: tuple[str | int, ...], value: str) -> dict[str, Any]:
    body = copy.deepcopy(new_order())
    here: Any = body
    for step in path[:-1]:
        here = here[step]
    here[path[-1]] = value
    return body


async def _post(client: Client, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with client.post(path, **kwargs) as resp:
        # content_type=None: a plain-text 500 must fail the status check, not the decoding.
        return resp.status, await resp.json(content_type=None) if resp.status != 500 else None


async def _disputed(client: Client) -> int:
    status, doc = await _post(
        client, "/api/v1/orders", json=new_order(), headers={"Idempotency-Key": "setup"}
    )
    assert status == 201
    for action in ("ship", "deliver", "dispute"):
        assert (await _post(client, f"/api/v1/orders/{doc['id']}/{action}"))[0] == 200
    return int(doc["id"])


def _refused(reply: tuple[int, Any], field: str) -> None:
    status, doc = reply
    assert status == 422, reply
    assert doc["error"]["code"] == "validation_error"
    assert doc["error"]["message"] == f"{field}: must not contain a NUL character"


@pytest.mark.parametrize(
    ("where", "field"),
    [
        (("buyer", "name"), "buyer.name"),
        (("buyer", "email"), "buyer.email"),
        (("items", 1, "title"), "items[1].title"),
        (("shipping_address", "line2"), "shipping_address.line2"),
    ],
)
@SIDES_AND_DBS[0]
@SIDES_AND_DBS[1]
async def test_a_nul_in_an_order_field_is_a_422_naming_it(
    aiohttp_client: MakeClient,
    request: pytest.FixtureRequest,
    side: str,
    db: str,
    where: tuple[str | int, ...],
    field: str,
) -> None:
    """PostgreSQL refuses NUL in text (a plain 500); SQLite stored it: both now say 422."""
    db_url = _db_url(request, db)
    client = await make_client(aiohttp_client, side, db_url, FakeClock())
    before = await dump_tables(db_url)
    body = _order_with(where, "Ana\u0000Lima@x")
    _refused(
        await _post(client, "/api/v1/orders", json=body, headers={"Idempotency-Key": "n"}), field
    )
    assert await dump_tables(db_url) == before


@pytest.mark.parametrize(
    ("action", "body", "field"),
    [
        ("refund", {"amount": "5.00", "actor": "support:\u00001"}, "body.actor"),
        ("refund", {"amount": "5.00", "reason": "\u0000"}, "body.reason"),
        ("resolve", {"reason": "ok\u0000"}, "body.reason"),
    ],
)
@SIDES_AND_DBS[0]
@SIDES_AND_DBS[1]
async def test_a_nul_in_a_transition_field_is_a_422_naming_it(
    aiohttp_client: MakeClient,
    request: pytest.FixtureRequest,
    side: str,
    db: str,
    action: str,
    body: dict[str, Any],
    field: str,
) -> None:
    db_url = _db_url(request, db)
    client = await make_client(aiohttp_client, side, db_url, FakeClock())
    order_id = await _disputed(client)
    before = await dump_tables(db_url)
    path = f"/api/v1/orders/{order_id}/{action}"
    _refused(await _post(client, path, json=body), field)
    assert await dump_tables(db_url) == before


@SIDES_AND_DBS[0]
@SIDES_AND_DBS[1]
async def test_a_nul_in_a_tracking_number_is_a_422(
    aiohttp_client: MakeClient, request: pytest.FixtureRequest, side: str, db: str
) -> None:
    db_url = _db_url(request, db)
    client = await make_client(aiohttp_client, side, db_url, FakeClock())
    status, doc = await _post(
        client, "/api/v1/orders", json=new_order(), headers={"Idempotency-Key": "t"}
    )
    assert status == 201
    before = await dump_tables(db_url)
    path = f"/api/v1/orders/{doc['id']}/ship"
    _refused(
        await _post(client, path, json={"tracking_number": "TRK\u00001"}), "body.tracking_number"
    )
    assert await dump_tables(db_url) == before
