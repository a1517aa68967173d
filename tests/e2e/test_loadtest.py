"""`make loadtest` (`python -m loadtests.run`), briefly: few users for a few seconds.

Locust runs in subprocesses only: importing it here would gevent-patch the test process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests.summary import parse_stats

_ROOT = Path(__file__).resolve().parents[2]


def _loadtest(results: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loadtests.run", "--results", str(results), *args],
        cwd=_ROOT,
        env={**os.environ, "PYTHONPATH": str(_ROOT)},
        capture_output=True,
        text=True,
        timeout=90,
    )


@pytest.mark.slow
def test_loadtest_on_the_demo_stack_has_no_failures_and_writes_csv(tmp_path: Path) -> None:
    done = _loadtest(tmp_path, "--users", "6", "--spawn-rate", "6", "--duration", "5s")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = parse_stats((tmp_path / "demo_stats.csv").read_text(encoding="utf-8"))
    total = rows[-1]
    assert total.aggregated and total.requests > 0 and total.failures == 0
    assert any(r.name == "/api/v1/orders/[id]" for r in rows)  # templated URLs are named
    assert (tmp_path / "demo_failures.csv").is_file()
    assert "loadtest: ok:" in done.stdout
    assert "order-show" in done.stdout  # the shadow comparisons recorded meanwhile


@pytest.mark.slow
def test_proxy_only_profile_runs(tmp_path: Path) -> None:
    done = _loadtest(tmp_path, "--profile", "proxy-only", "--users", "3", "--duration", "3s")
    assert done.returncode == 0, done.stdout + done.stderr
    total = parse_stats((tmp_path / "proxy_only_stats.csv").read_text(encoding="utf-8"))[-1]
    assert total.requests > 0 and total.failures == 0
    assert "shadow comparisons" not in done.stdout


def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    done = _loadtest(tmp_path, "--duration", "forever")
    assert done.returncode == 2
    assert "duration must look like" in done.stderr
