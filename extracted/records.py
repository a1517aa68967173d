"""Plain values passed between the Order repository, services and contract (no behaviour)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Address", "EventRecord", "ItemRecord", "NewItem", "NewOrder", "OrderRecord"]


@dataclass(frozen=True, slots=True)
class Address:
    """A postal shipping address."""

    name: str
    line1: str
    line2: str | None
    city: str
    postal_code: str
    country: str


@dataclass(frozen=True, slots=True)
class NewItem:
    """One line of an order being created."""

    sku: str
    title: str
    quantity: int
    unit_price: int


@dataclass(frozen=True, slots=True)
class NewOrder:
    """A validated create-order request."""

    buyer_id: int
    buyer_email: str
    buyer_name: str
    seller_id: int
    seller_name: str
    currency: str
    items: tuple[NewItem, ...]
    shipping_fee: int
    shipping_address: Address


@dataclass(frozen=True, slots=True)
class ItemRecord:
    """A stored order line."""

    id: int
    sku: str
    title: str
    quantity: int
    unit_price: int


@dataclass(frozen=True, slots=True)
class OrderRecord:
    """A stored order with its lines; money in minor units, times in epoch ms."""

    id: int
    status: str
    currency: str
    buyer_id: int
    buyer_email: str
    buyer_name: str
    seller_id: int
    seller_name: str
    shipping_address: Address
    items: tuple[ItemRecord, ...]
    items_total: int
    shipping_fee: int
    buyer_protection_fee: int
    total: int
    refunded: int
    tracking_number: str | None
    created_at_ms: int
    updated_at_ms: int
    delivered_at_ms: int | None
    version: int


@dataclass(frozen=True, slots=True)
class EventRecord:
    """A stored timeline event."""

    id: int
    order_id: int
    type: str
    from_status: str | None
    to_status: str
    actor: str | None
    reason: str | None
    amount: int | None
    at_ms: int
