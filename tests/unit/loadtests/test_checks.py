"""The Order API body checks the Locust users apply."""

from __future__ import annotations

import copy
from typing import Any

from loadtests.checks import check_error, check_events, check_list, check_order


def _order(oid: int = 7, status: str = "paid") -> dict[str, Any]:
    return {
        "id": oid,
        "status": status,
        "items": [{"id": 1, "sku": "SKU-1", "quantity": 1, "unit_price": "12.50"}],
        "amounts": {
            "items": "12.50",
            "shipping_fee": "0.00",
            "buyer_protection_fee": "1.33",
            "total": "13.83",
            "refunded": "0.00",
        },
        "created_at": "2026-01-05T09:00:00.000Z",
    }


def _event(oid: int, kind: str, at: str) -> dict[str, Any]:
    return {"id": 1, "order_id": oid, "type": kind, "at": at}


def test_a_contract_order_passes() -> None:
    assert check_order(_order()) is None
    assert check_order(_order(), order_id=7, statuses=("paid",)) is None


def test_order_problems_are_named() -> None:
    bad_money = copy.deepcopy(_order())
    bad_money["amounts"]["total"] = 13.83
    bad_ts = _order() | {"created_at": "2026-01-05T09:00:00Z"}
    assert "amounts.total" in (check_order(bad_money) or "")
    assert "created_at" in (check_order(bad_ts) or "")
    assert "asked for 8" in (check_order(_order(), order_id=8) or "")
    assert "status" in (check_order(_order(), statuses=("shipped",)) or "")
    assert check_order([]) == "order: not a JSON object"
    assert "no items" in (check_order(_order() | {"items": []}) or "")


def test_list_needs_a_total_count_and_at_most_a_page() -> None:
    doc = {"items": [_order(1), _order(2)], "meta": {"page": 1, "per_page": 10}}
    assert check_list(doc, "2", per_page=10) is None
    assert "X-Total-Count" in (check_list(doc, None, per_page=10) or "")
    assert "page of 1" in (check_list(doc, "2", per_page=1) or "")
    assert "X-Total-Count 1" in (check_list(doc, "1", per_page=10) or "")
    assert check_list({"items": [{"id": 1}]}, "1", per_page=10) is not None


def test_events_start_with_created_and_run_oldest_first() -> None:
    good = {
        "items": [
            _event(3, "created", "2026-01-05T09:00:00.000Z"),
            _event(3, "shipped", "2026-01-06T09:00:00.000Z"),
        ]
    }
    assert check_events(good, order_id=3) is None
    late = {"items": [*good["items"], _event(3, "delivered", "2026-01-05T12:00:00.000Z")]}
    assert "oldest first" in (check_events(late, order_id=3) or "")
    assert "not 'created'" in (check_events({"items": good["items"][::-1]}, order_id=3) or "")
    assert "another order" in (check_events(good, order_id=4) or "")
    assert "empty" in (check_events({"items": []}, order_id=3) or "")


def test_expected_errors_only() -> None:
    doc = {"error": {"code": "conflict", "message": "changed", "status": "shipped"}}
    assert check_error(doc, ("conflict", "invalid_transition")) is None
    assert "not in" in (check_error(doc, ("refund_exceeds_paid",)) or "")
    assert check_error({"detail": "x"}, ("conflict",)) is not None
