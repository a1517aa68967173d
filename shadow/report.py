"""Per-route shadow-diff reports and their promotion gate, aggregated in SQL.

Every number comes from GROUP BY queries over the store's indexed tables; only a handful
of rows per route (counts, a few order statistics, the top paths) ever reach Python, so a
report over millions of comparisons stays fast on PostgreSQL.
"""

from __future__ import annotations

import asyncio
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
    cast,
    func,
    literal_column,
    or_,
    select,
    tuple_,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

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
    window = _Window(since, until, tuple(routes))
    try:
        counts, series, paths, examples, latencies, bucket = await _read(
            store, window, top_n, max_buckets, generated
        )
    except StoreError:
        raise
    except Exception as e:  # a store that answers but cannot be read is a store error too
        detail = str(getattr(e, "orig", None) or e).strip().splitlines()[0:1]
        raise StoreError(f"cannot read the store at {store.url}: {' '.join(detail)}") from e
    names = sorted(set(counts) | set(routes))

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


@dataclass(frozen=True, slots=True)
class _Window:
    since: datetime | None
    until: datetime | None
    routes: tuple[str, ...]

    def where(self, table: Any) -> ColumnElement[bool]:
        conds: list[ColumnElement[bool]] = []
        if self.since is not None:
            conds.append(table.c.time >= self.since)
        if self.until is not None:
            conds.append(table.c.time < self.until)
        if self.routes:
            conds.append(table.c.route.in_(self.routes))
        return and_(True, *conds)


_Paths = dict[str, tuple[tuple[_Top, ...], int, tuple[NoiseStat, ...]]]


async def _read(
    store: Store, window: _Window, top_n: int, max_buckets: int, generated: datetime
) -> tuple[
    dict[str, _Counts],
    dict[str, tuple[Bucket, ...]],
    _Paths,
    dict[tuple[str, str], DiffExample],
    dict[str, tuple[Latency, Latency]],
    int,
]:
    pg = store.dialect == "postgresql"

    async def outcomes() -> tuple[
        dict[str, _Counts], dict[str, tuple[Bucket, ...]], _Paths, dict[Any, DiffExample], int
    ]:
        async with store.engine.connect() as conn:
            q = _Queries(conn, pg, window)
            first, last = await q.span()
            bucket = _bucket_size(
                window.since or first, window.until or last or generated, max_buckets
            )
            counts, series = await q.counts_and_series(bucket)
            paths = await q.paths(top_n)
            wanted = [(r, p.pattern) for r, (top, _, _) in paths.items() for p in top]
            return counts, series, paths, await q.examples(wanted), bucket

    async def latencies() -> dict[str, tuple[Latency, Latency]]:
        if pg:
            return await _pg_latencies(store.engine, window)
        async with store.engine.connect() as conn:
            return await _Queries(conn, pg, window).latencies()

    if pg:  # two connections: the histogram scans run beside the counting scan
        done = await asyncio.gather(outcomes(), latencies(), return_exceptions=True)
        for result in done:
            if isinstance(result, BaseException):
                raise result
        first_part, lat = done
        assert not isinstance(first_part, BaseException) and not isinstance(lat, BaseException)
    else:  # SQLite: an in-memory database has a single shared connection
        first_part = await outcomes()
        lat = await latencies()
    counts, series, paths, examples, bucket = first_part
    return counts, series, paths, examples, lat, bucket


