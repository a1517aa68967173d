"""Per-route shadow-diff reports and their promotion gate, aggregated in SQL.

Every number comes from GROUP BY queries over the store's indexed tables
(`shadow.report_queries`); only a handful of rows per route (counts, a few order
statistics, the top paths) ever reach Python, so a report over millions of comparisons
stays fast on PostgreSQL. The data types live in `shadow.report_model`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime

from shadow.report_model import (
    REPORT_SCHEMA_VERSION,
    Bucket,
    Latency,
    NoiseStat,
    PathStat,
    Report,
    RouteReport,
    Thresholds,
    report_schema,
    wilson_interval,
)
from shadow.report_queries import Aggregates, RouteCounts, Window, read_aggregates
from shadow.store import Store, StoreError

__all__ = [
    "REPORT_SCHEMA_VERSION",
    "Bucket",
    "Latency",
    "NoiseStat",
    "PathStat",
    "Report",
    "RouteReport",
    "Thresholds",
    "build_report",
    "report_schema",
    "wilson_interval",
]


async def build_report(
    store: Store | str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    routes: Sequence[str] = (),
    expected: Sequence[str] = (),
    skip: Sequence[str] = (),
    unjudged: Sequence[str] = (),
    thresholds_by_route: Mapping[str, Thresholds] | None = None,
    default_thresholds: Thresholds | None = None,
    top_n: int = 10,
    max_buckets: int = 60,
    now: datetime | None = None,
) -> Report:
    """Aggregate the store's comparisons per route over [since, until) and judge each route.

    Routes named in `routes` (the only ones read when given) and the `expected` ones (routes
    a config says are compared; within `routes` when that is given) appear even without
    data, and then fail their sample minimum; `skip` names routes left out (a config's
    routes that are not compared), whatever the store holds of them; `unjudged` names routes
    shown when the store holds something of them but left out of the gate (a config's
    extracted routes: their verification against legacy).
    """
    if isinstance(store, str):
        owned = await Store.open(store, create=False)  # a report writes nothing
        try:
            return await build_report(
                owned,
                since=since,
                until=until,
                routes=routes,
                expected=expected,
                skip=skip,
                unjudged=unjudged,
                thresholds_by_route=thresholds_by_route,
                default_thresholds=default_thresholds,
                top_n=top_n,
                max_buckets=max_buckets,
                now=now,
            )
        finally:
            await owned.close()
    now_ = now or datetime.now(UTC)
    default = default_thresholds or Thresholds()
    by_route = dict(thresholds_by_route or {})
    window = Window(since, until, tuple(routes))
    try:
        agg = await read_aggregates(store, window, top_n=top_n, max_buckets=max_buckets, now=now_)
    except StoreError:
        raise
    except Exception as e:  # a store that answers but cannot be read is a store error too
        detail = str(getattr(e, "orig", None) or e).strip().splitlines()[0:1]
        raise StoreError(f"cannot read the store at {store.url}: {' '.join(detail)}") from e
    reports = [
        _route_report(name, agg, by_route.get(name, default), judged=name not in unjudged)
        for name in sorted(
            (set(agg.counts) | set(routes) | {e for e in expected if not routes or e in routes})
            - set(skip)
        )
    ]
    return Report(
        generated_at=now_,
        since=since,
        until=until,
        bucket_seconds=agg.bucket_seconds,
        routes=tuple(reports),
    )


def _route_report(
    name: str, agg: Aggregates, thresholds: Thresholds, *, judged: bool = True
) -> RouteReport:
    c = agg.counts.get(name) or RouteCounts()
    mismatches = c.outcomes.get("mismatch", 0)
    top = tuple(
        PathStat(
            pattern=p.pattern,
            count=p.count,
            share=p.count / mismatches if mismatches else 0.0,
            example=agg.examples.get((name, p.pattern)),
        )
        for p in agg.top_paths.get(name, ())
    )
    primary, candidate = agg.latencies.get(name, (Latency(), Latency()))
    report = RouteReport(
        route=name,
        method=c.method,
        path=c.path,
        matches=c.outcomes.get("match", 0),
        mismatches=mismatches,
        candidate_errors=c.outcomes.get("candidate_error", 0),
        candidate_timeouts=c.outcomes.get("candidate_timeout", 0),
        skipped=c.outcomes.get("skipped", 0),
        served=c.outcomes.get("served", 0),
        dropped=c.outcomes.get("dropped", 0),
        latency_primary=primary,
        latency_candidate=candidate,
        top_paths=top,
        distinct_paths=agg.distinct_paths.get(name, 0),
        noise_paths=agg.noise.get(name, ()),
        first_seen=c.first,
        last_seen=c.last,
        thresholds=thresholds,
        series=agg.series.get(name, ()),
        judged=judged,
    )
    return replace(report, reasons=_judge(report)) if judged else report


def _judge(r: RouteReport) -> tuple[str, ...]:
    t = r.thresholds
    reasons: list[str] = []
    if r.samples < t.min_samples:
        reasons.append(f"{r.samples} compared samples, below the minimum of {t.min_samples}")
    elif r.empty:
        reasons.append("no evidence: no comparison of the route in this window")
    rate = r.mismatch_rate
    if rate is not None and rate > t.max_mismatch_rate:
        reasons.append(f"mismatch rate {_pct(rate)} above the maximum {_pct(t.max_mismatch_rate)}")
    err = r.error_rate
    if err is not None and err > t.max_error_rate:
        reasons.append(f"error rate {_pct(err)} above the maximum {_pct(t.max_error_rate)}")
    ratio = r.p99_ratio
    if ratio is not None and t.max_p99_ratio is not None and ratio > t.max_p99_ratio:
        reasons.append(f"candidate p99 is {ratio:.2f}x legacy, above {t.max_p99_ratio:g}x")
    return tuple(reasons)


def _pct(rate: float) -> str:
    return f"{rate * 100:.3g}%"
