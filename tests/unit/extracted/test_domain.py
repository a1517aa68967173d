"""The pure Order domain: transitions, fees, refunds, and properties over random histories."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extracted.domain import (
    DISPUTE_WINDOW_MS,
    TRANSITIONS,
    Action,
    DisputeWindowClosed,
    DomainError,
    InvalidAmount,
    InvalidTransition,
    OrderState,
    RefundExceedsPaid,
    Rounding,
    Status,
    apply,
    buyer_protection_fee,
    price,
)

T0 = 1_700_000_000_000


def _walk(state: OrderState, *actions: Action, now: int = T0) -> OrderState:
    for action in actions:
        state = apply(state, action, now).after
    return state


def test_happy_path_and_its_events() -> None:
    state = OrderState(Status.PAID, total=2000)
    shipped = apply(state, Action.SHIP, T0)
    assert (shipped.from_status, shipped.to_status, shipped.amount) == ("paid", "shipped", None)
    delivered = apply(shipped.after, Action.DELIVER, T0 + 5)
    assert delivered.after.delivered_at_ms == T0 + 5
    assert apply(delivered.after, Action.COMPLETE, T0 + 6).after.status is Status.COMPLETED


@pytest.mark.parametrize(
    ("status", "action"),
    [(s, a) for a in Action for s in Status if s not in TRANSITIONS[a]],
)
def test_every_move_not_in_the_table_is_refused_with_the_current_status(
    status: Status, action: Action
) -> None:
    with pytest.raises(InvalidTransition) as caught:
        apply(OrderState(status, total=1000), action, T0)
    assert caught.value.current is status
    assert caught.value.code == "invalid_transition"


def test_cancel_refunds_everything() -> None:
    moved = apply(OrderState(Status.PAID, total=1234), Action.CANCEL, T0)
    assert (moved.after.status, moved.after.refunded, moved.amount) == ("cancelled", 1234, 1234)


def test_dispute_window() -> None:
    delivered = _walk(OrderState(Status.PAID, total=1000), Action.SHIP, Action.DELIVER)
    assert apply(delivered, Action.DISPUTE, T0 + DISPUTE_WINDOW_MS).after.status is Status.DISPUTED
    with pytest.raises(DisputeWindowClosed):
        apply(delivered, Action.DISPUTE, T0 + DISPUTE_WINDOW_MS + 1)


def test_partial_refunds_up_to_the_total_then_nothing() -> None:
    disputed = _walk(
        OrderState(Status.PAID, total=1000), Action.SHIP, Action.DELIVER, Action.DISPUTE
    )
    first = apply(disputed, Action.REFUND, T0, 300)
    assert (first.after.status, first.after.refunded, first.amount) == ("refunded", 300, 300)
    with pytest.raises(RefundExceedsPaid) as caught:
        apply(first.after, Action.REFUND, T0, 701)
    assert (caught.value.requested, caught.value.refundable) == (701, 700)
    rest = apply(first.after, Action.REFUND, T0)
    assert (rest.amount, rest.after.refunded) == (700, 1000)
    with pytest.raises(RefundExceedsPaid):
        apply(rest.after, Action.REFUND, T0)
    with pytest.raises(InvalidAmount):
        apply(first.after, Action.REFUND, T0, 0)
    with pytest.raises(InvalidTransition):
        apply(rest.after, Action.RESOLVE, T0)


def test_resolve_completes_a_dispute() -> None:
    disputed = _walk(
        OrderState(Status.PAID, total=1000), Action.SHIP, Action.DELIVER, Action.DISPUTE
    )
    assert apply(disputed, Action.RESOLVE, T0).after.status is Status.COMPLETED


@pytest.mark.parametrize(
    ("items", "legacy", "half_even"),
    [
        (1250, 133, 132),  # 62.5 -> up vs down to even
        (1270, 134, 134),  # 63.5 -> both round to 64
        (2850, 213, 212),
        (1000, 120, 120),  # exact
        (1249, 132, 132),  # 62.45 -> 62 both
        (0, 70, 70),
    ],
)
def test_buyer_protection_fee_rounding(items: int, legacy: int, half_even: int) -> None:
    assert buyer_protection_fee(items, Rounding.LEGACY) == legacy
    assert buyer_protection_fee(items, Rounding.HALF_EVEN) == half_even


@given(st.integers(min_value=0, max_value=10**9))
def test_roundings_differ_exactly_on_half_cents_over_an_even_cent(items: int) -> None:
    legacy = buyer_protection_fee(items, Rounding.LEGACY)
    half_even = buyer_protection_fee(items, Rounding.HALF_EVEN)
    assert legacy - half_even == (1 if items % 40 == 10 else 0)
    assert abs(legacy - 70 - items * 5 / 100) <= 0.5


def test_price_adds_up_and_validates() -> None:
    assert price([(1250, 1), (800, 2)], 499) == price([(2850, 1)], 499)
    priced = price([(1250, 1), (800, 2)], 499)
    assert (priced.items_total, priced.buyer_protection_fee, priced.total) == (2850, 213, 3562)
    assert price([(1250, 1), (800, 2)], 499, Rounding.HALF_EVEN).total == 3561
    for lines, shipping in [([], 0), ([(0, 1)], 0), ([(100, 0)], 0), ([(100, 1)], -1)]:
        with pytest.raises(InvalidAmount):
            price(lines, shipping)


def test_order_state_rejects_impossible_refunds() -> None:
    with pytest.raises(ValueError, match="refunded"):
        OrderState(Status.REFUNDED, total=100, refunded=101)


_steps = st.lists(
    st.tuples(
        st.sampled_from(list(Action)),
        st.none() | st.integers(min_value=-5, max_value=5000),
        st.integers(min_value=0, max_value=2 * DISPUTE_WINDOW_MS),
    ),
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(total=st.integers(min_value=1, max_value=10**7), steps=_steps)
def test_any_history_keeps_a_valid_state_and_refunds_within_the_total(
    total: int, steps: list[tuple[Action, int | None, int]]
) -> None:
    state, now, refunded_by_events = OrderState(Status.PAID, total=total), T0, 0
    for action, amount, wait in steps:
        now += wait
        try:
            moved = apply(state, action, now, amount)
        except DomainError:
            continue
        assert moved.from_status is state.status
        assert TRANSITIONS[action][state.status] is moved.to_status is moved.after.status
        refunded_by_events += moved.amount or 0
        state = moved.after
        assert 0 <= state.refunded <= state.total == total
        assert state.refunded == refunded_by_events
    if state.status is Status.CANCELLED:
        assert state.refunded == total
    if state.status in (Status.COMPLETED, Status.CANCELLED):
        for action in Action:
            with pytest.raises(DomainError):
                apply(state, action, now)
