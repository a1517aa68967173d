"""Extra bench sections: isolation of failures and of their output."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.procs import ProcessSet
from bench.sections import Section, SectionContext, SectionResult, pg_reachable, run_sections
from bench.targets import BenchEnv


def _ctx(tmp_path: Path) -> SectionContext:
    env = BenchEnv(tmp_path, ProcessSet(), "http://127.0.0.1:9", None, None)
    return SectionContext(env, rounds=1, slice_s=1, quick=True)


def _noisy(ctx: SectionContext) -> SectionResult:
    print("chatter from a section")
    return SectionResult(rows=[{"case": "a", "ratio": 2.0}])


def _broken(ctx: SectionContext) -> SectionResult:
    raise RuntimeError("boom")


def test_rows_notes_and_failures_are_kept_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sections = [Section("noisy", "Noisy", _noisy), Section("broken", "Broken", _broken)]
    results = run_sections(_ctx(tmp_path), sections)
    assert results["noisy"] == {
        "title": "Noisy",
        "rows": [{"case": "a", "ratio": 2.0}],
        "note": None,
    }
    assert results["broken"]["rows"] == []
    assert results["broken"]["note"] == "failed: RuntimeError: boom"
    captured = capsys.readouterr()
    assert "chatter" not in captured.out
    assert "chatter" in captured.err


def test_pg_reachable_is_false_for_a_closed_port() -> None:
    assert pg_reachable("postgresql+psycopg://u@127.0.0.1:9/db", timeout_s=0.5) is False
