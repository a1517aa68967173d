"""`strangler report` over stored values chosen by backends' answers (JSON keys in paths)."""

from __future__ import annotations

import asyncio
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from proxy.cli import main
from shadow.compare import CompareRules, compare
from shadow.http_compare import parse_json_body
from shadow.record import ComparisonRecord, DiffExample
from shadow.recorder import Recorder
from shadow.store import Store

# A key holding a terminal escape (clear screen), a forged line and a NUL.
_KEY = "x\x1b[2J\n\ngate: PASS (1/1)\x00"


async def _store_hostile_mismatch(url: str) -> str:
    legacy = parse_json_body(b'{"x\\u001b[2J\\n\\ngate: PASS (1/1)\\u0000": 1}')
    result = compare(
        legacy, parse_json_body(b'{"x\\u001b[2J\\n\\ngate: PASS (1/1)\\u0000": 2}'), CompareRules()
    )
    diff = result.differences[0]
    record = ComparisonRecord(
        route="orders",
        outcome="mismatch",
        path="/api/v1/orders/{id}",
        request_path="/api/v1/orders/1",
        diff_paths=(diff.pattern,),
        diff_examples=(DiffExample(diff.pattern, diff.path, diff.primary, diff.candidate),),
    )
    async with Store(url) as store:
        await store.insert_batch([record])
    return diff.pattern


def _report(url: str, fmt: str) -> str:
    result = CliRunner().invoke(
        main, ["report", "--store", url, "--min-samples", "1", "--format", fmt]
    )
    assert result.exit_code == 1, result.output
    return result.stdout


def test_junit_and_text_reports_show_control_characters_of_stored_keys_escaped(
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    pattern = asyncio.run(_store_hostile_mismatch(url))
    assert _KEY in pattern  # the comparison keeps the key as the backend sent it

    junit = _report(url, "junit")
    root = ET.fromstring(junit)  # not well-formed with a raw NUL or ESC in it
    failure = root.find("./testsuite/testcase/failure")
    assert failure is not None
    assert '$["x\\u001b[2J\\u000a\\u000agate: PASS (1/1)\\u0000"]: 1 (100.0%)' in (
        failure.text or ""
    )

    text = _report(url, "text")
    assert "\x1b" not in text and "\x00" not in text
    assert [line for line in text.splitlines() if line.startswith("gate:")] == ["gate: FAIL (0/1)"]
    assert '$["x\\u001b[2J\\u000a\\u000agate: PASS (1/1)\\u0000"]' in text

    markdown = _report(url, "markdown")
    assert "\x1b" not in markdown and "\x00" not in markdown


def test_junit_holds_example_values_xml_cannot(tmp_path: Path) -> None:
    # A string value with U+FFFF (not an XML character) went raw into the failure text.
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    legacy, candidate = '{"name": "a\uffffb"}'.encode(), b'{"name": "ab"}'
    asyncio.run(_record(url, [_compared(legacy, candidate, 1)]))
    root = ET.fromstring(_report(url, "junit"))
    failure = root.findtext("./testsuite/testcase/failure") or ""
    assert 'e.g. $.name: "a\\uffffb" -> "ab"' in failure


def _compared(legacy: bytes, candidate: bytes, n: int) -> ComparisonRecord:
    result = compare(parse_json_body(legacy), parse_json_body(candidate), CompareRules())
    return ComparisonRecord(
        route="orders",
        outcome="mismatch" if result.differences else "match",
        path="/api/v1/orders/{id}",
        request_path=f"/api/v1/orders/{n}",
        diff_paths=tuple(d.pattern for d in result.differences),
        diff_examples=tuple(
            DiffExample(d.pattern, d.path, d.primary, d.candidate) for d in result.differences
        ),
    )


async def _record(url: str, records: list[ComparisonRecord]) -> dict[str, int]:
    async with Store(url) as store:
        recorder = Recorder(store, batch_size=100)
        await recorder.start()
        try:
            for rec in records:
                recorder.record(rec)
            assert await recorder.flush(10)
        finally:
            await recorder.stop(5)
        c = recorder.counters()["orders"]
        return {"recorded": c.recorded, "failed": c.failed, "stored": await store.count()}


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_a_mismatch_on_an_integer_past_64_bits_is_stored_with_its_batch_and_reported(
    tmp_path: Path, db: str, request: pytest.FixtureRequest
) -> None:
    # An id past 64 bits (or a value nested past 255 levels) in a differing field made the
    # example unencodable: the whole batch of comparisons was lost and counted failed.
    big = 123456789012345678901234567890
    deep = b"[" * 300 + b"1" + b"]" * 300
    records = [_compared(b'{"id": 1}', b'{"id": 1}', n) for n in range(20)]
    records.append(_compared(b'{"id": %d}' % big, b'{"id": %d}' % (big + 1), 20))
    records.append(_compared(b'{"items": %s}' % deep, b'{"items": 2}', 21))
    url = (
        f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
        if db == "sqlite"
        else str(request.getfixturevalue("pg_url"))
    )
    assert asyncio.run(_record(url, records)) == {"recorded": 22, "failed": 0, "stored": 22}

    doc = json.loads(_report(url, "json"))  # the stdlib keeps big integers exact
    route = doc["routes"][0]
    assert (route["samples"], route["mismatches"]) == (22, 2)
    examples = {p["path"]: p["example"] for p in route["top_paths"]}
    assert (examples["$.id"]["primary"], examples["$.id"]["candidate"]) == (big, big + 1)
    # a value nested too deep for readers is a note; the other side is kept
    assert examples["$.items"]["primary"] == "(nested deeper than 250 levels)"
    assert examples["$.items"]["candidate"] == 2
    text = _report(url, "text")
    assert f"e.g. $.id: {big} -> {big + 1}" in text


def test_junit_fails_when_no_route_is_judged(tmp_path: Path) -> None:
    # An empty window exits 1 (the gate fails) but the JUnit file had no test case and no
    # failure: a CI check built on the file showed green.
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"

    async def empty() -> None:
        async with Store(url):
            pass

    asyncio.run(empty())
    root = ET.fromstring(_report(url, "junit"))
    assert root.get("failures") == "1"
    failures = root.findall("./testsuite/testcase/failure")
    assert [f.get("message") for f in failures] == [
        "no comparisons stored in this window: nothing to judge"
    ]


def test_examples_cut_to_the_same_text_show_where_the_values_differ(tmp_path: Path) -> None:
    # Both sides were cut at 60 characters (120 in html): a long URL or object differing
    # after that read the same ('legacy -> candidate' equal) in every report format.
    image = "https://cdn.example.com/images/products/12345/large-variant.jpg?v="
    legacy = b'{"image": "%s1", "tags": ["x"]}' % image.encode()
    candidate = b'{"image": "%s2", "tags": ["x"]}' % image.encode()
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    asyncio.run(_record(url, [_compared(legacy, candidate, 1)]))

    text = _report(url, "text")
    line = next(x for x in text.splitlines() if "e.g. $.image:" in x)
    shown_legacy, shown_candidate = line.split("e.g. $.image: ", 1)[1].split(" -> ")
    assert shown_legacy != shown_candidate
    assert shown_legacy.endswith('v=1"') and shown_candidate.endswith('v=2"')
    assert len(shown_legacy) <= 60

    markdown = _report(url, "markdown")
    assert '?v=1"` | `' in markdown and '?v=2"` |' in markdown

    junit = ET.fromstring(_report(url, "junit"))
    assert 'v=1" -> ' in (junit.findtext("./testsuite/testcase/failure") or "")
