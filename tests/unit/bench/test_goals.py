"""Goal verdicts of issues 4, 6 and 7 from table rows and section results."""

from __future__ import annotations

from bench.goals import Verdict, collect_goals, format_goals

_ROWS: list[dict[str, object]] = [
    {"target": "strangler-1w", "connections": 64, "x_minimal": 4.2, "cpu_vs_nginx": 0.3},
    {"target": "strangler-1w", "connections": 1, "added_p50_ms": 0.08},
]


def _sections() -> dict[str, dict[str, object]]:
    shadow = [
        {"phase": "half", "mode": "legacy", "p50_ms": 0.2},
        {"phase": "half", "mode": "shadow 100%", "p50_x": 1.05, "p99_x": 1.3, "compared_pct": 95.0},
        {"phase": "saturating", "mode": "shadow 100%", "rps_x": 0.5, "shed": 10, "compared": 90},
    ]
    compare = [{"case": f"c{i}", "ratio": r} for i, r in enumerate([450.0, 143.0, 670.0, 99.5])]
    return {
        "shadow": {"title": "s", "rows": shadow, "note": None},
        "compare": {"title": "c", "rows": compare, "note": None},
        "report": {"title": "r", "rows": [{"rows": 1000000, "report_median_s": 1.4}], "note": None},
        "replay": {"title": "p", "rows": [{"req_s": 2100}, {"req_s": 3400}], "note": None},
    }


def test_every_goal_gets_its_verdict() -> None:
    goals = collect_goals(_ROWS, _sections())
    verdicts = {(g.issue, g.text.split(" (")[0]): g.met for g in goals}
    assert [g.issue for g in goals] == [4, 4, 4, 6, 6, 6, 6, 6, 7, 7]
    assert [g.met for g in goals] == [
        True,
        False,
        True,
        True,
        False,
        True,
        False,
        False,
        True,
        None,
    ]
    assert len(verdicts) == 10
    compare = goals[7]
    assert compare.value == 99.5
    assert "lowest: c3" in compare.text
    assert "shed 10, compared 90" in goals[6].text
    assert goals[9].value == 3400


def test_missing_sections_are_not_measured() -> None:
    goals = collect_goals([], {})
    assert all(g.met is None for g in goals)
    assert "[not measured]" in format_goals(goals)


def test_format_shows_units_and_figure_only_goals() -> None:
    text = format_goals(
        [
            Verdict(6, "share", 95.0, 80.0, True, "%"),
            Verdict(7, "replay", 3400.0, None, True, "req/s"),
            Verdict(7, "report", 1.4, 2.0, False, "s"),
        ]
    )
    assert text.splitlines() == [
        "  [met] issue 6: share: 95.0%",
        "  [figure] issue 7: replay: 3,400 req/s",
        "  [met] issue 7: report: 1.400 s",
    ]
    assert Verdict(4, "x", 1.0, 2.0).as_json()["met"] is False


def test_the_default_shadow_row_gets_the_goals_and_the_in_loop_one_figures() -> None:
    sections = _sections()
    rows = sections["shadow"]["rows"]
    assert isinstance(rows, list)
    rows += [
        {"phase": "half", "mode": "shadow 100% in-loop", "p50_x": 1.6, "p99_x": 2.0},
        {"phase": "saturating", "mode": "shadow 100% in-loop", "rps_x": 0.95},
    ]
    rows[-2]["compared_pct"] = 41.0
    shadow = [g for g in collect_goals(_ROWS, sections) if g.issue == 6 and "A/A" not in g.text]
    shadow = [g for g in shadow if "deepdiff" not in g.text]
    assert [g.text.split(" primary")[0].split(":")[0] for g in shadow] == [
        *["shadow 100%"] * 4,
        *["shadow 100% in-loop"] * 4,
    ]
    assert [g.met for g in shadow[:4]] == [True, False, True, False]
    assert [(g.value, g.limit, g.met) for g in shadow[4:]] == [
        (1.6, None, None),
        (2.0, None, None),
        (41.0, None, None),
        (0.95, None, None),
    ]
    assert "[figure] issue 6: shadow 100% in-loop: copies compared at half load: 41.0%" in (
        format_goals(shadow)
    )


def test_the_a_a_control_is_shown_as_figures_not_goals() -> None:
    sections = _sections()
    rows = sections["shadow"]["rows"]
    assert isinstance(rows, list)
    rows.append({"phase": "half", "mode": "legacy A/A", "p50_x": 0.97, "p99_x": 1.21})
    control = [g for g in collect_goals(_ROWS, sections) if "A/A" in g.text]
    assert [(g.issue, g.value, g.limit, g.met) for g in control] == [
        (6, 0.97, None, None),
        (6, 1.21, None, None),
    ]
    assert "[figure] issue 6: legacy A/A" in format_goals(control)
