"""Extra bench sections after the proxy table: each a callable returning rows.

Append a `Section` to `SECTIONS` to add one. A section that cannot run (module missing,
database down) returns a note instead of rows; an exception in one never stops the others.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from bench.targets import BenchEnv

__all__ = [
    "DEFAULT_PG_URL",
    "SECTIONS",
    "Section",
    "SectionContext",
    "SectionResult",
    "pg_reachable",
    "run_sections",
]

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

Row = dict[str, object]


@dataclass(frozen=True, slots=True)
class SectionContext:
    """What a section may use: the bench env (upstream still up) and the run's settings."""

    env: BenchEnv
    rounds: int
    slice_s: int
    quick: bool


@dataclass(slots=True)
class SectionResult:
    """Rows for the table and results.json, or a note saying why there are none."""

    rows: list[Row] = field(default_factory=list)
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Section:
    """A titled bench section."""

    key: str
    title: str
    run: Callable[[SectionContext], SectionResult]


def _import_optional(module: str) -> Any:
    """The module, or None when it does not exist (yet)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module.startswith(exc.name):
            return None
        raise


def _compare_section(ctx: SectionContext) -> SectionResult:
    """bench/compare_bench.py: the comparator against deepdiff."""
    module = _import_optional("bench.compare_bench")
    if module is None:
        return SectionResult(note="skipped: bench/compare_bench.py not present yet")
    return SectionResult(rows=list(module.run()))


def pg_reachable(url: str, timeout_s: float = 1.0) -> bool:
    """True when something accepts TCP connections at the URL's host and port."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5432
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _report_section(ctx: SectionContext) -> SectionResult:
    """bench/report_bench.py: the mismatch report over many stored rows on PostgreSQL."""
    module = _import_optional("bench.report_bench")
    if module is None:
        return SectionResult(note="skipped: bench/report_bench.py not present yet")
    url = os.environ.get("STRANGLER_BENCH_PG_URL", DEFAULT_PG_URL)
    if not pg_reachable(url):
        return SectionResult(note="skipped: PostgreSQL not reachable (set STRANGLER_BENCH_PG_URL)")
    rows = int(os.environ.get("STRANGLER_BENCH_REPORT_ROWS", "1000000"))
    if "rows" in inspect.signature(module.run).parameters:
        return SectionResult(rows=list(module.run(url, rows=rows)))
    return SectionResult(rows=list(module.run(url)))


def _replay_section(ctx: SectionContext) -> SectionResult:
    """bench/replay_bench.py: `strangler replay` throughput on a local stack."""
    module = _import_optional("bench.replay_bench")
    if module is None:
        return SectionResult(note="skipped: bench/replay_bench.py not present yet")
    return SectionResult(rows=list(module.run(2_000 if ctx.quick else 10_000)))


def _shadow_section(ctx: SectionContext) -> SectionResult:
    """bench/shadow_bench.py: shadow at 100 % vs legacy mode at half and saturating load."""
    from bench.shadow_bench import run_section

    return run_section(ctx)


def _helper_section(ctx: SectionContext) -> SectionResult:
    """bench/helper_bench.py: one shadow helper's CPU per compared copy at full throttle."""
    from bench.helper_bench import run_section

    return run_section(ctx)


def _route_lookup_section(ctx: SectionContext) -> SectionResult:
    """bench/routes_bench.py: RouteTable.match with 500 routes."""
    from bench.routes_bench import run_lookup

    return run_lookup(ctx)


def _route_proxy_section(ctx: SectionContext) -> SectionResult:
    """bench/routes_bench.py: the proxy with 500 vs 5 routes."""
    from bench.routes_bench import run_proxy

    return run_proxy(ctx)


SECTIONS: list[Section] = [
    Section("shadow", "shadow mode at 100 % vs legacy mode (issue 6)", _shadow_section),
    Section("helper", "shadow helper at full throttle (issue 6)", _helper_section),
    Section("routes_proxy", "proxy throughput with 500 vs 5 routes", _route_proxy_section),
    Section("routes", "route matching: RouteTable.match, ns per lookup", _route_lookup_section),
    Section("compare", "comparator vs deepdiff", _compare_section),
    Section("report", "report over PostgreSQL", _report_section),
    Section("replay", "replay throughput", _replay_section),
]


def run_sections(ctx: SectionContext, sections: list[Section] | None = None) -> dict[str, Row]:
    """Run every section; results by key as {title, rows, note}."""
    results: dict[str, Row] = {}
    for section in SECTIONS if sections is None else sections:
        try:
            # A section's own prints go to stderr, so stdout holds only the bench's tables.
            with contextlib.redirect_stdout(sys.stderr):
                result = section.run(ctx)
        except Exception as exc:
            result = SectionResult(note=f"failed: {exc.__class__.__name__}: {exc}")
        results[section.key] = {"title": section.title, "rows": result.rows, "note": result.note}
    return results
