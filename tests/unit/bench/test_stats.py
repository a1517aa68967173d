"""Medians, ratios and goal verdicts of the bench."""

from __future__ import annotations

import pytest

from bench.stats import Goal, Sample, add_ratios, evaluate_goals, median, summarise


def _sample(rps: float, p50: float = 0.1, cpu: float | None = 10.0) -> Sample:
    return Sample(rps=rps, p50_ms=p50, p99_ms=p50 * 3, cpu_us_per_req=cpu, requests=100, errors=0)


def test_median_ignores_missing_values() -> None:
    assert median([3.0, None, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0]) == 2.5
    assert median([None]) is None
    assert median([]) is None


def test_summarise_takes_medians_and_keeps_samples() -> None:
    row = summarise("x", 64, [_sample(100), _sample(300), _sample(200, cpu=None)])
    assert row["rps"] == 200
    assert row["cpu_us_per_req"] == 10.0
    assert row["slices"] == 3
    assert row["samples"] == {
        "rps": [100, 300, 200],
        "cpu_us_per_req": [10.0, 10.0, None],
        "p50_ms": [0.1, 0.1, 0.1],
        "p99_ms": pytest.approx([0.3, 0.3, 0.3]),
        "other_cpu_pct": [None, None, None],
    }


def _rows() -> list[dict[str, object]]:
    return [
        summarise("direct", 1, [_sample(10_000, p50=0.05, cpu=5)]),
        summarise("direct", 64, [_sample(100_000, cpu=4)]),
        summarise("minimal-aiohttp", 64, [_sample(5_000, cpu=180)]),
        summarise("nginx-1w", 64, [_sample(50_000, cpu=12)]),
        summarise("strangler-1w", 1, [_sample(8_000, p50=0.12, cpu=40)]),
        summarise("strangler-1w", 64, [_sample(25_000, cpu=30)]),
        {"target": "strangler-2w", "connections": 64, "note": "n/a (failed to start: x)"},
    ]


def test_ratios_against_direct_minimal_and_nginx() -> None:
    rows = {(r["target"], r["connections"]): r for r in add_ratios(_rows())}
    busy = rows[("strangler-1w", 64)]
    assert busy["x_direct"] == pytest.approx(0.25)
    assert busy["x_minimal"] == pytest.approx(5.0)
    assert busy["x_nginx"] == pytest.approx(0.5)
    assert busy["cpu_vs_nginx"] == pytest.approx(0.4)
    assert rows[("strangler-1w", 1)]["added_p50_ms"] == pytest.approx(0.07)
    assert rows[("strangler-1w", 1)]["x_minimal"] is None
    assert rows[("strangler-2w", 64)]["x_direct"] is None


def test_goals_verdicts() -> None:
    goals = evaluate_goals(add_ratios(_rows()))
    assert [g.met for g in goals] == [True, True, True]
    assert goals[0].value == pytest.approx(5.0)
    assert evaluate_goals([])[0].met is None


def test_goal_lower_is_better() -> None:
    assert Goal("p50", 0.2, 0.1, higher_is_better=False).met is False
    assert Goal("p50", 0.05, 0.1, higher_is_better=False).met is True
