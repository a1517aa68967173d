"""Order use cases: each one a single transaction over the repository and the pure domain."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from extracted.contract import EVENT_TYPES, render_event, render_order
from extracted.db import transaction
from extracted.domain import Action, OrderState, Rounding, Status, apply, price
from extracted.records import NewOrder
from extracted.repository import OrderFilter, OrderRepository

__all__ = [
    "Checkpoint",
    "Clock",
    "ConcurrentUpdate",
    "IdempotencyKeyReused",
    "OrderNotFound",
    "OrderService",
    "ServiceError",
    "request_hash",
]

Clock = Callable[[], int]
"""Returns the current time in epoch milliseconds."""

Checkpoint = Callable[[str, AsyncConnection], Awaitable[None]]
"""Called inside write transactions at named points (tests pause there to break things)."""


class ServiceError(Exception):
    """A use case refused; `status` and `code` are what the API answers."""

    status = 400
    code = "bad_request"


class OrderNotFound(ServiceError):
    """No order has that id."""

    status = 404
    code = "not_found"

    def __init__(self, order_id: int) -> None:
        super().__init__(f"order {order_id} not found")


class IdempotencyKeyReused(ServiceError):
    """The idempotency key was already used (by this buyer, or on this order) for a different
    request."""

    status = 422
    code = "idempotency_key_reused"

    def __init__(self) -> None:
        super().__init__("this Idempotency-Key was already used with a different request body")


class ConcurrentUpdate(ServiceError):
    """The order changed between reading and writing it (optimistic version check)."""

    status = 409
    code = "conflict"

    def __init__(self, current: str) -> None:
        super().__init__("the order was changed by another request")
        self.current = current


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


async def _no_checkpoint(_stage: str, _conn: AsyncConnection) -> None:
    return None


def request_hash(body: Any) -> str:
    """A stable fingerprint of a decoded JSON request body (the same on both sides)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class OrderService:
    """The Order use cases on one engine, with the configured fee rounding and clock."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        rounding: Rounding = Rounding.LEGACY,
        clock: Clock = _wall_ms,
        checkpoint: Checkpoint = _no_checkpoint,
    ) -> None:
        self.engine = engine
        self.rounding = rounding
        self._clock = clock
        self._checkpoint = checkpoint

    async def create(
        self, new: NewOrder, key: str, fingerprint: str, *, dry_run: bool = False
    ) -> tuple[int, dict[str, Any]]:
        """Create an order once per (buyer, key): (201, order), then (200, the same order)."""
        async with transaction(self.engine, write=True, rollback=dry_run) as conn:
            repo = OrderRepository(conn)
            now = self._clock()
            held = await repo.claim_key(new.buyer_id, key, fingerprint, now)
            if held is not None:
                if held.request_hash != fingerprint or held.response_body is None:
                    raise IdempotencyKeyReused()
                replay: dict[str, Any] = orjson.loads(held.response_body)
                return 200, replay
            pricing = price(
                ((item.unit_price, item.quantity) for item in new.items),
                new.shipping_fee,
                self.rounding,
            )
            order_id = await repo.add(new, pricing, now)
            await self._checkpoint("create.inserted", conn)
            await repo.add_event(order_id, "created", None, Status.PAID.value, now)
            order = await repo.get(order_id)
            assert order is not None
            body = render_order(order, self.rounding)
            await repo.store_response(new.buyer_id, key, order_id, 201, orjson.dumps(body).decode())
            return 201, body

    async def transition(
        self,
        order_id: int,
        action: Action,
        command: dict[str, Any],
        *,
        key: str | None = None,
        fingerprint: str = "",
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Apply one action to an order exactly once, recording its event in the same commit.

        With an idempotency `key` (and the request's `fingerprint`) the answer is stored with
        the change; a later request with that key on the order gets the stored answer if it is
        the same request, else IdempotencyKeyReused, and is never applied again.
        """
        async with transaction(self.engine, write=True, rollback=dry_run) as conn:
            repo = OrderRepository(conn)
            # The order's row lock (SQLite: the write lock) serializes requests with one key.
            order = await repo.get(order_id, for_update=True)
            if order is None:
                raise OrderNotFound(order_id)
            if key is not None:
                held = await repo.transition_key(order_id, key)
                if held is not None:
                    if held.request_hash != fingerprint or held.response_body is None:
                        raise IdempotencyKeyReused()
                    replay: dict[str, Any] = orjson.loads(held.response_body)
                    return replay
            state = OrderState(
                Status(order.status), order.total, order.refunded, order.delivered_at_ms
            )
            now = self._clock()
            moved = apply(state, action, now, command.get("amount"))
            if not await repo.save_state(order, moved.after, now, command.get("tracking_number")):
                raise ConcurrentUpdate(order.status)
            await self._checkpoint("transition.saved", conn)
            await repo.add_event(
                order_id,
                EVENT_TYPES[action],
                moved.from_status.value,
                moved.to_status.value,
                now,
                actor=command.get("actor"),
                reason=command.get("reason"),
                amount=moved.amount,
            )
            updated = await repo.get(order_id)
            assert updated is not None
            body = render_order(updated, self.rounding)
            if key is not None:
                stored = orjson.dumps(body).decode()
                await repo.store_transition_key(order_id, key, fingerprint, 200, stored, now)
            await self._checkpoint("transition.done", conn)
            return body

    async def get(self, order_id: int) -> dict[str, Any]:
        """One order as the API shows it."""
        async with transaction(self.engine) as conn:
            order = await OrderRepository(conn).get(order_id)
        if order is None:
            raise OrderNotFound(order_id)
        return render_order(order, self.rounding)

    async def find(self, where: OrderFilter) -> tuple[list[dict[str, Any]], int]:
        """One page of orders as the API shows them, and the total count."""
        async with transaction(self.engine) as conn:
            found, total = await OrderRepository(conn).find(where)
        return [render_order(order, self.rounding) for order in found], total

    async def events(self, order_id: int) -> list[dict[str, Any]]:
        """An order's timeline as the API shows it."""
        async with transaction(self.engine) as conn:
            repo = OrderRepository(conn)
            if await repo.get(order_id) is None:
                raise OrderNotFound(order_id)
            timeline = await repo.events(order_id)
        return [render_event(event) for event in timeline]
