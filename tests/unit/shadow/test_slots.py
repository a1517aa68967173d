"""slot_setters: building frozen slots dataclasses field by field, checked against their fields."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, dataclass

import pytest

from shadow.slots import slot_setters


@dataclass(frozen=True, slots=True)
class _Pair:
    a: int
    b: str


def test_setters_build_what_the_dataclass_would() -> None:
    set_a, set_b = slot_setters(_Pair, ("a", "b"))
    pair: _Pair = object.__new__(_Pair)
    set_a(pair, 1)
    set_b(pair, "x")
    assert pair == _Pair(1, "x")
    with pytest.raises(FrozenInstanceError):
        pair.a = 2  # type: ignore[misc]  # still frozen


def test_a_change_of_fields_fails_at_once() -> None:
    with pytest.raises(RuntimeError, match="_Pair fields changed"):
        slot_setters(_Pair, ("b", "a"))
