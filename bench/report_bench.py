"""Benchmark: `strangler report` aggregation over many stored comparisons on PostgreSQL,
and the recorder's write path into the same store.

Loads N synthetic comparisons (4 routes over 24 h; about 2 % mismatches with path rows,
0.6 % candidate errors and timeouts, 1 % skipped) into a fresh schema with one
server-side INSERT ... SELECT over generate_series, then times `build_report` (every
aggregate, percentile, top path and time bucket) a few times. A second row pushes 50,000
records through `Recorder` -> `Store` (batches of 500, COPY) and reports rows/s and the
longest event-loop stall the writer caused. The schema is dropped after.

Run alone: `python -m bench.report_bench [PG_URL] [ROWS]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
from sqlalchemy.engine import make_url

from shadow.record import ComparisonRecord, DiffExample
from shadow.recorder import Recorder
from shadow.report import Thresholds, build_report
from shadow.store import Store

__all__ = ["GOAL_S", "RECORDER_ROWS", "run"]

GOAL_S = 2.0
RECORDER_ROWS = 50_000
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
            "measure": "report",
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


def _record(i: int) -> ComparisonRecord:
    mismatch = i % 50 == 0
    return ComparisonRecord(
        route=f"route-{i % 4}",
        outcome="mismatch" if mismatch else "match",
        request_path=f"/api/v1/orders/{i}",
        latency_primary_ms=5.0,
        latency_candidate_ms=6.0,
        diff_paths=("$.items[*].price",) if mismatch else (),
        diff_examples=(
            (DiffExample("$.items[*].price", "$.items[0].price", "9.99", 9.99),) if mismatch else ()
        ),
        request_id=f"bench-{i}",
    )


async def _recorder(store_url: str, rows: int = RECORDER_ROWS) -> dict[str, object]:
    store = await Store.open(store_url)
    recorder = Recorder(store, buffer_size=rows, batch_size=500)
    stalls: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            stalls.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    try:
        await recorder.start()
        started = time.perf_counter()
        for i in range(rows):
            recorder.record(_record(i), started=True)
            if i % 100 == 99:  # arrivals spread out, as requests would be
                await asyncio.sleep(0)
        flushed = await recorder.flush(120)
        elapsed = time.perf_counter() - started
        await recorder.stop(5)
    finally:
        done.set()
        with contextlib.suppress(asyncio.CancelledError):
            await tick
        await store.close()
    stored = sum(c.recorded for c in recorder.counters().values())
    return {
        "measure": "recorder -> store",
        "rows": rows,
        "rows_per_s": round(stored / elapsed),
        "loop_stall_p99_ms": round(sorted(stalls)[int(len(stalls) * 0.99)] * 1000, 1),
        "loop_stall_max_ms": round(max(stalls) * 1000, 1),
        "ok": flushed and stored == rows,
    }


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
        writes = asyncio.run(_recorder(store_url))
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    print(_table([result]))
    print(_table([writes]))
    return [result, writes]


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
