"""The monolith's own Decimal fee rule agrees with the extracted domain's legacy rounding."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from extracted.domain import Rounding
from extracted.domain import buyer_protection_fee as domain_fee
from legacy.app import buyer_protection_fee


@given(st.integers(min_value=0, max_value=10**10))
def test_legacy_fee_is_half_up(items: int) -> None:
    assert buyer_protection_fee(items) == domain_fee(items, Rounding.LEGACY)


def test_legacy_fee_examples() -> None:
    assert [buyer_protection_fee(n) for n in (1250, 1270, 2850, 1000)] == [133, 134, 213, 120]
