"""From two answers to one stored comparison: the outcome rules shared by shadow and replay.

Pure: responses in, a `Verdict` and a redacted `ComparisonRecord` out.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from shadow.compare import CompareRules, Comparison
from shadow.http_compare import HttpResponse, compare_responses
from shadow.noise import cancel_noise, response_noise
from shadow.record import ComparisonRecord, DiffExample, Outcome, RecordMode
from shadow.redact import Redactor
from shadow.slots import unfrozen_twin

__all__ = ["EXAMPLE_CAP", "STORED_BODY_CAP", "Verdict", "build_record", "judge"]

STORED_BODY_CAP = 64 << 10  # bytes of each side's body kept for a mismatch


@dataclass(frozen=True, slots=True)
class Verdict:
    """How the candidate's answer compares with legacy's."""

    outcome: Outcome
    comparison: Comparison | None = None
    noise: frozenset[str] = frozenset()
    detail: str = ""


def judge(
    legacy: HttpResponse,
    candidate: HttpResponse | None,
    candidate_error: str | None,
    rules: CompareRules,
    ignore_headers: Sequence[str],
    baseline: HttpResponse | None = None,
) -> Verdict:
    """The outcome of one comparison; `baseline` is a second legacy answer for noise."""
    if candidate is None:
        error = candidate_error or "no answer"
        outcome: Outcome = "candidate_timeout" if error == "timeout" else "candidate_error"
        return Verdict(outcome, detail=error)
    if candidate.status >= 500 and legacy.status < 500:
        return Verdict("candidate_error", detail=f"candidate answered {candidate.status}")
    comparison = compare_responses(legacy, candidate, rules, ignore_headers=ignore_headers)
    noise: frozenset[str] = frozenset()
    if baseline is not None and baseline.status == legacy.status and not comparison.equal:
        patterns, presence = response_noise(legacy, baseline, rules)
        # A second answer unlike the first as a whole (an error page, another type) says
        # nothing about single fields: it would cancel every difference ("$" covers all).
        if "$" not in patterns and "$" not in presence:
            comparison, noise = cancel_noise(comparison, patterns, presence)
    return Verdict("match" if comparison.equal else "mismatch", comparison, noise)


EXAMPLE_CAP = 2048  # characters of each side's value kept in a differing path's example
_PLAIN = frozenset({type(None), bool, float})
_INT_BITS_SHOWN = 6000  # about 1,800 digits: a longer integer is kept as cut text


def _example_value(value: Any) -> Any:
    """A differing value as its example is stored: as it is when small, else its JSON text
    cut to `EXAMPLE_CAP` characters and `…`, so a record holds no large decoded subtree (a
    buffer of them through a store outage would take the worker's memory). Integers past
    64 bits stay integers (the store writes them exactly; as text, 2**70 and "2**70" would
    show alike); only a value too deep for the standard library is a note."""
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is str:
        return _cut(value)
    if kind is int:
        return value if value.bit_length() <= _INT_BITS_SHOWN else _cut(str(value))
    try:
        text = orjson.dumps(value, default=str)
    except orjson.JSONEncodeError:
        try:
            text = json.dumps(value, default=str, ensure_ascii=False).encode()
        except (RecursionError, ValueError):
            return f"<{kind.__name__} nested too deep to show>"
    return value if len(text) <= EXAMPLE_CAP else _cut(text.decode())


def _cut(text: str) -> str:
    return text if len(text) <= EXAMPLE_CAP else text[:EXAMPLE_CAP] + "\u2026"


def _stored_body(redactor: Redactor, response: HttpResponse | None) -> bytes | None:
    if response is None:
        return None
    body = redactor.redact_body(
        response.body, response.header("content-type"), response.header("content-encoding")
    )
    return body[:STORED_BODY_CAP]


_Unfrozen: Final = unfrozen_twin(
    ComparisonRecord,
    (
        "route",
        "outcome",
        "time",
        "method",
        "path",
        "request_path",
        "status_primary",
        "status_candidate",
        "latency_primary_ms",
        "latency_candidate_ms",
        "diff_paths",
        "diff_examples",
        "noise",
        "primary_body",
        "candidate_body",
        "detail",
        "request_id",
        "mode",
        "config_version",
    ),
)


def _ms(value: float | None) -> float | None:
    """A latency in ms rounded to the microsecond, half up (`round` where that is not exact)."""
    if value is not None and 0.0 <= value < 1e9:
        return int(value * 1000.0 + 0.5) / 1000.0
    return None if value is None else round(value, 3)  # negative, huge, nan, inf


def build_record(
    redactor: Redactor,
    verdict: Verdict,
    *,
    route: str,
    method: str,
    path_template: str,
    request_path: str,
    legacy: HttpResponse | None,
    candidate: HttpResponse | None,
    legacy_ms: float | None,
    candidate_ms: float | None,
    request_id: str,
    mode: RecordMode,
    config_version: str,
) -> ComparisonRecord:
    """The row to store: differing paths, redacted examples, and bodies for mismatches."""
    comparison = verdict.comparison
    diff_paths: tuple[str, ...] = ()
    examples: tuple[DiffExample, ...] = ()
    legacy_body = candidate_body = None
    if comparison is not None and not comparison.equal:
        # a JSON object's keys may be personal data too (balances by e-mail): in paths
        text = redactor.redact_text
        diff_paths = tuple(text(p) for p in comparison.patterns)
        examples = tuple(
            DiffExample(
                text(d.pattern),
                text(d.path),
                _example_value(d.primary),
                _example_value(d.candidate),
            )
            for d in (redactor.redact_difference(x) for x in comparison.examples)
        )
        legacy_body = _stored_body(redactor, legacy)
        candidate_body = _stored_body(redactor, candidate)
    # The fields go into an unfrozen twin of the record's layout, which then becomes the
    # record: object.__setattr__ (or a slot setter) per field was most of a matching copy's
    # record.
    rec: Any = object.__new__(_Unfrozen)
    rec.route = route
    rec.outcome = verdict.outcome
    rec.time = datetime.now(UTC)
    rec.method = method
    rec.path = path_template
    rec.request_path = redactor.redact_url(request_path)
    rec.status_primary = legacy.status if legacy is not None else None
    rec.status_candidate = candidate.status if candidate is not None else None
    # _ms, inline for the usual latencies (twice per stored comparison)
    rec.latency_primary_ms = (
        int(legacy_ms * 1000.0 + 0.5) / 1000.0
        if legacy_ms is not None and 0.0 <= legacy_ms < 1e9
        else _ms(legacy_ms)
    )
    rec.latency_candidate_ms = (
        int(candidate_ms * 1000.0 + 0.5) / 1000.0
        if candidate_ms is not None and 0.0 <= candidate_ms < 1e9
        else _ms(candidate_ms)
    )
    rec.diff_paths = diff_paths
    rec.diff_examples = examples
    rec.noise = (
        tuple(sorted(redactor.redact_text(p) for p in verdict.noise)) if verdict.noise else ()
    )
    rec.primary_body = legacy_body
    rec.candidate_body = candidate_body
    rec.detail = redactor.redact_text(verdict.detail) if verdict.detail else ""
    rec.request_id = request_id
    rec.mode = mode
    rec.config_version = config_version
    rec.__class__ = ComparisonRecord
    record: ComparisonRecord = rec
    record.__post_init__()  # the checks the frozen __init__ would have made
    return record
