"""The sliding-window auto-rollback detector."""

from __future__ import annotations

import random

import pytest

from proxy.settings import PromotionSettings
from shadow.rollback import RollbackWindow

GATES = PromotionSettings(
    min_samples=500, max_mismatch_rate=0.001, max_error_rate=0.01, max_p99_ratio=1.5
)


def _healthy(window: RollbackWindow, rng: random.Random, n: int) -> None:
    for i in range(n):
        served = i % 5 == 0  # a canary share served by the candidate, the rest compared
        latency = rng.uniform(5.0, 20.0)
        outcome = "ok" if served else "match"
        assert window.observe(outcome, latency, latency * rng.uniform(0.9, 1.2)) is None


def test_healthy_candidate_never_trips() -> None:
    rng = random.Random(7)
    window = RollbackWindow(GATES, size=200, min_samples=50)
    _healthy(window, rng, 20_000)
    assert window.observations == 200


def test_candidate_failing_a_fifth_of_requests_trips_within_the_window() -> None:
    rng = random.Random(11)
    window = RollbackWindow(GATES, size=200, min_samples=50)
    _healthy(window, rng, 1000)
    failures = 0
    for _n in range(200):
        failing = rng.random() < 0.2
        failures += failing
        breach = window.observe(
            "candidate_error" if failing else "match", 10.0, None if failing else 11.0
        )
        if breach is not None:
            break
    else:
        pytest.fail("a candidate failing 20 % of requests never tripped within the window")
    assert breach.gate == "error_rate"
    assert breach.errors == failures <= window.failure_bound + 1
    assert breach.value == pytest.approx(failures / 200)
    assert breach.observations == 200
    assert "error rate" in breach.message and "200 observations" in breach.message
    assert breach.to_json()["errors"] == failures


def test_failing_from_the_start_trips_at_the_sample_minimum() -> None:
    window = RollbackWindow(GATES, size=200, min_samples=50)
    rng = random.Random(3)
    outcomes = ["candidate_error" if rng.random() < 0.2 else "match" for _ in range(200)]
    trips = [i for i, o in enumerate(outcomes, 1) if window.observe(o, 10.0, 10.0) is not None]
    assert trips and trips[0] == 50  # the first observation with enough samples
    assert sum(o == "candidate_error" for o in outcomes[:50]) <= window.failure_bound + 1


def test_failure_bound_follows_size_and_rate() -> None:
    assert RollbackWindow(GATES, size=200, min_samples=50).failure_bound == 49
    loose = PromotionSettings(max_error_rate=0.5)
    assert RollbackWindow(loose, size=200, min_samples=50).failure_bound == 100


def test_mismatches_trip_the_mismatch_gate() -> None:
    window = RollbackWindow(PromotionSettings(max_mismatch_rate=0.05), size=100, min_samples=20)
    breaches = [window.observe("mismatch" if i % 10 == 0 else "match", 1.0, 1.0) for i in range(40)]
    first = next(b for b in breaches if b is not None)
    assert first.gate == "mismatch_rate"
    assert first.samples == 20 and first.value == pytest.approx(2 / 20)


def test_slow_candidate_trips_the_p99_gate() -> None:
    window = RollbackWindow(GATES, size=200, min_samples=50)
    breach = None
    for _ in range(400):
        breach = breach or window.observe("match", 10.0, 25.0)
    assert breach is not None and breach.gate == "p99_ratio"
    assert breach.value == pytest.approx(2.5, rel=0.1)


def test_skipped_outcomes_and_reset() -> None:
    window = RollbackWindow(GATES, size=10, min_samples=5)
    assert window.observe("dropped", None, None) is None
    assert window.observations == 0
    for _ in range(5):
        window.observe("candidate_error", None, None)
    window.reset()
    assert window.observations == 0
    assert window.observe("match", 1.0, 1.0) is None


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        RollbackWindow(GATES, size=10, min_samples=20)


def test_a_served_answer_compared_afterwards_is_one_candidate_call() -> None:
    """Served reads (answer, then its comparison) and served writes (answer only): the
    error gate counts each call once, so failing writes weigh as much as reads."""
    gates = PromotionSettings(max_error_rate=0.05, max_mismatch_rate=0.5, max_p99_ratio=1000.0)
    window = RollbackWindow(gates, size=200, min_samples=50)
    breach = None
    for i in range(200):
        if i % 14 == 13:  # 7 % of calls: a write that fails, never compared
            breach = window.observe("candidate_error", None, None)
        else:
            breach = window.observe("ok", None, 10.0) or window.observe(
                "match", 10.0, 10.0, served=True
            )
        if breach is not None:
            break
    assert breach is not None and breach.gate == "error_rate"
    assert breach.value == pytest.approx(3 / 50)
    # a served 5xx is judged candidate_error again by its comparison: not a second error
    assert window.observe("candidate_error", 10.0, None, served=True) is None