async def _pg_latencies(engine: AsyncEngine, window: _Window) -> dict[str, tuple[Latency, Latency]]:
    """Exact percentile_cont per route without sorting every row.

    A log-scale histogram per column (hash aggregates, one connection each) locates the
    bins that hold the wanted ranks; one more scan ranks only the rows of those bins.
    """
    t = comparisons
    where = and_(window.where(t), t.c.outcome.in_(_COMPARED))
    columns = {"p": t.c.latency_primary_ms, "c": t.c.latency_candidate_ms}

    async def histogram(col: Any) -> dict[str, dict[int, int]]:
        query = (
            select(t.c.route, _bin(col), func.count())
            .where(where, col.is_not(None))
            .group_by(t.c.route, _bin(col))
        )
        found: dict[str, dict[int, int]] = {}
        async with engine.connect() as conn:
            for route, b, n in await conn.execute(query):
                found.setdefault(route, {})[int(b)] = int(n)
        return found

    hists = dict(
        zip(columns, await asyncio.gather(*(histogram(c) for c in columns.values())), strict=True)
    )
    sizes = {(r, tag): sum(bins.values()) for tag, h in hists.items() for r, bins in h.items()}
    targets: dict[str, set[tuple[str, int, int]]] = {tag: set() for tag in columns}
    for (route, tag), n in sizes.items():
        for rank in _wanted_ranks(n):
            b, offset = _locate(hists[tag][route], rank)
            targets[tag].add((route, b, offset))
    values: dict[tuple[str, str], dict[int, float]] = {}
    if any(targets.values()):
        bins = {tag: sorted({(r, b) for r, b, _ in found}) for tag, found in targets.items()}
        picked = (
            select(
                t.c.route,
                *(_bin(col).label(f"{tag}bin") for tag, col in columns.items()),
                *(col.label(f"{tag}v") for tag, col in columns.items()),
            )
            .where(
                where,
                or_(
                    *(
                        tuple_(t.c.route, _bin(columns[tag])).in_(pairs)
                        for tag, pairs in bins.items()
                        if pairs
                    )
                ),
            )
            .cte("picked")
        )
        ranked = union_all(
            *(
                select(
                    picked.c.route,
                    literal_column(f"'{tag}'").label("col"),
                    picked.c[f"{tag}bin"].label("bin"),
                    picked.c[f"{tag}v"].label("v"),
                    (
                        func.row_number().over(
                            partition_by=(picked.c.route, picked.c[f"{tag}bin"]),
                            order_by=picked.c[f"{tag}v"],
                        )
                        - 1
                    ).label("rn"),
                ).where(tuple_(picked.c.route, picked.c[f"{tag}bin"]).in_(pairs))
                for tag, pairs in bins.items()
                if pairs
            )
        ).subquery()
        wanted = sorted((r, tag, b, o) for tag, found in targets.items() for r, b, o in found)
        query = select(ranked).where(
            tuple_(ranked.c.route, ranked.c.col, ranked.c.bin, ranked.c.rn).in_(wanted)
        )
        async with engine.connect() as conn:
            for route, tag, b, v, rn in await conn.execute(query):
                base = _bin_start_rank(hists[tag][route], int(b))
                values.setdefault((route, tag), {})[base + int(rn)] = float(v)
    found: dict[str, tuple[Latency, Latency]] = {}
    for route in {r for r, _ in sizes}:
        pair = [
            Latency(
                _interpolate(values.get((route, tag), {}), sizes.get((route, tag), 0), 0.5),
                _interpolate(values.get((route, tag), {}), sizes.get((route, tag), 0), 0.99),
            )
            for tag in columns
        ]
        found[route] = (pair[0], pair[1])
    return found


