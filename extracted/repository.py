"""The Order repository: SQL on the shared tables through one transaction's connection."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from extracted.domain import OrderState, Pricing, Status
from extracted.records import Address, EventRecord, ItemRecord, NewOrder, OrderRecord
from extracted.schema import (
    idempotency_keys,
    order_events,
    order_items,
    orders,
    transition_keys,
)

__all__ = ["IdempotencyRecord", "OrderFilter", "OrderRepository"]


@dataclass(frozen=True, slots=True)
class OrderFilter:
    """Which orders a listing shows and which page of them."""

    buyer_id: int | None = None
    seller_id: int | None = None
    status: Status | None = None
    page: int = 1
    per_page: int = 20


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """A stored idempotency key: the request it answered and the response it gave."""

    request_hash: str
    response_status: int | None
    response_body: str | None


class OrderRepository:
    """Reads and writes orders, lines, events and idempotency keys on one connection."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def get(self, order_id: int, *, for_update: bool = False) -> OrderRecord | None:
        """The order with `order_id`; `for_update` locks its row until the transaction ends."""
        query = select(orders).where(orders.c.id == order_id)
        if for_update:
            query = query.with_for_update()
        row = (await self.conn.execute(query)).first()
        if row is None:
            return None
        return (await self._with_items([row]))[0]

    async def find(self, where: OrderFilter) -> tuple[list[OrderRecord], int]:
        """One page of orders, newest first, and how many match in total."""
        conditions: list[Any] = []
        if where.buyer_id is not None:
            conditions.append(orders.c.buyer_id == where.buyer_id)
        if where.seller_id is not None:
            conditions.append(orders.c.seller_id == where.seller_id)
        if where.status is not None:
            conditions.append(orders.c.status == where.status.value)
        total = (
            await self.conn.execute(select(func.count()).select_from(orders).where(*conditions))
        ).scalar_one()
        rows = (
            await self.conn.execute(
                select(orders)
                .where(*conditions)
                .order_by(orders.c.created_at_ms.desc(), orders.c.id.desc())
                .limit(where.per_page)
                .offset((where.page - 1) * where.per_page)
            )
        ).all()
        return await self._with_items(rows), int(total)

    async def add(self, new: NewOrder, pricing: Pricing, now_ms: int) -> int:
        """Insert a paid order and its lines; returns the new order id."""
        address = new.shipping_address
        result = await self.conn.execute(
            orders.insert().values(
                buyer_id=new.buyer_id,
                buyer_email=new.buyer_email,
                buyer_name=new.buyer_name,
                seller_id=new.seller_id,
                seller_name=new.seller_name,
                shipping_address=json.dumps(
                    {
                        "name": address.name,
                        "line1": address.line1,
                        "line2": address.line2,
                        "city": address.city,
                        "postal_code": address.postal_code,
                        "country": address.country,
                    }
                ),
                currency=new.currency,
                status=Status.PAID.value,
                items_total_minor=pricing.items_total,
                shipping_fee_minor=pricing.shipping_fee,
                buyer_protection_fee_minor=pricing.buyer_protection_fee,
                total_minor=pricing.total,
                refunded_minor=0,
                created_at_ms=now_ms,
                updated_at_ms=now_ms,
                version=1,
            )
        )
        key = result.inserted_primary_key
        assert key is not None
        order_id = int(key[0])
        for position, item in enumerate(new.items):
            await self.conn.execute(
                order_items.insert().values(
                    order_id=order_id,
                    position=position,
                    sku=item.sku,
                    title=item.title,
                    quantity=item.quantity,
                    unit_price_minor=item.unit_price,
                )
            )
        return order_id

    async def save_state(
        self, order: OrderRecord, after: OrderState, now_ms: int, tracking_number: str | None
    ) -> bool:
        """Store a new state if nobody changed the order since it was read (version check)."""
        values: dict[str, Any] = {
            "status": after.status.value,
            "refunded_minor": after.refunded,
            "delivered_at_ms": after.delivered_at_ms,
            "updated_at_ms": now_ms,
            "version": order.version + 1,
        }
        if tracking_number is not None:
            values["tracking_number"] = tracking_number
        result = await self.conn.execute(
            update(orders)
            .where(orders.c.id == order.id, orders.c.version == order.version)
            .values(**values)
        )
        return result.rowcount == 1

    async def add_event(
        self,
        order_id: int,
        type_: str,
        from_status: str | None,
        to_status: str,
        at_ms: int,
        *,
        actor: str | None = None,
        reason: str | None = None,
        amount: int | None = None,
    ) -> None:
        """Append one event to an order's timeline."""
        await self.conn.execute(
            order_events.insert().values(
                order_id=order_id,
                type=type_,
                from_status=from_status,
                to_status=to_status,
                actor=actor,
                reason=reason,
                amount_minor=amount,
                at_ms=at_ms,
            )
        )

    async def events(self, order_id: int) -> list[EventRecord]:
        """An order's timeline, oldest first."""
        rows = (
            await self.conn.execute(
                select(order_events)
                .where(order_events.c.order_id == order_id)
                .order_by(order_events.c.id)
            )
        ).all()
        return [
            EventRecord(
                id=r.id,
                order_id=r.order_id,
                type=r.type,
                from_status=r.from_status,
                to_status=r.to_status,
                actor=r.actor,
                reason=r.reason,
                amount=r.amount_minor,
                at_ms=r.at_ms,
            )
            for r in rows
        ]

    async def claim_key(
        self, buyer_id: int, key: str, request_hash: str, now_ms: int
    ) -> IdempotencyRecord | None:
        """Claim an idempotency key; None if it is ours now, else the record that holds it."""
        dialect = self.conn.dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        # ON CONFLICT DO NOTHING waits for a racing holder of the same key to commit or roll
        # back, so exactly one of N concurrent creates wins and the rest see its response.
        result = await self.conn.execute(
            insert(idempotency_keys)
            .values(buyer_id=buyer_id, key=key, request_hash=request_hash, created_at_ms=now_ms)
            .on_conflict_do_nothing(index_elements=["buyer_id", "key"])
            .returning(idempotency_keys.c.id)
        )
        if result.first() is not None:
            return None
        row = (
            await self.conn.execute(
                select(idempotency_keys).where(
                    idempotency_keys.c.buyer_id == buyer_id, idempotency_keys.c.key == key
                )
            )
        ).one()
        return IdempotencyRecord(row.request_hash, row.response_status, row.response_body)

    async def store_response(
        self, buyer_id: int, key: str, order_id: int, status: int, body: str
    ) -> None:
        """Remember the response a claimed key produced, for replays."""
        await self.conn.execute(
            update(idempotency_keys)
            .where(idempotency_keys.c.buyer_id == buyer_id, idempotency_keys.c.key == key)
            .values(order_id=order_id, response_status=status, response_body=body)
        )

    async def transition_key(self, order_id: int, key: str) -> IdempotencyRecord | None:
        """The stored answer of a transition sent with `key` on the order, if any."""
        row = (
            await self.conn.execute(
                select(transition_keys).where(
                    transition_keys.c.order_id == order_id, transition_keys.c.key == key
                )
            )
        ).first()
        if row is None:
            return None
        return IdempotencyRecord(row.request_hash, row.response_status, row.response_body)

    async def store_transition_key(
        self, order_id: int, key: str, request_hash: str, status: int, body: str, now_ms: int
    ) -> None:
        """Remember a transition's answer under its key (same transaction as the change)."""
        await self.conn.execute(
            transition_keys.insert().values(
                order_id=order_id,
                key=key,
                request_hash=request_hash,
                response_status=status,
                response_body=body,
                created_at_ms=now_ms,
            )
        )

    async def _with_items(self, rows: Sequence[Row[Any]]) -> list[OrderRecord]:
        ids = [r.id for r in rows]
        lines: dict[int, list[ItemRecord]] = {i: [] for i in ids}
        if ids:
            item_rows = await self.conn.execute(
                select(order_items)
                .where(order_items.c.order_id.in_(ids))
                .order_by(order_items.c.order_id, order_items.c.position)
            )
            for r in item_rows:
                lines[r.order_id].append(
                    ItemRecord(r.id, r.sku, r.title, r.quantity, r.unit_price_minor)
                )
        return [_order(r, tuple(lines[r.id])) for r in rows]


def _order(r: Row[Any], items: tuple[ItemRecord, ...]) -> OrderRecord:
    address = json.loads(r.shipping_address)
    return OrderRecord(
        id=r.id,
        status=r.status,
        currency=r.currency,
        buyer_id=r.buyer_id,
        buyer_email=r.buyer_email,
        buyer_name=r.buyer_name,
        seller_id=r.seller_id,
        seller_name=r.seller_name,
        shipping_address=Address(**address),
        items=items,
        items_total=r.items_total_minor,
        shipping_fee=r.shipping_fee_minor,
        buyer_protection_fee=r.buyer_protection_fee_minor,
        total=r.total_minor,
        refunded=r.refunded_minor,
        tracking_number=r.tracking_number,
        created_at_ms=r.created_at_ms,
        updated_at_ms=r.updated_at_ms,
        delivered_at_ms=r.delivered_at_ms,
        version=r.version,
    )
