"""Response-body checks of the Order API contract, shared by the Locust users (pure, no I/O).

Each check returns None when the document is right and a short reason when it is not, so
the Locust task can mark the request failed with that reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

__all__ = ["STATUSES", "check_error", "check_events", "check_list", "check_order"]

STATUSES = frozenset(
    {"paid", "shipped", "delivered", "completed", "cancelled", "disputed", "refunded"}
)
"""Every state an order can be in."""

_MONEY = re.compile(r"-?[0-9]+\.[0-9]{2}")
_TS = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z")
_AMOUNTS = ("items", "shipping_fee", "buyer_protection_fee", "total", "refunded")


def check_order(
    doc: Any, *, order_id: int | None = None, statuses: Iterable[str] | None = None
) -> str | None:
    """An order document: id, a known status, money as decimal strings, legacy timestamps."""
    if not isinstance(doc, dict):
        return "order: not a JSON object"
    if not isinstance(doc.get("id"), int):
        return "order: no integer id"
    if order_id is not None and doc["id"] != order_id:
        return f"order: asked for {order_id}, got {doc['id']}"
    status = doc.get("status")
    allowed = STATUSES if statuses is None else frozenset(statuses)
    if status not in allowed:
        return f"order {doc['id']}: status {status!r} not in {sorted(allowed)}"
    amounts = doc.get("amounts")
    if not isinstance(amounts, dict):
        return f"order {doc['id']}: no amounts"
    for key in _AMOUNTS:
        value = amounts.get(key)
        if not isinstance(value, str) or not _MONEY.fullmatch(value):
            return f"order {doc['id']}: amounts.{key} {value!r} is not a decimal string"
    if not isinstance(doc.get("items"), list) or not doc["items"]:
        return f"order {doc['id']}: no items"
    created = doc.get("created_at")
    if not isinstance(created, str) or not _TS.fullmatch(created):
        return f"order {doc['id']}: created_at {created!r} is not a legacy timestamp"
    return None


def check_list(doc: Any, total_header: str | None, *, per_page: int) -> str | None:
    """A listing: at most `per_page` valid orders and a numeric `X-Total-Count` header."""
    if not isinstance(doc, dict) or not isinstance(doc.get("items"), list):
        return "list: no items array"
    if total_header is None or not total_header.isdigit():
        return f"list: X-Total-Count {total_header!r} is not a count"
    items = doc["items"]
    if len(items) > per_page:
        return f"list: {len(items)} items on a page of {per_page}"
    if len(items) > int(total_header):
        return f"list: {len(items)} items but X-Total-Count {total_header}"
    for item in items:
        problem = check_order(item)
        if problem is not None:
            return problem
    return None


def check_events(doc: Any, *, order_id: int) -> str | None:
    """An order's timeline: oldest first, starting with `created`, all for this order."""
    if not isinstance(doc, dict) or not isinstance(doc.get("items"), list):
        return "events: no items array"
    items = doc["items"]
    if not items:
        return f"events of {order_id}: empty timeline"
    if items[0].get("type") != "created":
        return f"events of {order_id}: first event is {items[0].get('type')!r}, not 'created'"
    if any(e.get("order_id") != order_id for e in items):
        return f"events of {order_id}: an event of another order"
    stamps = [e.get("at") for e in items]
    if not all(isinstance(s, str) and _TS.fullmatch(s) for s in stamps):
        return f"events of {order_id}: a timestamp is not in the legacy format"
    if stamps != sorted(stamps):
        return f"events of {order_id}: not oldest first"
    return None


def check_error(doc: Any, codes: Iterable[str]) -> str | None:
    """An expected domain error: `{"error": {"code", "message"}}` with one of `codes`."""
    error = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return "error: no {error: {code, message}} body"
    allowed = set(codes)
    if error.get("code") not in allowed:
        return f"error: code {error.get('code')!r} not in {sorted(allowed)}"
    return None
