"""Per-route shadow-diff reports and their promotion gate, aggregated in SQL.

Every number comes from GROUP BY queries over the store's indexed tables; only a handful
of rows per route (counts, a few order statistics, the top paths) ever reach Python, so a
report over millions of comparisons stays fast on PostgreSQL.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import orjson
from sqlalchemy import (
    ColumnElement,
    Integer,
    and_,
    case,
    cast,
    extract,
    func,
    literal_column,
    select,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from shadow.record import DiffExample
from shadow.store import Store, StoreError, comparison_paths, comparisons

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

REPORT_SCHEMA_VERSION = 1
_COMPARED = ("match", "mismatch")
_ERRORS = ("candidate_error", "candidate_timeout")
_Z95 = 1.959963984540054
_BUCKET_SIZES = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400)


@dataclass(frozen=True, slots=True)
class Thresholds:
    """A route's gate: the evidence it needs and the rates it may not exceed."""

    min_samples: int = 500
    max_mismatch_rate: float = 0.001
    max_error_rate: float = 0.01
    max_p99_ratio: float | None = 1.5

    def __post_init__(self) -> None:
        if self.min_samples < 0:
            raise ValueError("min_samples must be >= 0")
        for name in ("max_mismatch_rate", "max_error_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.max_p99_ratio is not None and self.max_p99_ratio <= 0:
            raise ValueError("max_p99_ratio must be positive")

    @classmethod
    def from_promotion(cls, promotion: Any) -> Thresholds:
        """The thresholds of a `proxy.settings.PromotionSettings` block."""
        return cls(
            min_samples=promotion.min_samples,
            max_mismatch_rate=promotion.max_mismatch_rate,
            max_error_rate=promotion.max_error_rate,
            max_p99_ratio=promotion.max_p99_ratio,
        )

    def override(
        self,
        *,
        min_samples: int | None = None,
        max_mismatch_rate: float | None = None,
        max_error_rate: float | None = None,
        max_p99_ratio: float | None = None,
    ) -> Thresholds:
        """A copy with every given (non-None) value replaced."""
        changes: dict[str, Any] = {
            k: v
            for k, v in (
                ("min_samples", min_samples),
                ("max_mismatch_rate", max_mismatch_rate),
                ("max_error_rate", max_error_rate),
                ("max_p99_ratio", max_p99_ratio),
            )
            if v is not None
        }
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class Latency:
    """Median and 99th percentile in milliseconds (None without data)."""

    p50: float | None = None
    p99: float | None = None


@dataclass(frozen=True, slots=True)
class PathStat:
    """A differing field pattern: how many mismatches had it, their share, one example."""

    pattern: str
    count: int
    share: float
    example: DiffExample | None = None


@dataclass(frozen=True, slots=True)
class NoiseStat:
    """A pattern that differed between two legacy answers, so it is not counted as mismatch."""

    pattern: str
    count: int


@dataclass(frozen=True, slots=True)
class Bucket:
    """Compared samples and mismatches in one time bucket."""

    start: datetime
    samples: int
    mismatches: int

    @property
    def mismatch_rate(self) -> float | None:
        """Mismatches per compared sample in this bucket."""
        return self.mismatches / self.samples if self.samples else None


@dataclass(frozen=True, slots=True)
class RouteReport:
    """Everything the report says about one route, with its gate verdict."""

    route: str
    method: str = ""
    path: str = ""
    matches: int = 0
    mismatches: int = 0
    candidate_errors: int = 0
    candidate_timeouts: int = 0
    skipped: int = 0
    dropped: int = 0
    latency_primary: Latency = field(default_factory=Latency)
    latency_candidate: Latency = field(default_factory=Latency)
    top_paths: tuple[PathStat, ...] = ()
    distinct_paths: int = 0
    noise_paths: tuple[NoiseStat, ...] = ()
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)
    reasons: tuple[str, ...] = ()
    series: tuple[Bucket, ...] = ()

    @property
    def samples(self) -> int:
        """Compared requests: matches plus mismatches."""
        return self.matches + self.mismatches

    @property
    def errors(self) -> int:
        """Candidate errors plus timeouts."""
        return self.candidate_errors + self.candidate_timeouts

    @property
    def total(self) -> int:
        """Every stored comparison of the route in the window."""
        return self.samples + self.errors + self.skipped + self.dropped

    @property
    def mismatch_rate(self) -> float | None:
        """Mismatches per compared sample."""
        return self.mismatches / self.samples if self.samples else None

    @property
    def mismatch_ci(self) -> tuple[float, float] | None:
        """The 95 % Wilson score interval of the mismatch rate."""
        return wilson_interval(self.mismatches, self.samples) if self.samples else None

    @property
    def error_rate(self) -> float | None:
        """Candidate errors and timeouts per candidate call (compared + errors)."""
        attempted = self.samples + self.errors
        return self.errors / attempted if attempted else None

    @property
    def p99_ratio(self) -> float | None:
        """Candidate p99 over legacy p99 latency."""
        p, c = self.latency_primary.p99, self.latency_candidate.p99
        return c / p if p and c is not None else None

    @property
    def passed(self) -> bool:
        """Whether the route meets every threshold."""
        return not self.reasons

    def to_json(self) -> dict[str, Any]:
        """The route's part of the versioned JSON document (`shadow/report.schema.json`)."""
        ci = self.mismatch_ci
        return {
            "route": self.route,
            "method": self.method,
            "path": self.path,
            "samples": self.samples,
            "matches": self.matches,
            "mismatches": self.mismatches,
            "candidate_errors": self.candidate_errors,
            "candidate_timeouts": self.candidate_timeouts,
            "skipped": self.skipped,
            "dropped": self.dropped,
            "total": self.total,
            "mismatch_rate": self.mismatch_rate,
            "mismatch_rate_ci95": list(ci) if ci else None,
            "error_rate": self.error_rate,
            "latency_ms": {
                "primary": {"p50": self.latency_primary.p50, "p99": self.latency_primary.p99},
                "candidate": {
                    "p50": self.latency_candidate.p50,
                    "p99": self.latency_candidate.p99,
                },
            },
            "p99_ratio": self.p99_ratio,
            "top_paths": [
                {
                    "path": p.pattern,
                    "count": p.count,
                    "share": p.share,
                    "example": (
                        {
                            "path": p.example.path,
                            "primary": p.example.primary,
                            "candidate": p.example.candidate,
                        }
                        if p.example
                        else None
                    ),
                }
                for p in self.top_paths
            ],
            "distinct_paths": self.distinct_paths,
            "noise_paths": [{"path": n.pattern, "count": n.count} for n in self.noise_paths],
            "first_seen": _iso(self.first_seen),
            "last_seen": _iso(self.last_seen),
            "thresholds": {
                "min_samples": self.thresholds.min_samples,
                "max_mismatch_rate": self.thresholds.max_mismatch_rate,
                "max_error_rate": self.thresholds.max_error_rate,
                "max_p99_ratio": self.thresholds.max_p99_ratio,
            },
            "passed": self.passed,
            "reasons": list(self.reasons),
            "series": [
                {
                    "start": _iso(b.start),
                    "samples": b.samples,
                    "mismatches": b.mismatches,
                    "mismatch_rate": b.mismatch_rate,
                }
                for b in self.series
            ],
        }


