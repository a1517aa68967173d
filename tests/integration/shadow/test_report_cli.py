"""`strangler report`: exit codes 0/1/2, thresholds from config and flags, every format."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema  # type: ignore[import-untyped]
import orjson
import pytest
from click.testing import CliRunner, Result

from proxy.cli import main
from shadow.record import ComparisonRecord
from shadow.report import report_schema
from shadow.store import Store
from tests.integration.shadow.synthetic import LIST, SHOW, synthetic
from tests.support import free_port

LENIENT = ["--max-mismatch-rate", "0.05", "--max-error-rate", "0.05", "--min-samples", "100"]


async def _populate(url: str) -> None:
    async with Store(url) as store:
        await store.insert_batch(synthetic())


@pytest.fixture(scope="module")
def db_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite store holding the synthetic data set (built once for the module)."""
    path = tmp_path_factory.mktemp("report") / "store.db"
    url = f"sqlite+aiosqlite:///{path}"
    asyncio.run(_populate(url))
    return url


def _report(*args: str) -> Result:
    return CliRunner().invoke(main, ["report", *args], catch_exceptions=False)


def _assert_usage_error(result: Result, needle: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("strangler report: error: ") and needle in lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_threshold_above_the_measured_rate_exits_0(db_url: str) -> None:
    result = _report("--store", db_url, *LENIENT)
    assert result.exit_code == 0, result.output
    assert "gate: PASS (2/2)" in result.stdout


def test_threshold_below_the_measured_rate_exits_1(db_url: str) -> None:
    result = _report("--store", db_url, *LENIENT, "--max-mismatch-rate", "0.03")
    assert result.exit_code == 1
    assert "mismatch rate 3.78% above the maximum 3%" in result.stdout


def test_error_rate_and_sample_minimum_gate_too(db_url: str) -> None:
    assert _report("--store", db_url, *LENIENT, "--max-error-rate", "0.015").exit_code == 1
    assert _report("--store", db_url, *LENIENT, "--min-samples", "979").exit_code == 1
    only_list = _report("--store", db_url, *LENIENT, "--min-samples", "200", "--route", LIST)
    assert only_list.exit_code == 0
    assert SHOW not in only_list.stdout


def test_window_flags_filter_by_time(db_url: str) -> None:
    early = _report(
        "--store", db_url, *LENIENT, "--format", "json", "--until", "2026-05-01T10:30:00Z"
    )
    doc = orjson.loads(early.stdout)
    show = next(r for r in doc["routes"] if r["route"] == SHOW)
    # 7.2 s apart from 10:00: requests 0..249 are before 10:30
    assert show["total"] == 250
    late = _report("--store", db_url, "--since", "1h", *LENIENT)  # the data is from May 2026
    assert late.exit_code == 1 and "no comparisons" in late.stdout


def _config(tmp_path: Path, show_max_rate: float) -> str:
    path = tmp_path / "routes.yaml"
    path.write_text(
        f"""
listen: 127.0.0.1:{free_port()}
backends:
  legacy:
    url: http://127.0.0.1:{free_port()}
  orders:
    url: http://127.0.0.1:{free_port()}
default_backend: legacy
routes:
  - name: {SHOW}
    match: {{path: "/api/v1/orders/{{order_id}}", methods: [GET]}}
    candidate: orders
    mode: shadow
    promotion:
      min_samples: 100
      max_mismatch_rate: {show_max_rate}
      max_error_rate: 0.05
      max_p99_ratio: 1.5
  - name: {LIST}
    match: {{path: /api/v1/orders, methods: [GET]}}
    candidate: orders
    mode: shadow
    promotion:
      min_samples: 150
      max_mismatch_rate: 0.0
      max_error_rate: 0.0
""",
        encoding="utf-8",
    )
    return str(path)


def test_thresholds_come_from_each_routes_promotion_block(db_url: str, tmp_path: Path) -> None:
    assert _report("--store", db_url, "--config", _config(tmp_path, 0.05)).exit_code == 0
    strict = _report("--store", db_url, "--config", _config(tmp_path, 0.02))
    assert strict.exit_code == 1
    assert "mismatch rate 3.78% above the maximum 2%" in strict.stdout
    # a flag overrides the config for every route (order-list has 200 samples)
    flagged = _report(
        "--store", db_url, "--config", _config(tmp_path, 0.05), "--min-samples", "201"
    )
    assert flagged.exit_code == 1 and "200 compared samples, below the minimum of 201" in (
        flagged.stdout
    )


# a POST route whose writes are skipped, and an extracted one: routes with no gate
_NOT_COMPARED = """  - name: order-ship
    match: {path: "/api/v1/orders/{order_id}/ship", methods: [POST]}
    candidate: orders
    mode: shadow
  - name: order-events
    match: {path: "/api/v1/orders/{order_id}/events"}
    candidate: orders
    mode: extracted
"""


def test_a_compared_route_of_the_config_without_data_fails_its_minimum(
    db_url: str, tmp_path: Path
) -> None:
    # a shadowed route with nothing in the store is no evidence, not a pass; routes whose
    # requests are never compared (legacy mode, writes skipped) or that have no gate left
    # (extracted, as in migrate) are not judged
    path = _config(tmp_path, 0.05)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(
            """  - name: order-cancel
    match: {path: "/api/v1/orders/{order_id}/cancel", methods: [POST]}
    candidate: orders
    mode: shadow
    shadow: {writes: dry_run}
  - name: order-create
    match: {path: /api/v1/orders, methods: [POST]}
    candidate: orders
"""
            + _NOT_COMPARED
        )
    result = _report("--store", db_url, "--config", path)
    assert result.exit_code == 1, result.output
    assert "gate: FAIL (2/3)" in result.stdout
    assert "order-cancel" in result.stdout.split()  # judged routes appear as words
    assert not {"order-create", "order-ship", "order-events"} & set(result.stdout.split())
    # --route still picks the routes judged
    only_list = _report("--store", db_url, "--config", path, "--route", LIST)
    assert only_list.exit_code == 0 and "order-cancel" not in only_list.stdout


def test_routes_the_config_does_not_compare_are_not_judged_whatever_is_stored(
    tmp_path: Path,
) -> None:
    """Skipped writes and an extracted route's verification leave rows in the store: the
    routes came back into the gate (and failed it) as soon as they had any."""
    url = f"sqlite+aiosqlite:///{tmp_path / 's.db'}"

    async def populate() -> None:
        async with Store(url) as store:
            await store.insert_batch(synthetic())
            await store.insert_batch(
                [ComparisonRecord(route="order-ship", outcome="skipped") for _ in range(5)]
                + [ComparisonRecord(route="order-events", outcome="match") for _ in range(3)]
            )

    asyncio.run(populate())
    path = _config(tmp_path, 0.05)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("""""" + _NOT_COMPARED)
    result = _report("--store", url, "--config", path)
    assert result.exit_code == 0, result.output
    assert "order-ship" not in result.stdout.split()
    named = _report("--store", url, "--config", path, "--route", "order-ship")
    assert named.exit_code == 1 and "order-ship" in named.stdout.split()


def test_an_extracted_routes_verification_is_reported_outside_the_gate(tmp_path: Path) -> None:
    """An extracted route still compares its safe requests against legacy (at
    shadow.percent); `report --config` left it out entirely, so a candidate now serving
    users could diverge from legacy without the report showing it."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    verification = [ComparisonRecord(route="order-events", outcome="match") for _ in range(6)]
    verification += [
        ComparisonRecord(route="order-events", outcome="mismatch", diff_paths=("$.total",))
        for _ in range(4)
    ]

    async def populate() -> None:
        async with Store(url) as store:
            await store.insert_batch(synthetic())
            await store.insert_batch(verification)

    asyncio.run(populate())
    path = _config(tmp_path, 0.05)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(_NOT_COMPARED)
    text = _report("--store", url, "--config", path)
    # shown with its numbers, but it has no gate left: it neither fails nor counts in it
    assert text.exit_code == 0, text.output
    row = next((line for line in text.stdout.splitlines() if line.startswith("order-events")), "")
    assert row.split()[1:4] == ["10", "4", "40.00%"], text.stdout
    assert "gate: PASS (2/2)" in text.stdout
    doc = orjson.loads(_report("--store", url, "--config", path, "--format", "json").stdout)
    jsonschema.validate(doc, report_schema())
    events = next((r for r in doc["routes"] if r["route"] == "order-events"), None)
    assert events is not None and events["judged"] is False and events["mismatches"] == 4
    junit = ET.fromstring(_report("--store", url, "--config", path, "--format", "junit").stdout)
    case = next(c for c in junit.iter("testcase") if c.get("name") == "order-events")
    assert case.find("skipped") is not None and case.find("failure") is None
    # named, it is judged as before
    named = _report("--store", url, "--config", path, "--route", "order-events")
    assert named.exit_code == 1 and "FAIL" in named.stdout


def test_a_canary_routes_served_writes_are_reported_outside_the_gate(tmp_path: Path) -> None:
    """A canary route of writes only (skipped while legacy serves) stores the writes its
    candidate serves: `report --config` left it out, so failing served writes showed
    nowhere."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'w.db'}"
    served = [
        ComparisonRecord(
            route="order-pay",
            outcome="candidate_error",
            method="POST",
            status_candidate=500,
            latency_candidate_ms=3.0,
            mode="canary",
        )
        for _ in range(3)
    ]
    served.append(  # one the candidate served well: a call, not compared
        ComparisonRecord(
            route="order-pay", outcome="skipped", method="POST", status_candidate=201, mode="canary"
        )
    )

    async def populate() -> None:
        async with Store(url) as store:
            await store.insert_batch(synthetic())
            await store.insert_batch(served)

    asyncio.run(populate())
    path = _config(tmp_path, 0.05)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(
            """  - name: order-pay
    match: {path: "/api/v1/orders/{order_id}/pay", methods: [POST]}
    candidate: orders
    mode: canary
    canary: {percent: 5, sticky: {header: X-User-Id}}
"""
        )
    result = _report("--store", url, "--config", path, "--format", "json")
    assert result.exit_code == 0, result.output  # shown, neither failing nor counting
    doc = orjson.loads(result.stdout)
    pay = next((r for r in doc["routes"] if r["route"] == "order-pay"), None)
    assert pay is not None, doc["routes"]
    assert pay["judged"] is False and pay["candidate_errors"] == 3 and pay["skipped"] == 1
    assert pay["served"] == 1 and pay["error_rate"] == 0.75


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--since", "yesterday"], "--since 'yesterday'"),
        (["--until", "soon"], "--until 'soon'"),
        (["--since", "1h", "--until", "2h"], "--since must be before --until"),
        (["--since", "3000000d"], "--since '3000000d': reaches before the year 1"),
        (["--max-mismatch-rate", "2"], "max_mismatch_rate must be between 0 and 1"),
        (["--min-samples", "-1"], "min_samples must be >= 0"),
        (["--config", "/nonexistent/routes.yaml"], "cannot read config"),
    ],
)
def test_bad_flags_exit_2_with_one_line(db_url: str, args: list[str], needle: str) -> None:
    _assert_usage_error(_report("--store", db_url, *args), needle)


