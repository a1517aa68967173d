"""A listing is one snapshot: its X-Total-Count and its items agree even while orders are
being created (SQLite reads in one snapshot; PostgreSQL's default read committed did not)."""

from __future__ import annotations

import sqlite3
from typing import Any

import psycopg
import pytest
from sqlalchemy import event
from sqlalchemy.engine import Connection

import legacy.app
from extracted.app import SERVICE
from tests.integration.orders.harness import (
    FakeClock,
    MakeClient,
    database_url,
    make_client,
    new_order,
)

_COLUMNS = (
    "buyer_id, buyer_email, buyer_name, seller_id, seller_name, shipping_address, currency,"
    " status, items_total_minor, shipping_fee_minor, buyer_protection_fee_minor, total_minor,"
    " refunded_minor, created_at_ms, updated_at_ms, version"
)


@pytest.mark.parametrize("side", ["legacy", "extracted"])
@pytest.mark.parametrize("db", ["sqlite", "pg"])
async def test_an_order_created_during_a_listing_is_in_its_count_and_items_alike(
    request: pytest.FixtureRequest, aiohttp_client: MakeClient, side: str, db: str
) -> None:
    """An order committed between the listing's count and its page was in the items but not
    in X-Total-Count on PostgreSQL: a client paging up to the count stopped one order short."""
    url = database_url(request, db)
    client = await make_client(aiohttp_client, side, url, FakeClock())
    for n in range(3):
        headers = {"Idempotency-Key": f"k{n}"}
        assert (
            await client.post("/api/v1/orders", json=new_order(), headers=headers)
        ).status == 201
    engine = client.app[SERVICE].engine if side == "extracted" else client.app[legacy.app.ENGINE]
    copy = f"INSERT INTO orders ({_COLUMNS}) SELECT {_COLUMNS} FROM orders WHERE id = 1"
    inserted: list[bool] = []

    def create_after_count(conn: Connection, _cursor: Any, statement: str, *_: Any) -> None:
        if inserted or "count(" not in statement.lower():
            return
        inserted.append(True)
        if db == "pg":
            dsn = url.replace("postgresql+psycopg://", "postgresql://", 1)
            with psycopg.connect(dsn, autocommit=True) as pg:
                pg.execute(copy)
        else:
            lite = sqlite3.connect(url.split("///", 1)[1], isolation_level=None)
            try:
                lite.execute(copy)
            finally:
                lite.close()

    event.listen(engine.sync_engine, "after_cursor_execute", create_after_count)
    try:
        resp = await client.get("/api/v1/orders?per_page=100")
    finally:
        event.remove(engine.sync_engine, "after_cursor_execute", create_after_count)
    assert inserted and resp.status == 200
    items = (await resp.json())["items"]
    assert int(resp.headers["X-Total-Count"]) == len(items), [o["id"] for o in items]
