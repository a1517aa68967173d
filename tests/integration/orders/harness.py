"""Helpers for the Order integration tests: app factories, request bodies, dumps, normalising."""

from __future__ import annotations

import copy
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient
from sqlalchemy import select

import extracted.app
import legacy.app
from extracted.db import create_engine
from extracted.schema import create_schema, metadata

__all__ = [
    "START_MS",
    "VOLATILE_HEADERS",
    "FakeClock",
    "Reply",
    "database_url",
    "dump_tables",
    "make_client",
    "new_order",
    "normalise",
]


def database_url(request: pytest.FixtureRequest, db: str) -> str:
    """The URL of a fresh database of kind `db` ("sqlite" or "pg") for this test."""
    return str(request.getfixturevalue("sqlite_url" if db == "sqlite" else "pg_url"))


START_MS = 1_780_000_000_123
"""The fake clock's starting time (2026-05-28T20:26:40.123Z)."""

VOLATILE_HEADERS = frozenset({"date", "server", "etag"})
"""Headers the legacy contract documents as changing on every call."""

MakeClient = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]


@dataclass
class FakeClock:
    """A clock the test moves by hand (epoch ms)."""

    now: int = START_MS

    def __call__(self) -> int:
        return self.now

    def tick(self, ms: int = 1000) -> None:
        """Move time forward."""
        self.now += ms


@dataclass(frozen=True)
class Reply:
    """A response with only the documented volatile fields removed."""

    status: int
    headers: dict[str, str]
    has_etag: bool
    body: Any

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able form for golden files."""
        return {
            "status": self.status,
            "headers": self.headers,
            "has_etag": self.has_etag,
            "body": self.body,
        }


async def normalise(resp: ClientResponse) -> Reply:
    """Read `resp` and strip Date, Server, ETag and meta.generated_at (checking its format)."""
    raw = await resp.read()
    headers = {k.lower(): v for k, v in resp.headers.items() if k.lower() not in VOLATILE_HEADERS}
    body: Any = json.loads(raw) if raw else None
    if isinstance(body, dict) and isinstance(body.get("meta"), dict):
        body = copy.deepcopy(body)
        generated = body["meta"].pop("generated_at")
        assert isinstance(generated, str) and generated.endswith("Z") and len(generated) == 24
    return Reply(resp.status, headers, "etag" in {k.lower() for k in resp.headers}, body)


async def make_client(
    aiohttp_client: MakeClient,
    side: str,
    db_url: str,
    clock: FakeClock,
    **options: Any,
) -> TestClient[web.Request, web.Application]:
    """A test client for the `side` ("legacy" | "extracted") Order app on a schema'd `db_url`."""
    await create_schema(db_url)
    if side == "legacy":
        app = legacy.app.create_app(db_url, clock=clock)
    else:
        app = extracted.app.create_app(db_url, clock=clock, **options)
    return await aiohttp_client(app)


def new_order(
    buyer_id: int = 7, *, unit_price: str = "12.50", quantity: int = 1, seller_id: int = 3
) -> dict[str, Any]:
    """A realistic create-order body."""
    return {
        "buyer": {"id": buyer_id, "email": f"buyer{buyer_id}@example.com", "name": "Ana Lima"},
        "seller": {"id": seller_id, "name": "Bruno Keller"},
        "currency": "EUR",
        "items": [
            {
                "sku": "SKU-1001",
                "title": "Polaroid SX-70",
                "quantity": quantity,
                "unit_price": unit_price,
            },
            {"sku": "SKU-2002", "title": "Film pack", "quantity": 2, "unit_price": "8.00"},
        ],
        "shipping_fee": "4.99",
        "shipping_address": {
            "name": "Ana Lima",
            "line1": "12 Rue des Lilas",
            "line2": "Apt 4",
            "city": "Paris",
            "postal_code": "75011",
            "country": "FR",
        },
    }


async def dump_tables(db_url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every Order table, ordered by primary key."""
    engine = create_engine(db_url)
    try:
        async with engine.connect() as conn:
            return {
                table.name: [
                    tuple(row)
                    for row in await conn.execute(select(table).order_by(*table.primary_key))
                ]
                for table in metadata.sorted_tables
            }
    finally:
        await engine.dispose()
