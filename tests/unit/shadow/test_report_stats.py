"""Unit tests of the report's statistics, thresholds, gate and time parsing."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shadow.report import Latency, RouteReport, Thresholds, wilson_interval
from shadow.report_cli import UsageError, parse_when

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def _judged(**fields: Any) -> RouteReport:
    from shadow.report import _judge

    base = RouteReport(route="r", **fields)
    return replace(base, reasons=_judge(base))


def test_wilson_interval_matches_the_textbook_value() -> None:
    lo, hi = wilson_interval(37, 978)
    # Worked by hand: centre 0.039640, half-width 0.012070 (z = 1.96, p = 37/978).
    assert lo == pytest.approx(0.027570, abs=2e-6)
    assert hi == pytest.approx(0.051710, abs=2e-6)
    assert lo < 37 / 978 < hi


def test_wilson_interval_edges() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(0, 100)
    assert lo == 0.0 and 0.0 < hi < 0.04
    lo, hi = wilson_interval(100, 100)
    assert hi == 1.0 and 0.96 < lo < 1.0


def test_rates_use_the_documented_denominators() -> None:
    r = RouteReport(
        route="r", matches=941, mismatches=37, candidate_errors=12, candidate_timeouts=3
    )
    assert r.samples == 978
    assert r.mismatch_rate == 37 / 978
    assert r.error_rate == 15 / 993
    assert RouteReport(route="empty").mismatch_rate is None
    assert RouteReport(route="empty").error_rate is None


def test_thresholds_override_only_given_values() -> None:
    t = Thresholds(min_samples=10, max_mismatch_rate=0.01, max_error_rate=0.02, max_p99_ratio=2)
    o = t.override(max_mismatch_rate=0.05, min_samples=None)
    assert (o.min_samples, o.max_mismatch_rate, o.max_error_rate, o.max_p99_ratio) == (
        10,
        0.05,
        0.02,
        2,
    )


@pytest.mark.parametrize(
    "fields",
    [
        {"min_samples": -1},
        {"max_mismatch_rate": 1.5},
        {"max_error_rate": -0.1},
        {"max_p99_ratio": 0},
    ],
)
def test_thresholds_reject_out_of_range_values(fields: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Thresholds(**fields)  # type: ignore[arg-type]


def test_gate_passes_within_every_threshold() -> None:
    t = Thresholds(min_samples=100, max_mismatch_rate=0.05, max_error_rate=0.05, max_p99_ratio=1.5)
    r = _judged(
        matches=941,
        mismatches=37,
        candidate_errors=12,
        latency_primary=Latency(10, 100),
        latency_candidate=Latency(12, 140),
        thresholds=t,
    )
    assert r.passed and r.reasons == ()


def test_gate_names_each_failed_threshold() -> None:
    t = Thresholds(min_samples=5000, max_mismatch_rate=0.01, max_error_rate=0.01, max_p99_ratio=1.2)
    r = _judged(
        matches=941,
        mismatches=37,
        candidate_errors=12,
        latency_primary=Latency(10, 100),
        latency_candidate=Latency(12, 150),
        thresholds=t,
    )
    assert not r.passed
    text = " | ".join(r.reasons)
    assert "978 compared samples, below the minimum of 5000" in text
    assert "mismatch rate 3.78% above the maximum 1%" in text
    assert "error rate 1.21% above the maximum 1%" in text
    assert "1.50x legacy, above 1.2x" in text
    assert len(r.reasons) == 4


def test_gate_without_samples_fails_only_on_the_minimum() -> None:
    r = _judged(thresholds=Thresholds(min_samples=1))
    assert r.reasons == ("0 compared samples, below the minimum of 1",)


def test_min_samples_0_relaxes_the_count_not_the_need_for_evidence() -> None:
    """A route with nothing stored (a mistyped --route) passed with --min-samples 0, while an
    empty report failed: no evidence fails either way, as in `strangler migrate`."""
    none = _judged(thresholds=Thresholds(min_samples=0))
    assert not none.passed
    assert none.reasons == ("no evidence: no comparison of the route in this window",)
    dropped = _judged(dropped=7, thresholds=Thresholds(min_samples=0))
    assert not dropped.passed  # the candidate was never called
    # a candidate answer is evidence: an error, or a dry-run write replay records as skipped
    assert _judged(skipped=1, thresholds=Thresholds(min_samples=0)).passed
    assert not _judged(candidate_errors=1, thresholds=Thresholds(min_samples=0)).passed
    assert _judged(matches=1, thresholds=Thresholds(min_samples=0)).passed


def test_p99_ratio_is_skipped_when_disabled_or_unknown() -> None:
    slow = {"latency_primary": Latency(1, 10), "latency_candidate": Latency(1, 100)}
    t = Thresholds(min_samples=0, max_p99_ratio=None)
    assert _judged(matches=10, thresholds=t, **slow).passed
    assert _judged(matches=10, thresholds=Thresholds(min_samples=0)).passed  # no latencies


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1h", NOW - timedelta(hours=1)),
        ("30m", NOW - timedelta(minutes=30)),
        ("1h30m", NOW - timedelta(minutes=90)),
        ("2d", NOW - timedelta(days=2)),
        ("500ms", NOW - timedelta(milliseconds=500)),
        ("2026-04-30T10:00:00Z", datetime(2026, 4, 30, 10, tzinfo=UTC)),
        ("2026-04-30T12:00:00+02:00", datetime(2026, 4, 30, 10, tzinfo=UTC)),
        ("2026-04-30 10:00", datetime(2026, 4, 30, 10, tzinfo=UTC)),
    ],
)
def test_parse_when_accepts_durations_and_timestamps(text: str, expected: datetime) -> None:
    assert parse_when(text, NOW) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "1x", "h1", "-1h", "2026-13-01"])
def test_parse_when_rejects_anything_else(text: str) -> None:
    with pytest.raises(UsageError, match="--since"):
        parse_when(text, NOW)
