"""Report numbers on a known data set, exact on SQLite and on PostgreSQL."""

from __future__ import annotations

import random
import statistics
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import text

from shadow.record import ComparisonRecord
from shadow.report import Report, Thresholds, build_report
from shadow.store import Store
from tests.integration.shadow.synthetic import BASE, LIST, SHOW, synthetic

LENIENT = Thresholds(min_samples=100, max_mismatch_rate=0.05, max_error_rate=0.05)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = await Store.open(store_url)
    await s.insert_batch(synthetic())
    yield s
    await s.close()


def _quantiles(values: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")  # = percentile_cont
    return cuts[49], cuts[98]


async def test_counts_rates_paths_and_latencies_are_exact(store: Store) -> None:
    report = await build_report(store, default_thresholds=LENIENT)
    assert [r.route for r in report.routes] == [LIST, SHOW]
    show = report.routes[1]
    assert (show.matches, show.mismatches, show.candidate_errors, show.candidate_timeouts) == (
        941,
        37,
        12,
        3,
    )
    assert (show.skipped, show.dropped, show.samples, show.total) == (5, 2, 978, 1000)
    assert show.mismatch_rate == 37 / 978
    assert show.error_rate == 15 / 993
    assert show.method == "GET" and show.path == "/api/v1/orders/{order_id}"

    assert [(p.pattern, p.count) for p in show.top_paths] == [
        ("$.items[*].price", 37),
        ("$.total", 10),
    ]
    assert show.top_paths[0].share == 1.0 and show.top_paths[1].share == 10 / 37
    assert show.distinct_paths == 2
    example = show.top_paths[0].example
    assert example is not None  # the latest one: request 972
    assert (example.path, example.primary, example.candidate) == ("$.items[0].price", "972", 972)
    total = show.top_paths[1].example
    assert total is not None and (total.primary, total.candidate) == (243, None)
    assert [(n.pattern, n.count) for n in show.noise_paths] == [("$.meta.generated_at", 20)]

    compared = [r for r in synthetic() if r.route == SHOW and r.outcome in ("match", "mismatch")]
    p50, p99 = _quantiles([r.latency_primary_ms or 0.0 for r in compared])
    c50, c99 = _quantiles([r.latency_candidate_ms or 0.0 for r in compared])
    assert show.latency_primary.p50 == pytest.approx(p50)
    assert show.latency_primary.p99 == pytest.approx(p99)
    assert show.latency_candidate.p50 == pytest.approx(c50)
    assert show.latency_candidate.p99 == pytest.approx(c99)
    assert show.p99_ratio == pytest.approx(1.2)

    assert show.first_seen == BASE
    assert show.last_seen == BASE + timedelta(seconds=7.2 * 999)
    assert report.bucket_seconds == 300
    assert sum(b.samples for b in show.series) == 978
    assert sum(b.mismatches for b in show.series) == 37
    assert len(show.series) == 24
    assert show.passed and report.routes[0].passed and report.passed


async def test_the_gate_uses_each_routes_thresholds(store: Store) -> None:
    strict = LENIENT.override(max_mismatch_rate=0.01)
    report = await build_report(
        store, thresholds_by_route={SHOW: strict}, default_thresholds=LENIENT
    )
    show = next(r for r in report.routes if r.route == SHOW)
    assert show.reasons == ("mismatch rate 3.78% above the maximum 1%",)
    assert next(r for r in report.routes if r.route == LIST).passed
    assert not report.passed


async def test_window_and_route_filters(store: Store) -> None:
    since, until = BASE + timedelta(hours=1), BASE + timedelta(minutes=90)
    report = await build_report(store, since=since, until=until, routes=[SHOW])
    assert [r.route for r in report.routes] == [SHOW]
    inside = [r for r in synthetic() if r.route == SHOW and since <= r.time < until]
    show = report.routes[0]
    assert show.total == len(inside)
    assert show.mismatches == sum(r.outcome == "mismatch" for r in inside)
    assert show.matches == sum(r.outcome == "match" for r in inside)
    assert show.top_paths[0].count == show.mismatches
    assert show.top_paths[0].pattern == "$.items[*].price"
    assert [p.pattern for p in show.top_paths] == ["$.items[*].price"]  # no $.total after 1h
    assert show.first_seen is not None and show.first_seen >= since
    assert sum(b.samples for b in show.series) == show.samples


async def test_stored_drop_counts_are_the_dropped_column(store: Store) -> None:
    await store.insert_drops("w1", 1, [(SHOW, "shed", 40), (SHOW, "concurrency", 2)])
    await store.insert_drops("w1", 2, [(SHOW, "shed", 1), ("order-cancel", "timeout", 7)])
    await store.insert_drops("w1", 2, [(SHOW, "shed", 1)])  # a batch sent again: no change
    report = await build_report(store, default_thresholds=LENIENT)
    by_name = {r.route: r for r in report.routes}
    assert by_name[SHOW].dropped == 2 + 43  # the synthetic rows and the counts
    assert by_name[SHOW].samples == 978  # drops are not samples
    cancel = by_name["order-cancel"]  # a route whose every copy was dropped is there too
    assert (cancel.dropped, cancel.samples, cancel.passed) == (7, 0, False)
    # stamped when written (now), so a window that ends before then leaves them out
    before = await build_report(store, until=BASE + timedelta(days=1), routes=[SHOW])
    assert before.routes[0].dropped == 2


async def test_a_named_route_without_data_fails_its_minimum(store: Store) -> None:
    report: Report = await build_report(store, routes=[LIST, "ghost"], default_thresholds=LENIENT)
    assert [r.route for r in report.routes] == ["ghost", LIST]
    ghost = report.routes[0]
    assert ghost.total == 0 and ghost.mismatch_rate is None and ghost.top_paths == ()
    assert ghost.reasons == ("0 compared samples, below the minimum of 100",)
    assert report.routes[1].passed and not report.passed


async def test_an_empty_window_has_no_routes_and_fails(store: Store) -> None:
    report = await build_report(store, since=BASE + timedelta(days=1))
    assert report.routes == () and not report.passed


async def test_top_n_limits_paths_but_counts_all_distinct(store: Store) -> None:
    report = await build_report(store, routes=[SHOW], top_n=1)
    show = report.routes[0]
    assert [p.pattern for p in show.top_paths] == ["$.items[*].price"]
    assert show.distinct_paths == 2


async def test_build_report_opens_and_closes_a_store_from_its_url(store_url: str) -> None:
    async with Store(store_url) as s:
        await s.insert_batch(synthetic()[:50])
    report = await build_report(store_url, default_thresholds=LENIENT)
    assert report.routes[0].total == 50


async def test_pg_percentiles_equal_percentile_cont_with_ties_and_edges(pg_url: str) -> None:
    rnd = random.Random(5)
    records = [
        ComparisonRecord(route="one", outcome="match", latency_primary_ms=3.0),
        ComparisonRecord(route="two", outcome="mismatch", latency_primary_ms=0.0),
        ComparisonRecord(route="two", outcome="match", latency_primary_ms=7.5),
    ]
    for i in range(3000):
        records.append(
            ComparisonRecord(
                route="many",
                outcome="match" if i % 7 else "mismatch",
                latency_primary_ms=round(rnd.lognormvariate(2, 1), 1),  # many ties
                latency_candidate_ms=None if i % 5 == 0 else rnd.choice([0.0, 0.0004, 12.0]),
            )
        )
    async with Store(pg_url) as store:
        await store.insert_batch(records)
        report = await build_report(store)
        async with store.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT route,"
                    " percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_primary_ms),"
                    " percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_primary_ms),"
                    " percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_candidate_ms),"
                    " percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_candidate_ms)"
                    " FROM comparisons GROUP BY route"
                )
            )
            expected = {r[0]: tuple(r[1:]) for r in rows}
    got = {
        r.route: (
            r.latency_primary.p50,
            r.latency_primary.p99,
            r.latency_candidate.p50,
            r.latency_candidate.p99,
        )
        for r in report.routes
    }
    assert got == expected
    assert got["one"] == (3.0, 3.0, None, None)
