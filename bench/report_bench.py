"""Benchmark: `strangler report` aggregation over many stored comparisons on PostgreSQL.

Loads N synthetic comparisons (4 routes over 24 h; about 2 % mismatches with path rows,
0.6 % candidate errors and timeouts, 1 % skipped) into a fresh schema with one
server-side INSERT ... SELECT over generate_series, then times `build_report` (every
aggregate, percentile, top path and time bucket) a few times. The schema is dropped after.

Run alone: `python -m bench.report_bench [PG_URL] [ROWS]`.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
from sqlalchemy.engine import make_url

from shadow.report import Thresholds, build_report
from shadow.store import Store

__all__ = ["GOAL_S", "run"]

GOAL_S = 2.0
_RUNS = 3
_T0 = datetime(2026, 1, 1, tzinfo=UTC)
_SPAN = timedelta(hours=24)

_LOAD = """
INSERT INTO comparisons (time, route, method, path, request_path, status_primary,
    status_candidate, latency_primary_ms, latency_candidate_ms, outcome, diff_count,
    noise_count, diff_paths, request_id, mode, config_version, detail)
SELECT %(t0)s::timestamptz + make_interval(secs => i * %(span)s / %(n)s),
    (ARRAY['order-show', 'order-list', 'order-create', 'order-cancel'])[1 + i %% 4],
    'GET', '/api/v1/orders/{order_id}', '/api/v1/orders/' || i, 200,
    CASE WHEN r < 0.025 AND r >= 0.02 THEN 500 ELSE 200 END,
    5 + 20 * l, 6 + 24 * l,
    CASE WHEN r < 0.02 THEN 'mismatch' WHEN r < 0.025 THEN 'candidate_error'
         WHEN r < 0.026 THEN 'candidate_timeout' WHEN r < 0.036 THEN 'skipped'
         ELSE 'match' END,
    CASE WHEN r < 0.02 THEN 1 ELSE 0 END, CASE WHEN i %% 100 = 0 THEN 1 ELSE 0 END,
    CASE WHEN r < 0.02 THEN '["$.items[*].price"]' ELSE '[]' END,
    'req-' || i, 'shadow', 'bench', ''
FROM (SELECT i, random() AS r, random() AS l FROM generate_series(1, %(n)s) AS i) AS s
"""

_PATHS = """
INSERT INTO comparison_paths (comparison_id, kind, pattern, route, time, example)
SELECT id, 'diff', pattern, route, time,
    '{"pattern": "' || pattern || '", "path": "' || replace(pattern, '*', '0')
    || '", "primary": "9.99", "candidate": 9.99}'
FROM (SELECT id, route, time,
        CASE WHEN id % 3 = 0 THEN '$.total' ELSE '$.items[*].price' END AS pattern
      FROM comparisons WHERE outcome = 'mismatch') AS m
UNION ALL
SELECT id, 'noise', '$.meta.generated_at', route, time, NULL
FROM comparisons WHERE noise_count > 0
"""


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _load(store_url: str, rows: int) -> float:
    started = time.perf_counter()
    with psycopg.connect(_libpq(store_url), autocommit=True) as conn:
        conn.execute("SELECT setseed(0.42)")
        conn.execute(_LOAD, {"t0": _T0, "span": _SPAN.total_seconds(), "n": rows}, prepare=False)
        conn.execute(_PATHS, prepare=False)
        conn.execute("ANALYZE comparisons")
        conn.execute("ANALYZE comparison_paths")
    return time.perf_counter() - started


async def _measure(store_url: str, rows: int) -> dict[str, object]:
    store = await Store.open(store_url)
    try:
        load_s = await asyncio.to_thread(_load, store_url, rows)
        lenient = Thresholds(min_samples=0, max_mismatch_rate=1.0, max_error_rate=1.0)
        times: list[float] = []
        report = None
        for _ in range(_RUNS):
            started = time.perf_counter()
            report = await build_report(store, default_thresholds=lenient, now=_T0 + _SPAN)
            times.append(time.perf_counter() - started)
        assert report is not None
        total = sum(r.total for r in report.routes)
        if total != rows:
            raise RuntimeError(f"report counted {total} comparisons, loaded {rows}")
        median = statistics.median(times)
        return {
            "rows": rows,
            "routes": len(report.routes),
            "load_s": round(load_s, 2),
            "report_first_s": round(times[0], 3),
            "report_median_s": round(median, 3),
            "report_best_s": round(min(times), 3),
            "goal_s": GOAL_S,
            "ok": median <= GOAL_S,
        }
    finally:
        await store.close()


def run(pg_url: str, rows: int = 1_000_000) -> list[dict[str, object]]:
    """Load `rows` comparisons into a fresh schema of `pg_url`, time the report, drop it."""
    schema = f"bench_report_{uuid.uuid4().hex[:8]}"
    base = make_url(pg_url)
    admin_dsn = _libpq(pg_url)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        query = dict(base.query)
        query["options"] = f"-csearch_path={schema}"
        store_url = base.set(query=query).render_as_string(hide_password=False)
        result = asyncio.run(_measure(store_url, rows))
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    print(_table([result]))
    return [result]


def _table(rows: list[dict[str, object]]) -> str:
    keys = list(rows[0])
    cells = [[str(r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = ["  ".join(k.rjust(w) for k, w in zip(keys, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


if __name__ == "__main__":
    url = sys.argv[1] if len(sys.argv) > 1 else "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    run(url, rows=n)
