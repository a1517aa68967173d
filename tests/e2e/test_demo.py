"""`make demo` / `strangler demo`: the whole story in one command, and what it is built from.

The `test_make_demo_*` tests run the real command in a subprocess (its own cwd, so its
`.demo/` never lands in the repository); a whole story takes about 10 s. The one that checks
the story and its exit code reads the session's run of `strangler demo` (`demo_run`, see
tests/demo_run.py), which the README tour test reads too.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest

from proxy.check import run_check
from proxy.demo import FAILING_ROUTE, check_story
from proxy.settings import loads
from proxy.stack import demo_template, render_config
from shadow.report import PathStat, Report, RouteReport
from tests.demo_run import DemoRun

_ROOT = Path(__file__).resolve().parents[2]
_DEMO_TIMEOUT_S = 90
_FEE = "$.amounts.buyer_protection_fee"
_open = urllib.request.build_opener(urllib.request.ProxyHandler({})).open  # no env proxies


def _strangler(*args: str) -> list[str]:
    return [sys.executable, "-c", "from proxy.cli import main; main()", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(_ROOT)}


def _route(name: str, *, mismatches: int = 0, reasons: tuple[str, ...] = ()) -> RouteReport:
    paths = (PathStat(_FEE, mismatches, 1.0),) if mismatches else ()
    return RouteReport(
        route=name, matches=100, mismatches=mismatches, top_paths=paths, reasons=reasons
    )


def _report(*routes: RouteReport) -> Report:
    return Report(datetime.now(UTC), None, None, 60, routes)


def test_demo_config_passes_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_check(str(demo_template())) == 0
    assert "ok (5 routes" in capsys.readouterr().out


def test_demo_config_has_a_route_at_every_stage() -> None:
    settings = loads(demo_template().read_text(encoding="utf-8"))
    modes = {r.name: r.mode for r in settings.routes}
    assert {"shadow", "canary", "extracted", "legacy"} <= set(modes.values())
    show = next(r for r in settings.routes if r.name == FAILING_ROUTE)
    assert (show.mode, show.candidate, show.shadow.writes) == ("shadow", "orders_next", "skip")
    assert all(r.promotion.min_samples <= 50 for r in settings.routes if r.mode != "legacy")


def test_proxy_only_profile_puts_every_route_on_legacy() -> None:
    text = render_config(
        demo_template().read_text(encoding="utf-8"),
        profile="proxy-only",
        listen=18080,
        admin=19090,
        legacy_url="http://127.0.0.1:18081",
        next_url="http://127.0.0.1:18082",
        db_url="sqlite+aiosqlite:////tmp/x/legacy.db",
        store_url="sqlite+aiosqlite:////tmp/x/strangler.db",
    )
    settings = loads(text)
    assert {r.mode for r in settings.routes} == {"legacy"}
    assert set(settings.backends) == {"legacy"}
    assert (settings.port, settings.admin.port) == (18080, 19090)
    assert settings.backends["legacy"].port == 18081
    assert "# the seeded monolith" in text  # comments survive the rewrite


def test_story_needs_the_failing_route_to_fail_on_the_fee_and_the_rest_to_pass() -> None:
    good = _report(_route(FAILING_ROUTE, mismatches=16, reasons=("rate",)), _route("order-list"))
    assert check_story(good) == []
    unnoticed = _report(_route(FAILING_ROUTE), _route("order-list"))
    assert any("passed its gate" in p for p in check_story(unnoticed))
    collateral = _report(
        _route(FAILING_ROUTE, mismatches=16, reasons=("rate",)),
        _route("order-list", reasons=("too few",)),
    )
    assert check_story(collateral) == ["order-list: failed its gate (too few)"]
    assert check_story(_report()) == [
        f"{FAILING_ROUTE}: no comparisons recorded",
        "no other route was compared",
    ]


@pytest.mark.slow
def test_make_demo_tells_the_story_and_exits_0(demo_run: DemoRun, tmp_path: Path) -> None:
    done = demo_run.done
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert demo_run.seconds < 60
    rows = {line.split()[0]: line.split()[-1] for line in out.splitlines() if "  " in line}
    assert rows.get(FAILING_ROUTE) == "FAIL", out
    assert rows.get("order-list") == "PASS" and rows.get("order-events") == "PASS", out
    assert _FEE in out
    assert "strangler migrate status --config .demo/demo.yaml" in out
    assert "--format html" in out and "/-/routes" in out
    assert (demo_run.cwd / ".demo" / "report.html").is_file()
    # The printed follow-up command works on what the demo left behind: the gate fails.
    demo_run.copy_to(tmp_path)
    report = subprocess.run(
        _strangler(
            "report", "--store", "sqlite:///.demo/strangler.db", "--config", ".demo/demo.yaml"
        ),
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert report.returncode == 1, report.stdout + report.stderr
    assert FAILING_ROUTE in report.stdout


def _read_until(proc: subprocess.Popen[bytes], marker: str, timeout: float) -> str:
    """`proc`'s stdout up to and including `marker` (fails past `timeout`). Reads the pipe's
    fd directly: a buffered readline could hold the marker where select() cannot see it."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while marker.encode() not in seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{marker!r} not printed within {timeout}s:\n{seen.decode()}")
            if sel.select(timeout=left):
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError(f"exited before printing {marker!r}:\n{seen.decode()}")
                seen += chunk
    return seen.decode()


@pytest.mark.slow
def test_make_demo_ctrl_c_mid_traffic_cleans_up(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        _strangler("demo"),
        cwd=tmp_path,
        env={**_env(), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        head = _read_until(proc, "[2/4]", 30)
        proxy_line = next(line for line in head.splitlines() if line.strip().startswith("proxy"))
        port = int(proxy_line.split()[1].rsplit(":", 1)[1])
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=30)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, head + rest
    assert "Traceback" not in rest
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


@pytest.mark.slow
def test_make_demo_keep_running_serves_until_ctrl_c(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        _strangler("demo", "--keep-running"),
        cwd=tmp_path,
        env={**_env(), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        head = _read_until(proc, "Ctrl-C stops it", _DEMO_TIMEOUT_S)
        proxy_line = next(line for line in head.splitlines() if line.strip().startswith("proxy"))
        proxy_url, admin_url = proxy_line.split()[1], proxy_line.split()[3]
        with _open(f"{admin_url}/-/routes", timeout=5) as resp:
            routes = {r["name"]: r["mode"] for r in json.load(resp)["routes"]}
        assert routes[FAILING_ROUTE] == "shadow" and routes["order-events"] == "extracted"
        with _open(f"{proxy_url}/api/v1/orders/42", timeout=5) as resp:
            assert json.load(resp)["id"] == 42
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=30)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, head + rest  # the story played out; Ctrl-C ends the stay
    assert "Traceback" not in rest
