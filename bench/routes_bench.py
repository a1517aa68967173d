"""Route matching with many routes: `RouteTable.match` cost, and the proxy with 500 vs 5 routes.

The generated routes mix the three pattern kinds: exact paths, `{param}` templates (some
with a parameter early in the path, so a lookup has to try two trie branches) and
`prefix/*`, with method lists on some. The last route is `/bench/{item}`, the path wrk loads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from bench.run import measure_slice
from bench.sections import SectionContext, SectionResult
from bench.stats import Sample, median
from bench.targets import PATH, BenchEnv, Running, free_port, probe_http, start_strangler
from bench.wrk import WrkError
from proxy.routes import RouteTable
from proxy.settings import loads

__all__ = ["LOOKUP_CASES", "route_lines", "routes_config", "run_lookup", "run_proxy", "time_ns"]

_MANY = 500
_FEW = 5
_LOOKUPS = 20_000
_REPEATS = 5

Row = dict[str, object]


def route_lines(n: int) -> list[str]:
    """`n` routes as YAML list items: n - 1 mixed filler routes, then `/bench/{item}`."""
    lines = []
    for i in range(n - 1):
        kind = i % 4
        if kind == 0:
            match = f"{{path: /api/v1/svc{i}/items, methods: [GET]}}"
        elif kind == 1:
            match = f"{{path: '/api/v1/svc{i}/items/{{item_id}}', methods: [GET, POST]}}"
        elif kind == 2:
            match = f"{{path: '/api/v1/{{tenant}}/svc{i}/orders/{{order_id}}', methods: [GET]}}"
        else:
            match = f"{{path: '/static/svc{i}/*'}}"
        lines.append(f"  - {{name: r{i}, match: {match}, mode: legacy}}")
    lines.append("  - {name: bench, match: {path: '/bench/{item}'}, mode: legacy}")
    return lines


def routes_config(n: int, upstream_url: str, tmp: Path, port: int = 0, admin_port: int = 0) -> str:
    """A legacy-mode strangler config with `n` routes in front of `upstream_url`."""
    return (
        f"listen: 127.0.0.1:{port or 8080}\n"
        f"admin: {{listen: 127.0.0.1:{admin_port or 9090}}}\n"
        "backends:\n"
        f'  legacy: {{url: "{upstream_url}", timeout: 5s, connect_timeout: 500ms,'
        " max_connections: 200}\n"
        "default_backend: legacy\n"
        f'store: {{url: "sqlite+aiosqlite:///{tmp}/routes-{n}.db"}}\n'
        "routes:\n" + "\n".join(route_lines(n)) + "\n"
    )


def _last(kind: int, n: int) -> int:
    """Index of the last filler route of `kind` in a table of `n` routes."""
    return max(i for i in range(n - 1) if i % 4 == kind)


# (case, method, path builder from the table size); builders point at the last route of a kind
LOOKUP_CASES: list[tuple[str, str, Callable[[int], str]]] = [
    ("exact, last of its kind", "GET", lambda n: f"/api/v1/svc{_last(0, n)}/items"),
    ("template, last of its kind", "GET", lambda n: f"/api/v1/svc{_last(1, n)}/items/123"),
    (
        "template with early {param}",
        "GET",
        lambda n: f"/api/v1/acme/svc{_last(2, n)}/orders/42",
    ),
    ("prefix, 2 levels below", "GET", lambda n: f"/static/svc{_last(3, n)}/css/site.css"),
    ("last route (/bench/{item})", "GET", lambda n: PATH),
    ("miss: unknown service", "GET", lambda n: "/api/v1/svc99999/items"),
    ("miss: no such top level", "GET", lambda n: "/nope/a/b/c"),
    ("miss: method (POST on GET)", "POST", lambda n: f"/api/v1/svc{_last(0, n)}/items"),
]


def time_ns(fn: Callable[[str, str], object], method: str, path: str) -> float:
    """Best-of-repeats nanoseconds per `fn(method, path)` call (Python call included)."""
    best = float("inf")
    for _ in range(_REPEATS):
        t0 = time.perf_counter_ns()
        for _ in range(_LOOKUPS):
            fn(method, path)
        best = min(best, (time.perf_counter_ns() - t0) / _LOOKUPS)
    return best


def run_lookup(ctx: SectionContext) -> SectionResult:
    """ns per `RouteTable.match` on 500 and on 5 routes, hits of every kind and misses."""
    tables = {
        n: RouteTable(loads(routes_config(n, ctx.env.upstream_url, ctx.env.tmp)))
        for n in (_MANY, _FEW)
    }
    rows: list[Row] = []
    for case, method, build in LOOKUP_CASES:
        row: Row = {"case": case, "request": f"{method} {build(_MANY)}"}
        for n, table in tables.items():
            path = build(n)
            route = table.match(method, path)
            row[f"match_{n}"] = route.name if route is not None else "-"
            row[f"ns_{n}_routes"] = round(time_ns(table.match, method, path))
        rows.append(row)
    note = (
        f"{_MANY} routes: 1/4 exact, 1/4 templates, 1/4 templates with an early {{param}},"
        " 1/4 prefix/*, then /bench/{item}; best of"
        f" {_REPEATS} x {_LOOKUPS:,} calls; the 5-route column runs the same request on the"
        " 5-route table (its own last routes)"
    )
    return SectionResult(rows=rows, note=note)


def _start(env: BenchEnv, n: int) -> Running:
    port, admin_port = free_port(), free_port()
    name = f"strangler-{n}-routes"
    config = routes_config(n, env.upstream_url, env.tmp, port, admin_port)
    started = start_strangler(env, name, config, 1, admin_port)
    reason = probe_http(port, PATH)
    if reason is not None:
        env.processes.stop(started)
        raise RuntimeError(f"{name}: {reason}")
    return Running(f"http://127.0.0.1:{port}{PATH}", started)


def run_proxy(ctx: SectionContext) -> SectionResult:
    """strangler (legacy mode, 1 worker) with 500 vs 5 routes, 64 connections, interleaved."""
    env = ctx.env
    running: dict[int, Running] = {}
    samples: dict[int, list[Sample]] = {_MANY: [], _FEW: []}
    rounds = max(2, ctx.rounds // 2)
    try:
        for n in (_MANY, _FEW):
            running[n] = _start(env, n)
        for r in range(rounds):
            order = (_MANY, _FEW) if r % 2 == 0 else (_FEW, _MANY)
            for n in order:
                try:
                    samples[n].append(
                        measure_slice(running[n], 64, ctx.slice_s, env.load_cpu, env.proxy_cpu)
                    )
                except WrkError as exc:
                    print(f"  routes section: {n} routes slice failed: {exc}")
    finally:
        for run in running.values():
            env.processes.stop(run.measured)
    rps = {n: median(s.rps for s in got) for n, got in samples.items()}
    cpu = {n: median(s.cpu_us_per_req for s in got) for n, got in samples.items()}
    rows: list[Row] = []
    for n in (_MANY, _FEW):
        got = samples[n]
        mine, few = rps[n], rps[_FEW]
        my_cpu, few_cpu = cpu[n], cpu[_FEW]
        rows.append(
            {
                "routes": n,
                "rps": rps[n],
                "cpu_us_req": my_cpu,
                "p50_ms": median(s.p50_ms for s in got),
                "p99_ms": median(s.p99_ms for s in got),
                "rps_x_5": round(mine / few, 3) if mine is not None and few else None,
                "cpu_x_5": round(my_cpu / few_cpu, 3) if my_cpu is not None and few_cpu else None,
                "errors": sum(s.errors for s in got),
                "other%": median(s.other_cpu_pct for s in got),
                "slices": len(got),
            }
        )
    note = (
        f"GET {PATH} matches the last route; 64 conns; medians of {rounds} interleaved"
        f" {ctx.slice_s}s slices each; *_x_5 = this table / the 5-route one (cpu us per request"
        " is the steadier figure when other processes share the CPU)"
    )
    return SectionResult(rows=rows, note=note)
