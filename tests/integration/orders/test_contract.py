"""One contract, four deployments: legacy and extracted, on SQLite and PostgreSQL, answer alike."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.integration.orders.harness import (
    FakeClock,
    MakeClient,
    database_url,
    make_client,
    new_order,
    normalise,
)

GOLDEN = Path(__file__).with_name("contract_golden.json")
UPDATE_ENV = "STRANGLER_UPDATE_GOLDEN"
DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class Step:
    """One request of the contract scenario and the status it must get."""

    name: str
    method: str
    path: str
    status: int
    json: Any = None
    data: str | bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    advance_ms: int = 1000


def _key(k: str) -> dict[str, str]:
    return {"Idempotency-Key": k}


_BAD_CURRENCY = {**new_order(), "currency": "XXX"}
_BAD_PRICE = new_order(unit_price="12.5")
_HUGE_ID = {**new_order(), "buyer": {"id": 2**70, "email": "a@b.c", "name": "A"}}
_NO_ITEMS = {**new_order(), "items": []}
_BAD_EMAIL = {**new_order(), "buyer": {"id": 7, "email": "nope", "name": "A"}}

SCENARIO: list[Step] = [
    # creation and its errors
    Step("create without key", "POST", "/api/v1/orders", 400, json=new_order()),
    Step("create bad json", "POST", "/api/v1/orders", 400, data="{nope", headers=_key("k0")),
    Step("create non-object", "POST", "/api/v1/orders", 400, json=[1, 2], headers=_key("k0")),
    Step(
        "create bad currency", "POST", "/api/v1/orders", 422, json=_BAD_CURRENCY, headers=_key("k0")
    ),
    Step("create bad price", "POST", "/api/v1/orders", 422, json=_BAD_PRICE, headers=_key("k0")),
    Step("create NaN", "POST", "/api/v1/orders", 400, data='{"a": NaN}', headers=_key("k0")),
    Step(
        "create not utf-8", "POST", "/api/v1/orders", 400, data=b'{"a": "\xff"}', headers=_key("k0")
    ),
    Step("create huge buyer id", "POST", "/api/v1/orders", 422, json=_HUGE_ID, headers=_key("k0")),
    Step("create no items", "POST", "/api/v1/orders", 422, json=_NO_ITEMS, headers=_key("k0")),
    Step("create bad email", "POST", "/api/v1/orders", 422, json=_BAD_EMAIL, headers=_key("k0")),
    Step("create #1", "POST", "/api/v1/orders", 201, json=new_order(), headers=_key("k1")),
    Step("create #1 replay", "POST", "/api/v1/orders", 200, json=new_order(), headers=_key("k1")),
    Step(
        "create key reused",
        "POST",
        "/api/v1/orders",
        422,
        json=new_order(unit_price="99.00"),
        headers=_key("k1"),
    ),
    Step(
        "create #2 same key other buyer",
        "POST",
        "/api/v1/orders",
        201,
        json=new_order(8),
        headers=_key("k1"),
    ),
    Step(
        "create #3",
        "POST",
        "/api/v1/orders",
        201,
        json=new_order(9, unit_price="40.00"),
        headers=_key("k3"),
    ),
    Step(
        "create #4",
        "POST",
        "/api/v1/orders",
        201,
        json=new_order(7, seller_id=4),
        headers=_key("k4"),
    ),
    Step(
        "create #5",
        "POST",
        "/api/v1/orders",
        201,
        json=new_order(10, quantity=3),
        headers=_key("k5"),
    ),
    # reads and their errors
    Step("show #1", "GET", "/api/v1/orders/1", 200),
    Step("show missing", "GET", "/api/v1/orders/999", 404),
    Step("show bad id", "GET", "/api/v1/orders/abc", 400),
    Step("show zero id", "GET", "/api/v1/orders/0", 400),
    Step("show huge id", "GET", "/api/v1/orders/99999999999", 400),
    Step("events missing", "GET", "/api/v1/orders/999/events", 404),
    Step("events bad id", "GET", "/api/v1/orders/x1/events", 400),
    Step("put not allowed", "PUT", "/api/v1/orders/1", 405, json={}),
    # order 1: paid -> shipped -> delivered -> disputed -> refunded (partial, then the rest)
    Step(
        "ship #1",
        "POST",
        "/api/v1/orders/1/ship",
        200,
        json={"tracking_number": "TRK1", "actor": "seller:3"},
    ),
    Step("ship #1 again", "POST", "/api/v1/orders/1/ship", 409),
    Step("complete #1 too early", "POST", "/api/v1/orders/1/complete", 409),
    Step("deliver #1", "POST", "/api/v1/orders/1/deliver", 200, advance_ms=DAY_MS),
    Step(
        "dispute #1", "POST", "/api/v1/orders/1/dispute", 200, json={"reason": "not as described"}
    ),
    Step("refund #1 too much", "POST", "/api/v1/orders/1/refund", 422, json={"amount": "999.00"}),
    Step("refund #1 bad amount", "POST", "/api/v1/orders/1/refund", 422, json={"amount": 5}),
    Step("refund #1 zero", "POST", "/api/v1/orders/1/refund", 422, json={"amount": "0.00"}),
    Step(
        "refund #1 partial",
        "POST",
        "/api/v1/orders/1/refund",
        200,
        json={"amount": "5.00", "actor": "support:1"},
    ),
    Step("refund #1 rest", "POST", "/api/v1/orders/1/refund", 200, json={}),
    Step("refund #1 nothing left", "POST", "/api/v1/orders/1/refund", 422),
    Step("resolve #1 refunded", "POST", "/api/v1/orders/1/resolve", 409),
    Step("events #1", "GET", "/api/v1/orders/1/events", 200),
    # order 2: cancelled with a full refund
    Step("cancel #2", "POST", "/api/v1/orders/2/cancel", 200, json={"reason": "changed my mind"}),
    Step("ship #2 cancelled", "POST", "/api/v1/orders/2/ship", 409),
    Step("refund #2 cancelled", "POST", "/api/v1/orders/2/refund", 409),
    # order 3: the happy path
    Step("ship #3", "POST", "/api/v1/orders/3/ship", 200, data=""),
    Step("deliver #3", "POST", "/api/v1/orders/3/deliver", 200),
    Step("complete #3", "POST", "/api/v1/orders/3/complete", 200),
    Step("complete #3 again", "POST", "/api/v1/orders/3/complete", 409),
    Step("cancel #3 completed", "POST", "/api/v1/orders/3/cancel", 409),
    # order 4: the dispute window closes
    Step("ship #4", "POST", "/api/v1/orders/4/ship", 200),
    Step("dispute #4 not delivered", "POST", "/api/v1/orders/4/dispute", 409),
    Step("deliver #4", "POST", "/api/v1/orders/4/deliver", 200),
    Step("dispute #4 late", "POST", "/api/v1/orders/4/dispute", 409, advance_ms=4 * DAY_MS),
    # order 5: dispute resolved in the seller's favour
    Step("ship #5", "POST", "/api/v1/orders/5/ship", 200),
    Step("deliver #5", "POST", "/api/v1/orders/5/deliver", 200),
    Step("dispute #5", "POST", "/api/v1/orders/5/dispute", 200),
    Step(
        "resolve #5", "POST", "/api/v1/orders/5/resolve", 200, json={"reason": "item as described"}
    ),
    Step("events #5", "GET", "/api/v1/orders/5/events", 200),
    # transition request errors
    Step("unknown action", "POST", "/api/v1/orders/1/frobnicate", 404),
    Step("action bad json", "POST", "/api/v1/orders/4/complete", 400, data="{"),
    Step("action non-object", "POST", "/api/v1/orders/4/complete", 400, json="ship"),
    Step("action bad actor", "POST", "/api/v1/orders/4/complete", 422, json={"actor": 5}),
    Step("action missing order", "POST", "/api/v1/orders/999/ship", 404),
    Step("action bad id", "POST", "/api/v1/orders/-1/ship", 400),
    # listings
    Step("list all", "GET", "/api/v1/orders", 200),
    Step("list by buyer", "GET", "/api/v1/orders?buyer_id=7", 200),
    Step("list by seller", "GET", "/api/v1/orders?seller_id=4", 200),
    Step("list by status", "GET", "/api/v1/orders?status=completed", 200),
    Step("list page 2", "GET", "/api/v1/orders?page=2&per_page=2", 200),
    Step("list past the end", "GET", "/api/v1/orders?page=9", 200),
    Step("list bad status", "GET", "/api/v1/orders?status=lost", 400),
    Step("list bad per_page", "GET", "/api/v1/orders?per_page=500", 400),
    Step("list bad buyer", "GET", "/api/v1/orders?buyer_id=x", 400),
]


async def _run(aiohttp_client: MakeClient, side: str, db_url: str) -> list[dict[str, Any]]:
    clock = FakeClock()
    client = await make_client(aiohttp_client, side, db_url, clock)
    transcript = []
    for step in SCENARIO:
        clock.tick(step.advance_ms)
        kwargs: dict[str, Any] = {"headers": step.headers}
        if step.json is not None:
            kwargs["json"] = step.json
        elif step.data is not None:
            kwargs["data"] = step.data
        async with client.request(step.method, step.path, **kwargs) as resp:
            reply = await normalise(resp)
        assert reply.status == step.status, (step.name, reply.body)
        transcript.append({"step": step.name, **reply.as_dict()})
    return transcript


@pytest.mark.parametrize("side", ["legacy", "extracted"])
@pytest.mark.parametrize("db", ["sqlite", "pg"])
async def test_contract(
    aiohttp_client: MakeClient, request: pytest.FixtureRequest, side: str, db: str
) -> None:
    url = database_url(request, db)
    transcript = await _run(aiohttp_client, side, url)
    if os.environ.get(UPDATE_ENV) == "1" and side == "legacy" and db == "sqlite":
        GOLDEN.write_text(json.dumps(transcript, indent=1, ensure_ascii=False) + "\n")
    golden = json.loads(GOLDEN.read_text())
    assert [t["step"] for t in golden] == [s.name for s in SCENARIO]
    for got, want in zip(transcript, golden, strict=True):
        assert got == want, got["step"]


def test_scenario_covers_every_action_and_error() -> None:
    paths = {s.path.rsplit("/", 1)[-1] for s in SCENARIO if s.method == "POST"}
    actions = {"ship", "deliver", "complete", "cancel", "dispute", "refund", "resolve"}
    assert actions <= paths
    assert {400, 404, 405, 409, 422, 200, 201} <= {s.status for s in SCENARIO}
