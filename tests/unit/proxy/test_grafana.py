"""The Grafana dashboard: it loads as a dashboard and queries only metrics the proxy exports."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.accesslog import AccessLog
from proxy.app import Proxy, create_proxy
from proxy.settings import load
from tests.support import stop_after_test
from tests.upstreams import EchoUpstream

DASHBOARD = Path(__file__).resolve().parents[3] / "config" / "grafana" / "strangler.json"
_METRIC = re.compile(r"\b(strangler_[a-z0-9_]+)\b")
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}
# Metrics carrying a `route` label: every query of them must follow the route variable.
_ROUTE_LABELLED = (
    "strangler_requests_total",
    "strangler_request_duration_seconds_bucket",
    "strangler_shadow_comparisons_total",
    "strangler_shadow_dropped_total",
    "strangler_shadow_diff_paths_total",
    "strangler_candidate_duration_seconds_bucket",
    "strangler_auto_rollback",
)
# Families that plain traffic plus one reload always fill with samples.
_ALWAYS_SAMPLED = (
    "strangler_requests_total",
    "strangler_request_duration_seconds_bucket",
    "strangler_in_flight_requests",
    "strangler_config_reloads_total",
    "strangler_config_info",
)


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def _panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for panel in dash["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows nest their panels
    return out


def _exprs(dash: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in _panels(dash) for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        query = var.get("query")
        if var.get("type") == "query":
            exprs.append(query["query"] if isinstance(query, dict) else str(query))
    return exprs


def queried_metrics() -> set[str]:
    """Every metric name the dashboard's queries and variables mention."""
    return {m for e in _exprs(_dashboard()) for m in _METRIC.findall(e)}


def test_dashboard_loads_as_a_grafana_dashboard() -> None:
    dash = _dashboard()
    assert isinstance(dash["schemaVersion"], int) and dash["schemaVersion"] >= 36
    assert dash["title"] and dash["uid"]
    panels = _panels(dash)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    graphs = [p for p in panels if p["type"] != "row"]
    assert len(graphs) >= 10
    for p in graphs:
        assert p["title"], p
        assert p["type"] in {"timeseries", "stat", "table", "state-timeline", "bargauge"}, p
        pos = p["gridPos"]
        assert pos["w"] > 0 and pos["h"] > 0 and pos["x"] >= 0 and pos["x"] + pos["w"] <= 24
        assert p["datasource"]["uid"] == "${datasource}"
        assert p["targets"], f"panel {p['title']!r} has no targets"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert _METRIC.search(t["expr"]), (p["title"], t["expr"])
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    route = variables["route"]
    assert route["type"] == "query" and route["multi"] and route["includeAll"]
    assert "label_values(strangler_requests_total, route)" in route["definition"]


def test_route_labelled_queries_follow_the_route_variable() -> None:
    for expr in _exprs(_dashboard()):
        if expr.startswith("label_values"):
            continue
        for name in _METRIC.findall(expr):
            if name in _ROUTE_LABELLED:
                assert re.search(name + r'\{[^}]*route=~"\$route"', expr), expr


def test_the_dashboard_covers_the_issue() -> None:
    titles = " | ".join(p["title"].lower() for p in _panels(_dashboard()))
    for words in ("mode", "latency", "mismatch rate", "drops", "breaker", "reloads", "5xx"):
        assert words in titles, words


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Proxy]:
    legacy = await EchoUpstream().start()
    candidate = await EchoUpstream().start()
    path = tmp_path / "routes.yaml"
    path.write_text(
        f"""
listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
backends:
  legacy: {{url: "{legacy.url}", timeout: 2s}}
  orders: {{url: "{candidate.url}", timeout: 2s}}
default_backend: legacy
store:
  url: sqlite+aiosqlite:///{tmp_path / "store.db"}
access_log: false
routes:
  - name: echo
    match: {{path: /echo/*}}
    candidate: orders
    mode: shadow
""",
        encoding="utf-8",
    )
    proxy = create_proxy(load(str(path)), access_log=AccessLog(enabled=False))
    await proxy.start()
    try:
        yield proxy
    finally:
        await stop_after_test(proxy, 1.0)
        await legacy.close()
        await candidate.close()


async def test_every_queried_metric_is_in_a_real_scrape(running: Proxy) -> None:
    host, port = running.address
    admin_host, admin_port = running.admin_address
    async with aiohttp.ClientSession() as s:
        for i in range(5):
            async with s.get(f"http://{host}:{port}/echo/{i}") as r:
                assert r.status == 200
                await r.read()
        ok, errors = await running.reload_from_file()
        assert ok, errors
        async with s.get(f"http://{admin_host}:{admin_port}/-/metrics") as r:
            assert r.status == 200
            text = await r.text()
    declared: set[str] = set()
    sampled: set[str] = set()
    for family in text_string_to_metric_families(text):
        declared.update(family.name + sfx for sfx in _SUFFIXES.get(family.type, ("",)))
        sampled.update(s.name for s in family.samples)
    wanted = queried_metrics()
    assert len(wanted) >= 10
    missing = sorted(wanted - declared - sampled)
    assert not missing, (
        "the Grafana dashboard queries metrics that a running proxy does not export: "
        + ", ".join(missing)
    )
    for name in _ALWAYS_SAMPLED:
        assert name in sampled, f"{name} has no samples after traffic and a reload"
    unsampled = sorted(wanted - sampled)
    print(f"dashboard metrics declared but without samples in this scrape: {unsampled or 'none'}")
