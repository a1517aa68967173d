"""The legacy Order API contract: request parsing and JSON rendering exactly as the monolith."""

from __future__ import annotations

import datetime as dt
import re
import time
from typing import Any

from extracted.domain import Action, Rounding, buyer_protection_fee
from extracted.records import Address, EventRecord, NewItem, NewOrder, OrderRecord

__all__ = [
    "CURRENCIES",
    "EVENT_TYPES",
    "SURROGATE",
    "ContractError",
    "format_money",
    "format_ts",
    "has_lone_surrogate",
    "meta",
    "parse_command",
    "parse_money",
    "parse_new_order",
    "render_event",
    "render_order",
]

SURROGATE = re.compile(r"[\ud800-\udfff]")  # half a surrogate pair: no Unicode text


def has_lone_surrogate(doc: Any) -> bool:
    """Whether a string (key or value) of decoded JSON holds half a surrogate pair (an escape
    like "\\ud800" alone), which is no Unicode text: nothing can encode it to UTF-8."""
    pending = [doc]
    while pending:  # no recursion: the parser accepts nesting deeper than the stack allows
        value = pending.pop()
        if isinstance(value, str):
            if SURROGATE.search(value):
                return True
        elif isinstance(value, dict):
            pending.extend(value)
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return False


CURRENCIES = ("EUR", "GBP", "USD")
"""Currencies the marketplace sells in (all with two decimal places)."""

EVENT_TYPES: dict[Action, str] = {
    Action.SHIP: "shipped",
    Action.DELIVER: "delivered",
    Action.COMPLETE: "completed",
    Action.CANCEL: "cancelled",
    Action.DISPUTE: "disputed",
    Action.REFUND: "refunded",
    Action.RESOLVE: "resolved",
}
"""The timeline event type each action records."""

_MONEY = re.compile(r"(0|[1-9][0-9]{0,8})\.([0-9]{2})")
_MAX_ITEMS = 50


class ContractError(Exception):
    """A request body that breaks the contract (-> 422 validation_error)."""

    code = "validation_error"


def format_money(minor: int) -> str:
    """Minor units as the legacy decimal string: 1250 -> "12.50"."""
    sign = "-" if minor < 0 else ""
    units, cents = divmod(abs(minor), 100)
    return f"{sign}{units}.{cents:02d}"


def parse_money(value: object, path: str, *, allow_zero: bool = False) -> int:
    """A legacy decimal string ("12.50", exactly two decimals) as minor units."""
    if not isinstance(value, str) or not (m := _MONEY.fullmatch(value)):
        raise ContractError(f'{path}: must be a decimal string like "12.50"')
    minor = int(m.group(1)) * 100 + int(m.group(2))
    if minor == 0 and not allow_zero:
        raise ContractError(f"{path}: must be greater than 0.00")
    return minor


