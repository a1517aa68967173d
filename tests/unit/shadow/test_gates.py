"""Promotion gates: each failed gate gives a reason with its numbers."""

from __future__ import annotations

from proxy.settings import PromotionSettings
from shadow.gates import Evidence, evaluate
from shadow.report import Thresholds

LIMITS = PromotionSettings(
    min_samples=500, max_mismatch_rate=0.001, max_error_rate=0.01, max_p99_ratio=1.5
)


def test_healthy_evidence_passes() -> None:
    ev = Evidence(samples=1000, mismatches=1, errors=5, p99_primary_ms=10.0, p99_candidate_ms=14.0)
    verdict = evaluate(ev, LIMITS)
    assert verdict.passed
    assert verdict.reasons == ()
    assert verdict.to_json()["evidence"]["p99_ratio"] == 1.4


def test_every_gate_reports_its_numbers() -> None:
    ev = Evidence(samples=400, mismatches=8, errors=100, p99_primary_ms=10.0, p99_candidate_ms=30.0)
    verdict = evaluate(ev, LIMITS)
    assert not verdict.passed
    gates = {r.gate: r for r in verdict.reasons}
    assert list(gates) == ["samples", "mismatch_rate", "error_rate", "p99_ratio"]
    assert (gates["samples"].value, gates["samples"].limit) == (400, 500)
    assert gates["mismatch_rate"].value == 8 / 400
    assert gates["error_rate"].value == 100 / 500  # errors / (samples + errors)
    assert gates["p99_ratio"].value == 3.0
    messages = [r.message for r in verdict.reasons]
    assert messages[0] == "samples short: 400 compared samples, below the minimum of 500"
    assert messages[1] == "mismatch rate over: 2% above the maximum 0.1%"
    assert messages[2] == "error rate over: 20% above the maximum 1%"
    assert messages[3] == "p99 ratio over: candidate p99 is 3.00x legacy, above 1.5x"


def test_limits_are_inclusive() -> None:
    ev = Evidence(samples=1000, mismatches=1, errors=0, p99_primary_ms=10.0, p99_candidate_ms=15.0)
    assert evaluate(ev, LIMITS).passed  # exactly 0.1 % and exactly 1.5x
    assert not evaluate(Evidence(samples=1000, mismatches=2), LIMITS).passed


def test_empty_evidence_fails_only_the_sample_minimum() -> None:
    verdict = evaluate(Evidence(), LIMITS)
    assert [r.gate for r in verdict.reasons] == ["samples"]
    assert Evidence().empty
    assert Evidence().mismatch_rate is None and Evidence().error_rate is None


def test_p99_gate_skipped_without_latency_or_limit() -> None:
    ev = Evidence(samples=600, p99_primary_ms=None, p99_candidate_ms=50.0)
    assert evaluate(ev, LIMITS).passed
    slow = Evidence(samples=600, p99_primary_ms=1.0, p99_candidate_ms=50.0)
    assert evaluate(slow, Thresholds(max_p99_ratio=None)).passed
    assert not evaluate(slow, Thresholds()).passed


def test_inconsistent_counts_are_refused() -> None:
    try:
        Evidence(samples=1, mismatches=2)
    except ValueError:
        return
    raise AssertionError("mismatches > samples accepted")
