"""The generated 500-route table: valid, mixed, and every lookup case hits what it names."""

from __future__ import annotations

from pathlib import Path

from bench.routes_bench import LOOKUP_CASES, route_lines, routes_config, time_ns
from proxy.routes import RouteTable
from proxy.settings import loads


def test_routes_mix_every_pattern_kind_and_end_with_the_bench_route() -> None:
    lines = route_lines(500)
    assert len(lines) == 500
    assert lines[-1] == "  - {name: bench, match: {path: '/bench/{item}'}, mode: legacy}"
    assert sum("/*'" in line for line in lines) == 124  # 499 fillers, 4 kinds
    assert sum("{tenant}" in line for line in lines) == 125
    assert sum("{item_id}" in line for line in lines) == 125


def test_every_lookup_case_matches_as_its_name_says(tmp_path: Path) -> None:
    for n in (500, 5):
        table = RouteTable(loads(routes_config(n, "http://127.0.0.1:4321", tmp_path)))
        assert len(table) == n
        for case, method, build in LOOKUP_CASES:
            route = table.match(method, build(n))
            if case.startswith("miss"):
                assert route is None, case
            else:
                assert route is not None, case
                assert route.name == ("bench" if "bench" in case else f"r{route.index}")
                assert route.index >= n - 5, case  # the last routes of the table


def test_time_ns_returns_a_positive_cost() -> None:
    assert time_ns(lambda m, p: None, "GET", "/") > 0
