"""slot_setters and unfrozen_twin: frozen slots dataclasses built field by field, checked."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, dataclass
from typing import Any

import pytest

from shadow.slots import slot_setters, unfrozen_twin


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


def test_a_twin_builds_what_the_dataclass_would() -> None:
    twin = unfrozen_twin(_Pair, ("a", "b"))
    pair: Any = object.__new__(twin)
    pair.a = 1
    pair.b = "x"
    pair.__class__ = _Pair
    assert type(pair) is _Pair
    assert pair == _Pair(1, "x")
    assert hash(pair) == hash(_Pair(1, "x"))
    with pytest.raises(FrozenInstanceError):
        pair.a = 2  # type: ignore[misc]  # frozen once it is a _Pair


def test_a_twin_of_changed_fields_fails_at_once() -> None:
    with pytest.raises(RuntimeError, match="_Pair fields changed"):
        unfrozen_twin(_Pair, ("b", "a"))


class _Base:
    __slots__ = ("z",)


class _Derived(_Base):
    __slots__ = ("a",)  # one more slot below its own: not the layout of a twin


def test_a_twin_of_another_layout_fails_at_once() -> None:
    with pytest.raises(RuntimeError, match="cannot be built through a twin"):
        unfrozen_twin(_Derived, ("a",))
