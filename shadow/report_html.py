"""The html report: one self-contained page, inline CSS and an inline SVG chart, no scripts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from html import escape

from shadow.report import Report, RouteReport
from shadow.report_format import format_pair

__all__ = ["render_html"]

_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
_W, _H = 760, 260
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 16, 16, 36

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d2330}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:28px 0 6px}
.meta{color:#5b6475;margin-bottom:16px}
table{border-collapse:collapse;margin:8px 0}
th,td{border:1px solid #d8dce4;padding:4px 8px;text-align:right;vertical-align:top}
th{background:#f3f5f9} td.l,th.l{text-align:left}
code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace;background:#f3f5f9;padding:1px 3px}
.pass{color:#137333;font-weight:600} .fail{color:#b3261e;font-weight:600}
ul.reasons{color:#b3261e;margin:4px 0}
svg text{font:11px system-ui,sans-serif;fill:#5b6475}
.legend span{display:inline-block;margin-right:14px}
.legend i{display:inline-block;width:12px;height:3px;margin-right:5px;vertical-align:middle}
"""


def render_html(report: Report) -> str:
    """A standalone page: summary table, chart of mismatch rate over time, per-route details."""
    verdict = "pass" if report.passed else "fail"
    since = report.since.isoformat() if report.since else "the beginning"
    until = report.until.isoformat() if report.until else "now"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>strangler shadow report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>strangler shadow report</h1>",
        f'<div class="meta">Window: {escape(since)} to {escape(until)} &middot; generated '
        f"{escape(report.generated_at.isoformat())} &middot; gate: "
        f'<span class="{verdict}">{verdict.upper()}</span></div>',
    ]
    if not report.routes:
        parts.append("<p>No comparisons stored in this window.</p></body></html>")
        return "\n".join(parts) + "\n"
    parts.append(_summary(report))
    parts.append("<h2>Mismatch rate over time</h2>")
    parts.append(_chart(report))
    for r in report.routes:
        parts.append(_details(r))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _summary(report: Report) -> str:
    head = (
        '<table id="summary"><tr><th class="l">route</th><th>samples</th><th>mismatches</th>'
        "<th>rate</th><th>95% CI</th><th>errors</th><th>timeouts</th><th>skipped</th>"
        "<th>dropped</th><th>p50 legacy / candidate ms</th><th>p99 legacy / candidate ms</th>"
        '<th class="l">verdict</th></tr>'
    )
    rows = []
    for r in report.routes:
        ci = r.mismatch_ci
        ci_text = "-" if ci is None else f"{_pct(ci[0])} &ndash; {_pct(ci[1])}"
        verdict = r.verdict
        rows.append(
            f'<tr><td class="l">{escape(r.route)}</td><td>{r.samples}</td><td>{r.mismatches}</td>'
            f"<td>{_pct(r.mismatch_rate)}</td><td>{ci_text}</td><td>{r.candidate_errors}</td>"
            f"<td>{r.candidate_timeouts}</td><td>{r.skipped}</td><td>{r.dropped}</td>"
            f"<td>{_ms(r.latency_primary.p50)} / {_ms(r.latency_candidate.p50)}</td>"
            f"<td>{_ms(r.latency_primary.p99)} / {_ms(r.latency_candidate.p99)}</td>"
            f'<td class="l {verdict.replace(" ", "-")}">{verdict.upper()}</td></tr>'
        )
    return head + "".join(rows) + "</table>"


def _nice_ceiling(value: float) -> float:
    for step in (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0):
        if value <= step:
            return step
    return 1.0


