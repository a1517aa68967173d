"""The Order domain, pure: states, transitions, buyer-protection fee and refund rules (no I/O)."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, replace

__all__ = [
    "DISPUTE_WINDOW_MS",
    "TRANSITIONS",
    "Action",
    "DisputeWindowClosed",
    "DomainError",
    "InvalidAmount",
    "InvalidTransition",
    "OrderState",
    "Pricing",
    "RefundExceedsPaid",
    "Rounding",
    "Status",
    "Transition",
    "apply",
    "buyer_protection_fee",
    "price",
]

DISPUTE_WINDOW_MS = 3 * 24 * 3600 * 1000
"""How long after delivery a buyer may open a dispute."""

_FEE_RATE_PERCENT = 5
_FEE_FIXED_MINOR = 70


class Status(enum.StrEnum):
    """Where an order is in its life."""

    PAID = "paid"
    SHIPPED = "shipped"
    DELIVERED = "delivered"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    DISPUTED = "disputed"
    REFUNDED = "refunded"


class Action(enum.StrEnum):
    """What a caller can ask an order to do (the path segment after the order id)."""

    SHIP = "ship"
    DELIVER = "deliver"
    COMPLETE = "complete"
    CANCEL = "cancel"
    DISPUTE = "dispute"
    REFUND = "refund"
    RESOLVE = "resolve"


class Rounding(enum.StrEnum):
    """How the buyer-protection fee rounds half a minor unit."""

    LEGACY = "legacy"  # half-up, what the monolith has always charged
    HALF_EVEN = "half_even"  # banker's rounding, what a careless port does


TRANSITIONS: dict[Action, dict[Status, Status]] = {
    Action.SHIP: {Status.PAID: Status.SHIPPED},
    Action.DELIVER: {Status.SHIPPED: Status.DELIVERED},
    Action.COMPLETE: {Status.DELIVERED: Status.COMPLETED},
    Action.CANCEL: {Status.PAID: Status.CANCELLED},
    Action.DISPUTE: {Status.DELIVERED: Status.DISPUTED},
    Action.REFUND: {Status.DISPUTED: Status.REFUNDED, Status.REFUNDED: Status.REFUNDED},
    Action.RESOLVE: {Status.DISPUTED: Status.COMPLETED},
}
"""Allowed moves: action -> {from status: to status}; anything else is a conflict."""


class DomainError(Exception):
    """A request the domain refuses; `code` is the stable error code of the API."""

    code = "domain_error"


class InvalidTransition(DomainError):
    """The action is not allowed from the order's current status."""

    code = "invalid_transition"

    def __init__(self, action: Action, current: Status) -> None:
        super().__init__(f"cannot {action.value} an order that is {current.value}")
        self.action = action
        self.current = current


class DisputeWindowClosed(DomainError):
    """The dispute window after delivery has passed."""

    code = "dispute_window_closed"

    def __init__(self, current: Status) -> None:
        super().__init__("the dispute window for this order has closed")
        self.current = current


class RefundExceedsPaid(DomainError):
    """The refund would take the refunded total above what the buyer paid."""

    code = "refund_exceeds_paid"

    def __init__(self, requested: int, refundable: int) -> None:
        super().__init__(f"refund of {requested} exceeds the refundable {refundable} minor units")
        self.requested = requested
        self.refundable = refundable


class InvalidAmount(DomainError):
    """A money amount that is not a positive number of minor units."""

    code = "validation_error"


@dataclass(frozen=True, slots=True)
class Pricing:
    """What the buyer pays, in minor units."""

    items_total: int
    shipping_fee: int
    buyer_protection_fee: int
    total: int


@dataclass(frozen=True, slots=True)
class OrderState:
    """The part of an order the state machine reasons about."""

    status: Status
    total: int
    refunded: int = 0
    delivered_at_ms: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.refunded <= self.total:
            raise ValueError(f"refunded {self.refunded} outside [0, {self.total}]")


@dataclass(frozen=True, slots=True)
class Transition:
    """One applied move: the event to record and the state after it."""

    action: Action
    from_status: Status
    to_status: Status
    amount: int | None
    after: OrderState


def _divide_rounded(numerator: int, denominator: int, rounding: Rounding) -> int:
    quotient, remainder = divmod(numerator, denominator)
    twice = remainder * 2
    if twice > denominator:
        return quotient + 1
    if twice < denominator:
        return quotient
    if rounding is Rounding.LEGACY:
        return quotient + 1
    return quotient + (quotient % 2)


def buyer_protection_fee(items_total: int, rounding: Rounding = Rounding.LEGACY) -> int:
    """The buyer-protection fee: 5 % of the item subtotal plus 0.70, in minor units."""
    if items_total < 0:
        raise InvalidAmount("item subtotal must not be negative")
    return _divide_rounded(items_total * _FEE_RATE_PERCENT, 100, rounding) + _FEE_FIXED_MINOR


def price(
    lines: Iterable[tuple[int, int]], shipping_fee: int, rounding: Rounding = Rounding.LEGACY
) -> Pricing:
    """Price an order from (unit price, quantity) lines and a shipping fee."""
    items_total = 0
    for unit_price, quantity in lines:
        if unit_price <= 0 or quantity <= 0:
            raise InvalidAmount("unit prices and quantities must be positive")
        items_total += unit_price * quantity
    if items_total == 0:
        raise InvalidAmount("an order needs at least one item")
    if shipping_fee < 0:
        raise InvalidAmount("shipping fee must not be negative")
    fee = buyer_protection_fee(items_total, rounding)
    return Pricing(items_total, shipping_fee, fee, items_total + shipping_fee + fee)


def apply(state: OrderState, action: Action, now_ms: int, amount: int | None = None) -> Transition:
    """Apply `action` to `state` at `now_ms`; `amount` is the refund (None: all that is left)."""
    target = TRANSITIONS[action].get(state.status)
    if target is None:
        raise InvalidTransition(action, state.status)
    refunded_delta: int | None = None
    after = replace(state, status=target)
    if action is Action.DISPUTE:
        delivered = state.delivered_at_ms
        if delivered is None or now_ms > delivered + DISPUTE_WINDOW_MS:
            raise DisputeWindowClosed(state.status)
    elif action is Action.DELIVER:
        after = replace(after, delivered_at_ms=now_ms)
    elif action is Action.CANCEL:
        refunded_delta = state.total - state.refunded
        after = replace(after, refunded=state.total)
    elif action is Action.REFUND:
        refundable = state.total - state.refunded
        requested = refundable if amount is None else amount
        if amount is not None and amount <= 0:
            raise InvalidAmount("refund amount must be positive")
        if requested > refundable or refundable == 0:
            raise RefundExceedsPaid(requested, refundable)
        refunded_delta = requested
        after = replace(after, refunded=state.refunded + requested)
    return Transition(action, state.status, target, refunded_delta, after)
