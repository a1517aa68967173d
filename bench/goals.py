"""The goals of issues 4, 6 and 7 with this run's figures: met, NOT met or not measured."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bench.stats import evaluate_goals

__all__ = ["Verdict", "collect_goals", "format_goals"]

Row = Mapping[str, object]


@dataclass(frozen=True, slots=True)
class Verdict:
    """One goal: its issue, what it asks, the measured value and the limit (None: figure only)."""

    issue: int
    text: str
    value: float | None
    limit: float | None
    higher_is_better: bool = True
    unit: str = "x"

    @property
    def met(self) -> bool | None:
        """True or False once measured against a limit; None without a value or a limit."""
        if self.value is None or self.limit is None:
            return None
        return self.value >= self.limit if self.higher_is_better else self.value <= self.limit

    def as_json(self) -> dict[str, object]:
        """A results.json entry."""
        return {
            "issue": self.issue,
            "text": self.text,
            "value": self.value,
            "limit": self.limit,
            "higher_is_better": self.higher_is_better,
            "unit": self.unit,
            "met": self.met,
        }


def _num(row: Row | None, key: str) -> float | None:
    value = None if row is None else row.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _section_rows(sections: Mapping[str, Row], key: str) -> list[Row]:
    section = sections.get(key)
    rows = section.get("rows") if section is not None else None
    return [r for r in rows if isinstance(r, Mapping)] if isinstance(rows, list) else []


# the shadow section's modes (bench.shadow_bench.OFFLOAD, IN_LOOP): the goals are the
# default's (serve runs the copies in a helper); `limits.shadow_offload: false` is figures
_DEFAULT = "shadow 100%"
_IN_LOOP = "shadow 100% in-loop"
_CONTROL = "legacy A/A"  # bench.shadow_bench.CONTROL


def _find(rows: Sequence[Row], **want: object) -> Row | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in want.items())), None)


def _shadow_goals(sections: Mapping[str, Row]) -> list[Verdict]:
    rows = _section_rows(sections, "shadow")
    verdicts = _shadow_mode_goals(rows, _DEFAULT)
    if _find(rows, phase="half", mode=_IN_LOOP) is not None:
        verdicts += _shadow_mode_figures(rows, _IN_LOOP)
    control = _find(rows, phase="half", mode=_CONTROL)
    if control is not None:  # a figure, no goal: how far two identical proxies differ here
        verdicts += [
            Verdict(6, f"{_CONTROL} (a second legacy proxy) {q} / legacy at half load", v, None)
            for q, v in (("p50", _num(control, "p50_x")), ("p99", _num(control, "p99_x")))
        ]
    return verdicts


def _shadow_mode_goals(rows: Sequence[Row], mode: str) -> list[Verdict]:
    half = _find(rows, phase="half", mode=mode)
    full = _find(rows, phase="saturating", mode=mode)
    shed = _num(full, "shed")
    compared = _num(full, "compared")
    shed_text = (
        f" (shed {shed:,.0f}, compared {compared:,.0f})"
        if shed is not None and compared is not None
        else ""
    )
    return [
        *(
            Verdict(6, f"{mode} primary {q} <= 1.1x legacy at half load", value, 1.1, False)
            for q, value in (("p50", _num(half, "p50_x")), ("p99", _num(half, "p99_x")))
        ),
        Verdict(
            6,
            f"{mode}: copies compared rather than shed at half load >= 80%",
            _num(half, "compared_pct"),
            80.0,
            True,
            "%",
        ),
        Verdict(
            6,
            f"{mode} primary req/s >= 0.9x legacy at saturating load{shed_text}",
            _num(full, "rps_x"),
            0.9,
            True,
        ),
    ]


def _shadow_mode_figures(rows: Sequence[Row], mode: str) -> list[Verdict]:
    """The same measures as `_shadow_mode_goals`, as figures (a mode the goals are not for)."""
    half = _find(rows, phase="half", mode=mode)
    full = _find(rows, phase="saturating", mode=mode)
    return [
        *(
            Verdict(6, f"{mode} primary {q} / legacy at half load", _num(half, f"{q}_x"), None)
            for q in ("p50", "p99")
        ),
        Verdict(6, f"{mode}: copies compared at half load", _num(half, "compared_pct"), None,
                unit="%"),
        Verdict(6, f"{mode} primary req/s / legacy at saturating load", _num(full, "rps_x"), None),
    ]  # fmt: skip


def _compare_goal(sections: Mapping[str, Row]) -> Verdict:
    rows = _section_rows(sections, "compare")
    ratios = [(v, str(r.get("case"))) for r in rows if (v := _num(r, "ratio")) is not None]
    if len(ratios) < 4:
        return Verdict(
            6, "comparator >= 100x faster than deepdiff on the four documents", None, 100
        )
    lowest, case = min(ratios)
    text = f"comparator >= 100x faster than deepdiff on the four documents (lowest: {case})"
    return Verdict(6, text, lowest, 100.0)


def _report_goals(sections: Mapping[str, Row]) -> list[Verdict]:
    report = next((r for r in _section_rows(sections, "report") if "report_median_s" in r), None)
    rows = _num(report, "rows")
    size = f"{rows:,.0f}" if rows is not None else "1,000,000"
    replay = _section_rows(sections, "replay")
    rates = [v for r in replay if (v := _num(r, "req_s")) is not None]
    return [
        Verdict(
            7,
            f"report over {size} stored rows on PostgreSQL <= 2 s (median)",
            _num(report, "report_median_s"),
            2.0,
            False,
            "s",
        ),
        Verdict(
            7,
            "replay throughput, captured requests/s (best loop; no target figure)",
            max(rates) if rates else None,
            None,
            True,
            "req/s",
        ),
    ]


def collect_goals(rows: Sequence[Row], sections: Mapping[str, Row]) -> list[Verdict]:
    """Every goal from the proxy table rows (issue 4) and the sections (issues 6 and 7)."""
    issue4 = [
        Verdict(4, g.text, g.value, g.limit, g.higher_is_better, "ms" if "p50" in g.text else "x")
        for g in evaluate_goals([dict(r) for r in rows])
    ]
    return [*issue4, *_shadow_goals(sections), _compare_goal(sections), *_report_goals(sections)]


def _value(v: Verdict) -> str:
    if v.value is None:
        return "-"
    if v.unit == "x":
        return f"{v.value:.2f}x"
    if v.unit == "%":
        return f"{v.value:.1f}%"
    if v.unit == "req/s":
        return f"{v.value:,.0f} req/s"
    return f"{v.value:.3f} {v.unit}"


def format_goals(verdicts: Sequence[Verdict]) -> str:
    """One line per goal: verdict, issue, text, measured value."""
    labels = {True: "met", False: "NOT met", None: "not measured"}
    lines = []
    for v in verdicts:
        label = "figure" if v.limit is None and v.value is not None else labels[v.met]
        lines.append(f"  [{label}] issue {v.issue}: {v.text}: {_value(v)}")
    return "\n".join(lines)
