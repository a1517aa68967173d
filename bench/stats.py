"""Turning per-slice samples into medians, ratios and goal verdicts (pure functions)."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "DIRECT",
    "MINIMAL",
    "NGINX",
    "Goal",
    "Sample",
    "add_ratios",
    "evaluate_goals",
    "median",
    "summarise",
]

DIRECT = "direct"
MINIMAL = "minimal-aiohttp"
NGINX = "nginx-1w"

Row = dict[str, object]


@dataclass(frozen=True, slots=True)
class Sample:
    """One slice of one (target, connections) pair."""

    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_req: float | None
    requests: int
    errors: int
    other_cpu_pct: float | None = None


@dataclass(frozen=True, slots=True)
class Goal:
    """A target figure from the issues, and whether this run met it."""

    text: str
    value: float | None
    limit: float
    higher_is_better: bool

    @property
    def met(self) -> bool | None:
        """True or False once measured; None when a needed row is missing."""
        if self.value is None:
            return None
        return self.value >= self.limit if self.higher_is_better else self.value <= self.limit


def median(values: Iterable[float | None]) -> float | None:
    """The median of the values that are not None; None when there are none."""
    present = [v for v in values if v is not None]
    return float(statistics.median(present)) if present else None


def summarise(target: str, connections: int, samples: Sequence[Sample]) -> Row:
    """One result row for a pair: medians over its slices plus the raw samples."""
    return {
        "target": target,
        "connections": connections,
        "slices": len(samples),
        "rps": median(s.rps for s in samples),
        "cpu_us_per_req": median(s.cpu_us_per_req for s in samples),
        "p50_ms": median(s.p50_ms for s in samples),
        "p99_ms": median(s.p99_ms for s in samples),
        "errors": sum(s.errors for s in samples),
        "other_cpu_pct": median(s.other_cpu_pct for s in samples),
        "samples": {
            "rps": [s.rps for s in samples],
            "cpu_us_per_req": [s.cpu_us_per_req for s in samples],
            "p50_ms": [s.p50_ms for s in samples],
            "p99_ms": [s.p99_ms for s in samples],
            "other_cpu_pct": [s.other_cpu_pct for s in samples],
        },
    }


def _num(row: Mapping[str, object] | None, key: str) -> float | None:
    """A numeric field of a row, or None when the row or the value is missing."""
    if row is None:
        return None
    value = row.get(key)
    return float(value) if isinstance(value, int | float) else None


def _div(a: float | None, b: float | None) -> float | None:
    """a / b, None when either is missing or b is zero."""
    return a / b if a is not None and b else None


def add_ratios(rows: Sequence[Row]) -> list[Row]:
    """Copies of `rows` with ratios to direct, the minimal proxy and nginx (same connections).

    x_direct, x_minimal, x_nginx: requests/s over the reference's. cpu_vs_nginx: nginx's CPU
    per request over this target's (higher is leaner; 1.0 = as lean as nginx). added_p50_ms:
    p50 over direct's p50 at the same number of connections.
    """
    index = {(r["target"], r["connections"]): r for r in rows if r.get("rps") is not None}
    out: list[Row] = []
    for row in rows:
        c = row["connections"]
        direct, minimal, nginx = (index.get((t, c)) for t in (DIRECT, MINIMAL, NGINX))
        rps = _num(row, "rps")
        p50 = _num(row, "p50_ms")
        direct_p50 = _num(direct, "p50_ms")
        ratios: Row = {
            "x_direct": _div(rps, _num(direct, "rps")),
            "x_minimal": _div(rps, _num(minimal, "rps")),
            "x_nginx": _div(rps, _num(nginx, "rps")),
            "cpu_vs_nginx": _div(_num(nginx, "cpu_us_per_req"), _num(row, "cpu_us_per_req")),
            "added_p50_ms": p50 - direct_p50
            if p50 is not None and direct_p50 is not None
            else None,
        }
        out.append({**row, **ratios})
    return out


def evaluate_goals(rows: Sequence[Row], target: str = "strangler-1w") -> list[Goal]:
    """The issue 4 goals for `target`, one worker, from rows that carry ratios."""
    index = {(r["target"], r["connections"]): r for r in rows}
    busy, single = index.get((target, 64)), index.get((target, 1))
    return [
        Goal(
            f"{target} req/s >= 4x minimal aiohttp proxy (64 conns)",
            _num(busy, "x_minimal"),
            4.0,
            True,
        ),
        Goal(
            f"{target} CPU/request >= 0.35x nginx's efficiency (nginx us / {target} us, 64 conns)",
            _num(busy, "cpu_vs_nginx"),
            0.35,
            True,
        ),
        Goal(
            f"{target} added p50 over direct <= 0.1 ms (1 conn)",
            _num(single, "added_p50_ms"),
            0.1,
            False,
        ),
    ]
