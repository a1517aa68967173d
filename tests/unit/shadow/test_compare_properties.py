"""Property tests of the compare engine: reflexivity, exact mutation paths, DeepDiff agreement."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from deepdiff import DeepDiff
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shadow.compare import Segment, compare, format_path, parse_path
from tests.unit.shadow.json_strategies import (
    json_values,
    json_values_with_nan,
    non_integral_json_values,
)

_SETTINGS = settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(json_values)
def test_a_value_equals_itself_and_its_copy(value: Any) -> None:
    assert compare(value, value).equal
    result = compare(value, copy.deepcopy(value))
    assert result.equal, result.differences
    assert result.differences == []


@_SETTINGS
@given(json_values_with_nan, json_values_with_nan)
def test_any_pair_compares_without_raising(first: Any, second: Any) -> None:
    result = compare(first, second)
    assert result.equal == (not result.differences)
    assert compare(first, copy.deepcopy(first)).equal  # NaN equals NaN here
    assert all(d.kind in ("changed", "added", "removed", "type") for d in result.differences)


def _walk(
    value: Any, prefix: tuple[Segment, ...] = ()
) -> Iterator[tuple[tuple[Segment, ...], Any]]:
    stack = [(prefix, value)]
    while stack:
        path, node = stack.pop()
        yield path, node
        if isinstance(node, dict):
            stack.extend(((*path, key), item) for key, item in node.items())
        elif isinstance(node, list):
            stack.extend(((*path, index), item) for index, item in enumerate(node))


def _get(value: Any, path: tuple[Segment, ...]) -> Any:
    for segment in path:
        value = value[segment]
    return value


def _changed(value: Any) -> Any:
    """A different value of the same JSON type."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return 1.0 if value == 0 else value * -2
    assert isinstance(value, str)
    return value + "!"


def _other_type(value: Any) -> Any:
    return 0 if isinstance(value, str) else "x"


def _overlap(a: tuple[Segment, ...], b: tuple[Segment, ...]) -> bool:
    short, long = (a, b) if len(a) <= len(b) else (b, a)
    return long[: len(short)] == short


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(json_values, st.data())
def test_k_mutations_yield_exactly_their_paths(doc: Any, data: st.DataObject) -> None:
    candidates: list[tuple[str, tuple[Segment, ...]]] = []
    for path, node in _walk(doc):
        candidates.append(("type", path))
        if node is not None and not isinstance(node, dict | list):
            candidates.append(("changed", path))
        if isinstance(node, dict):
            candidates.append(("added", (*path, "\x00added-key")))
            candidates.extend(("removed", (*path, key)) for key in node)
    order = data.draw(st.permutations(candidates))
    k = data.draw(st.integers(min_value=1, max_value=6))
    chosen: list[tuple[str, tuple[Segment, ...]]] = []
    for kind, path in order:
        if len(chosen) == k:
            break
        if not any(_overlap(path, taken) for _, taken in chosen):
            chosen.append((kind, path))

    mutated = copy.deepcopy(doc)
    holder = [mutated]
    for kind, path in chosen:
        parent_path, last = ((), 0) if not path else (path[:-1], path[-1])
        parent: Any = holder if not path else _get(mutated, parent_path)
        if kind == "type":
            parent[last] = _other_type(parent[last])
        elif kind == "changed":
            parent[last] = _changed(parent[last])
        elif kind == "added":
            parent[last] = 1
        else:
            del parent[last]
        mutated = holder[0]

    result = compare(doc, mutated)
    expected = sorted((format_path(path), kind) for kind, path in chosen)
    assert sorted((d.path, d.kind) for d in result.differences) == expected
    assert not result.equal
    for diff in result.differences:
        assert format_path(parse_path(diff.path)) == diff.path  # concrete paths parse back


@st.composite
def _pairs(draw: st.DrawFn) -> tuple[Any, Any]:
    first = draw(non_integral_json_values)
    how = draw(st.sampled_from(["copy", "other", "tweak"]))
    if how == "copy":
        return first, copy.deepcopy(first)
    if how == "other":
        return first, draw(non_integral_json_values)
    second = copy.deepcopy(first)
    leaves = [path for path, node in _walk(second) if not isinstance(node, dict | list)]
    if leaves:
        path = draw(st.sampled_from(leaves))
        replacement = draw(non_integral_json_values)
        if path:
            _get(second, path[:-1])[path[-1]] = replacement
        else:
            second = replacement
    return first, second


def _bools_as_text(value: Any) -> Any:
    """`value` with each bool replaced by a string no strategy draws (longer than 8)."""
    if isinstance(value, bool):
        return f"\x00bool:{value}"
    if isinstance(value, list):
        return [_bools_as_text(item) for item in value]
    if isinstance(value, dict):
        return {key: _bools_as_text(item) for key, item in value.items()}
    return value


@settings(deadline=None, max_examples=2000, suppress_health_check=[HealthCheck.too_slow])
@given(_pairs())
def test_verdict_agrees_with_deepdiff(pair: tuple[Any, Any]) -> None:
    # DeepDiff (defaults) is given the pair with bools spelled as strings: inside lists it
    # short-cuts with Python's `==`, so it calls [0] and [False] equal while calling 0 and
    # False a type change. Spelled out, both engines must see exactly the same differences.
    first, second = pair
    expected = not DeepDiff(_bools_as_text(first), _bools_as_text(second))
    assert compare(first, second).equal == expected
