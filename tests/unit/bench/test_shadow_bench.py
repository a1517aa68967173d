"""Pure helpers of the shadow/canary bench: configs, wrk scripts, metric parsing."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import yaml

from bench.shadow_bench import (
    ShadowCounts,
    floor_exp_mean,
    mode_config,
    paced_script,
    parse_shadow_counts,
    user_id_script,
)
from proxy.routes import offload_wanted
from proxy.settings import loads

_METRICS = """\
# HELP strangler_shadow_comparisons_total Shadow comparisons by route and outcome.
# TYPE strangler_shadow_comparisons_total counter
strangler_shadow_comparisons_total{outcome="match",route="bench"} 90.0
strangler_shadow_comparisons_total{outcome="mismatch",route="bench"} 3.0
strangler_shadow_comparisons_total{outcome="skipped",route="bench"} 5.0
strangler_shadow_comparisons_total{outcome="match",route="other"} 1000.0
# HELP strangler_shadow_comparisons_created Shadow comparisons by route and outcome.
# TYPE strangler_shadow_comparisons_created gauge
strangler_shadow_comparisons_created{outcome="match",route="bench"} 1.7e+09
# HELP strangler_shadow_dropped_total Shadow copies dropped by route and reason.
# TYPE strangler_shadow_dropped_total counter
strangler_shadow_dropped_total{reason="shed",route="bench"} 6.0
strangler_shadow_dropped_total{reason="concurrency",route="bench"} 1.0
"""


@pytest.mark.parametrize("mode", ["legacy", "shadow", "canary"])
def test_mode_config_is_a_valid_strangler_config(tmp_path: Path, mode: str) -> None:
    text = mode_config(tmp_path, "t", 7000, 7001, "http://127.0.0.1:4321", mode)
    settings = loads(text)
    (route,) = settings.routes
    assert route.mode == mode
    assert settings.store.url.endswith("/t.db")
    assert settings.backends["candidate"].port == settings.backends["legacy"].port == 4321
    if mode == "legacy":
        assert route.candidate is None
    else:
        assert route.candidate == "candidate"
        assert route.shadow.percent == 100.0
    if mode == "canary":
        assert route.canary.percent == 50.0
        assert route.canary.sticky_header == "x-user-id"


@pytest.mark.parametrize(("mode", "helper"), [("shadow", True), ("shadow-in-loop", False)])
def test_the_shadow_rows_run_copies_in_a_helper_and_in_the_loop(
    tmp_path: Path, mode: str, helper: bool
) -> None:
    settings = loads(mode_config(tmp_path, "t", 7000, 7001, "http://127.0.0.1:4321", mode))
    assert settings.routes[0].mode == "shadow"
    assert offload_wanted(settings) is helper


def test_mode_config_rejects_other_modes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="extracted"):
        mode_config(tmp_path, "t", 1, 2, "http://127.0.0.1:3", "extracted")


@pytest.mark.parametrize("target", [0.3, 1.0, 8.56, 40.0])
def test_floored_exponential_delays_average_the_target(target: float) -> None:
    mean = floor_exp_mean(target)
    rnd = random.Random(5)
    n = 200_000
    got = sum(math.floor(rnd.expovariate(1 / mean)) for _ in range(n)) / n
    assert got == pytest.approx(target, rel=0.02)


def test_paced_script_uses_the_floored_mean_for_the_rate() -> None:
    script = paced_script(6400.0, 64)  # 10 ms between requests on each connection
    assert f"-{floor_exp_mean(10.0):.6f} * math.log" in script
    assert "function delay()" in script
    assert 'thread:set("seed"' in script
    with pytest.raises(ValueError):
        paced_script(0.0, 64)


def test_user_id_script_sets_a_varying_header() -> None:
    script = user_id_script(keys=123)
    assert 'wrk.headers["X-User-Id"]' in script
    assert "% 123)" in script
    assert "return wrk.format()" in script


def test_metrics_parsing_keeps_one_route_and_splits_compared_from_shed() -> None:
    counts = parse_shadow_counts(_METRICS)
    assert counts.outcomes == {"match": 90.0, "mismatch": 3.0, "skipped": 5.0}
    assert counts.dropped == {"shed": 6.0, "concurrency": 1.0}
    assert counts.compared == 93.0  # skipped copies are not comparisons
    assert counts.shed == 7.0


def test_count_deltas_add_up_over_slices() -> None:
    before = ShadowCounts({"match": 10.0}, {"shed": 1.0})
    after = ShadowCounts({"match": 30.0, "candidate_timeout": 2.0}, {"shed": 4.0})
    delta = after.minus(before)
    assert delta == ShadowCounts({"match": 20.0, "candidate_timeout": 2.0}, {"shed": 3.0})
    total = delta.plus(delta)
    assert total.compared == 44.0
    assert total.shed == 6.0


def test_config_yaml_has_no_tabs_or_unbalanced_braces(tmp_path: Path) -> None:
    text = mode_config(tmp_path, "t", 1, 2, "http://127.0.0.1:3", "canary")
    assert yaml.safe_load(text)["routes"][0]["canary"] == {
        "percent": 50,
        "sticky": {"header": "X-User-Id"},
    }