def format_ts(ms: int | None) -> str | None:
    """Epoch milliseconds as the legacy timestamp: 2026-01-02T03:04:05.678Z."""
    if ms is None:
        return None
    seconds, millis = divmod(ms, 1000)
    stamp = dt.datetime.fromtimestamp(seconds, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{millis:03d}Z"


def meta() -> dict[str, Any]:
    """The legacy `meta` block: when this response was generated (volatile by design)."""
    return {"generated_at": format_ts(time.time_ns() // 1_000_000)}


def _text(obj: dict[str, Any], key: str, path: str, limit: int, *, optional: bool = False) -> Any:
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise ContractError(f"{path}.{key}: must be a non-empty string of at most {limit} chars")
    if "\x00" in value:
        # PostgreSQL cannot store NUL in text; refused on every database so both answer alike.
        raise ContractError(f"{path}.{key}: must not contain a NUL character")
    return value


def _positive_int(obj: dict[str, Any], key: str, path: str, limit: int) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= limit:
        raise ContractError(f"{path}.{key}: must be an integer between 1 and {limit}")
    return value


def _object(value: object, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ContractError(f"{path}: must be an object")
    return value


def parse_new_order(body: dict[str, Any]) -> NewOrder:
    """Validate a create-order body; raises ContractError naming the first bad field."""
    buyer = _object(body.get("buyer"), "buyer")
    buyer_id = _positive_int(buyer, "id", "buyer", 2**31 - 1)
    email = _text(buyer, "email", "buyer", 254)
    if "@" not in email:
        raise ContractError("buyer.email: must be an e-mail address")
    buyer_name = _text(buyer, "name", "buyer", 200)
    seller = _object(body.get("seller"), "seller")
    seller_id = _positive_int(seller, "id", "seller", 2**31 - 1)
    seller_name = _text(seller, "name", "seller", 200)
    currency = body.get("currency")
    if currency not in CURRENCIES:
        raise ContractError(f"currency: must be one of {', '.join(CURRENCIES)}")
    raw_items = body.get("items")
    if not isinstance(raw_items, list) or not 0 < len(raw_items) <= _MAX_ITEMS:
        raise ContractError(f"items: must be a list of 1 to {_MAX_ITEMS} items")
    items = []
    for index, raw in enumerate(raw_items):
        path = f"items[{index}]"
        item = _object(raw, path)
        items.append(
            NewItem(
                sku=_text(item, "sku", path, 64),
                title=_text(item, "title", path, 200),
                quantity=_positive_int(item, "quantity", path, 99),
                unit_price=parse_money(item.get("unit_price"), f"{path}.unit_price"),
            )
        )
    shipping_fee = parse_money(body.get("shipping_fee", "0.00"), "shipping_fee", allow_zero=True)
    raw_address = _object(body.get("shipping_address"), "shipping_address")
    country = raw_address.get("country")
    if not isinstance(country, str) or not re.fullmatch(r"[A-Z]{2}", country):
        raise ContractError("shipping_address.country: must be an ISO 3166 alpha-2 code")
    address = Address(
        name=_text(raw_address, "name", "shipping_address", 200),
        line1=_text(raw_address, "line1", "shipping_address", 200),
        line2=_text(raw_address, "line2", "shipping_address", 200, optional=True),
        city=_text(raw_address, "city", "shipping_address", 100),
        postal_code=_text(raw_address, "postal_code", "shipping_address", 20),
        country=country,
    )
    return NewOrder(
        buyer_id=buyer_id,
        buyer_email=email,
        buyer_name=buyer_name,
        seller_id=seller_id,
        seller_name=seller_name,
        currency=currency,
        items=tuple(items),
        shipping_fee=shipping_fee,
        shipping_address=address,
    )


def parse_command(action: Action, body: dict[str, Any]) -> dict[str, Any]:
    """Validate a transition body: optional actor and reason, tracking number, refund amount."""
    command: dict[str, Any] = {
        "actor": _text(body, "actor", "body", 100, optional=True),
        "reason": _text(body, "reason", "body", 500, optional=True),
        "tracking_number": None,
        "amount": None,
    }
    if action is Action.SHIP:
        command["tracking_number"] = _text(body, "tracking_number", "body", 100, optional=True)
    # Only an omitted amount means "all that is left": an explicit null is most likely an unset
    # variable of a partial refund, and refunding everything for it cannot be taken back.
    if action is Action.REFUND and "amount" in body:
        command["amount"] = parse_money(body["amount"], "amount")
    return command


def render_order(order: OrderRecord, rounding: Rounding) -> dict[str, Any]:
    """An order as the legacy API shows it (without `meta`)."""
    address = order.shipping_address
    return {
        "id": order.id,
        "status": order.status,
        "currency": order.currency,
        "buyer": {"id": order.buyer_id, "email": order.buyer_email, "name": order.buyer_name},
        "seller": {"id": order.seller_id, "name": order.seller_name},
        "shipping_address": {
            "name": address.name,
            "line1": address.line1,
            "line2": address.line2,
            "city": address.city,
            "postal_code": address.postal_code,
            "country": address.country,
        },
        "items": [
            {
                "id": item.id,
                "sku": item.sku,
                "title": item.title,
                "quantity": item.quantity,
                "unit_price": format_money(item.unit_price),
                "line_total": format_money(item.unit_price * item.quantity),
            }
            for item in order.items
        ],
        "amounts": {
            "items": format_money(order.items_total),
            "shipping_fee": format_money(order.shipping_fee),
            # Legacy quirk: the displayed fee is recomputed from the subtotal on every read.
            "buyer_protection_fee": format_money(buyer_protection_fee(order.items_total, rounding)),
            "total": format_money(order.total),
            "refunded": format_money(order.refunded),
        },
        "tracking_number": order.tracking_number,
        "created_at": format_ts(order.created_at_ms),
        "updated_at": format_ts(order.updated_at_ms),
        "delivered_at": format_ts(order.delivered_at_ms),
    }


def render_event(event: EventRecord) -> dict[str, Any]:
    """One timeline event as the legacy API shows it."""
    return {
        "id": event.id,
        "order_id": event.order_id,
        "type": event.type,
        "from_status": event.from_status,
        "to_status": event.to_status,
        "actor": event.actor,
        "reason": event.reason,
        "amount": None if event.amount is None else format_money(event.amount),
        "at": format_ts(event.at_ms),
    }
