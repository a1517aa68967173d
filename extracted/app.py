"""The extracted Order service's HTTP layer: aiohttp handlers speaking the legacy contract."""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from extracted.contract import (
    SURROGATE,
    ContractError,
    has_lone_surrogate,
    meta,
    parse_command,
    parse_new_order,
)
from extracted.db import OUTCOME_UNKNOWN, OutcomeUnknown, create_engine, is_unavailable
from extracted.domain import (
    Action,
    DisputeWindowClosed,
    DomainError,
    InvalidTransition,
    Rounding,
    Status,
)
from extracted.repository import OrderFilter
from extracted.schema import transition_keys
from extracted.service import (
    Checkpoint,
    Clock,
    ConcurrentUpdate,
    OrderService,
    ServiceError,
    request_hash,
)

__all__ = ["DRY_RUN_HEADER", "FEE_ROUNDING_ENV", "IDEMPOTENCY_HEADER", "SERVICE", "create_app"]

_log = logging.getLogger("strangler.extracted")

FEE_ROUNDING_ENV = "STRANGLER_ORDERS_FEE_ROUNDING"
"""Environment variable choosing the fee rounding when create_app gets none: legacy | half_even."""

DRY_RUN_HEADER = "X-Strangler-Dry-Run"
"""A write carrying this header with value 1 is fully handled, then rolled back."""

IDEMPOTENCY_HEADER = "Idempotency-Key"
"""Required on create; optional on transitions, where a retry with it is never applied twice."""

SERVICE = web.AppKey("orders_service", OrderService)
"""The app's Order service (set while the app runs)."""

_ID = re.compile(r"[1-9][0-9]{0,9}")
_MAX_ID = 2**31 - 1
_MAX_PER_PAGE = 100
_RETRY_AFTER_S = "1"

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _BadRequest(Exception):
    """A malformed request (-> 400 with `code`)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _json(status: int, doc: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(doc),
        content_type="application/json",
        charset="utf-8",
        headers=headers,
    )


def _error(http_status: int, code: str, message: str, **extra: Any) -> web.Response:
    headers = {"Retry-After": _RETRY_AFTER_S} if http_status == 503 else None
    return _json(http_status, {"error": {"code": code, "message": message, **extra}}, headers)


@web.middleware
async def _errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Translate every failure into the contract's error body at one boundary."""
    try:
        return await handler(request)
    except _BadRequest as exc:
        return _error(400, exc.code, str(exc))
    except ContractError as exc:
        return _error(422, exc.code, str(exc))
    except (InvalidTransition, DisputeWindowClosed, ConcurrentUpdate) as exc:
        return _error(409, exc.code, str(exc), status=str(exc.current))
    except DomainError as exc:
        return _error(422, exc.code, str(exc))
    except ServiceError as exc:
        return _error(exc.status, exc.code, str(exc))
    except web.HTTPException as exc:
        if exc.status == 405:
            return _error(405, "method_not_allowed", "method not allowed")
        if exc.status == 404:
            return _error(404, "not_found", "no such resource")
        raise
    except OutcomeUnknown:
        return _error(500, "outcome_unknown", OUTCOME_UNKNOWN)
    except Exception as exc:
        if is_unavailable(exc):
            return _error(503, "unavailable", "the order database is unavailable; retry later")
        raise


def _order_id(request: web.Request) -> int:
    raw = request.match_info["order_id"]
    if not _ID.fullmatch(raw) or int(raw) > _MAX_ID:
        raise _BadRequest("invalid_id", f"order id must be a positive integer, got {raw!r}")
    return int(raw)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def _body(request: web.Request, *, required: bool) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip() and not required:
        return {}
    try:
        # The stdlib parser, strict about NaN/Infinity, decodes exactly as the monolith does.
        doc = json.loads(raw.decode("utf-8"), parse_constant=_no_constants)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than it parses
        raise _BadRequest("invalid_json", "request body is not valid JSON") from None
    if has_lone_surrogate(doc):
        # Like a body that is not UTF-8: the database, the request hash and the reply all fail.
        raise _BadRequest("invalid_json", "request body is not valid JSON")
    if not isinstance(doc, dict):
        raise _BadRequest("invalid_json", "request body must be a JSON object")
    return doc


def _dry_run(request: web.Request) -> bool:
    # Any of the fields says so: the proxy appends its own after whatever came before it, so
    # reading only the first would let an earlier one turn a dry run into a real write.
    return any(v.strip() == "1" for v in request.headers.getall(DRY_RUN_HEADER, ()))


def _etag() -> str:
    # Legacy contract: the ETag is regenerated on every response.
    return f'W/"{secrets.token_hex(10)}"'


def _int_param(request: web.Request, name: str, default: int | None) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not _ID.fullmatch(raw) or int(raw) > _MAX_ID:
        raise _BadRequest("invalid_parameter", f"{name} must be a positive integer")
    return int(raw)


_MAX_KEY = 200


def _usable_key(raw: str) -> str | None:
    """The Idempotency-Key without surrounding blanks, or None if empty, too long or not UTF-8
    (aiohttp decodes such header bytes to lone surrogates, which no database column takes)."""
    key = raw.strip()
    return key if 0 < len(key) <= _MAX_KEY and not SURROGATE.search(key) else None


