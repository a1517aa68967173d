"""Factories for the migrate tests: a commented config, synthetic evidence, CLI calls."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from click.testing import CliRunner, Result

from proxy.cli import main
from shadow.record import ComparisonRecord, Outcome, RouteChange
from shadow.store import Store

__all__ = ["CONFIG", "changes", "evidence", "migrate", "write_config"]

CONFIG = """\
# migrate test config: comments, blank lines, flow and block styles.
listen: 127.0.0.1:8080
admin:
  listen: 127.0.0.1:9090
  token_env: STRANGLER_TEST_ADMIN_TOKEN   # bearer token for /-/reload

backends:
  legacy: {url: "http://127.0.0.1:8081", timeout: 5s}
  orders:
    handlers: extracted.app   # in-process
default_backend: legacy

routes:
  # the route walked through every step
  - name: order-show
    match: {path: "/api/v1/orders/{order_id}", methods: [GET]}
    candidate: orders
    mode: shadow              # legacy | shadow | canary | extracted

    canary:
      percent: 5              # share of keys served by the candidate
      sticky: {header: X-User-Id}
    promotion:
      steps: [1, 25, 100]     # 100 means extracted
      min_samples: 100
      max_mismatch_rate: 0.01
      max_error_rate: 0.02
      max_p99_ratio: 1.5

  - name: order-list
    match:
      path: /api/v1/orders
      methods: [GET]
    candidate: orders
    mode: canary
    canary: {percent: 25}
    promotion: {steps: [1, 25, 50, 100], min_samples: 100, auto: true, interval: 1h}

  - name: order-create        # not started: no promotion block at all
    match:
      path: /api/v1/orders
      methods: [POST]
    candidate: orders
"""


def write_config(directory: Path, text: str = CONFIG) -> str:
    """Write `text` as routes.yaml under `directory`; its path."""
    path = directory / "routes.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def _records(
    route: str,
    counts: dict[Outcome, int],
    primary_ms: float,
    candidate_ms: float,
    start: datetime,
) -> list[ComparisonRecord]:
    out: list[ComparisonRecord] = []
    for outcome, n in counts.items():
        for _ in range(n):
            failed = outcome in ("candidate_error", "candidate_timeout")
            out.append(
                ComparisonRecord(
                    route=route,
                    outcome=outcome,
                    time=start + timedelta(microseconds=len(out)),
                    path="/api/v1/orders/{order_id}",
                    request_path=f"/api/v1/orders/{len(out)}",
                    status_primary=200,
                    status_candidate=500 if failed else 200,
                    latency_primary_ms=primary_ms,
                    latency_candidate_ms=None if failed else candidate_ms,
                    diff_paths=("$.total",) if outcome == "mismatch" else (),
                    request_id=f"req-{len(out)}",
                )
            )
    return out


def evidence(
    url: str,
    route: str,
    *,
    matches: int,
    mismatches: int = 0,
    errors: int = 0,
    primary_ms: float = 10.0,
    candidate_ms: float = 12.0,
    start: datetime | None = None,
) -> None:
    """Store synthetic comparisons of `route`, time-stamped from `start` (default: now)."""
    counts: dict[Outcome, int] = {
        "match": matches,
        "mismatch": mismatches,
        "candidate_error": errors,
    }
    records = _records(route, counts, primary_ms, candidate_ms, start or datetime.now(UTC))

    async def run() -> None:
        async with Store(url) as store:
            await store.insert_batch(records)

    asyncio.run(run())


def changes(url: str, route: str | None = None) -> list[RouteChange]:
    """The store's route-change audit log, newest first."""

    async def run() -> list[RouteChange]:
        async with Store(url) as store:
            return await store.route_changes(route)

    return asyncio.run(run())


def migrate(*args: str, env: dict[str, str] | None = None) -> Result:
    """Run `strangler migrate ARGS` in-process."""
    return CliRunner().invoke(main, ["migrate", *args], env=env, catch_exceptions=False)