@dataclass(frozen=True, slots=True)
class Report:
    """A whole report: the window, the time-bucket size and one entry per route."""

    generated_at: datetime
    since: datetime | None
    until: datetime | None
    bucket_seconds: int
    routes: tuple[RouteReport, ...]

    @property
    def passed(self) -> bool:
        """True when there is at least one route and every route passes its gate."""
        return bool(self.routes) and all(r.passed for r in self.routes)

    def to_json(self) -> dict[str, Any]:
        """The versioned JSON document described by `shadow/report.schema.json`."""
        return {
            "schema": "strangler.report",
            "schema_version": REPORT_SCHEMA_VERSION,
            "generated_at": _iso(self.generated_at),
            "window": {"since": _iso(self.since), "until": _iso(self.until)},
            "bucket_seconds": self.bucket_seconds,
            "passed": self.passed,
            "routes": [r.to_json() for r in self.routes],
        }


def report_schema() -> dict[str, Any]:
    """The JSON Schema of `Report.to_json()` (shipped as `shadow/report.schema.json`)."""
    text = resources.files("shadow").joinpath("report.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def wilson_interval(successes: int, n: int, z: float = _Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (default 95 %)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return (lo, hi)


async def build_report(
    store: Store | str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    routes: Sequence[str] = (),
    thresholds_by_route: Mapping[str, Thresholds] | None = None,
    default_thresholds: Thresholds | None = None,
    top_n: int = 10,
    max_buckets: int = 60,
    now: datetime | None = None,
) -> Report:
    """Aggregate the store's comparisons per route over [since, until) and judge each route.

    Routes named in `routes` appear even without data (and then fail their sample minimum).
    """
    if isinstance(store, str):
        owned = await Store.open(store)
        try:
            return await build_report(
                owned,
                since=since,
                until=until,
                routes=routes,
                thresholds_by_route=thresholds_by_route,
                default_thresholds=default_thresholds,
                top_n=top_n,
                max_buckets=max_buckets,
                now=now,
            )
        finally:
            await owned.close()
    generated = now or datetime.now(UTC)
    default = default_thresholds or Thresholds()
    by_route = dict(thresholds_by_route or {})
    try:
        async with store.engine.connect() as conn:
            q = _Queries(conn, store.dialect, since, until, tuple(routes))
            counts = await q.counts()
            names = sorted(set(counts) | set(routes))
            latencies = await q.latencies()
            paths = await q.paths(top_n)
            wanted = [(r, p.pattern) for r in names for p in paths.get(r, ((), 0, ()))[0]]
            examples = await q.examples(wanted)
            first = min((c.first for c in counts.values() if c.first), default=None)
            last = max((c.last for c in counts.values() if c.last), default=None)
            span_start, span_end = since or first, until or last or generated
            bucket = _bucket_size(span_start, span_end, max_buckets)
            series = await q.series(bucket)
    except StoreError:
        raise
    except Exception as e:  # a store that answers but cannot be read is a store error too
        detail = str(getattr(e, "orig", None) or e).strip().splitlines()[0:1]
        raise StoreError(f"cannot read the store at {store.url}: {' '.join(detail)}") from e

    reports: list[RouteReport] = []
    for name in names:
        c = counts.get(name) or _Counts()
        top, distinct, noise = paths.get(name, ((), 0, ()))
        mismatches = c.outcomes.get("mismatch", 0)
        top_stats = tuple(
            PathStat(
                pattern=p.pattern,
                count=p.count,
                share=p.count / mismatches if mismatches else 0.0,
                example=examples.get((name, p.pattern)),
            )
            for p in top
        )
        lat_p, lat_c = latencies.get(name, (Latency(), Latency()))
        report = RouteReport(
            route=name,
            method=c.method,
            path=c.path,
            matches=c.outcomes.get("match", 0),
            mismatches=mismatches,
            candidate_errors=c.outcomes.get("candidate_error", 0),
            candidate_timeouts=c.outcomes.get("candidate_timeout", 0),
            skipped=c.outcomes.get("skipped", 0),
            dropped=c.outcomes.get("dropped", 0),
            latency_primary=lat_p,
            latency_candidate=lat_c,
            top_paths=top_stats,
            distinct_paths=distinct,
            noise_paths=noise,
            first_seen=c.first,
            last_seen=c.last,
            thresholds=by_route.get(name, default),
            series=series.get(name, ()),
        )
        reports.append(replace(report, reasons=_judge(report)))
    return Report(
        generated_at=generated,
        since=since,
        until=until,
        bucket_seconds=bucket,
        routes=tuple(reports),
    )


def _judge(r: RouteReport) -> tuple[str, ...]:
    t = r.thresholds
    reasons: list[str] = []
    if r.samples < t.min_samples:
        reasons.append(f"{r.samples} compared samples, below the minimum of {t.min_samples}")
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


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def _bucket_size(start: datetime | None, end: datetime, max_buckets: int) -> int:
    if start is None:
        return _BUCKET_SIZES[0]
    span = max(0.0, (end - start).total_seconds())
    for size in _BUCKET_SIZES:
        if span / size <= max_buckets:
            return size
    return math.ceil(span / max_buckets / 86400) * 86400


@dataclass(slots=True)
class _Counts:
    outcomes: dict[str, int] = field(default_factory=dict)
    method: str = ""
    path: str = ""
    first: datetime | None = None
    last: datetime | None = None


@dataclass(frozen=True, slots=True)
class _Top:
    pattern: str
    count: int


class _Queries:
    """The report's SQL, one method per aggregate, for one connection and one window."""

    def __init__(
        self,
        conn: AsyncConnection,
        dialect: str,
        since: datetime | None,
        until: datetime | None,
        routes: tuple[str, ...],
    ) -> None:
        self._conn = conn
        self._pg = dialect == "postgresql"
        self._since = since
        self._until = until
        self._routes = routes

    def _window(self, table: Any) -> ColumnElement[bool]:
        conds: list[ColumnElement[bool]] = []
        if self._since is not None:
            conds.append(table.c.time >= self._since)
        if self._until is not None:
            conds.append(table.c.time < self._until)
        if self._routes:
            conds.append(table.c.route.in_(self._routes))
        return and_(True, *conds)

    async def counts(self) -> dict[str, _Counts]:
        t = comparisons
        query = (
            select(
                t.c.route,
                t.c.outcome,
                func.count(),
                func.min(t.c.method),
                func.min(t.c.path),
                func.min(t.c.time),
                func.max(t.c.time),
            )
            .where(self._window(t))
            .group_by(t.c.route, t.c.outcome)
        )
        found: dict[str, _Counts] = {}
        for route, outcome, n, method, path, first, last in await self._conn.execute(query):
            c = found.setdefault(route, _Counts())
            c.outcomes[outcome] = int(n)
            c.method = c.method or method or ""
            c.path = c.path or path or ""
            c.first = first if c.first is None or (first and first < c.first) else c.first
            c.last = last if c.last is None or (last and last > c.last) else c.last
        return found

    async def latencies(self) -> dict[str, tuple[Latency, Latency]]:
        compared = and_(self._window(comparisons), comparisons.c.outcome.in_(_COMPARED))
        if self._pg:
            return await self._latencies_pg(compared)
        primary = await self._percentiles_sqlite(comparisons.c.latency_primary_ms, compared)
        candidate = await self._percentiles_sqlite(comparisons.c.latency_candidate_ms, compared)
        return {
            r: (primary.get(r, Latency()), candidate.get(r, Latency()))
            for r in set(primary) | set(candidate)
        }

    async def _latencies_pg(self, where: ColumnElement[bool]) -> dict[str, tuple[Latency, Latency]]:
        t = comparisons
        quantiles = postgresql.array([0.5, 0.99])
        query = (
            select(
                t.c.route,
                func.percentile_cont(quantiles).within_group(t.c.latency_primary_ms),
                func.percentile_cont(quantiles).within_group(t.c.latency_candidate_ms),
            )
            .where(where)
            .group_by(t.c.route)
        )
        found: dict[str, tuple[Latency, Latency]] = {}
        for route, primary, candidate in await self._conn.execute(query):
            found[route] = (_latency(primary), _latency(candidate))
        return found

    async def _percentiles_sqlite(
        self, column: Any, where: ColumnElement[bool]
    ) -> dict[str, Latency]:
        # Linear interpolation between order statistics, as PostgreSQL's percentile_cont does;
        # only the two rows around each quantile leave the database.
        t = comparisons
        ranked = (
            select(
                t.c.route.label("route"),
                column.label("v"),
                (func.row_number().over(partition_by=t.c.route, order_by=column) - 1).label("rn"),
                func.count().over(partition_by=t.c.route).label("n"),
            )
            .where(where, column.is_not(None))
            .subquery()
        )
        wanted = [cast(literal_column(str(q)) * (ranked.c.n - 1), Integer) for q in (0.5, 0.99)]
        picks = [ranked.c.rn == w for w in wanted] + [ranked.c.rn == w + 1 for w in wanted]
        query = select(ranked.c.route, ranked.c.rn, ranked.c.n, ranked.c.v).where(
            picks[0] | picks[1] | picks[2] | picks[3]
        )
        rows: dict[str, dict[int, float]] = {}
        sizes: dict[str, int] = {}
        for route, rn, n, v in await self._conn.execute(query):
            rows.setdefault(route, {})[int(rn)] = float(v)
            sizes[route] = int(n)
        return {
            route: Latency(
                _interpolate(values, sizes[route], 0.5), _interpolate(values, sizes[route], 0.99)
            )
            for route, values in rows.items()
        }

    async def paths(
        self, top_n: int
    ) -> dict[str, tuple[tuple[_Top, ...], int, tuple[NoiseStat, ...]]]:
        t = comparison_paths
        n = func.count().label("n")
        grouped = (
            select(t.c.route, t.c.kind, t.c.pattern, n)
            .where(self._window(t))
            .group_by(t.c.route, t.c.kind, t.c.pattern)
            .subquery()
        )
        ranked = select(
            grouped.c.route,
            grouped.c.kind,
            grouped.c.pattern,
            grouped.c.n,
            func.row_number()
            .over(
                partition_by=(grouped.c.route, grouped.c.kind),
                order_by=(grouped.c.n.desc(), grouped.c.pattern),
            )
            .label("rank"),
            func.count().over(partition_by=(grouped.c.route, grouped.c.kind)).label("distinct"),
        ).subquery()
        query = (
            select(ranked)
            .where(ranked.c.rank <= top_n)
            .order_by(ranked.c.route, ranked.c.kind, ranked.c.rank)
        )
        diffs: dict[str, list[_Top]] = {}
        distinct: dict[str, int] = {}
        noise: dict[str, list[NoiseStat]] = {}
        for route, kind, pattern, count, _rank, n_distinct in await self._conn.execute(query):
            if kind == "noise":
                noise.setdefault(route, []).append(NoiseStat(pattern, int(count)))
            else:
                diffs.setdefault(route, []).append(_Top(pattern, int(count)))
                distinct[route] = int(n_distinct)
        return {
            r: (tuple(diffs.get(r, ())), distinct.get(r, 0), tuple(noise.get(r, ())))
            for r in set(diffs) | set(noise)
        }

    async def examples(self, wanted: list[tuple[str, str]]) -> dict[tuple[str, str], DiffExample]:
        t = comparison_paths
        found: dict[tuple[str, str], DiffExample] = {}
        for route, pattern in wanted:
            query = (
                select(t.c.example)
                .where(
                    self._window(t),
                    t.c.route == route,
                    t.c.kind == "diff",
                    t.c.pattern == pattern,
                    t.c.example.is_not(None),
                )
                .order_by(t.c.time.desc())
                .limit(1)
            )
            raw = await self._conn.scalar(query)
            if raw:
                found[(route, pattern)] = DiffExample.from_json(orjson.loads(raw))
        return found

    async def series(self, bucket: int) -> dict[str, tuple[Bucket, ...]]:
        t = comparisons
        if self._pg:
            index: Any = cast(func.floor(extract("epoch", t.c.time) / bucket), Integer)
        else:
            index = cast(func.strftime("%s", t.c.time), Integer) // bucket
        index = index.label("b")
        compared = func.sum(case((t.c.outcome.in_(_COMPARED), 1), else_=0))
        mismatched = func.sum(case((t.c.outcome == "mismatch", 1), else_=0))
        query = (
            select(t.c.route, index, compared, mismatched)
            .where(self._window(t))
            .group_by(t.c.route, index)
            .order_by(t.c.route, index)
        )
        found: dict[str, list[Bucket]] = {}
        for route, b, n, m in await self._conn.execute(query):
            start = datetime.fromtimestamp(int(b) * bucket, UTC)
            found.setdefault(route, []).append(Bucket(start, int(n or 0), int(m or 0)))
        return {r: tuple(v) for r, v in found.items()}


def _latency(values: Sequence[float | None] | None) -> Latency:
    if not values:
        return Latency()
    p50, p99 = (None if v is None else float(v) for v in values)
    return Latency(p50, p99)


def _interpolate(values: Mapping[int, float], n: int, q: float) -> float | None:
    pos = q * (n - 1)
    lo = int(pos)
    if lo not in values:
        return None
    hi = values.get(lo + 1, values[lo])
    return values[lo] + (hi - values[lo]) * (pos - lo)
