"""Diffy-style noise cancellation: paths on which legacy disagrees with itself are noise.

With `noise_baseline: true` a safe request goes to legacy twice. Whatever differs between
the two legacy answers (timestamps, request ids, random tokens) cannot be held against the
candidate, so those normalised paths are dropped from the candidate's differences.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from shadow.compare import CompareRules, Comparison, compare
from shadow.http_compare import HttpResponse, compare_responses

__all__ = ["cancel_noise", "noise_patterns", "response_noise", "response_noise_patterns"]


def noise_patterns(
    first_legacy: Any, second_legacy: Any, rules: CompareRules | None = None
) -> frozenset[str]:
    """Normalised paths (`$.items[*].at`) that differ between two legacy answers."""
    result = (
        compare(first_legacy, second_legacy)
        if rules is None
        else compare(first_legacy, second_legacy, rules)
    )
    return frozenset(d.pattern for d in result.differences)


def cancel_noise(
    comparison: Comparison, noise: Iterable[str], presence: Iterable[str] = ()
) -> tuple[Comparison, frozenset[str]]:
    """`comparison` without differences at or under a noise pattern, nor exactly at a
    `presence` pattern, and the patterns hit."""
    return comparison.without(noise, presence)


def response_noise_patterns(
    first_legacy: HttpResponse, second_legacy: HttpResponse, rules: CompareRules | None = None
) -> frozenset[str]:
    """Like `noise_patterns`, for two whole legacy responses (status, headers, body)."""
    result = compare_responses(first_legacy, second_legacy, rules)
    return frozenset(d.pattern for d in result.differences)


def response_noise(
    first_legacy: HttpResponse, second_legacy: HttpResponse, rules: CompareRules | None = None
) -> tuple[frozenset[str], frozenset[str]]:
    """The noise of two legacy responses for `cancel_noise`: patterns whose values vary,
    and patterns where only a value's presence or shape varies. A list one longer, or a
    `null` for an object, says nothing about the fields inside: they must not be cancelled.
    """
    result = compare_responses(first_legacy, second_legacy, rules)
    values: set[str] = set()
    presence: set[str] = set()
    for diff in result.differences:
        if diff.path.startswith("$") and (
            diff.kind in ("added", "removed")
            or (diff.kind == "type" and _container(diff.primary, diff.candidate))
        ):
            presence.add(diff.pattern)
        else:
            values.add(diff.pattern)
    return frozenset(values), frozenset(presence - values)


def _container(*values: Any) -> bool:
    return any(isinstance(v, dict | list) for v in values)
