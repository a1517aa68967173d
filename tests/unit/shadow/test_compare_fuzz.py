"""Compare fuzzing not covered elsewhere: random pairs 10,000 levels down, random rules,
numbers past float and past Python's int-to-str digit limit, and raw bodies."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shadow.compare import CompareRules, compare
from shadow.http_compare import HttpResponse, compare_responses
from tests.unit.shadow.json_strategies import json_values_with_nan

_JSON = [("content-type", "application/json")]
_FEW = settings(deadline=None, max_examples=25, suppress_health_check=list(HealthCheck))
_MANY = settings(deadline=None, max_examples=200, suppress_health_check=list(HealthCheck))


def _bury(value: Any, depth: int, shape: str) -> Any:
    for level in range(depth):
        as_list = shape == "list" or (shape == "mixed" and level % 2 == 1)
        value = [value] if as_list else {"k": value}
    return value


@_FEW
@given(
    json_values_with_nan,
    json_values_with_nan,
    st.integers(9_000, 10_000),
    st.sampled_from(["list", "dict", "mixed"]),
)
def test_pairs_buried_ten_thousand_levels_deep_never_raise(
    first: Any, second: Any, depth: int, shape: str
) -> None:
    shallow = compare(first, second)
    deep = compare(_bury(first, depth, shape), _bury(second, depth, shape))
    assert deep.equal == shallow.equal
    assert len(deep.differences) == len(shallow.differences)
    for d in deep.differences:
        assert d.path.startswith("$[0]" if shape == "list" else "$")


_PATHS = ["$.a", "$.a[*]", "$[*].b", "$.items[*].price", "$..x", "$[0]", "$.*"]


@st.composite
def _rules(draw: st.DrawFn) -> CompareRules:
    ignore = draw(st.lists(st.sampled_from(_PATHS), max_size=3))
    unordered = draw(
        st.dictionaries(st.sampled_from(["$", "$.a", "$.items"]), st.none() | st.just("id"))
    )
    tolerance = draw(st.sampled_from([0.0, 1e-9, 0.5, 1e300]))
    try:
        return CompareRules(
            ignore_json_paths=ignore, unordered_arrays=unordered, numeric_tolerance=tolerance
        )
    except ValueError:
        return CompareRules()  # a path the parser rejects is a config error, not a compare one


@_MANY
@given(json_values_with_nan, json_values_with_nan, _rules())
def test_any_pair_under_any_rules_never_raises(
    first: Any, second: Any, rules: CompareRules
) -> None:
    result = compare(first, second, rules)
    assert result.equal == (not result.differences)


_HUGE = st.integers(4_400, 20_000).map(lambda digits: 10**digits - 7)


@_FEW
@given(_HUGE, st.sampled_from([0.0, 0.5, 1e308]))
def test_integers_past_the_str_digit_limit_compare_exactly(n: int, tolerance: float) -> None:
    rules = CompareRules(numeric_tolerance=tolerance)
    assert compare({"n": [n]}, {"n": [n]}, rules).equal
    # past the tolerance: 1 is within 1e308 (which only an overflow used to hide)
    bump = 1 if tolerance < 1 else 10**400
    different = compare({"n": [n]}, {"n": [n + bump]}, rules)
    assert not different.equal
    assert [d.path for d in different.differences] == ["$.n[0]"]
    assert not compare(n, math.inf, rules).equal
    assert not compare(n, float("nan"), rules).equal


@_MANY
@given(st.binary(max_size=300), st.binary(max_size=300), st.sampled_from([None, "gzip", "br"]))
def test_arbitrary_bodies_never_raise(first: bytes, second: bytes, encoding: str | None) -> None:
    headers = _JSON + ([("content-encoding", encoding)] if encoding else [])
    result = compare_responses(
        HttpResponse(200, headers, first), HttpResponse(200, headers, second)
    )
    assert result.equal == (not result.differences)
    assert compare_responses(
        HttpResponse(200, headers, first), HttpResponse(200, headers, first)
    ).equal


def test_huge_literals_in_bodies_never_raise() -> None:
    digits = "9" * 20_000
    for a, b in [
        (f'{{"n": {digits}}}', f'{{"n": {digits[:-1]}8}}'),
        (f'{{"n": [{digits}]}}', f'{{"n": [{digits}]}}'),
        ('{"n": 1e400}', '{"n": -1e400}'),
        ("[" * 10_000 + "]" * 10_000, "[" * 10_000 + "1" + "]" * 10_000),
    ]:
        result = compare_responses(
            HttpResponse(200, _JSON, a.encode()), HttpResponse(200, _JSON, b.encode())
        )
        assert result.equal == (a == b)


def test_different_numbers_past_the_float_range_differ() -> None:
    result = compare_responses(
        HttpResponse(200, _JSON, b'{"n": 1e400}'), HttpResponse(200, _JSON, b'{"n": 2e400}')
    )
    assert not result.equal