async def _create(request: web.Request) -> web.Response:
    key = _usable_key(request.headers.get(IDEMPOTENCY_HEADER, ""))
    if key is None:
        raise _BadRequest("missing_idempotency_key", "an Idempotency-Key header is required")
    body = await _body(request, required=True)
    new = parse_new_order(body)
    status, doc = await request.app[SERVICE].create(
        new, key, request_hash(body), dry_run=_dry_run(request)
    )
    headers = {"Location": f"/api/v1/orders/{doc['id']}"}
    return _json(status, {**doc, "meta": meta()}, headers)


async def _show(request: web.Request) -> web.Response:
    doc = await request.app[SERVICE].get(_order_id(request))
    return _json(200, {**doc, "meta": meta()}, {"ETag": _etag()})


async def _list(request: web.Request) -> web.Response:
    status = request.query.get("status") or None
    if status is not None and status not in {s.value for s in Status}:
        raise _BadRequest("invalid_parameter", f"status must be one of {', '.join(Status)}")
    per_page = _int_param(request, "per_page", 20)
    assert per_page is not None
    if per_page > _MAX_PER_PAGE:
        raise _BadRequest("invalid_parameter", f"per_page must be at most {_MAX_PER_PAGE}")
    where = OrderFilter(
        buyer_id=_int_param(request, "buyer_id", None),
        seller_id=_int_param(request, "seller_id", None),
        status=None if status is None else Status(status),
        page=_int_param(request, "page", 1) or 1,
        per_page=per_page,
    )
    found, total = await request.app[SERVICE].find(where)
    doc = {"items": found, "meta": {**meta(), "page": where.page, "per_page": where.per_page}}
    return _json(200, doc, {"X-Total-Count": str(total), "ETag": _etag()})


async def _events(request: web.Request) -> web.Response:
    timeline = await request.app[SERVICE].events(_order_id(request))
    return _json(200, {"items": timeline, "meta": meta()})


def _transition_key(request: web.Request) -> str | None:
    # Optional on transitions (the legacy contract has none); sent, it must be usable.
    raw = request.headers.get(IDEMPOTENCY_HEADER)
    if raw is None:
        return None
    key = _usable_key(raw)
    if key is None:
        raise _BadRequest(
            "invalid_idempotency_key",
            f"Idempotency-Key must be 1 to {_MAX_KEY} characters when sent",
        )
    return key


async def _act(request: web.Request) -> web.Response:
    order_id = _order_id(request)
    try:
        action = Action(request.match_info["action"])
    except ValueError:
        return _error(404, "not_found", "no such resource")
    key = _transition_key(request)
    body = await _body(request, required=False)
    command = parse_command(action, body)
    fingerprint = "" if key is None else request_hash({"action": action.value, "body": body})
    doc = await request.app[SERVICE].transition(
        order_id,
        action,
        command,
        key=key,
        fingerprint=fingerprint,
        dry_run=_dry_run(request),
    )
    return _json(200, {**doc, "meta": meta()})


def _fee_rounding(value: str | None) -> Rounding:
    chosen = value if value is not None else os.environ.get(FEE_ROUNDING_ENV, "legacy")
    try:
        return Rounding(chosen)
    except ValueError:
        options = ", ".join(r.value for r in Rounding)
        raise ValueError(f"fee rounding must be one of {options}, got {chosen!r}") from None


async def _add_transition_keys(engine: AsyncEngine) -> None:
    """Create `transition_keys` on a database made before it existed (a proxy's `handlers:`
    app never runs create_schema): without it, every transition sent with an
    Idempotency-Key failed with a 500. A database user without the right to create it keeps
    the service running, with a warning; keyed transitions then fail until it exists."""
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: transition_keys.create(c, checkfirst=True))
    except Exception as e:  # no DDL rights: everything but keyed transitions still works
        _log.warning("cannot create table transition_keys (Idempotency-Key on transitions): %s", e)


def create_app(
    db_url: str,
    *,
    fee_rounding: str | None = None,
    clock: Clock | None = None,
    checkpoint: Checkpoint | None = None,
) -> web.Application:
    """The extracted Order service on `db_url` (schema must exist; see extracted.schema)."""
    rounding = _fee_rounding(fee_rounding)
    app = web.Application(middlewares=[_errors])

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        engine = create_engine(db_url)
        await _add_transition_keys(engine)
        options: dict[str, Any] = {"rounding": rounding}
        if clock is not None:
            options["clock"] = clock
        if checkpoint is not None:
            options["checkpoint"] = checkpoint
        app[SERVICE] = OrderService(engine, **options)
        try:
            yield
        finally:
            await engine.dispose()

    app.cleanup_ctx.append(lifetime)
    app.router.add_post("/api/v1/orders", _create)
    app.router.add_get("/api/v1/orders", _list)
    app.router.add_get("/api/v1/orders/{order_id}", _show)
    app.router.add_get("/api/v1/orders/{order_id}/events", _events)
    app.router.add_post("/api/v1/orders/{order_id}/{action}", _act)
    return app