def test_bad_store_urls_exit_2_with_one_line(tmp_path: Path) -> None:
    _assert_usage_error(_report("--store", "mysql://u@h/db"), "unsupported")
    _assert_usage_error(_report("--store", "::not a url::"), "not a database URL")
    missing = f"sqlite:///{tmp_path / 'missing.db'}"
    _assert_usage_error(_report("--store", missing), "no such database file")
    assert not (tmp_path / "missing.db").exists()
    closed = f"postgresql+psycopg://postgres:hunter2@127.0.0.1:{free_port()}/test"
    result = _report("--store", closed)
    _assert_usage_error(result, "cannot initialise the store")
    assert "hunter2" not in result.stderr
    result = _report("--store", "mysql://u:hunter2@h/db")
    _assert_usage_error(result, "mysql://u:***@h/db")
    assert "hunter2" not in result.stderr


def test_the_installed_command_exits_with_the_gate(db_url: str, tmp_path: Path) -> None:
    strangler = Path(sys.executable).with_name("strangler")
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    ok = subprocess.run(
        [str(strangler), "report", "--store", db_url, *LENIENT],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(
        [str(strangler), "report", "--store", db_url, "--since", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "Traceback" not in bad.stderr


def test_json_output_file_matches_the_schema(db_url: str, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    result = _report("--store", db_url, *LENIENT, "--format", "json", "-o", str(out))
    assert result.exit_code == 0 and result.stdout == ""
    doc = orjson.loads(out.read_bytes())
    jsonschema.validate(doc, report_schema(), format_checker=jsonschema.FormatChecker())
    show = next(r for r in doc["routes"] if r["route"] == SHOW)
    assert (show["samples"], show["mismatches"], show["candidate_errors"]) == (978, 37, 12)
    assert show["top_paths"][0]["path"] == "$.items[*].price"


def test_junit_has_one_case_per_route(db_url: str) -> None:
    result = _report(
        "--store", db_url, *LENIENT, "--max-mismatch-rate", "0.01", "--format", "junit"
    )
    assert result.exit_code == 1
    root = ET.fromstring(result.stdout)
    cases = root.findall("./testsuite/testcase")
    assert sorted(c.get("name") or "" for c in cases) == [LIST, SHOW]
    failing = [c for c in cases if c.find("failure") is not None]
    assert [c.get("name") for c in failing] == [SHOW]
    failure = failing[0].find("failure")
    assert failure is not None and "$.items[*].price: 37 (100.0%)" in (failure.text or "")


def test_markdown_and_html_render_from_the_store(db_url: str) -> None:
    md = _report("--store", db_url, *LENIENT, "--format", "markdown")
    assert md.exit_code == 0
    assert f"| {SHOW} | 978 | 37 | 3.78% |" in md.stdout
    html = _report("--store", db_url, *LENIENT, "--format", "html")
    assert html.exit_code == 0
    assert html.stdout.startswith("<!DOCTYPE html>") and "<svg" in html.stdout
    assert html.stdout.count("<polyline") == 2 and "<script" not in html.stdout


def test_a_route_with_nothing_stored_fails_even_with_min_samples_0(db_url: str) -> None:
    """A mistyped --route name printed a PASS row with 0 samples and exited 0."""
    result = _report("--store", db_url, "--route", "order-shwo", "--min-samples", "0")
    assert result.exit_code == 1, result.output
    assert "no evidence: no comparison of the route in this window" in result.stdout
    assert "gate: FAIL (0/1)" in result.stdout
    as_json = orjson.loads(
        _report(
            "--store", db_url, "--route", "nosuch", "--min-samples", "0", "--format", "json"
        ).stdout
    )
    assert as_json["passed"] is False and as_json["routes"][0]["passed"] is False


@pytest.mark.parametrize("access", ["read_only_role", "read_only_session"])
def test_a_read_only_postgresql_user_or_standby_can_report(pg_url: str, access: str) -> None:
    """A CI gate reads the store with a role that may only SELECT, or from a standby: the
    report tried to migrate first (CREATE TABLE IF NOT EXISTS) and exited 2."""
    import psycopg
    from sqlalchemy.engine import make_url

    async def populate() -> None:
        async with Store(pg_url) as store:
            await store.insert_batch(
                [ComparisonRecord(route="order-show", outcome="match") for _ in range(3)]
            )

    asyncio.run(populate())
    url = make_url(pg_url)
    schema = str(url.query["options"]).rsplit("=", 1)[1]
    role = f"ro_{schema}"
    admin = url.set(drivername="postgresql", query={}).render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        if access == "read_only_role":
            conn.execute(f'CREATE ROLE "{role}" LOGIN')
            conn.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"')
            conn.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"')
            reader = url.set(username=role).render_as_string(hide_password=False)
        else:  # what a hot standby allows: read-only transactions only
            options = f"-csearch_path={schema} -cdefault_transaction_read_only=on"
            reader = url.update_query_dict({"options": options}).render_as_string(False)
        try:
            result = _report("--store", reader, "--min-samples", "3", "--format", "json")
        finally:
            if access == "read_only_role":
                conn.execute(f'DROP OWNED BY "{role}"')
                conn.execute(f'DROP ROLE "{role}"')
    assert result.exit_code == 0, result.stderr
    assert orjson.loads(result.stdout)["routes"][0]["samples"] == 3
