"""One `strangler demo` run shared by the tests that check what it prints and leaves behind.

`make demo` runs `$(BIN)/strangler demo`; the story takes about 10 s. The README tour
(tests/unit/docs/test_readme.py) and tests/e2e/test_demo.py both ran it, each for itself,
and checked the same output and the same `.demo/` directory. `demo_run` runs it once per
session, the way the README's `make demo` line does (the venv's `strangler` first on PATH,
in a fresh directory holding a copy of `config/`), and keeps what it printed and how long it
took. Its directory is only read: a test that changes files works on a copy of `.demo/`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEMO_TIMEOUT_S = 120.0


@dataclass(frozen=True, slots=True)
class DemoRun:
    """`strangler demo` as it ran: in `cwd`, with its output, exit code and duration."""

    cwd: Path
    done: subprocess.CompletedProcess[str]
    seconds: float

    def copy_to(self, workdir: Path) -> None:
        """Put the run's `.demo/` into `workdir`, as if the demo had run there."""
        shutil.copytree(self.cwd / ".demo", workdir / ".demo")


def demo_env() -> dict[str, str]:
    """The environment of the README's commands: the venv's bin first on PATH, output
    unbuffered, no admin token."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("STRANGLER_ADMIN_TOKEN", None)
    return env


def run_demo_once(cwd: Path) -> DemoRun:
    """`strangler demo` in `cwd` (given a copy of `config/` first)."""
    shutil.copytree(ROOT / "config", cwd / "config")
    started = time.monotonic()
    done = subprocess.run(
        ["strangler", "demo"],
        cwd=cwd,
        env=demo_env(),
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
        check=False,
    )
    return DemoRun(cwd, done, time.monotonic() - started)
