"""The legacy contract as the extracted service speaks it: money, timestamps, request parsing."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extracted.contract import (
    ContractError,
    format_money,
    format_ts,
    parse_command,
    parse_money,
    parse_new_order,
)
from extracted.domain import Action


def _body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "buyer": {"id": 7, "email": "ana@example.com", "name": "Ana"},
        "seller": {"id": 3, "name": "Bruno"},
        "currency": "EUR",
        "items": [{"sku": "S1", "title": "Lamp", "quantity": 2, "unit_price": "12.50"}],
        "shipping_address": {
            "name": "Ana",
            "line1": "1 Main St",
            "city": "Paris",
            "postal_code": "75001",
            "country": "FR",
        },
    }
    body.update(changes)
    return body


@pytest.mark.parametrize(
    ("minor", "text"),
    [(0, "0.00"), (5, "0.05"), (1250, "12.50"), (100000, "1000.00"), (-75, "-0.75")],
)
def test_format_money(minor: int, text: str) -> None:
    assert format_money(minor) == text


@given(st.integers(min_value=1, max_value=10**11 - 1))
def test_money_round_trips(minor: int) -> None:
    assert parse_money(format_money(minor), "x") == minor


@pytest.mark.parametrize("bad", ["12.5", "12", "012.50", "1e3", "-1.00", " 1.00", 12.5, 1250, None])
def test_parse_money_refuses_anything_but_two_decimal_strings(bad: object) -> None:
    with pytest.raises(ContractError, match=r'^price: must be a decimal string like "12.50"$'):
        parse_money(bad, "price")


def test_zero_money_only_where_allowed() -> None:
    assert parse_money("0.00", "fee", allow_zero=True) == 0
    with pytest.raises(ContractError, match=r"greater than 0\.00"):
        parse_money("0.00", "fee")


def test_timestamps_have_milliseconds_and_z() -> None:
    assert format_ts(1_780_000_000_123) == "2026-05-28T20:26:40.123Z"
    assert format_ts(5) == "1970-01-01T00:00:00.005Z"
    assert format_ts(None) is None


def test_parse_new_order_defaults_and_values() -> None:
    order = parse_new_order(_body())
    assert (order.buyer_id, order.shipping_fee, order.items[0].unit_price) == (7, 0, 1250)
    assert order.shipping_address.line2 is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"buyer": None}, "buyer: must be an object"),
        ({"buyer": {"id": True, "email": "a@b", "name": "A"}}, "buyer.id: must be an integer"),
        ({"seller": {"id": 3}}, "seller.name: must be a non-empty string"),
        ({"currency": "eur"}, "currency: must be one of EUR, GBP, USD"),
        ({"items": [{}] * 51}, "items: must be a list of 1 to 50 items"),
        ({"items": ["x"]}, r"items\[0\]: must be an object"),
        (
            {"items": [{"sku": "S", "title": "T", "quantity": 100, "unit_price": "1.00"}]},
            "quantity",
        ),
        ({"shipping_fee": "-1.00"}, "shipping_fee: must be a decimal string"),
        ({"shipping_address": {"country": "France"}}, "country: must be an ISO 3166"),
    ],
)
def test_parse_new_order_names_the_first_bad_field(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ContractError, match=message):
        parse_new_order(_body(**changes))


def test_parse_command_reads_only_what_the_action_uses() -> None:
    body = {"actor": "seller:3", "tracking_number": "T1", "amount": "1.00"}
    assert parse_command(Action.SHIP, body)["tracking_number"] == "T1"
    assert parse_command(Action.SHIP, body)["amount"] is None
    assert parse_command(Action.REFUND, body)["amount"] == 100
    assert parse_command(Action.REFUND, body)["tracking_number"] is None
    with pytest.raises(ContractError, match=r"body\.reason"):
        parse_command(Action.CANCEL, {"reason": ""})


def test_parse_command_refunds_the_rest_only_when_the_amount_is_omitted() -> None:
    assert parse_command(Action.REFUND, {})["amount"] is None
    with pytest.raises(ContractError, match=r"^amount: must be a decimal string"):
        parse_command(Action.REFUND, {"amount": None})
    assert parse_command(Action.RESOLVE, {"amount": None})["amount"] is None
