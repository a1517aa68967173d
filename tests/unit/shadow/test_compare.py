"""Unit tests of the compare engine: kinds, paths, rules, limits and deep nesting."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import pytest

from proxy.settings import CompareSettings
from shadow.compare import (
    CompareRules,
    Comparison,
    PathSyntaxError,
    compare,
    format_path,
    format_pattern,
    parse_path,
)


def _found(result: Comparison) -> list[tuple[str, str]]:
    return [(d.path, d.kind) for d in result.differences]


def _nested(depth: int, leaf: Any, *, as_dict: bool = False) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"n": value} if as_dict else [value]
    return value


# paths


@pytest.mark.parametrize(
    ("text", "segments"),
    [
        ("$", ()),
        ("$.a.b", ("a", "b")),
        ("$.items[3].price", ("items", 3, "price")),
        ("$.items[*].price", ("items", None, "price")),
        ("$.meta.*", ("meta", None)),
        ("$[\"a.b\"]['c d']", ("a.b", "c d")),
        ('$["q\\"uote"]', ('q"uote',)),
        ("$.content-type", ("content-type",)),
    ],
)
def test_parse_path(text: str, segments: tuple[Any, ...]) -> None:
    assert parse_path(text) == segments
    assert parse_path(format_path(segments)) == segments


@pytest.mark.parametrize("text", ["", "a.b", "$.", "$[x]", "$.a[", "$..a", "$[-1]", "$ .a"])
def test_bad_paths_are_rejected_with_a_position(text: str) -> None:
    with pytest.raises(PathSyntaxError) as caught:
        parse_path(text)
    assert caught.value.position >= 0
    assert isinstance(caught.value, ValueError)


def test_patterns_replace_indexes_only() -> None:
    assert format_pattern(("items", 3, "price", "*")) == '$.items[*].price["*"]'


# kinds and order


def test_equal_values() -> None:
    doc = {"a": [1, 2.5, "x", None, True, {"b": []}], "c": {}}
    assert compare(doc, {"c": {}, "a": [1, 2.5, "x", None, True, {"b": []}]}).equal


def test_kinds_and_document_order() -> None:
    primary = {"a": 1, "b": {"c": "x", "d": [1, 2, 3]}, "e": True, "gone": 0}
    candidate = {"a": 2, "b": {"c": "x", "d": [1, 2]}, "e": "yes", "new": None}
    result = compare(primary, candidate)
    assert not result.equal
    assert _found(result) == [
        ("$.a", "changed"),
        ("$.b.d[2]", "removed"),
        ("$.e", "type"),
        ("$.gone", "removed"),
        ("$.new", "added"),
    ]
    assert result.differences[0].primary == 1 and result.differences[0].candidate == 2
    assert result.differences[1].pattern == "$.b.d[*]"
    assert result.differences[4].primary is None and result.differences[4].candidate is None


def test_order_is_document_order_across_containers_and_leaves() -> None:
    primary = {"x": [{"y": 1}], "z": 1, "w": {"v": [0, 0]}}
    candidate = {"x": [{"y": 2}], "z": 2, "w": {"v": [0, 1]}}
    assert [d.path for d in compare(primary, candidate).differences] == [
        "$.x[0].y",
        "$.z",
        "$.w.v[1]",
    ]


@pytest.mark.parametrize(
    ("primary", "candidate"),
    [(True, 1), (False, 0), (True, 1.0), ([True], [1]), ({"a": {"b": False}}, {"a": {"b": 0}})],
)
def test_bools_are_never_numbers(primary: Any, candidate: Any) -> None:
    result = compare(primary, candidate)
    assert not result.equal
    assert [d.kind for d in result.differences] == ["type"]


@pytest.mark.parametrize(
    ("primary", "candidate"),
    [(1, 1.0), ({"a": [0, 2]}, {"a": [0.0, 2.0]}), (2**80, float(2**80)), (-0.0, 0)],
)
def test_ints_equal_to_floats_are_the_same_number(primary: Any, candidate: Any) -> None:
    assert compare(primary, candidate).equal


def test_special_numbers_never_raise() -> None:
    nan, inf = float("nan"), float("inf")
    assert compare(nan, float("nan")).equal
    assert compare([nan], [float("nan")]).equal
    assert compare(inf, inf).equal
    assert _found(compare(inf, -inf)) == [("$", "changed")]
    assert _found(compare(nan, None)) == [("$", "type")]
    assert _found(compare(10**400, 1e308)) == [("$", "changed")]
    tolerant = CompareRules(numeric_tolerance=0.5)
    assert _found(compare(10**400, 1.0, tolerant)) == [("$", "changed")]
    assert _found(compare(nan, 1.0, tolerant)) == [("$", "changed")]


def test_odd_python_values_never_raise() -> None:
    assert compare((1, 2), [1, 2]).equal
    assert not compare(object(), object()).equal
    assert compare({"a": {1, 2}}, {"a": {1, 2}}).equal


def test_differences_are_capped() -> None:
    result = compare(list(range(5000)), [-1] * 5000, CompareRules(max_differences=10))
    assert len(result.differences) == 10 and result.truncated and not result.equal
    nested = compare(
        [[i] for i in range(50)], [[-1] for _ in range(50)], CompareRules(max_differences=3)
    )
    assert [d.path for d in nested.differences] == ["$[0][0]", "$[1][0]", "$[2][0]"]
    assert nested.truncated


@pytest.mark.parametrize("as_dict", [False, True])
def test_ten_thousand_levels(as_dict: bool) -> None:
    deep = _nested(10_000, 1, as_dict=as_dict)
    assert compare(deep, _nested(10_000, 1, as_dict=as_dict)).equal
    result = compare(deep, _nested(10_000, 2, as_dict=as_dict))
    assert [d.kind for d in result.differences] == ["changed"]
    step = ".n" if as_dict else "[0]"
    assert result.differences[0].path == "$" + step * 10_000
    assert not compare(deep, _nested(10_000, True, as_dict=as_dict)).equal


# rules


def test_ignore_paths_with_wildcards() -> None:
    rules = CompareRules(
        ignore_json_paths=["$.meta.generated_at", "$.items[*].updated_at", "$.debug.*", "$.gone"]
    )
    primary = {
        "meta": {"generated_at": 1, "v": 1},
        "items": [{"id": 1, "updated_at": "a"}, {"id": 2, "updated_at": "b"}],
        "debug": {"x": 1, "y": [1]},
        "gone": 1,
    }
    candidate: dict[str, Any] = {
        "meta": {"generated_at": 2, "v": 1},
        "items": [{"id": 1, "updated_at": "c"}, {"id": 2}],
        "debug": {"x": 2, "z": 3},
    }
    assert compare(primary, candidate, rules).equal
    candidate["items"][1]["id"] = 3
    assert _found(compare(primary, candidate, rules)) == [("$.items[1].id", "changed")]
    assert len(compare(primary, candidate).differences) == 8


def test_specific_index_rules_combine_with_wildcards() -> None:
    rules = CompareRules(
        ignore_json_paths=["$[0].a"], normalizers=[("$[*].a", "trim"), ("$[*].a", "lowercase")]
    )
    assert compare([{"a": 1}, {"a": " X "}], [{"a": 2}, {"a": "x"}], rules).equal
    assert not compare([{"a": 1}, {"a": "X"}], [{"a": 2}, {"a": "y"}], rules).equal


def test_unordered_array_keyed_by_field() -> None:
    rules = CompareRules(unordered_arrays={"$.items": "id"})
    primary = {"items": [{"id": 1, "p": 10}, {"id": 2, "p": 20}, {"id": 3, "p": 30}]}
    reordered = {"items": [{"id": 3, "p": 30}, {"id": 1, "p": 10}, {"id": 2, "p": 20}]}
    assert compare(primary, reordered, rules).equal
    assert not compare(primary, reordered).equal
    changed = {"items": [{"id": 2, "p": 21}, {"id": 4, "p": 40}, {"id": 1, "p": 10}]}
    assert _found(compare(primary, changed, rules)) == [
        ("$.items[1].p", "changed"),
        ("$.items[2]", "removed"),
        ("$.items[1]", "added"),
    ]


def test_unordered_array_keyed_with_duplicates_and_keyless_elements() -> None:
    rules = CompareRules(unordered_arrays={"$[*].tags": "k"})
    primary = [{"tags": [{"k": "a", "v": 1}, {"k": "a", "v": 2}, {"v": 3}, "s"]}]
    candidate = [{"tags": [{"v": 3}, {"k": "a", "v": 1}, "s", {"k": "a", "v": 2}]}]
    assert compare(primary, candidate, rules).equal
    assert not compare(primary, [{"tags": [{"k": True, "v": 1}]}], rules).equal


def test_unordered_array_keyed_pairs_equal_elements_first_among_duplicates() -> None:
    """Elements sharing a key, or without one, were paired in order: the same multiset in
    another order differed (a false alarm), and a real difference showed twice."""
    rules = CompareRules(unordered_arrays={"$.items": "id"})
    primary = {"items": [{"id": 1, "v": 1}, {"id": 1, "v": 2}, {"v": 3}, "s"]}
    candidate = {"items": ["s", {"id": 1, "v": 2}, {"v": 3}, {"id": 1, "v": 1}]}
    assert compare(primary, candidate, rules).equal
    changed = {"items": ["s", {"id": 1, "v": 2}, {"v": 3}, {"id": 1, "v": 9}]}
    assert _found(compare(primary, changed, rules)) == [("$.items[0].v", "changed")]
    longer = {"items": [{"id": 1, "v": 2}, {"id": 1, "v": 1}, {"id": 1, "v": 5}, {"v": 3}, "s"]}
    assert _found(compare(primary, longer, rules)) == [("$.items[2]", "added")]


def test_unordered_array_by_value() -> None:
    rules = CompareRules(unordered_arrays=[("$.tags", None)])
    assert compare(
        {"tags": [1, "a", 2, 2, {"x": 1}]}, {"tags": [{"x": 1}, 2, 1, 2, "a"]}, rules
    ).equal
    assert _found(compare({"tags": [1, 2, 2]}, {"tags": [2, 1]}, rules)) == [
        ("$.tags[2]", "removed")
    ]
    assert _found(compare({"tags": [1, True]}, {"tags": [True, 1.5]}, rules)) == [
        ("$.tags[0]", "changed")
    ]
    assert not compare({"tags": [1, 1]}, {"tags": [True, 1]}, rules).equal


def test_numeric_tolerance() -> None:
    rules = CompareRules(numeric_tolerance=0.01)
    assert compare({"p": 1.0}, {"p": 1.005}, rules).equal
    assert compare({"p": 100}, {"p": 100.01}, rules).equal
    assert _found(compare({"p": 1.0}, {"p": 1.02}, rules)) == [("$.p", "changed")]
    assert not compare({"p": 1.0}, {"p": 1.005}).equal
    assert not compare(True, 1.001, rules).equal
    with pytest.raises(ValueError):
        CompareRules(numeric_tolerance=-1)
    with pytest.raises(ValueError):
        CompareRules(numeric_tolerance=math.nan)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (1844674407370955000, 1844674407370955999),  # ids: a slack relative to size hid these
        (10**17, 10**17 + 50),
        (1_700_000_000_000_001, 1_700_000_000_000_002),  # microsecond timestamps
        (1e20, 1.0000000000000002e20),  # adjacent doubles, 16384 apart
        (1e16, 1e16 + 2.0),
    ],
)
def test_numeric_tolerance_is_absolute_at_any_magnitude(first: float, second: float) -> None:
    rules = CompareRules(numeric_tolerance=0.01)
    assert _found(compare({"id": first}, {"id": second}, rules)) == [("$.id", "changed")]
    assert compare({"p": 1e20 + 0.0}, {"p": 100000000000000000000}, rules).equal


def test_timestamp_seconds_normalizer() -> None:
    rules = CompareRules(
        normalizers={"$.at": "timestamp_seconds", "$.events[*].at": "timestamp_seconds"}
    )
    assert compare(
        {"at": "2024-05-01T10:00:00.123456Z"}, {"at": "2024-05-01T10:00:00+00:00"}, rules
    ).equal
    assert compare(
        {"at": "2024-05-01T12:00:00.9+02:00"}, {"at": "2024-05-01T10:00:00Z"}, rules
    ).equal
    assert compare({"at": 1714557600.75}, {"at": 1714557600}, rules).equal
    assert compare(
        {"events": [{"at": "2024-05-01T10:00:00.5"}]},
        {"events": [{"at": "2024-05-01T10:00:00"}]},
        rules,
    ).equal
    result = compare({"at": "2024-05-01T10:00:01.1Z"}, {"at": "2024-05-01T10:00:00.9Z"}, rules)
    assert _found(result) == [("$.at", "changed")]
    assert result.differences[0].primary == "2024-05-01T10:00:01.1Z"  # shown as received
    assert _found(compare({"at": "soon"}, {"at": "later"}, rules)) == [("$.at", "changed")]


@pytest.mark.parametrize("date", ["2024-05-01", "20240501", "2024-W18-3"])
def test_timestamp_seconds_keeps_a_date_apart_from_a_date_time(date: str) -> None:
    # A date read as its midnight matched a date-time: a client reading dates breaks.
    rules = CompareRules(normalizers={"$.at": "timestamp_seconds"})
    midnight = {"at": "2024-05-01T00:00:00"}
    assert _found(compare({"at": date}, midnight, rules)) == [("$.at", "changed")]
    assert compare({"at": date}, {"at": date}, rules).equal


def test_decimal_normalizer() -> None:
    rules = CompareRules(normalizers={"$.total": "decimal", "$.items[*].price": "decimal"})
    assert compare({"total": "12.50"}, {"total": 12.5}, rules).equal
    assert compare({"total": "0.1"}, {"total": 0.1}, rules).equal
    assert compare({"total": "12"}, {"total": 12}, rules).equal
    assert compare({"items": [{"price": "1.10"}]}, {"items": [{"price": 1.1}]}, rules).equal
    assert _found(compare({"total": "12.51"}, {"total": 12.5}, rules)) == [("$.total", "changed")]
    assert _found(compare({"total": "n/a"}, {"total": 12.5}, rules)) == [("$.total", "type")]
    assert not compare({"total": "12.50"}, {"total": 12.5}).equal
    tolerant = CompareRules(normalizers={"$.total": "decimal"}, numeric_tolerance=0.01)
    assert compare({"total": "12.505"}, {"total": 12.5}, tolerant).equal
    assert compare(Decimal("1.5"), 1.5).equal


@pytest.mark.parametrize("text", ["1_000", " 1000", "1000\n", "+1000", "1000.", "01000"])
def test_decimal_normalizer_reads_only_json_style_decimal_strings(text: str) -> None:
    # Python's Decimal reads "1_000", padding and "+": a client's decimal parser does not
    rules = CompareRules(normalizers={"$.total": "decimal"})
    assert _found(compare({"total": text}, {"total": 1000}, rules)) == [("$.total", "type")]
    assert compare({"total": "1000.0"}, {"total": 1000}, rules).equal
    assert compare({"total": "-0.50"}, {"total": -0.5}, rules).equal
    assert compare({"total": "1e3"}, {"total": 1000}, rules).equal  # a JSON number's form


def test_string_normalizers() -> None:
    rules = CompareRules(normalizers=[("$.code", "lowercase"), ("$.name", "trim")])
    assert compare({"code": "ABC", "name": " x\n"}, {"code": "abc", "name": "x"}, rules).equal
    assert not compare({"code": "ABC", "name": " x"}, {"code": "abd", "name": "x"}, rules).equal
    assert not compare({"name": "x y"}, {"name": "xy"}, rules).equal


def test_sorted_normalizer() -> None:
    rules = CompareRules(normalizers={"$.tags": "sorted"})
    assert compare(
        {"tags": ["b", "a", 3, None, True, 1.5]}, {"tags": [1.5, True, None, 3, "a", "b"]}, rules
    ).equal
    assert compare({"tags": [{"b": 1}, [2]]}, {"tags": [[2], {"b": 1}]}, rules).equal
    assert _found(compare({"tags": ["b", "a"]}, {"tags": ["c", "a"]}, rules)) == [
        ("$.tags[1]", "changed")
    ]
    assert compare({"tags": [float("nan"), 1]}, {"tags": [1, float("nan")]}, rules).equal


def test_unknown_normalizer_and_bad_path_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="unknown normalizer 'nope'"):
        CompareRules(normalizers={"$.a": "nope"})
    with pytest.raises(PathSyntaxError):
        CompareRules(ignore_json_paths=["items[*]"])


def test_rules_from_settings() -> None:
    settings = CompareSettings(
        ignore_headers=("Date",),
        ignore_json_paths=("$.meta.generated_at",),
        unordered_arrays=(("$.items", "id"),),
        numeric_tolerance=0.5,
        normalizers=(("$.total", "decimal"),),
    )
    rules = CompareRules.from_settings(settings)
    assert rules.ignore_headers == ("date",)
    primary = {
        "meta": {"generated_at": 1},
        "items": [{"id": 1}, {"id": 2}],
        "total": "3.00",
        "n": 1,
    }
    candidate = {"meta": {"generated_at": 2}, "items": [{"id": 2}, {"id": 1}], "total": 3, "n": 1.4}
    assert compare(primary, candidate, rules).equal
    assert hash(rules) == hash(CompareRules.from_settings(settings))


def test_without_drops_patterns_and_their_subtrees() -> None:
    result = compare(
        {"a": {"b": 1, "c": 1}, "d": [{"e": 1}, {"e": 2}], "f": 1},
        {"a": {"b": 2, "c": 2}, "d": [{"e": 3}, {"e": 4}], "f": 2},
    )
    kept, dropped = result.without({"$.a", "$.d[*].e", "$.zzz"})
    assert [d.path for d in kept.differences] == ["$.f"]
    assert dropped == {"$.a", "$.d[*].e"}
    assert not kept.equal
    cleared, _ = result.without({"$.a", "$.d", "$.f"})
    assert cleared.equal and cleared.differences == []
    same, none = result.without(set())
    assert same is result and none == frozenset()
    assert result.patterns == ("$.a.b", "$.a.c", "$.d[*].e", "$.f")
    assert [d.path for d in result.examples] == ["$.a.b", "$.a.c", "$.d[0].e", "$.f"]


def test_bool_hidden_in_an_equal_looking_subtree_keeps_document_order() -> None:
    primary = [{"x": [True, {"y": 0}]}, 5, {"z": False}]
    candidate = [{"x": [1, {"y": 0.0}]}, 6, {"z": 0}]
    assert _found(compare(primary, candidate)) == [
        ("$[0].x[0]", "type"),
        ("$[1]", "changed"),
        ("$[2].z", "type"),
    ]
