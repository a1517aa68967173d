"""The report's SQL: every aggregate per route, on SQLite and PostgreSQL.

Counting is one GROUP BY scan (route, outcome, time bucket), plus the stored drop counts
(`shadow_drops`, outcome `dropped`: shadow copies that ended without a comparison row);
paths come from the
`comparison_paths` table; latency percentiles are exact (PostgreSQL's percentile_cont
semantics) but computed from a log-scale histogram plus a ranking of a few bins on
PostgreSQL, and from window functions on SQLite. Only aggregates reach Python.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Integer,
    and_,
    case,
    cast,
    func,
    literal_column,
    or_,
    select,
    tuple_,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shadow.http_compare import parse_json_body
from shadow.record import DiffExample
from shadow.report_model import Bucket, Latency, NoiseStat
from shadow.store import Store, comparison_paths, comparisons, shadow_drops

__all__ = ["Aggregates", "RouteCounts", "TopPath", "Window", "read_aggregates"]

_COMPARED = ("match", "mismatch")
_BUCKET_SIZES = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400)


def _bucket_size(start: datetime | None, end: datetime, max_buckets: int) -> int:
    if start is None:
        return _BUCKET_SIZES[0]
    span = max(0.0, (end - start).total_seconds())
    for size in _BUCKET_SIZES:
        if span / size <= max_buckets:
            return size
    return math.ceil(span / max_buckets / 86400) * 86400


@dataclass(slots=True)
class RouteCounts:
    """A route's comparisons by outcome, its latest method and path template, first/last time."""

    outcomes: dict[str, int] = field(default_factory=dict)
    method: str = ""
    path: str = ""
    first: datetime | None = None
    last: datetime | None = None


@dataclass(frozen=True, slots=True)
class TopPath:
    """A differing pattern and how many comparisons had it."""

    pattern: str
    count: int


@dataclass(frozen=True, slots=True)
class Window:
    """Which comparisons a report covers: [since, until) and, if given, only these routes."""

    since: datetime | None
    until: datetime | None
    routes: tuple[str, ...]

    def where(self, table: Any) -> ColumnElement[bool]:
        """The filter on a table with `time` and `route` columns."""
        conds: list[ColumnElement[bool]] = []
        if self.since is not None:
            conds.append(table.c.time >= self.since)
        if self.until is not None:
            conds.append(table.c.time < self.until)
        if self.routes:
            conds.append(table.c.route.in_(self.routes))
        return and_(True, *conds)


@dataclass(frozen=True, slots=True)
class Aggregates:
    """Everything a report needs from the store, per route."""

    counts: dict[str, RouteCounts]
    series: dict[str, tuple[Bucket, ...]]
    top_paths: dict[str, tuple[TopPath, ...]]
    distinct_paths: dict[str, int]
    noise: dict[str, tuple[NoiseStat, ...]]
    examples: dict[tuple[str, str], DiffExample]  # (route, pattern) -> latest example
    latencies: dict[str, tuple[Latency, Latency]]  # route -> (primary, candidate)
    bucket_seconds: int


async def read_aggregates(
    store: Store, window: Window, *, top_n: int, max_buckets: int, now: datetime
) -> Aggregates:
    """Run the report's queries (two connections at once on PostgreSQL)."""
    pg = store.dialect == "postgresql"

    async def outcomes() -> Aggregates:
        async with store.engine.connect() as conn:
            q = _Queries(conn, pg, window)
            first, last = await q.span()
            bucket = _bucket_size(window.since or first, window.until or last or now, max_buckets)
            counts, series = await q.counts_and_series(bucket)
            top, distinct, noise = await q.paths(top_n)
            wanted = [(r, p.pattern) for r, paths in top.items() for p in paths]
            examples = await q.examples(wanted)
        return Aggregates(counts, series, top, distinct, noise, examples, {}, bucket)

    async def latencies() -> dict[str, tuple[Latency, Latency]]:
        if pg:
            return await _pg_latencies(store.engine, window)
        async with store.engine.connect() as conn:
            return await _Queries(conn, pg, window).latencies()

    if pg:  # the histogram scans run beside the counting scan
        done = await asyncio.gather(outcomes(), latencies(), return_exceptions=True)
        for result in done:
            if isinstance(result, BaseException):
                raise result
        first_part, lat = done
        assert isinstance(first_part, Aggregates) and isinstance(lat, dict)
    else:  # SQLite: an in-memory database has a single shared connection
        first_part = await outcomes()
        lat = await latencies()
    return replace(first_part, latencies=lat)


async def _pg_latencies(engine: AsyncEngine, window: Window) -> dict[str, tuple[Latency, Latency]]:
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

    def __init__(self, conn: AsyncConnection, pg: bool, window: Window) -> None:
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
    ) -> tuple[dict[str, RouteCounts], dict[str, tuple[Bucket, ...]]]:
        t = comparisons
        size: ColumnElement[int] = literal_column(str(int(bucket)), Integer)
        if self._pg:
            index: Any = cast(func.floor(func.date_part("epoch", t.c.time) / size), Integer)
        else:
            index = cast(func.strftime("%s", t.c.time), Integer) / size
        index = index.label("b")
        # a skipped row with a candidate answer (a write the candidate served, a replayed
        # dry-run write) is a candidate call: counted apart as well, for the error rate
        kind = case(
            (and_(t.c.outcome == "skipped", t.c.status_candidate.is_not(None)), "served"),
            else_=t.c.outcome,
        ).label("o")
        query = (
            select(t.c.route, kind, index, func.count())
            .where(self._window(t))
            .group_by(t.c.route, kind, index)
        )
        counts: dict[str, RouteCounts] = {}
        buckets: dict[str, dict[int, list[int]]] = {}
        for route, outcome, b, n in await self._conn.execute(query):
            c = counts.setdefault(route, RouteCounts())
            if outcome == "served":
                c.outcomes["served"] = c.outcomes.get("served", 0) + int(n)
                outcome = "skipped"
            c.outcomes[outcome] = c.outcomes.get(outcome, 0) + int(n)
            if outcome in _COMPARED:
                cell = buckets.setdefault(route, {}).setdefault(int(b), [0, 0])
                cell[0] += int(n)
                cell[1] += int(n) if outcome == "mismatch" else 0
        d = shadow_drops
        drops = select(d.c.route, func.sum(d.c.copies)).where(self._window(d)).group_by(d.c.route)
        for route, n in await self._conn.execute(drops):
            c = counts.setdefault(route, RouteCounts())
            c.outcomes["dropped"] = c.outcomes.get("dropped", 0) + int(n or 0)
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

    async def _describe(self, route: str, c: RouteCounts) -> None:
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
    ) -> tuple[dict[str, tuple[TopPath, ...]], dict[str, int], dict[str, tuple[NoiseStat, ...]]]:
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
        diffs: dict[str, list[TopPath]] = {}
        distinct: dict[str, int] = {}
        noise: dict[str, list[NoiseStat]] = {}
        for route, kind, pattern, count, _rank, n_distinct in await self._conn.execute(query):
            if kind == "noise":
                noise.setdefault(route, []).append(NoiseStat(pattern, int(count)))
            else:
                diffs.setdefault(route, []).append(TopPath(pattern, int(count)))
                distinct[route] = int(n_distinct)
        return (
            {r: tuple(v) for r, v in diffs.items()},
            distinct,
            {r: tuple(v) for r, v in noise.items()},
        )

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
                # decoded as bodies are: integers past 64 bits stay exact
                found[(route, pattern)] = DiffExample.from_json(parse_json_body(raw.encode()))
        return found


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
