"""`strangler report` over stored values chosen by backends' answers (JSON keys in paths)."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from pathlib import Path

from click.testing import CliRunner

from proxy.cli import main
from shadow.compare import CompareRules, compare
from shadow.http_compare import parse_json_body
from shadow.record import ComparisonRecord, DiffExample
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
