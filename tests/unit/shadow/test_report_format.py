"""Unit tests of the report renderers on a hand-built report (no database)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

import jsonschema  # type: ignore[import-untyped]
import orjson
import pytest

from shadow.record import DiffExample
from shadow.report import (
    Bucket,
    Latency,
    NoiseStat,
    PathStat,
    Report,
    RouteReport,
    Thresholds,
    report_schema,
)
from shadow.report_format import FORMATS, render

T0 = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)


def _series(rates: list[tuple[int, int]]) -> tuple[Bucket, ...]:
    return tuple(Bucket(T0 + timedelta(minutes=5 * i), n, m) for i, (n, m) in enumerate(rates))


def make_report(*, failing: bool = True) -> Report:
    """Two routes: one failing with differences and noise, one clean and passing."""
    strict = Thresholds(min_samples=100, max_mismatch_rate=0.01, max_error_rate=0.05)
    show = RouteReport(
        route="order-show",
        method="GET",
        path="/api/v1/orders/{order_id}",
        matches=941,
        mismatches=37,
        candidate_errors=12,
        candidate_timeouts=3,
        skipped=5,
        dropped=2,
        latency_primary=Latency(10.0, 80.0),
        latency_candidate=Latency(11.5, 95.0),
        top_paths=(
            PathStat(
                "$.items[*].price",
                37,
                1.0,
                DiffExample("$.items[*].price", "$.items[2].price", "9.99", 9.99),
            ),
            PathStat("$.total", 10, 10 / 37, DiffExample("$.total", "$.total", 1, None)),
            PathStat("$.note|<b>", 1, 1 / 37, None),
        ),
        distinct_paths=5,
        noise_paths=(NoiseStat("$.meta.generated_at", 20),),
        first_seen=T0,
        last_seen=T0 + timedelta(hours=2),
        thresholds=strict,
        reasons=("mismatch rate 3.78% above the maximum 1%",) if failing else (),
        series=_series([(100, 3), (120, 6), (0, 0), (90, 1)]),
    )
    lst = RouteReport(
        route="order-list",
        matches=200,
        thresholds=strict,
        latency_primary=Latency(5.0, 9.0),
        latency_candidate=Latency(5.0, 9.5),
        series=_series([(50, 0), (150, 0)]),
    )
    return Report(
        generated_at=T0 + timedelta(hours=3),
        since=T0,
        until=T0 + timedelta(hours=3),
        bucket_seconds=300,
        routes=(lst, show),
    )


def test_every_pinned_format_is_available() -> None:
    assert set(FORMATS) == {"text", "markdown", "json", "junit", "html"}
    with pytest.raises(ValueError, match="unknown report format"):
        render(make_report(), "yaml")


def test_json_matches_its_published_schema() -> None:
    doc = orjson.loads(render(make_report(), "json"))
    jsonschema.Draft202012Validator.check_schema(report_schema())
    jsonschema.validate(doc, report_schema(), format_checker=jsonschema.FormatChecker())
    assert doc["schema_version"] == 1 and doc["passed"] is False
    show = next(r for r in doc["routes"] if r["route"] == "order-show")
    assert show["samples"] == 978 and show["total"] == 1000
    assert show["top_paths"][0]["example"] == {
        "path": "$.items[2].price",
        "primary": "9.99",
        "candidate": 9.99,
    }
    assert show["noise_paths"] == [{"path": "$.meta.generated_at", "count": 20}]


def test_schema_rejects_a_document_missing_a_route_field() -> None:
    doc = orjson.loads(render(make_report(), "json"))
    del doc["routes"][0]["mismatch_rate"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, report_schema())


def test_junit_has_one_case_per_route_and_a_failure_with_top_differences() -> None:
    root = ET.fromstring(render(make_report(), "junit"))
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert len(suites) == 1
    cases = suites[0].findall("testcase")
    assert sorted(c.get("name") or "" for c in cases) == ["order-list", "order-show"]
    assert suites[0].get("tests") == "2" and suites[0].get("failures") == "1"
    by_name = {c.get("name"): c for c in cases}
    assert by_name["order-list"].find("failure") is None
    failure = by_name["order-show"].find("failure")
    assert failure is not None
    assert "mismatch rate 3.78%" in (failure.get("message") or "")
    assert "$.items[*].price" in (failure.get("message") or "")
    assert '$.items[2].price: "9.99" -> 9.99' in (failure.text or "")


def test_junit_of_a_passing_report_has_no_failures() -> None:
    root = ET.fromstring(render(make_report(failing=False), "junit"))
    assert root.findall(".//failure") == []
    assert root.get("failures") == "0"


def _md_table(text: str) -> list[list[str]]:
    rows = [line for line in text.splitlines() if line.startswith("|")]
    return [[c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]


def test_markdown_renders_a_pipe_table_with_a_row_per_route() -> None:
    text = render(make_report(), "markdown")
    assert text.startswith("## strangler shadow report")
    table = _md_table(text.split("\n\n###")[0])
    head, sep, *rows = table
    assert head[0] == "route" and len(sep) == len(head)
    assert all(re.fullmatch(r"-+:?", c) for c in sep)
    assert [r[0] for r in rows] == ["order-list", "order-show"]
    assert all(len(r) == len(head) for r in rows)
    assert "`$.note\\|<b>`" in text  # pipes inside cells are escaped
    assert '| `$.items[*].price` | 37 | 100.0% | `$.items[2].price` | `"9.99"` | `9.99` |' in text


def test_text_lists_routes_reasons_and_examples() -> None:
    text = render(make_report(), "text")
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("route"))
    assert "samples" in header and "verdict" in header
    show = next(line for line in lines if line.startswith("order-show"))
    assert "978" in show and "3.78%" in show and show.endswith("FAIL")
    assert "FAIL: mismatch rate 3.78% above the maximum 1%" in text
    assert '$.items[2].price: "9.99" -> 9.99' in text
    assert "... and 2 more paths" in text
    assert "noise (not counted): $.meta.generated_at (20)" in text
    assert text.rstrip().endswith("gate: FAIL (1/2)")


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.extend(attrs)


def test_html_is_self_contained_with_a_chart_per_route() -> None:
    html = render(make_report(), "html")
    parser = _Collector()
    parser.feed(html)
    assert "script" not in parser.tags and "link" not in parser.tags
    assert not [v for k, v in parser.attrs if k in ("src", "href") and v]
    assert "://" not in html  # nothing fetched from the network
    assert parser.tags.count("svg") == 1
    assert parser.tags.count("polyline") == 2
    assert 'data-route="order-show"' in html and 'data-route="order-list"' in html
    assert "&lt;b&gt;" in html and "<b>" not in html  # values are escaped
    # the empty bucket (0 samples) is left out of the line, so order-show has 3 points
    show_points = re.search(r'data-route="order-show"[^>]*points="([^"]+)"', html)
    assert show_points is not None and len(show_points.group(1).split()) == 3


def test_empty_report_fails_and_says_so_in_every_format() -> None:
    empty = Report(generated_at=T0, since=None, until=None, bucket_seconds=60, routes=())
    assert not empty.passed
    assert "no comparisons" in render(empty, "text").lower()
    assert "no comparisons" in render(empty, "markdown").lower()
    assert "no comparisons" in render(empty, "html").lower()
    jsonschema.validate(orjson.loads(render(empty, "json")), report_schema())
    junit = ET.fromstring(render(empty, "junit"))
    assert (junit.get("tests"), junit.get("failures")) == ("1", "1")
    assert "no comparisons" in (junit.findtext("./testsuite/testcase/failure") or "")


def test_markdown_code_spans_keep_backslashes_as_they_are() -> None:
    """Backslashes are literal inside a code span: a key `a\\b` showed as `a\\\\b`. A pipe is
    still escaped in a table cell (the table reads `\\|` as a pipe, inside code spans too),
    but not in the noise line, which is no table."""
    route = RouteReport(
        route="r",
        mismatches=2,
        top_paths=(
            PathStat("$.a\\b", 1, 0.5, DiffExample("$.a\\b", "$.a\\b", "x", "y")),
            PathStat("$.c\\|d", 1, 0.5, None),
        ),
        noise_paths=(NoiseStat("$.n\\m|o", 3),),
        reasons=("mismatch",),
    )
    report = Report(T0, None, None, 300, (route,))
    text = render(report, "markdown")
    assert "| `$.a\\b` | 1 | 50.0% | `$.a\\b` |" in text
    assert "| `$.c\\\\|d` | 1 |" in text  # the table turns `\|` into `|`: `$.c\|d`
    assert "`$.n\\m|o` (3)" in text
    assert "\\\\b" not in text
