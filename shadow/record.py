"""The stored comparison: one immutable row per shadowed (or replayed) request."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, get_args

__all__ = [
    "MODES",
    "OUTCOMES",
    "SAFE_METHODS",
    "ComparisonRecord",
    "DiffExample",
    "Outcome",
    "RecordMode",
    "RouteChange",
]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
"""Methods a copy may be sent with as they are (RFC 9110 9.2.1); others only as a dry run."""

Outcome = Literal["match", "mismatch", "candidate_error", "candidate_timeout", "dropped", "skipped"]
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)
RecordMode = Literal["shadow", "canary", "extracted", "replay"]
MODES: tuple[RecordMode, ...] = get_args(RecordMode)


@dataclass(frozen=True, slots=True)
class DiffExample:
    """The first concrete occurrence of a differing pattern, values already redacted."""

    pattern: str  # normalised, e.g. `$.items[*].price`
    path: str  # concrete, e.g. `$.items[3].price`
    primary: Any = None  # decoded JSON value (legacy side)
    candidate: Any = None

    def to_json(self) -> dict[str, Any]:
        """A plain dict for storage and JSON output."""
        return {
            "pattern": self.pattern,
            "path": self.path,
            "primary": self.primary,
            "candidate": self.candidate,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DiffExample:
        """The inverse of `to_json`."""
        return cls(
            pattern=str(data.get("pattern", "")),
            path=str(data.get("path", "")),
            primary=data.get("primary"),
            candidate=data.get("candidate"),
        )


@dataclass(frozen=True, slots=True)
class ComparisonRecord:
    """What the store keeps about one compared request (redaction is the caller's job)."""

    route: str
    outcome: Outcome
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
    method: str = "GET"
    path: str = ""  # the route's path template, e.g. /api/v1/orders/{order_id}
    request_path: str = ""  # the concrete path, redacted by the caller
    status_primary: int | None = None
    status_candidate: int | None = None
    latency_primary_ms: float | None = None
    latency_candidate_ms: float | None = None
    diff_paths: tuple[str, ...] = ()  # normalised patterns, one per differing place
    diff_examples: tuple[DiffExample, ...] = ()
    noise: tuple[str, ...] = ()  # normalised patterns that differed between two legacy calls
    primary_body: bytes | str | None = None  # capped and redacted; mismatches only
    candidate_body: bytes | str | None = None
    detail: str = ""  # short reason for errors and timeouts, e.g. "connection reset"
    request_id: str = ""
    mode: RecordMode = "shadow"
    config_version: str = ""

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {self.outcome!r}; expected one of {OUTCOMES}")
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; expected one of {MODES}")
        if not self.route:
            raise ValueError("a comparison record needs a route")
        if self.time.tzinfo is None:
            raise ValueError("time must be timezone-aware (UTC)")

    def example_for(self, pattern: str) -> DiffExample | None:
        """The example recorded for `pattern`, if any."""
        for example in self.diff_examples:
            if example.pattern == pattern:
                return example
        return None


@dataclass(frozen=True, slots=True)
class RouteChange:
    """One entry of the migration audit log: who moved a route from where to where, and why."""

    route: str
    to_mode: str
    actor: str = ""
    kind: str = "manual"  # manual | auto_advance | auto_rollback | ...
    from_mode: str | None = None
    from_percent: float | None = None
    to_percent: float | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
    id: int | None = None  # set when read back from the store
