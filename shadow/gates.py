"""Promotion gates: comparison evidence in, a verdict with one reason per failed gate out.

Pure: no I/O. The limits come from a route's `promotion` block (or any object with the
same four attributes, such as `shadow.report.Thresholds`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

__all__ = ["Evidence", "Gate", "GateLimits", "Reason", "Verdict", "error_rate", "evaluate"]

Gate = Literal["samples", "mismatch_rate", "error_rate", "p99_ratio"]


class GateLimits(Protocol):
    """What a gate needs from a route's promotion settings."""

    @property
    def min_samples(self) -> int: ...

    @property
    def max_mismatch_rate(self) -> float: ...

    @property
    def max_error_rate(self) -> float: ...

    @property
    def max_p99_ratio(self) -> float | None: ...


def error_rate(samples: int, errors: int, served: int) -> float | None:
    """Candidate errors and timeouts per candidate call: the compared samples, the errors,
    and the calls answered without a comparison (served writes); None without any."""
    attempted = samples + errors + served
    return errors / attempted if attempted else None


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the comparisons of a route say: compared samples, mismatches, errors, p99s."""

    samples: int = 0  # compared: matches + mismatches
    mismatches: int = 0
    errors: int = 0  # candidate errors + timeouts
    served: int = 0  # candidate calls answered without a comparison (served writes)
    p99_primary_ms: float | None = None
    p99_candidate_ms: float | None = None
    since: datetime | None = None  # start of the window (the route's last change)

    def __post_init__(self) -> None:
        if (
            min(self.samples, self.errors, self.served) < 0
            or not 0 <= self.mismatches <= self.samples
        ):
            raise ValueError("evidence counts must be >= 0 with mismatches <= samples")

    @property
    def mismatch_rate(self) -> float | None:
        """Mismatches per compared sample."""
        return self.mismatches / self.samples if self.samples else None

    @property
    def error_rate(self) -> float | None:
        """Errors per candidate call (see `error_rate`)."""
        return error_rate(self.samples, self.errors, self.served)

    @property
    def p99_ratio(self) -> float | None:
        """Candidate p99 over legacy p99 latency."""
        p, c = self.p99_primary_ms, self.p99_candidate_ms
        return c / p if p and c is not None else None

    @property
    def empty(self) -> bool:
        """No compared sample and no error at all."""
        return self.samples == 0 and self.errors == 0

    def to_json(self) -> dict[str, Any]:
        """The evidence as plain JSON values (for the audit log and `--format json`)."""
        since = self.since.astimezone(UTC).isoformat() if self.since else None
        return {
            "since": since,
            "samples": self.samples,
            "mismatches": self.mismatches,
            "errors": self.errors,
            "served": self.served,
            "mismatch_rate": self.mismatch_rate,
            "error_rate": self.error_rate,
            "p99_primary_ms": self.p99_primary_ms,
            "p99_candidate_ms": self.p99_candidate_ms,
            "p99_ratio": self.p99_ratio,
        }


@dataclass(frozen=True, slots=True)
class Reason:
    """One failed gate: which, the measured value and the limit it broke."""

    gate: Gate
    value: float
    limit: float

    @property
    def message(self) -> str:
        """The reason in words, with the numbers."""
        if self.gate == "samples":
            return (
                f"samples short: {self.value:.0f} compared samples,"
                f" below the minimum of {self.limit:.0f}"
            )
        if self.gate == "p99_ratio":
            return (
                f"p99 ratio over: candidate p99 is {self.value:.2f}x legacy, above {self.limit:g}x"
            )
        label = "mismatch rate" if self.gate == "mismatch_rate" else "error rate"
        return f"{label} over: {_pct(self.value)} above the maximum {_pct(self.limit)}"

    def to_json(self) -> dict[str, Any]:
        """The reason as plain JSON values."""
        return {
            "gate": self.gate,
            "value": self.value,
            "limit": self.limit,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of a gate evaluation: passed when there is no reason against."""

    evidence: Evidence
    reasons: tuple[Reason, ...] = ()

    @property
    def passed(self) -> bool:
        """Whether every gate passed."""
        return not self.reasons

    def to_json(self) -> dict[str, Any]:
        """Verdict and evidence as plain JSON values."""
        return {
            "passed": self.passed,
            "reasons": [r.to_json() for r in self.reasons],
            "evidence": self.evidence.to_json(),
        }


def evaluate(evidence: Evidence, limits: GateLimits) -> Verdict:
    """Judge `evidence` against `limits`; every failed gate gives one reason."""
    reasons: list[Reason] = []
    if evidence.samples < limits.min_samples:
        reasons.append(Reason("samples", evidence.samples, limits.min_samples))
    rate = evidence.mismatch_rate
    if rate is not None and rate > limits.max_mismatch_rate:
        reasons.append(Reason("mismatch_rate", rate, limits.max_mismatch_rate))
    err = evidence.error_rate
    if err is not None and err > limits.max_error_rate:
        reasons.append(Reason("error_rate", err, limits.max_error_rate))
    ratio, max_ratio = evidence.p99_ratio, limits.max_p99_ratio
    if ratio is not None and max_ratio is not None and ratio > max_ratio:
        reasons.append(Reason("p99_ratio", ratio, max_ratio))
    return Verdict(evidence, tuple(reasons))


def _pct(rate: float) -> str:
    return f"{rate * 100:.3g}%"
