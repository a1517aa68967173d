"""The reference legacy monolith's Order API: hand-written SQL, Decimal money, and its quirks."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from aiohttp import web
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from extracted.contract import SURROGATE, has_lone_surrogate
from extracted.db import OUTCOME_UNKNOWN, OutcomeUnknown, create_engine, is_unavailable, transaction

__all__ = ["ENGINE", "buyer_protection_fee", "create_app"]

ENGINE = web.AppKey("legacy_engine", AsyncEngine)
"""The monolith's database engine (set while the app runs)."""

Clock = Callable[[], int]
_CLOCK: web.AppKey[Clock] = web.AppKey("legacy_clock")

# The monolith's state machine: action -> (allowed from, to, event type).
_MOVES: dict[str, tuple[tuple[str, ...], str, str]] = {
    "ship": (("paid",), "shipped", "shipped"),
    "deliver": (("shipped",), "delivered", "delivered"),
    "complete": (("delivered",), "completed", "completed"),
    "cancel": (("paid",), "cancelled", "cancelled"),
    "dispute": (("delivered",), "disputed", "disputed"),
    "refund": (("disputed", "refunded"), "refunded", "refunded"),
    "resolve": (("disputed",), "completed", "resolved"),
}
_STATUSES = ("paid", "shipped", "delivered", "completed", "cancelled", "disputed", "refunded")
_DISPUTE_WINDOW_MS = 259_200_000  # 72 hours
_CENT = Decimal("0.01")
_MONEY = re.compile(r"(0|[1-9][0-9]{0,8})\.[0-9]{2}")
_ID = re.compile(r"[1-9][0-9]{0,9}")
_MAX_ID = 2147483647

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Fail(Exception):
    """Any refusal: HTTP status, error code, message and extra error fields."""

    def __init__(self, http_status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = http_status
        self.code = code
        self.extra = extra


def _invalid(message: str) -> _Fail:
    return _Fail(422, "validation_error", message)


def _money(minor: int) -> str:
    return str((Decimal(minor) / 100).quantize(_CENT))


def _minor(value: object, field: str, zero_ok: bool = False) -> int:
    if not isinstance(value, str) or not _MONEY.fullmatch(value):
        raise _invalid(f'{field}: must be a decimal string like "12.50"')
    minor = int(Decimal(value) * 100)
    if minor == 0 and not zero_ok:
        raise _invalid(f"{field}: must be greater than 0.00")
    return minor


def buyer_protection_fee(items_minor: int) -> int:
    """The fee the monolith charges on a goods subtotal, in minor units."""
    # What the monolith has always charged: 5 % of the goods, half-up, plus 0.70.
    goods = Decimal(items_minor) / 100
    fee = (goods * Decimal("0.05")).quantize(_CENT, rounding=ROUND_HALF_UP) + Decimal("0.70")
    return int(fee * 100)


def _stamp(ms: int | None) -> str | None:
    if ms is None:
        return None
    moment = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _meta() -> dict[str, Any]:
    return {"generated_at": _stamp(int(time.time() * 1000))}


def _reply(status: int, doc: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(doc, separators=(",", ":"), ensure_ascii=False),
        content_type="application/json",
        charset="utf-8",
        headers=headers,
    )


@web.middleware
async def _failures(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """The monolith's one error page, as JSON."""
    try:
        return await handler(request)
    except _Fail as exc:
        error = {"code": exc.code, "message": str(exc), **exc.extra}
        return _reply(exc.status, {"error": error})
    except web.HTTPException as exc:
        if exc.status == 405:
            return _reply(
                405, {"error": {"code": "method_not_allowed", "message": "method not allowed"}}
            )
        if exc.status == 404:
            return _reply(404, {"error": {"code": "not_found", "message": "no such resource"}})
        raise
    except OutcomeUnknown:
        doc = {"error": {"code": "outcome_unknown", "message": OUTCOME_UNKNOWN}}
        return _reply(500, doc)
    except Exception as exc:
        if is_unavailable(exc):
            doc = {
                "error": {
                    "code": "unavailable",
                    "message": "the order database is unavailable; retry later",
                }
            }
            return _reply(503, doc, {"Retry-After": "1"})
        raise


def _order_id(request: web.Request) -> int:
    raw = request.match_info["order_id"]
    if not _ID.fullmatch(raw) or int(raw) > _MAX_ID:
        raise _Fail(400, "invalid_id", f"order id must be a positive integer, got {raw!r}")
    return int(raw)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def _json_body(request: web.Request, optional: bool) -> dict[str, Any]:
    raw = await request.read()
    if optional and not raw.strip():
        return {}
    try:
        doc = json.loads(raw.decode("utf-8"), parse_constant=_no_constants)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than it parses
        raise _Fail(400, "invalid_json", "request body is not valid JSON") from None
    if has_lone_surrogate(doc):
        # An escape like "\\ud800" alone is no text: neither the database nor UTF-8 takes it.
        raise _Fail(400, "invalid_json", "request body is not valid JSON")
    if not isinstance(doc, dict):
        raise _Fail(400, "invalid_json", "request body must be a JSON object")
    return doc


def _string(obj: dict[str, Any], key: str, where: str, limit: int, optional: bool = False) -> Any:
    value = obj.get(key)
    if optional and value is None:
        return None
    if not (isinstance(value, str) and value.strip() and len(value) <= limit):
        raise _invalid(f"{where}.{key}: must be a non-empty string of at most {limit} chars")
    if "\x00" in value:
        # PostgreSQL cannot store NUL in text; refused on SQLite too so both answer alike.
        raise _invalid(f"{where}.{key}: must not contain a NUL character")
    return value


def _count(obj: dict[str, Any], key: str, where: str, limit: int) -> int:
    value = obj.get(key)
    if type(value) is int and 1 <= value <= limit:
        return value
    raise _invalid(f"{where}.{key}: must be an integer between 1 and {limit}")


def _section(value: object, where: str) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    raise _invalid(f"{where}: must be an object")


def _checkout(body: dict[str, Any]) -> dict[str, Any]:
    """Validate a checkout body into the columns the monolith stores."""
    buyer = _section(body.get("buyer"), "buyer")
    row: dict[str, Any] = {"buyer_id": _count(buyer, "id", "buyer", _MAX_ID)}
    row["buyer_email"] = _string(buyer, "email", "buyer", 254)
    if "@" not in row["buyer_email"]:
        raise _invalid("buyer.email: must be an e-mail address")
    row["buyer_name"] = _string(buyer, "name", "buyer", 200)
    seller = _section(body.get("seller"), "seller")
    row["seller_id"] = _count(seller, "id", "seller", _MAX_ID)
    row["seller_name"] = _string(seller, "name", "seller", 200)
    if body.get("currency") not in ("EUR", "GBP", "USD"):
        raise _invalid("currency: must be one of EUR, GBP, USD")
    row["currency"] = body["currency"]
    items = body.get("items")
    if not isinstance(items, list) or not 1 <= len(items) <= 50:
        raise _invalid("items: must be a list of 1 to 50 items")
    lines = []
    for n, raw in enumerate(items):
        where = f"items[{n}]"
        item = _section(raw, where)
        lines.append(
            {
                "sku": _string(item, "sku", where, 64),
                "title": _string(item, "title", where, 200),
                "quantity": _count(item, "quantity", where, 99),
                "unit_price_minor": _minor(item.get("unit_price"), where + ".unit_price"),
            }
        )
    row["shipping_fee_minor"] = _minor(body.get("shipping_fee", "0.00"), "shipping_fee", True)
    address = _section(body.get("shipping_address"), "shipping_address")
    country = address.get("country")
    if not (isinstance(country, str) and re.fullmatch(r"[A-Z]{2}", country)):
        raise _invalid("shipping_address.country: must be an ISO 3166 alpha-2 code")
    row["shipping_address"] = json.dumps(
        {
            "name": _string(address, "name", "shipping_address", 200),
            "line1": _string(address, "line1", "shipping_address", 200),
            "line2": _string(address, "line2", "shipping_address", 200, optional=True),
            "city": _string(address, "city", "shipping_address", 100),
            "postal_code": _string(address, "postal_code", "shipping_address", 20),
            "country": country,
        }
    )
    row["lines"] = lines
    return row


async def _load(conn: AsyncConnection, order_ids: list[int]) -> dict[int, dict[str, Any]]:
    """Fetch orders with their lines and render them, keyed by id."""
    if not order_ids:
        return {}
    marks = ", ".join(f":id{n}" for n in range(len(order_ids)))
    params = {f"id{n}": oid for n, oid in enumerate(order_ids)}
    rows = (await conn.execute(text(f"SELECT * FROM orders WHERE id IN ({marks})"), params)).all()
    lines = (
        await conn.execute(
            text(
                f"SELECT * FROM order_items WHERE order_id IN ({marks}) ORDER BY order_id, position"
            ),
            params,
        )
    ).all()
    out: dict[int, dict[str, Any]] = {}
    for r in rows:
        goods = [x for x in lines if x.order_id == r.id]
        out[r.id] = {
            "id": r.id,
            "status": r.status,
            "currency": r.currency,
            "buyer": {"id": r.buyer_id, "email": r.buyer_email, "name": r.buyer_name},
            "seller": {"id": r.seller_id, "name": r.seller_name},
            "shipping_address": json.loads(r.shipping_address),
            "items": [
                {
                    "id": x.id,
                    "sku": x.sku,
                    "title": x.title,
                    "quantity": x.quantity,
                    "unit_price": _money(x.unit_price_minor),
                    "line_total": _money(x.unit_price_minor * x.quantity),
                }
                for x in goods
            ],
            "amounts": {
                "items": _money(r.items_total_minor),
                "shipping_fee": _money(r.shipping_fee_minor),
                # The serializer predates the fee column: it recomputes the fee on every read.
                "buyer_protection_fee": _money(buyer_protection_fee(r.items_total_minor)),
                "total": _money(r.total_minor),
                "refunded": _money(r.refunded_minor),
            },
            "tracking_number": r.tracking_number,
            "created_at": _stamp(r.created_at_ms),
            "updated_at": _stamp(r.updated_at_ms),
            "delivered_at": _stamp(r.delivered_at_ms),
        }
    return out


async def _one(conn: AsyncConnection, order_id: int) -> dict[str, Any]:
    found = await _load(conn, [order_id])
    if order_id not in found:
        raise _Fail(404, "not_found", f"order {order_id} not found")
    return found[order_id]


async def _checkout_handler(request: web.Request) -> web.Response:
    key = request.headers.get("Idempotency-Key", "").strip()
    # Header bytes that are not UTF-8 arrive as lone surrogates, which the key column refuses.
    if not key or len(key) > 200 or SURROGATE.search(key):
        raise _Fail(400, "missing_idempotency_key", "an Idempotency-Key header is required")
    body = await _json_body(request, optional=False)
    row = _checkout(body)
    fingerprint = hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()
    now = request.app[_CLOCK]()
    async with transaction(request.app[ENGINE], write=True) as conn:
        claimed = (
            await conn.execute(
                text(
                    "INSERT INTO idempotency_keys (buyer_id, key, request_hash, created_at_ms)"
                    " VALUES (:b, :k, :h, :now) ON CONFLICT (buyer_id, key) DO NOTHING RETURNING id"
                ),
                {"b": row["buyer_id"], "k": key, "h": fingerprint, "now": now},
            )
        ).first()
        if claimed is None:
            seen = (
                await conn.execute(
                    text(
                        "SELECT request_hash, response_body FROM idempotency_keys"
                        " WHERE buyer_id = :b AND key = :k"
                    ),
                    {"b": row["buyer_id"], "k": key},
                )
            ).one()
            if seen.request_hash != fingerprint or seen.response_body is None:
                raise _Fail(
                    422,
                    "idempotency_key_reused",
                    "this Idempotency-Key was already used with a different request body",
                )
            order = json.loads(seen.response_body)
            headers = {"Location": f"/api/v1/orders/{order['id']}"}
            return _reply(200, {**order, "meta": _meta()}, headers)
        goods = sum(x["quantity"] * x["unit_price_minor"] for x in row["lines"])
        fee = buyer_protection_fee(goods)
        total = goods + row["shipping_fee_minor"] + fee
        columns = {k: v for k, v in row.items() if k != "lines"}
        order_id = (
            await conn.execute(
                text(
                    "INSERT INTO orders (buyer_id, buyer_email, buyer_name, seller_id, seller_name,"
                    " shipping_address, currency, status, items_total_minor, shipping_fee_minor,"
                    " buyer_protection_fee_minor, total_minor, refunded_minor, created_at_ms,"
                    " updated_at_ms, version) VALUES (:buyer_id, :buyer_email, :buyer_name,"
                    " :seller_id, :seller_name, :shipping_address, :currency, 'paid', :goods,"
                    " :shipping_fee_minor, :fee, :total, 0, :now, :now, 1) RETURNING id"
                ),
                {**columns, "goods": goods, "fee": fee, "total": total, "now": now},
            )
        ).scalar_one()
        for position, line in enumerate(row["lines"]):
            await conn.execute(
                text(
                    "INSERT INTO order_items (order_id, position, sku, title, quantity,"
                    " unit_price_minor) VALUES (:o, :p, :sku, :title, :quantity, :unit_price_minor)"
                ),
                {"o": order_id, "p": position, **line},
            )
        await conn.execute(
            text(
                "INSERT INTO order_events (order_id, type, from_status, to_status, at_ms)"
                " VALUES (:o, 'created', NULL, 'paid', :now)"
            ),
            {"o": order_id, "now": now},
        )
        order = await _one(conn, order_id)
        await conn.execute(
            text(
                "UPDATE idempotency_keys SET order_id = :o, response_status = 201,"
                " response_body = :body WHERE buyer_id = :b AND key = :k"
            ),
            {
                "o": order_id,
                "body": json.dumps(order, separators=(",", ":"), ensure_ascii=False),
                "b": row["buyer_id"],
                "k": key,
            },
        )
    return _reply(201, {**order, "meta": _meta()}, {"Location": f"/api/v1/orders/{order_id}"})


async def _show(request: web.Request) -> web.Response:
    order_id = _order_id(request)
    async with transaction(request.app[ENGINE]) as conn:
        order = await _one(conn, order_id)
    return _reply(200, {**order, "meta": _meta()}, {"ETag": f'W/"{secrets.token_hex(10)}"'})


def _query_int(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name, "")
    if raw == "":
        return None
    if not _ID.fullmatch(raw) or int(raw) > _MAX_ID:
        raise _Fail(400, "invalid_parameter", f"{name} must be a positive integer")
    return int(raw)


async def _index(request: web.Request) -> web.Response:
    status = request.query.get("status", "")
    if status and status not in _STATUSES:
        raise _Fail(400, "invalid_parameter", f"status must be one of {', '.join(_STATUSES)}")
    per_page = _query_int(request, "per_page") or 20
    if per_page > 100:
        raise _Fail(400, "invalid_parameter", "per_page must be at most 100")
    page = _query_int(request, "page") or 1
    where: list[str] = ["1 = 1"]
    params: dict[str, Any] = {}
    for column in ("buyer_id", "seller_id"):
        value = _query_int(request, column)
        if value is not None:
            where.append(f"{column} = :{column}")
            params[column] = value
    if status:
        where.append("status = :status")
        params["status"] = status
    clause = " AND ".join(where)
    async with transaction(request.app[ENGINE]) as conn:
        total = (
            await conn.execute(text(f"SELECT COUNT(*) FROM orders WHERE {clause}"), params)
        ).scalar_one()
        ids = (
            (
                await conn.execute(
                    text(
                        f"SELECT id FROM orders WHERE {clause} ORDER BY created_at_ms DESC, id DESC"
                        " LIMIT :limit OFFSET :offset"
                    ),
                    {**params, "limit": per_page, "offset": (page - 1) * per_page},
                )
            )
            .scalars()
            .all()
        )
        found = await _load(conn, list(ids))
    doc = {
        "items": [found[i] for i in ids],
        "meta": {**_meta(), "page": page, "per_page": per_page},
    }
    headers = {"X-Total-Count": str(total), "ETag": f'W/"{secrets.token_hex(10)}"'}
    return _reply(200, doc, headers)


async def _timeline(request: web.Request) -> web.Response:
    order_id = _order_id(request)
    async with transaction(request.app[ENGINE]) as conn:
        await _one(conn, order_id)
        rows = (
            await conn.execute(
                text("SELECT * FROM order_events WHERE order_id = :o ORDER BY id"),
                {"o": order_id},
            )
        ).all()
    events = [
        {
            "id": r.id,
            "order_id": r.order_id,
            "type": r.type,
            "from_status": r.from_status,
            "to_status": r.to_status,
            "actor": r.actor,
            "reason": r.reason,
            "amount": None if r.amount_minor is None else _money(r.amount_minor),
            "at": _stamp(r.at_ms),
        }
        for r in rows
    ]
    return _reply(200, {"items": events, "meta": _meta()})


async def _move(request: web.Request) -> web.Response:
    order_id = _order_id(request)
    action = request.match_info["action"]
    if action not in _MOVES:
        raise _Fail(404, "not_found", "no such resource")
    body = await _json_body(request, optional=True)
    actor = _string(body, "actor", "body", 100, optional=True)
    reason = _string(body, "reason", "body", 500, optional=True)
    tracking = _string(body, "tracking_number", "body", 100, True) if action == "ship" else None
    wanted = None
    # Only an omitted amount refunds all that is left; an explicit null is refused.
    if action == "refund" and "amount" in body:
        wanted = _minor(body["amount"], "amount")
    now = request.app[_CLOCK]()
    async with transaction(request.app[ENGINE], write=True) as conn:
        lock = " FOR UPDATE" if conn.dialect.name == "postgresql" else ""
        order = (
            await conn.execute(text(f"SELECT * FROM orders WHERE id = :o{lock}"), {"o": order_id})
        ).first()
        if order is None:
            raise _Fail(404, "not_found", f"order {order_id} not found")
        allowed, target, event = _MOVES[action]
        if order.status not in allowed:
            raise _Fail(
                409,
                "invalid_transition",
                f"cannot {action} an order that is {order.status}",
                status=order.status,
            )
        refunded, delivered, amount = order.refunded_minor, order.delivered_at_ms, None
        if action == "dispute" and (delivered is None or now > delivered + _DISPUTE_WINDOW_MS):
            raise _Fail(
                409,
                "dispute_window_closed",
                "the dispute window for this order has closed",
                status=order.status,
            )
        if action == "deliver":
            delivered = now
        if action == "cancel":
            amount, refunded = order.total_minor - refunded, order.total_minor
        if action == "refund":
            left = order.total_minor - refunded
            amount = left if wanted is None else wanted
            if amount > left or left == 0:
                raise _Fail(
                    422,
                    "refund_exceeds_paid",
                    f"refund of {amount} exceeds the refundable {left} minor units",
                )
            refunded += amount
        changed = await conn.execute(
            text(
                "UPDATE orders SET status = :s, refunded_minor = :r, delivered_at_ms = :d,"
                " tracking_number = COALESCE(:t, tracking_number), updated_at_ms = :now,"
                " version = version + 1 WHERE id = :o AND version = :v"
            ),
            {
                "s": target,
                "r": refunded,
                "d": delivered,
                "t": tracking,
                "now": now,
                "o": order_id,
                "v": order.version,
            },
        )
        if changed.rowcount != 1:
            raise _Fail(
                409, "conflict", "the order was changed by another request", status=order.status
            )
        await conn.execute(
            text(
                "INSERT INTO order_events (order_id, type, from_status, to_status, actor, reason,"
                " amount_minor, at_ms) VALUES (:o, :type, :f, :t, :actor, :reason, :amount, :now)"
            ),
            {
                "o": order_id,
                "type": event,
                "f": order.status,
                "t": target,
                "actor": actor,
                "reason": reason,
                "amount": amount,
                "now": now,
            },
        )
        doc = await _one(conn, order_id)
    return _reply(200, {**doc, "meta": _meta()})


def _wall_ms() -> int:
    return int(time.time() * 1000)


def create_app(db_url: str, *, clock: Callable[[], int] | None = None) -> web.Application:
    """The legacy monolith's Order API on `db_url` (schema must exist; see legacy.server)."""
    app = web.Application(middlewares=[_failures])
    app[_CLOCK] = clock or _wall_ms

    async def database(app: web.Application) -> AsyncIterator[None]:
        app[ENGINE] = create_engine(db_url)
        try:
            yield
        finally:
            await app[ENGINE].dispose()

    app.cleanup_ctx.append(database)
    app.router.add_post("/api/v1/orders", _checkout_handler)
    app.router.add_get("/api/v1/orders", _index)
    app.router.add_get("/api/v1/orders/{order_id}", _show)
    app.router.add_get("/api/v1/orders/{order_id}/events", _timeline)
    app.router.add_post("/api/v1/orders/{order_id}/{action}", _move)
    return app
