"""The report's data: per-route figures, thresholds, verdicts and the versioned JSON form."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from shadow.gates import error_rate
from shadow.record import DiffExample

__all__ = [
    "REPORT_SCHEMA_VERSION",
    "Bucket",
    "Latency",
    "NoiseStat",
    "PathStat",
    "Report",
    "RouteReport",
    "Thresholds",
    "report_schema",
    "wilson_interval",
]

REPORT_SCHEMA_VERSION = 1
_Z95 = 1.959963984540054


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
    # the part of `skipped` with a candidate answer: calls with no comparison (writes the
    # candidate served in canary or extracted mode, dry-run writes replayed)
    served: int = 0
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
    judged: bool = True  # False: shown for information, outside the gate (no gate left)

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
        """Every copy of the route in the window: its stored comparisons and drop counts."""
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
        """Candidate errors and timeouts per candidate call (see `gates.error_rate`)."""
        return error_rate(self.samples, self.errors, self.served)

    @property
    def p99_ratio(self) -> float | None:
        """Candidate p99 over legacy p99 latency."""
        p, c = self.latency_primary.p99, self.latency_candidate.p99
        return c / p if p and c is not None else None

    @property
    def empty(self) -> bool:
        """No evidence: no comparison of the route stored in the window (drop counts aside).

        A dry-run write that replay records as `skipped` is a candidate answer, so it counts.
        """
        return self.samples + self.errors + self.skipped == 0

    @property
    def passed(self) -> bool:
        """Whether the route meets every threshold on some evidence (with `min_samples: 0`,
        no comparison at all is no pass either, as in `strangler migrate`); a route not
        judged never fails the gate."""
        return not self.judged or (not self.reasons and not self.empty)

    @property
    def verdict(self) -> str:
        """`pass`, `fail`, or `no gate` for a route shown outside the gate."""
        if not self.judged:
            return "no gate"
        return "pass" if self.passed else "fail"

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
            "served": self.served,
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
            "judged": self.judged,
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
        """True when at least one route is judged and every judged route passes its gate."""
        judged = self.judged
        return bool(judged) and all(r.passed for r in judged)

    @property
    def judged(self) -> tuple[RouteReport, ...]:
        """The routes the gate judges (the others are shown for information)."""
        return tuple(r for r in self.routes if r.judged)

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


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None
