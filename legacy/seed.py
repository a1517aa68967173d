"""Deterministic, realistic demo data for the legacy monolith (`strangler legacy --seed N`)."""

from __future__ import annotations

import itertools
import json
import random
from typing import Any

from sqlalchemy import func, select

from extracted.db import create_engine, transaction
from extracted.schema import order_events, order_items, orders
from legacy.app import buyer_protection_fee

__all__ = ["DEFAULT_ANCHOR_MS", "seed_orders"]

DEFAULT_ANCHOR_MS = 1_767_603_600_000
"""When the newest seeded order was placed (2026-01-05T09:00:00Z), so seeds are reproducible."""

_FIRST = (
    "Ana",
    "Ben",
    "Chloe",
    "David",
    "Emma",
    "Farid",
    "Greta",
    "Hugo",
    "Ines",
    "Jonas",
    "Karin",
    "Luca",
    "Mina",
    "Noah",
    "Olga",
    "Pablo",
    "Quinn",
    "Rosa",
    "Sami",
    "Tara",
)
_LAST = (
    "Martin",
    "Schmidt",
    "Rossi",
    "Dubois",
    "Jansen",
    "Novak",
    "Silva",
    "Berg",
    "Kowalski",
    "Moreau",
    "Weber",
    "Costa",
    "Lind",
    "Horvat",
)
_CITIES = (
    ("Paris", "FR", "750{:02d}"),
    ("Lyon", "FR", "690{:02d}"),
    ("Berlin", "DE", "101{:02d}"),
    ("Munich", "DE", "803{:02d}"),
    ("Amsterdam", "NL", "10{:02d} AB"),
    ("London", "GB", "N{:d} 1AA"),
    ("Milan", "IT", "201{:02d}"),
    ("Madrid", "ES", "280{:02d}"),
)
_STREETS = (
    "Rue des Lilas",
    "Hauptstrasse",
    "Keizersgracht",
    "High Street",
    "Via Roma",
    "Calle Mayor",
    "Avenue Victor Hugo",
    "Lindenallee",
)
_GOODS = (
    ("Vintage leather jacket", 4500),
    ("Road bike, 56 cm frame", 18000),
    ("Polaroid SX-70 camera", 12000),
    ("Set of 6 bistro glasses", 1250),
    ("Wool scarf, hand-knitted", 900),
    ("Board game: Catan (complete)", 2090),
    ("Paperback: Dune", 499),
    ("Oak side table", 6400),
    ("Vinyl record: Kind of Blue", 2200),
    ("Children's rain boots, size 28", 1190),
    ("Espresso machine", 8990),
    ("Running shoes, EU 42", 3600),
    ("Ceramic vase", 1600),
    ("Desk lamp", 2400),
    ("Winter coat, size M", 5490),
    ("LEGO set 10270", 9900),
)
_PATHS = {
    "paid": ("paid",),
    "shipped": ("paid", "shipped"),
    "delivered": ("paid", "shipped", "delivered"),
    "completed": ("paid", "shipped", "delivered", "completed"),
    "cancelled": ("paid", "cancelled"),
    "disputed": ("paid", "shipped", "delivered", "disputed"),
    "refunded": ("paid", "shipped", "delivered", "disputed", "refunded"),
    "resolved": ("paid", "shipped", "delivered", "disputed", "completed"),
}
_WEIGHTS = {
    "paid": 14,
    "shipped": 14,
    "delivered": 12,
    "completed": 40,
    "cancelled": 6,
    "disputed": 5,
    "refunded": 5,
    "resolved": 4,
}
_EVENT_TYPE = {
    "shipped": "shipped",
    "delivered": "delivered",
    "completed": "completed",
    "cancelled": "cancelled",
    "disputed": "disputed",
    "refunded": "refunded",
}
_HOUR_MS = 3_600_000


def _person(n: int) -> tuple[str, str]:
    first, last = _FIRST[n % len(_FIRST)], _LAST[(n * 7) % len(_LAST)]
    return f"{first} {last}", f"{first.lower()}.{last.lower()}{n}@example.com"


