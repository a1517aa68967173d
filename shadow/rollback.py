"""Automatic rollback detection: a sliding window over a route's recent candidate outcomes.

Pure and O(1) per observation: a ring buffer with running counts, and log-scale latency
histograms for the p99 gate. The data plane feeds it (compared responses as `match` or
`mismatch`; served candidate responses as `ok`, or as `candidate_error` on a 5xx or a
connection failure) and switches the route to legacy on the first `Breach`.

A served answer compared with legacy afterwards (`served=True`) is a sample for the
mismatch and latency gates but no second candidate call: the error gate counts each call
once, so a route's served writes (never compared) weigh as much as its reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from shadow.gates import Gate, GateLimits

__all__ = ["Breach", "RollbackWindow"]

_MATCH, _MISMATCH, _ERROR, _OK = 0, 1, 2, 3
_SERVED_MATCH, _SERVED_MISMATCH = 4, 5  # comparisons of served answers: not calls again
_CODES = {
    "match": _MATCH,
    "mismatch": _MISMATCH,
    "candidate_error": _ERROR,
    "candidate_timeout": _ERROR,
    "error": _ERROR,
    "ok": _OK,
}
_SUB = 8  # histogram buckets per doubling: p99 within ~6 %
_MIN_EXP, _MAX_EXP = -7, 18  # 2**-8 ms .. 2**18 ms; values outside are clamped
_BUCKETS = (_MAX_EXP - _MIN_EXP + 1) * _SUB
_LATENCY_EVERY = 16  # the p99 walk is O(buckets): amortise it over observations


@dataclass(frozen=True, slots=True)
class Breach:
    """A gate broken by the window: which, the value and limit, and what the window held."""

    gate: Gate
    value: float
    limit: float
    observations: int  # entries in the window when it tripped
    samples: int  # compared (match + mismatch) in the window
    errors: int  # candidate errors and timeouts in the window

    @property
    def message(self) -> str:
        """The breach in words, with the numbers."""
        what = {
            "mismatch_rate": f"mismatch rate {self.value:.2%} above {self.limit:.2%}",
            "error_rate": f"error rate {self.value:.2%} above {self.limit:.2%}",
            "p99_ratio": f"candidate p99 {self.value:.2f}x legacy, above {self.limit:g}x",
            "samples": f"{self.value:.0f} samples",
        }[self.gate]
        return (
            f"{what} over the last {self.observations} observations"
            f" ({self.samples} compared, {self.errors} errors)"
        )

    def to_json(self) -> dict[str, Any]:
        """The breach as plain JSON values (for the audit log's evidence)."""
        return {
            "gate": self.gate,
            "value": self.value,
            "limit": self.limit,
            "observations": self.observations,
            "samples": self.samples,
            "errors": self.errors,
            "message": self.message,
        }


def _bucket(ms: float | None) -> int:
    if ms is None or ms != ms or ms < 0.0:  # no latency (None, NaN or nonsense)
        return -1
    if math.isinf(ms):
        return _BUCKETS - 1
    m, e = math.frexp(ms)  # ms = m * 2**e, 0.5 <= m < 1
    if e < _MIN_EXP or m == 0.0:
        return 0
    if e > _MAX_EXP:
        return _BUCKETS - 1
    return (e - _MIN_EXP) * _SUB + int((m - 0.5) * 2 * _SUB)


def _bucket_value(index: int) -> float:
    e, sub = divmod(index, _SUB)
    return (0.5 + (sub + 0.5) / (2 * _SUB)) * 2.0 ** (e + _MIN_EXP)


class RollbackWindow:
    """The last `size` candidate outcomes of one route, judged against its promotion gates."""

    __slots__ = (
        "_cand",
        "_cand_hist",
        "_cand_n",
        "_codes",
        "_counts",
        "_limits",
        "_min_samples",
        "_next",
        "_prim",
        "_prim_hist",
        "_prim_n",
        "_seen",
        "size",
    )

    def __init__(self, promotion: GateLimits, size: int = 200, min_samples: int = 50) -> None:
        if size < 1 or not 1 <= min_samples <= size:
            raise ValueError("need size >= 1 and 1 <= min_samples <= size")
        self._limits = promotion
        self.size = size
        self._min_samples = min_samples
        self._clear()

    def _clear(self) -> None:
        size = self.size
        self._codes = [-1] * size
        self._prim = [-1] * size
        self._cand = [-1] * size
        self._counts = [0, 0, 0, 0, 0, 0]
        self._prim_hist = [0] * _BUCKETS
        self._cand_hist = [0] * _BUCKETS
        self._prim_n = 0
        self._cand_n = 0
        self._next = 0
        self._seen = 0

    @property
    def observations(self) -> int:
        """Entries currently in the window."""
        return min(self._seen, self.size)

    @property
    def failure_bound(self) -> int:
        """Most candidate failures the window can contain without tripping the error gate.

        Below `min_samples` calls nothing trips (so up to `min_samples - 1` failures); past
        it, the error gate holds at most `floor(max_error_rate * size)` failures in the window.
        """
        return max(self._min_samples - 1, math.floor(self._limits.max_error_rate * self.size))

    def reset(self) -> None:
        """Forget every observation (after a config change or an operator's clear)."""
        self._clear()

    def observe(
        self,
        outcome: str,
        primary_ms: float | None,
        candidate_ms: float | None,
        *,
        served: bool = False,
    ) -> Breach | None:
        """Add one outcome; a `Breach` when a gate is now broken with enough samples.
        `served`: the comparison of an answer the candidate served, already counted as
        `ok` or `candidate_error` when it was served."""
        code = _CODES.get(outcome)
        if code is None:  # skipped, dropped: the candidate was not called
            return None
        if served:
            if code == _MATCH:
                code = _SERVED_MATCH
            elif code == _MISMATCH:
                code = _SERVED_MISMATCH
            else:  # its error was counted when it was served
                return None
        i = self._next
        if self._seen >= self.size:
            self._evict(i)
        self._codes[i] = code
        self._counts[code] += 1
        p, c = _bucket(primary_ms), _bucket(candidate_ms)
        self._prim[i], self._cand[i] = p, c
        if p >= 0:
            self._prim_hist[p] += 1
            self._prim_n += 1
        if c >= 0:
            self._cand_hist[c] += 1
            self._cand_n += 1
        self._next = 0 if i + 1 == self.size else i + 1
        self._seen += 1
        return self._judge()

    def _evict(self, i: int) -> None:
        self._counts[self._codes[i]] -= 1
        p, c = self._prim[i], self._cand[i]
        if p >= 0:
            self._prim_hist[p] -= 1
            self._prim_n -= 1
        if c >= 0:
            self._cand_hist[c] -= 1
            self._cand_n -= 1

    def _judge(self) -> Breach | None:
        limits, need = self._limits, self._min_samples
        matches, mismatches, errors, ok, served_matches, served_mismatches = self._counts
        attempts = matches + mismatches + errors + ok  # candidate calls, each once
        mismatches += served_mismatches
        samples = matches + served_matches + mismatches
        if attempts >= need and errors / attempts > limits.max_error_rate:
            return self._breach("error_rate", errors / attempts, limits.max_error_rate)
        if samples >= need and mismatches / samples > limits.max_mismatch_rate:
            return self._breach("mismatch_rate", mismatches / samples, limits.max_mismatch_rate)
        max_ratio = limits.max_p99_ratio
        if (
            max_ratio is not None
            and self._seen % _LATENCY_EVERY == 0
            and min(self._prim_n, self._cand_n) >= need
        ):
            legacy = _p99(self._prim_hist, self._prim_n)
            ratio = _p99(self._cand_hist, self._cand_n) / legacy
            if ratio > max_ratio:
                return self._breach("p99_ratio", ratio, max_ratio)
        return None

    def _breach(self, gate: Gate, value: float, limit: float) -> Breach:
        matches, mismatches, errors, _ok, served_matches, served_mismatches = self._counts
        samples = matches + mismatches + served_matches + served_mismatches
        return Breach(gate, value, limit, self.observations, samples, errors)


def _p99(hist: list[int], n: int) -> float:
    above = n - math.ceil(0.99 * n)  # values ranked above the nearest-rank p99
    seen = 0
    for index in range(_BUCKETS - 1, -1, -1):
        seen += hist[index]
        if seen > above:
            return _bucket_value(index)
    return _bucket_value(0)
