"""The real `strangler` console script: one-line errors, and watch looping until SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from proxy.settings import load
from shadow.store import Store
from tests.integration.migrate.helpers import CONFIG, evidence, write_config

STRANGLER = [sys.executable, "-c", "from proxy.cli import main; main()"]


def _init(url: str) -> None:
    async def run() -> None:
        async with Store(url):
            pass

    asyncio.run(run())


def test_bad_route_exits_2_without_traceback(tmp_path: Path, sqlite_url: str) -> None:
    config = write_config(tmp_path)
    _init(sqlite_url)
    args = ["migrate", "advance", "nope", "--config", config, "--store", sqlite_url]
    done = subprocess.run(
        [*STRANGLER, *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"strangler migrate: error: unknown route 'nope' in {config};"
        " known routes: order-show, order-list, order-create"
    ]


def _poll_until(proc: subprocess.Popen[str], config: str, stage: tuple[str, float]) -> None:
    deadline = time.monotonic() + 30
    while True:
        route = next(r for r in load(config).routes if r.name == "order-list")
        if (route.mode, route.canary.percent) == stage:
            return
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"watch did not reach {stage} in time"
        time.sleep(0.05)  # polling the file under a deadline


def test_watch_loops_until_sigterm(tmp_path: Path, sqlite_url: str) -> None:
    config = write_config(tmp_path, CONFIG.replace(", interval: 1h", ""))
    _init(sqlite_url)
    evidence(sqlite_url, "order-list", matches=300)
    args = ["migrate", "watch", "--config", config, "--store", sqlite_url, "--every", "0.2"]
    proc = subprocess.Popen(
        [*STRANGLER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _poll_until(proc, config, ("canary", 50.0))
        evidence(sqlite_url, "order-list", matches=300)
        _poll_until(proc, config, ("extracted", 50.0))
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "order-list: advanced: canary 25% -> canary 50%" in out
    assert "order-list: advanced: canary 50% -> extracted" in out
    assert os.path.exists(config)
