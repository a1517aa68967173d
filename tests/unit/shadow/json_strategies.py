"""Hypothesis strategies for decoded JSON values, shared by the shadow unit tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

__all__ = ["json_values", "json_values_with_nan", "non_integral_json_values"]

_keys = st.text(max_size=6)
_big_ints = st.integers(min_value=2**64, max_value=2**200) | st.integers(
    min_value=-(2**200), max_value=-(2**64)
)


def _values(floats: st.SearchStrategy[float]) -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.integers() | _big_ints | floats | st.text(max_size=8)
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(_keys, children, max_size=4)
        ),
        max_leaves=24,
    )


json_values = _values(st.floats(allow_nan=False))
json_values_with_nan = _values(st.floats())
# Floats with a fractional part (or infinite) never equal an int. That keeps the one
# deliberate difference from DeepDiff's defaults out of the agreement test: we treat 1 and
# 1.0 as the same number, DeepDiff calls it a type change (except inside lists, where its
# `==` shortcut agrees with us). Unit tests cover that rule instead.
non_integral_json_values = _values(st.floats(allow_nan=False).filter(lambda f: not f.is_integer()))