def _order(rng: random.Random, n: int, created_ms: int) -> dict[str, Any]:
    buyer_id = rng.randint(1, 400)
    seller_id = rng.randint(1001, 1080)
    buyer_name, buyer_email = _person(buyer_id)
    city, country, postal = _CITIES[buyer_id % len(_CITIES)]
    lines: list[dict[str, Any]] = []
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3))):
        index = rng.randrange(len(_GOODS))
        title, price = _GOODS[index]
        lines.append(
            {
                "sku": f"SKU-{index * 7919 + 100003:06d}",
                "title": title,
                "quantity": rng.choice((1, 1, 1, 2)),
                "unit_price_minor": price,
            }
        )
    goods = sum(line["quantity"] * line["unit_price_minor"] for line in lines)
    shipping = rng.choice((0, 299, 499, 690, 1290))
    fee = buyer_protection_fee(goods)
    return {
        "buyer_id": buyer_id,
        "buyer_email": buyer_email,
        "buyer_name": buyer_name,
        "seller_id": seller_id,
        "seller_name": _person(seller_id)[0],
        "shipping_address": json.dumps(
            {
                "name": buyer_name,
                "line1": f"{rng.randint(1, 180)} {rng.choice(_STREETS)}",
                "line2": rng.choice((None, None, None, f"Apt {rng.randint(1, 40)}")),
                "city": city,
                "postal_code": postal.format(rng.randint(1, 20)),
                "country": country,
            }
        ),
        "currency": "GBP" if country == "GB" else "EUR",
        "status": "paid",
        "items_total_minor": goods,
        "shipping_fee_minor": shipping,
        "buyer_protection_fee_minor": fee,
        "total_minor": goods + shipping + fee,
        "refunded_minor": 0,
        "tracking_number": None,
        "created_at_ms": created_ms,
        "updated_at_ms": created_ms,
        "delivered_at_ms": None,
        "version": 1,
        "_lines": lines,
    }


def _history(rng: random.Random, order: dict[str, Any]) -> list[dict[str, Any]]:
    """Walk the order along a weighted path, updating it, and return its events."""
    path = rng.choices(list(_WEIGHTS), weights=list(_WEIGHTS.values()))[0]
    at = order["created_at_ms"]
    events = [
        {
            "type": "created",
            "from_status": None,
            "to_status": "paid",
            "at_ms": at,
            "actor": f"buyer:{order['buyer_id']}",
            "reason": None,
            "amount_minor": None,
        }
    ]
    steps = _PATHS[path]
    for before, after in itertools.pairwise(steps):
        at += rng.randint(2, 60) * _HOUR_MS
        amount = None
        kind = "resolved" if path == "resolved" and after == "completed" else _EVENT_TYPE[after]
        if after == "shipped":
            order["tracking_number"] = f"TRK{rng.randint(10**8, 10**9 - 1)}"
        if after == "delivered":
            order["delivered_at_ms"] = at
        if after == "cancelled":
            amount = order["total_minor"]
        if after == "refunded":
            amount = rng.choice((order["total_minor"], order["items_total_minor"] // 2))
        if amount is not None:
            order["refunded_minor"] += amount
        actor = f"seller:{order['seller_id']}" if after in ("shipped",) else "support:7"
        events.append(
            {
                "type": kind,
                "from_status": before,
                "to_status": after,
                "at_ms": at,
                "actor": actor,
                "reason": None,
                "amount_minor": amount,
            }
        )
        order["status"] = after
        order["updated_at_ms"] = at
        order["version"] += 1
    return events


async def seed_orders(db_url: str, count: int, *, anchor_ms: int = DEFAULT_ANCHOR_MS) -> int:
    """Insert `count` reproducible orders into an empty database; returns how many were added."""
    rng = random.Random(20260105)
    engine = create_engine(db_url)
    try:
        async with transaction(engine, write=True) as conn:
            existing = (await conn.execute(select(func.count()).select_from(orders))).scalar_one()
            if existing or count <= 0:
                return 0
            rows, timelines = [], []
            for n in range(count):
                created = anchor_ms - (count - n) * 37 * 60_000 - rng.randint(0, 59_999)
                order = _order(rng, n, created)
                timelines.append(_history(rng, order))
                rows.append(order)
            ids = (
                (
                    await conn.execute(
                        orders.insert().returning(orders.c.id, sort_by_parameter_order=True),
                        [{k: v for k, v in row.items() if k != "_lines"} for row in rows],
                    )
                )
                .scalars()
                .all()
            )
            lines = [
                {"order_id": oid, "position": pos, **line}
                for oid, row in zip(ids, rows, strict=True)
                for pos, line in enumerate(row["_lines"])
            ]
            events = [
                {"order_id": oid, **event}
                for oid, timeline in zip(ids, timelines, strict=True)
                for event in timeline
            ]
            await conn.execute(order_items.insert(), lines)
            await conn.execute(order_events.insert(), events)
            return count
    finally:
        await engine.dispose()