class _Queries:
    """The report's SQL, one method per aggregate, for one connection and one window."""

    def __init__(self, conn: AsyncConnection, pg: bool, window: _Window) -> None:
        self._conn = conn
        self._pg = pg
        self._w = window

    def _window(self, table: Any) -> ColumnElement[bool]:
        return self._w.where(table)

    async def span(self) -> tuple[datetime | None, datetime | None]:
        # min/max per route ride the (route, time) index; without routes, the (time) one.
        t = comparisons
        wheres = (
            [and_(self._window(t), t.c.route == r) for r in self._w.routes]
            if self._w.routes
            else [self._window(t)]
        )
        firsts: list[datetime] = []
        lasts: list[datetime] = []
        for where in wheres:
            first = await self._conn.scalar(select(func.min(t.c.time)).where(where))
            last = await self._conn.scalar(select(func.max(t.c.time)).where(where))
            firsts += [first] if first else []
            lasts += [last] if last else []
        return (min(firsts, default=None), max(lasts, default=None))

    async def counts_and_series(
        self, bucket: int
    ) -> tuple[dict[str, _Counts], dict[str, tuple[Bucket, ...]]]:
        t = comparisons
        size: ColumnElement[int] = literal_column(str(int(bucket)), Integer)
        if self._pg:
            index: Any = cast(func.floor(func.date_part("epoch", t.c.time) / size), Integer)
        else:
            index = cast(func.strftime("%s", t.c.time), Integer) / size
        index = index.label("b")
        query = (
            select(t.c.route, t.c.outcome, index, func.count())
            .where(self._window(t))
            .group_by(t.c.route, t.c.outcome, index)
        )
        counts: dict[str, _Counts] = {}
        buckets: dict[str, dict[int, list[int]]] = {}
        for route, outcome, b, n in await self._conn.execute(query):
            c = counts.setdefault(route, _Counts())
            c.outcomes[outcome] = c.outcomes.get(outcome, 0) + int(n)
            if outcome in _COMPARED:
                cell = buckets.setdefault(route, {}).setdefault(int(b), [0, 0])
                cell[0] += int(n)
                cell[1] += int(n) if outcome == "mismatch" else 0
        for route, c in counts.items():
            await self._describe(route, c)
        series = {
            route: tuple(
                Bucket(datetime.fromtimestamp(b * bucket, UTC), n, m)
                for b, (n, m) in sorted(cells.items())
            )
            for route, cells in buckets.items()
        }
        return counts, series

    async def _describe(self, route: str, c: _Counts) -> None:
        # Per route, on the (route, time) index: cheaper than aggregating them in the scan.
        t = comparisons
        where = and_(self._window(t), t.c.route == route)
        c.first = await self._conn.scalar(select(func.min(t.c.time)).where(where))
        c.last = await self._conn.scalar(select(func.max(t.c.time)).where(where))
        latest = (
            await self._conn.execute(
                select(t.c.method, t.c.path).where(where).order_by(t.c.time.desc()).limit(1)
            )
        ).first()
        if latest is not None:
            c.method, c.path = latest

    async def latencies(self) -> dict[str, tuple[Latency, Latency]]:
        compared = and_(self._window(comparisons), comparisons.c.outcome.in_(_COMPARED))
        primary = await self._percentiles_sqlite(comparisons.c.latency_primary_ms, compared)
        candidate = await self._percentiles_sqlite(comparisons.c.latency_candidate_ms, compared)
        return {
            r: (primary.get(r, Latency()), candidate.get(r, Latency()))
            for r in set(primary) | set(candidate)
        }

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


def _latency(values: Sequence[float | None] | None) -> Latency:
    if not values:
        return Latency()
    p50, p99 = (None if v is None else float(v) for v in values)
    return Latency(p50, p99)


_QUANTILES = (0.5, 0.99)
_BINS_PER_E = 100  # log-scale histogram bins: each about 1 % wide


def _bin(column: Any) -> ColumnElement[int]:
    scaled = func.ln(func.greatest(column, literal_column("0.001"))) * literal_column(
        str(_BINS_PER_E)
    )
    return cast(func.floor(scaled), Integer).label("bin")


def _wanted_ranks(n: int) -> set[int]:
    ranks: set[int] = set()
    for q in _QUANTILES:
        lo = int(q * (n - 1))
        ranks.update(r for r in (lo, lo + 1) if r < n)
    return ranks


def _locate(bins: Mapping[int, int], rank: int) -> tuple[int, int]:
    seen = 0
    for b in sorted(bins):
        if rank < seen + bins[b]:
            return b, rank - seen
        seen += bins[b]
    raise ValueError(f"rank {rank} beyond {seen} values")


def _bin_start_rank(bins: Mapping[int, int], b: int) -> int:
    return sum(n for other, n in bins.items() if other < b)


def _interpolate(values: Mapping[int, float], n: int, q: float) -> float | None:
    pos = q * (n - 1)
    lo = int(pos)
    if lo not in values:
        return None
    hi = values.get(lo + 1, values[lo])
    return values[lo] + (hi - values[lo]) * (pos - lo)
