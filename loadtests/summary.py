"""Locust's CSV stats as a per-endpoint summary table (rps, p50, p95, p99, failures)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

__all__ = ["EndpointStats", "format_summary", "parse_stats"]


@dataclass(frozen=True, slots=True)
class EndpointStats:
    """One row of Locust's `<prefix>_stats.csv` (the `Aggregated` row has method '')."""

    method: str
    name: str
    requests: int
    failures: int
    rps: float
    p50: float
    p95: float
    p99: float
    max_ms: float

    @property
    def aggregated(self) -> bool:
        """Whether this is Locust's all-endpoints total."""
        return self.name == "Aggregated"


def _num(row: dict[str, str], key: str) -> float:
    value = (row.get(key) or "").strip()
    if not value or value == "N/A":
        return 0.0
    return float(value)


def parse_stats(text: str) -> list[EndpointStats]:
    """The rows of a Locust stats CSV, endpoints first and the `Aggregated` total last."""
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        rows.append(
            EndpointStats(
                method=(row.get("Type") or "").strip(),
                name=(row.get("Name") or "").strip(),
                requests=int(_num(row, "Request Count")),
                failures=int(_num(row, "Failure Count")),
                rps=_num(row, "Requests/s"),
                p50=_num(row, "50%"),
                p95=_num(row, "95%"),
                p99=_num(row, "99%"),
                max_ms=_num(row, "Max Response Time"),
            )
        )
    rows.sort(key=lambda r: (r.aggregated, r.name, r.method))
    return rows


def format_summary(rows: list[EndpointStats]) -> str:
    """A fixed-width table of `rows` (latencies in ms, as Locust rounds them)."""
    header = ("endpoint", "reqs", "fails", "rps", "p50", "p95", "p99", "max")
    lines = [
        (
            r.name if r.aggregated else f"{r.method} {r.name}",
            str(r.requests),
            str(r.failures),
            f"{r.rps:.1f}",
            f"{r.p50:g}",
            f"{r.p95:g}",
            f"{r.p99:g}",
            f"{r.max_ms:.0f}",
        )
        for r in rows
    ]
    widths = [max(len(c[i]) for c in [header, *lines]) for i in range(len(header))]

    def fmt(cells: tuple[str, ...]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join((first, *rest))

    out = [fmt(header), "  ".join("-" * w for w in widths)]
    out.extend(fmt(c) for c in lines)
    return "\n".join(out) + "\n"
