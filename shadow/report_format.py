"""Renderers of a `Report`: text (terminal), markdown (PR comment), json, junit and html."""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import orjson

from shadow.report import Report, RouteReport

__all__ = [
    "FORMATS",
    "finite",
    "format_pair",
    "format_value",
    "render",
    "render_json",
    "render_junit",
    "render_markdown",
    "render_text",
]


def render(report: Report, fmt: str) -> str:
    """The report in format `fmt` (one of FORMATS); ValueError for an unknown one."""
    try:
        renderer = FORMATS[fmt]
    except KeyError:
        raise ValueError(f"unknown report format {fmt!r}; choose from {sorted(FORMATS)}") from None
    return renderer(report)


def format_value(value: Any, limit: int = 60) -> str:
    """A JSON value as compact text, cut to `limit` characters."""
    return _cut(_json_text(value), 0, limit)


def format_pair(primary: Any, candidate: Any, limit: int = 60) -> tuple[str, str]:
    """Two differing values as `format_value` shows them, except that when cutting both at
    `limit` would leave the same text, both are shown from just before where they differ."""
    a, b = _json_text(primary), _json_text(candidate)
    shown = _cut(a, 0, limit), _cut(b, 0, limit)
    if shown[0] != shown[1] or a == b:
        return shown
    same = next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )
    start = max(0, min(same - limit // 4, max(len(a), len(b)) - limit + 1))
    return _cut(a, start, limit), _cut(b, start, limit)


def _json_text(value: Any) -> str:
    """Compact JSON text, with the characters `_shown` escapes written as JSON escapes."""
    try:
        return _shown(orjson.dumps(value, default=str).decode())
    except orjson.JSONEncodeError:  # integers past 64 bits, nesting past 255 levels
        return _shown(_stdlib_json(value, None))


def _cut(text: str, start: int, limit: int) -> str:
    """`limit` characters of `text` from `start`, with `…` where some were left out."""
    head = "…" if start > 0 else ""
    rest = text[start:]
    if len(head) + len(rest) <= limit:
        return head + rest
    return head + rest[: max(0, limit - len(head) - 1)] + "…"


# Characters a terminal acts on, XML 1.0 refuses, or that end a line: JSON keys in
# differing paths come from backends' answers and are written as \uXXXX escapes.
_UNSHOWN = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff\ufffe\uffff]")


def _shown(text: str) -> str:
    """`text` with control characters (and what XML cannot hold) as visible escapes."""
    return _UNSHOWN.sub(lambda m: f"\\u{ord(m[0]):04x}", text)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _ci(route: RouteReport) -> str:
    ci = route.mismatch_ci
    return "-" if ci is None else f"{ci[0] * 100:.2f}-{ci[1] * 100:.2f}%"


def _verdict(route: RouteReport) -> str:
    return route.verdict.upper()


def _window(report: Report) -> str:
    since = report.since.isoformat() if report.since else "the beginning"
    until = report.until.isoformat() if report.until else "now"
    return f"{since} to {until}"


def _summary_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    head = [
        "route",
        "samples",
        "mismatches",
        "rate",
        "95% CI",
        "errors",
        "timeouts",
        "skipped",
        "dropped",
        "p50 L/C ms",
        "p99 L/C ms",
        "verdict",
    ]
    rows = [
        [
            _shown(r.route),
            str(r.samples),
            str(r.mismatches),
            _rate(r.mismatch_rate),
            _ci(r),
            str(r.candidate_errors),
            str(r.candidate_timeouts),
            str(r.skipped),
            str(r.dropped),
            f"{_ms(r.latency_primary.p50)}/{_ms(r.latency_candidate.p50)}",
            f"{_ms(r.latency_primary.p99)}/{_ms(r.latency_candidate.p99)}",
            _verdict(r),
        ]
        for r in report.routes
    ]
    return head, rows


def render_text(report: Report) -> str:
    """A terminal table, then each route's reasons, top paths and noise."""
    head, rows = _summary_rows(report)
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    numeric = set(range(1, len(head) - 1))

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out = [f"strangler shadow report: {_window(report)}", ""]
    if not report.routes:
        out.append("no comparisons stored in this window: nothing to judge (gate fails)")
        return "\n".join(out) + "\n"
    out += [line(head), line(["-" * w for w in widths])]
    out += [line(row) for row in rows]
    for r in report.routes:
        if r.passed and not r.top_paths and not r.noise_paths:
            continue
        where = _shown(f"{r.method} {r.path}".strip())
        name = _shown(r.route)
        out += ["", f"{name} ({where}):" if where else f"{name}:"]
        out += [f"  FAIL: {reason}" for reason in r.reasons]
        if r.top_paths:
            out.append("  top differing paths (count, share of mismatches, legacy -> candidate):")
        for p in r.top_paths:
            example = ""
            if p.example:
                legacy, candidate = format_pair(p.example.primary, p.example.candidate)
                example = f"  e.g. {_shown(p.example.path)}: {legacy} -> {candidate}"
            out.append(f"    {_shown(p.pattern)}  {p.count}  {p.share * 100:.1f}%{example}")
        if r.distinct_paths > len(r.top_paths):
            out.append(f"    ... and {r.distinct_paths - len(r.top_paths)} more paths")
        if r.noise_paths:
            noise = ", ".join(f"{_shown(n.pattern)} ({n.count})" for n in r.noise_paths)
            out.append(f"  noise (not counted): {noise}")
    verdict = "PASS" if report.passed else "FAIL"
    judged = report.judged
    out += ["", f"gate: {verdict} ({sum(r.passed for r in judged)}/{len(judged)})"]
    return "\n".join(out) + "\n"


# What opens or closes something inline in GFM (or on GitHub: `$` math), and the pipe that
# splits a table row. A backslash makes any ASCII punctuation literal, in a table cell too:
# the table drops the one before a pipe before inline parsing (`\\\|` for `\|`: the table
# leaves `\\|`, which shows `\|`). Other punctuation (`-`, `.`, `/`, `{`) is inert mid-line.
_MD_ACTIVE = re.compile(r"[\\`*_~\[\]<&|#$]")
_MD_EDGE_SPACE = re.compile(r"^ | $")  # a table cell, a heading: trimmed unless an entity
# GitHub links `://` and `www.` where it reads them in the source (after an escaped `_` too):
# a backslash before the `:` or the `.` stops it. It finds e-mail links and @mentions in the
# text once escapes and entities are decoded (`\@` and `&#64;` do nothing), so only a
# character really there stops those: a zero-width space after each `@`, and between `#`
# or `GH-` and a digit (an issue reference). A code span is never linked.
_MD_LINK_SOURCE = re.compile(r":(?=//)|(?<=www)\.", re.IGNORECASE)
_MD_REFERENCE = re.compile(r"(?:(?<=#)|(?<=gh-))(?=\d)", re.IGNORECASE)


def _md(text: str) -> str:
    """`text` as Markdown that shows it as it is (a table cell, a heading, a list item), with
    nothing in it that GitHub turns into a link or a mention."""
    escaped = _MD_ACTIVE.sub(lambda m: "\\" + m[0], _shown(text))
    unlinked = _MD_REFERENCE.sub("&#8203;", _MD_LINK_SOURCE.sub(lambda m: "\\" + m[0], escaped))
    unlinked = unlinked.replace("@", "@&#8203;")  # after: no `#` of an entity is a reference
    return _MD_EDGE_SPACE.sub("&#32;", unlinked)


def _md_code(text: str, *, cell: bool = True) -> str:
    """`text` as a code span: backslashes are literal in one, a backtick in `text` gets a
    longer fence, spaces at its ends are kept (CommonMark strips one each side when both
    are there). In a table cell every pipe is `\\|`: the table splits its row on pipes
    before it parses code spans, then drops the backslash before each escaped pipe."""
    code = _shown(text)
    if not code:
        return ""  # no code span is empty
    fence = "`" * (max(map(len, re.findall("`+", code)), default=0) + 1)
    if code[0] == "`" or code[-1] == "`" or (code[0] == code[-1] == " " and code.strip(" ")):
        code = f" {code} "
    return fence + (code.replace("|", "\\|") if cell else code) + fence


def _md_row(cells: list[str]) -> str:
    """A table row of cells already escaped (`_md`, `_md_code`)."""
    return "| " + " | ".join(cells) + " |"


def render_markdown(report: Report) -> str:
    """A pull-request comment: a pipe table, then top paths side by side per route."""
    verdict = "✅ pass" if report.passed else "❌ fail"
    out = [
        "## strangler shadow report",
        "",
        f"Window: {_md(_window(report))}. Gate: **{verdict}**.",
        "",
    ]
    if not report.routes:
        out.append("_No comparisons stored in this window._")
        return "\n".join(out) + "\n"
    head, rows = _summary_rows(report)
    out.append(_md_row(head))
    out.append("|" + "|".join([" --- "] + [" ---: "] * (len(head) - 2) + [" --- "]) + "|")
    for row in rows:
        out.append(_md_row([_md(c) for c in row]))
    for r in report.routes:
        if r.passed and not r.top_paths and not r.noise_paths:
            continue
        out += ["", f"### {_md(r.route)}", ""]
        out += [f"- **{_md(reason)}**" for reason in r.reasons]
        if r.reasons:
            out.append("")
        if r.top_paths:
            out += [
                "| path | count | share | example | legacy | candidate |",
                "| --- | ---: | ---: | --- | --- | --- |",
            ]
            for p in r.top_paths:
                ex = p.example
                legacy, candidate = format_pair(ex.primary, ex.candidate) if ex else ("", "")
                cells = [
                    _md_code(p.pattern),
                    str(p.count),
                    f"{p.share * 100:.1f}%",
                    _md_code(ex.path) if ex else "",
                    _md_code(legacy) if ex else "",
                    _md_code(candidate) if ex else "",
                ]
                out.append(_md_row(cells))
        if r.noise_paths:
            noise = ", ".join(
                f"{_md_code(n.pattern, cell=False)} ({n.count})" for n in r.noise_paths
            )
            out += ["", f"Noise (not counted as mismatches): {noise}"]
    return "\n".join(out) + "\n"


def render_json(report: Report) -> str:
    """The versioned JSON document (schema: `shadow/report.schema.json`)."""
    doc = report.to_json()
    try:
        return orjson.dumps(doc, default=str, option=orjson.OPT_INDENT_2).decode() + "\n"
    except orjson.JSONEncodeError:  # an example past 64 bits or 255 levels: exact all the same
        return _stdlib_json(doc, 2) + "\n"


def _stdlib_json(value: Any, indent: int | None) -> str:
    separators = (",", ": ") if indent else (",", ":")
    try:
        return json.dumps(value, default=str, indent=indent, separators=separators, allow_nan=False)
    except ValueError:  # NaN or an infinity: null, as orjson writes them
        return json.dumps(finite(value), default=str, indent=indent, separators=separators)


def finite(value: Any) -> Any:
    """`value` with NaN and infinities as null (as orjson writes them; browsers reject them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def _failure_text(r: RouteReport) -> str:
    lines = list(r.reasons)
    for p in r.top_paths:
        ex = p.example
        example = (
            f" e.g. {_shown(ex.path)}: {' -> '.join(format_pair(ex.primary, ex.candidate))}"
            if ex
            else ""
        )
        lines.append(f"{_shown(p.pattern)}: {p.count} ({p.share * 100:.1f}%){example}")
    return "\n".join(lines)


def render_junit(report: Report) -> str:
    """JUnit XML: one test case per route, a failure when the route misses its gate."""
    # No route judged fails the gate (exit 1): a case says so, or the file shows no failure.
    unjudged = not report.judged
    failures = sum(not r.passed for r in report.routes) + unjudged
    skipped = len(report.routes) - len(report.judged)
    tests = str(len(report.routes) + unjudged)
    suites = ET.Element("testsuites", name="strangler", tests=tests)
    suites.set("failures", str(failures))
    suite = ET.SubElement(
        suites,
        "testsuite",
        name="strangler.shadow",
        tests=tests,
        failures=str(failures),
        errors="0",
        skipped=str(skipped),
        timestamp=report.generated_at.isoformat(),
    )
    props = ET.SubElement(suite, "properties")
    for key, value in (
        ("since", report.since.isoformat() if report.since else ""),
        ("until", report.until.isoformat() if report.until else ""),
    ):
        ET.SubElement(props, "property", name=key, value=value)
    if unjudged:
        case = ET.SubElement(suite, "testcase", classname="strangler.gate", name="gate", time="0")
        why = (
            "no comparisons stored in this window: nothing to judge"
            if not report.routes
            else "no route under a gate in this window: nothing to judge"
        )
        ET.SubElement(case, "failure", type="ShadowGate", message=why).text = why
    for r in report.routes:
        case = ET.SubElement(
            suite, "testcase", classname="strangler.route", name=_shown(r.route), time="0"
        )
        if not r.judged:
            ET.SubElement(case, "skipped", message="no gate: shown for information")
        elif not r.passed:
            top = f"; top: {_shown(r.top_paths[0].pattern)}" if r.top_paths else ""
            failure = ET.SubElement(
                case, "failure", type="ShadowGate", message="; ".join(r.reasons) + top
            )
            failure.text = _failure_text(r)
        out = ET.SubElement(case, "system-out")
        out.text = (
            f"samples={r.samples} matches={r.matches} mismatches={r.mismatches}"
            f" mismatch_rate={_rate(r.mismatch_rate)} ci95={_ci(r)}"
            f" errors={r.candidate_errors} timeouts={r.candidate_timeouts}"
            f" skipped={r.skipped} dropped={r.dropped}"
            f" p99_ms={_ms(r.latency_primary.p99)}/{_ms(r.latency_candidate.p99)}"
        )
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, "unicode") + "\n"


def _render_html(report: Report) -> str:
    from shadow.report_html import render_html

    return render_html(report)


FORMATS: dict[str, Callable[[Report], str]] = {
    "text": render_text,
    "markdown": render_markdown,
    "json": render_json,
    "junit": render_junit,
    "html": _render_html,
}
