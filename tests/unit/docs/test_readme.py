"""Every command of the README's tour runs as documented.

The ```` ```sh tour ```` block is run line by line in a temporary working directory (with
`config/` copied in and the venv's bin first on PATH): `make demo` as the `strangler demo`
its Makefile target runs (the session's one run of it, `demo_run`, run the same way, whose
`.demo/` is copied in), the `--keep-running` stack in the background with the admin and
proxy URLs it prints, every `strangler` and `curl` line with its expected exit code. The
```` ```sh tour-serve ```` block starts long-running processes on fixed ports, so its
`strangler` lines are checked against their `--help` (subcommand and every option exist)
and its config files with `strangler check`. Any line of a kind this test does not know
fails it, so the tour cannot grow unchecked commands.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.demo_run import DemoRun

ROOT = Path(__file__).resolve().parents[3]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
TIMEOUT_S = 120.0

# Lines that are not run, and why.
SKIPPED = {
    ". .venv/bin/activate": "the test puts the venv's bin first on PATH itself",
}
# Exit codes other than 0 that the tour documents (the demo's order-show fails its gate).
EXPECTED_EXIT = {
    "strangler report ": 1,
    "strangler migrate status ": 1,
    "strangler migrate advance order-show ": 1,
}
_URLS = re.compile(r"proxy\s+http://(\S+)\s+admin http://(\S+)")
_KEEP_RUNNING = "Ctrl-C stops it"


def tour_lines(name: str) -> list[str]:
    """The shell lines of the README block fenced as ```` ```sh NAME ````."""
    text = README.read_text(encoding="utf-8")
    m = re.search(rf"^```sh {re.escape(name)}\n(.*?)^```", text, re.M | re.S)
    assert m is not None, f"README.md has no ```sh {name} block"
    return [ln.strip() for ln in m.group(1).splitlines() if ln.strip() and ln[0] != "#"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("STRANGLER_ADMIN_TOKEN", None)
    return env


def _sh(line: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", f"set -o pipefail; {line}"],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def _demo_args(line: str) -> list[str]:
    """`make demo [DEMO_ARGS=...]` as the command its Makefile target runs."""
    recipe = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^demo:.*\n\t\$\(BIN\)/strangler demo \$\(DEMO_ARGS\)$", recipe, re.M)
    words = shlex.split(line.rstrip("&").strip())
    extra = [w.split("=", 1)[1] for w in words[2:] if w.startswith("DEMO_ARGS=")]
    assert words[:2] == ["make", "demo"] and len(words) == 2 + len(extra), line
    return ["strangler", "demo", *" ".join(extra).split()]


@dataclass
class _Background:
    """A `--keep-running` demo: its output read by a thread, the URLs it printed."""

    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    up: threading.Event = field(default_factory=threading.Event)
    proxy: str = ""
    admin: str = ""

    def read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            m = _URLS.search(line)
            if m:
                self.proxy, self.admin = m.group(1), m.group(2)
            if _KEEP_RUNNING in line:
                self.up.set()
        self.up.set()

    def output(self) -> str:
        return "".join(self.lines)


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """A fresh working directory holding a copy of `config/`."""
    shutil.copytree(ROOT / "config", tmp_path / "config")
    yield tmp_path


def _start(args: list[str], cwd: Path) -> tuple[_Background, threading.Thread]:
    proc = subprocess.Popen(
        args,
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    bg = _Background(proc)
    reader = threading.Thread(target=bg.read, daemon=True)
    reader.start()
    return bg, reader


def _stop(bg: _Background, reader: threading.Thread) -> int:
    if bg.proc.poll() is None:
        bg.proc.send_signal(signal.SIGINT)
    try:
        code = bg.proc.wait(timeout=30)
    finally:
        if bg.proc.poll() is None:
            os.killpg(bg.proc.pid, signal.SIGKILL)
            bg.proc.wait()
        reader.join(timeout=5)
        assert bg.proc.stdout is not None
        bg.proc.stdout.close()
    return code


def test_the_tour_runs(workdir: Path, demo_run: DemoRun) -> None:
    bg: tuple[_Background, threading.Thread] | None = None
    ran = 0
    try:
        for line in tour_lines("tour"):
            if line in SKIPPED:
                continue
            if line.startswith("make demo") and line.endswith("&"):
                bg = _start(_demo_args(line), workdir)
                assert bg[0].up.wait(TIMEOUT_S), "the --keep-running demo did not come up"
                assert bg[0].proc.poll() is None, bg[0].output()
                assert bg[0].admin and bg[0].proxy, bg[0].output()
            elif line.startswith("make demo"):
                if _demo_args(line) == ["strangler", "demo"]:  # the session's run of it
                    done = demo_run.done
                    demo_run.copy_to(workdir)
                else:
                    done = subprocess.run(
                        _demo_args(line),
                        cwd=workdir,
                        env=_env(),
                        capture_output=True,
                        text=True,
                        timeout=TIMEOUT_S,
                        check=False,
                    )
                assert done.returncode == 0, done.stdout + done.stderr
                assert "FAIL" in done.stdout and "PASS" in done.stdout, done.stdout
            elif line.startswith("curl "):
                assert bg is not None, f"{line}: needs the --keep-running demo before it"
                cmd = line.replace("127.0.0.1:9090", bg[0].admin)
                cmd = cmd.replace("127.0.0.1:8080", bg[0].proxy)
                done = _sh(cmd, workdir)
                assert done.returncode == 0 and done.stdout.strip(), f"{cmd}: {done}"
            elif line == "kill -INT %1":
                assert bg is not None, "nothing to kill"
                code = _stop(*bg)
                assert code == 0, bg[0].output()
                bg = None
            elif line.startswith("strangler "):
                done = _sh(line, workdir)
                want = next((c for p, c in EXPECTED_EXIT.items() if line.startswith(p)), 0)
                assert done.returncode == want, f"{line}\n{done.stdout}\n{done.stderr}"
                assert "Traceback" not in done.stderr, done.stderr
            else:
                pytest.fail(f"tour line of an unknown kind (run it here or skip it): {line}")
            ran += 1
    finally:
        if bg is not None:
            _stop(*bg)
    assert ran >= 10
    html = (workdir / ".demo" / "report.html").read_text(encoding="utf-8")
    assert "<html" in html.lower() and "order-show" in html


def _check_against_help(line: str, workdir: Path) -> None:
    """A long-running `strangler` line: its subcommand and options exist; its config is valid."""
    words = shlex.split(line.rstrip("&").strip())
    sub = [w for w in words[1:3] if not w.startswith("-")][:1]
    assert sub, line
    helped = _sh(f"strangler {sub[0]} --help", workdir)
    assert helped.returncode == 0, helped.stderr
    for word in words:
        if word.startswith("--"):
            assert word.split("=", 1)[0] in helped.stdout, f"{line}: {word} is not an option"
    if "--config" in words:
        path = words[words.index("--config") + 1]
        checked = _sh(f"strangler check --config {shlex.quote(path)}", workdir)
        assert checked.returncode == 0, checked.stdout + checked.stderr


SERVE_SKIPPED = (
    ("export ", "sets the token for the lines that follow"),
    ("curl ", "needs the three long-running processes on fixed ports"),
    ("kill ", "stops the long-running processes"),
)


def test_the_serve_tour_names_real_commands(workdir: Path) -> None:
    checked = 0
    for line in tour_lines("tour-serve"):
        if any(line.startswith(prefix) for prefix, _ in SERVE_SKIPPED):
            continue
        assert line.startswith("strangler "), f"unknown kind of line: {line}"
        _check_against_help(line, workdir)
        checked += 1
    assert checked >= 4