def _chart(report: Report) -> str:
    bucket = timedelta(seconds=report.bucket_seconds)
    starts = [b.start for r in report.routes for b in r.series if b.samples]
    if not starts:
        return '<p id="chart">No compared samples to chart.</p>'
    t0 = min(starts)
    t1 = max(starts) + bucket
    span = max((t1 - t0).total_seconds(), 1.0)
    rates = [b.mismatch_rate or 0.0 for r in report.routes for b in r.series if b.samples]
    ymax = _nice_ceiling(max(rates) * 1.1 if rates else 0.0)
    pw, ph = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def x(t: datetime) -> float:
        return _LEFT + pw * ((t - t0).total_seconds() + bucket.total_seconds() / 2) / span

    def y(rate: float) -> float:
        return _TOP + ph * (1 - rate / ymax)

    svg = [
        f'<svg id="chart" role="img" width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}">',
        "<title>Mismatch rate over time per route</title>",
        f'<rect x="{_LEFT}" y="{_TOP}" width="{pw}" height="{ph}" fill="#fff" stroke="#d8dce4"/>',
    ]
    for i in range(5):
        rate = ymax * i / 4
        yy = y(rate)
        svg.append(
            f'<line x1="{_LEFT}" x2="{_LEFT + pw}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#eef0f4"/>'
            f'<text x="{_LEFT - 6}" y="{yy + 4:.1f}" text-anchor="end">{_pct(rate)}</text>'
        )
    for frac, anchor in ((0.0, "start"), (0.5, "middle"), (1.0, "end")):
        t = t0 + timedelta(seconds=span * frac)
        label = t.astimezone(UTC).strftime("%Y-%m-%d %H:%M")
        svg.append(
            f'<text x="{_LEFT + pw * frac:.1f}" y="{_H - 12}" text-anchor="{anchor}">'
            f"{escape(label)} UTC</text>"
        )
    legend = []
    for i, r in enumerate(report.routes):
        color = _PALETTE[i % len(_PALETTE)]
        points = [(x(b.start), y(b.mismatch_rate or 0.0), b) for b in r.series if b.samples]
        if not points:
            continue
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py, _ in points)
        svg.append(
            f'<polyline class="series" data-route="{escape(r.route)}" fill="none" '
            f'stroke="{color}" stroke-width="2" points="{path}"/>'
        )
        for px, py, b in points:
            svg.append(
                f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.5" fill="{color}"><title>'
                f"{escape(r.route)} {escape(b.start.isoformat())}: {b.mismatches}/{b.samples}"
                f" ({_pct(b.mismatch_rate)})</title></circle>"
            )
        legend.append(f'<span><i style="background:{color}"></i>{escape(r.route)}</span>')
    svg.append("</svg>")
    return "\n".join(svg) + f'\n<div class="legend">{"".join(legend)}</div>'


def _details(r: RouteReport) -> str:
    verdict = r.verdict
    title = f"{r.method} {r.path}".strip()
    out = [
        f'<h2 id="route-{escape(r.route)}">{escape(r.route)} '
        f'<span class="{verdict.replace(" ", "-")}">{verdict.upper()}</span></h2>',
    ]
    if title:
        out.append(f"<div class=meta><code>{escape(title)}</code></div>")
    if r.reasons:
        out.append(
            '<ul class="reasons">' + "".join(f"<li>{escape(x)}</li>" for x in r.reasons) + "</ul>"
        )
    if r.top_paths:
        out.append(
            '<table class="paths"><tr><th class="l">path</th><th>count</th><th>share</th>'
            '<th class="l">example</th><th class="l">legacy</th><th class="l">candidate</th></tr>'
        )
        for p in r.top_paths:
            ex = p.example
            legacy, candidate = format_pair(ex.primary, ex.candidate, 120) if ex else ("", "")
            cells = (
                (
                    f"<code>{escape(ex.path)}</code>",
                    f"<code>{escape(legacy)}</code>",
                    f"<code>{escape(candidate)}</code>",
                )
                if ex
                else ("", "", "")
            )
            out.append(
                f'<tr><td class="l"><code>{escape(p.pattern)}</code></td><td>{p.count}</td>'
                f"<td>{p.share * 100:.1f}%</td>"
                + "".join(f'<td class="l">{c}</td>' for c in cells)
                + "</tr>"
            )
        out.append("</table>")
        if r.distinct_paths > len(r.top_paths):
            out.append(f"<p>… and {r.distinct_paths - len(r.top_paths)} more paths.</p>")
    if r.noise_paths:
        noise = ", ".join(f"<code>{escape(n.pattern)}</code> ({n.count})" for n in r.noise_paths)
        out.append(f"<p>Noise (not counted as mismatches): {noise}</p>")
    return "\n".join(out)
