"""`--profile`: py-spy, then perf, on the busiest strangler process under 64 connections.

py-spy is installed into the running venv only when asked for; it is not a dependency.
The summary (self and inclusive shares per Python function, then CPU by shared object
and symbol from perf when available) goes to bench/profile.txt.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from bench.procs import Started, cpu_ns_by_task, process_tree
from bench.wrk import WrkError, WrkResult, run_wrk

__all__ = ["busiest_pid", "ensure_py_spy", "profile_target", "summarise_collapsed"]


def ensure_py_spy() -> str:
    """The py-spy executable, pip-installing it into this venv when missing."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    found = shutil.which("py-spy")
    if found:
        return found
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "py-spy"], check=True, timeout=300
    )
    return str(beside)


def busiest_pid(root: int) -> int:
    """The process in `root`'s tree that has used the most CPU so far (the worker)."""
    per_task = cpu_ns_by_task(process_tree(root))
    per_pid: Counter[int] = Counter()
    for (pid, _tid), ns in per_task.items():
        per_pid[pid] += ns
    return per_pid.most_common(1)[0][0] if per_pid else root


def summarise_collapsed(lines: Iterable[str], top: int = 40) -> str:
    """A top-N table of self and inclusive sample shares from py-spy's collapsed stacks."""
    self_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, count_text = line.rstrip().rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        self_counts[frames[-1]] += count
        for frame in set(frames):
            total_counts[frame] += count
    if total == 0:
        return "no samples\n"
    out = [f"{total} samples", "", "self %  function (top by self time)"]
    out += [f"{100 * n / total:6.1f}  {f}" for f, n in self_counts.most_common(top)]
    out += ["", "total % function (top by inclusive time)"]
    out += [f"{100 * n / total:6.1f}  {f}" for f, n in total_counts.most_common(top)]
    return "\n".join(out) + "\n"


def _py_spy(pid: int, seconds: int, raw: Path, load_cpu: int | None) -> tuple[str, list[str]]:
    """Record `pid` with py-spy into `raw`: native frames when allowed, else Python only."""
    argv = [ensure_py_spy(), "record", "--pid", str(pid), "--duration", str(seconds)]
    argv += ["--rate", "499", "--format", "raw", "--output", str(raw), "--function"]
    if load_cpu is not None:
        argv = ["taskset", "-c", str(load_cpu), *argv]
    errors: list[str] = []
    attempts = [("python + native frames", "--native"), ("python frames only", "--nonblocking")]
    for mode, flag in attempts:
        done = subprocess.run(
            [*argv, flag], capture_output=True, text=True, timeout=seconds + 60, check=False
        )
        if done.returncode == 0 and raw.exists():
            return mode, errors
        errors.append(f"{flag}: {done.stderr.strip()[-300:]}")
    return "failed", errors


def _perf(pid: int, seconds: int, data: Path, load_cpu: int | None) -> str:
    """CPU shares by shared object and by symbol from `perf record` on `pid`, or why not."""
    perf = shutil.which("perf")
    if perf is None:
        return "perf: not installed\n"
    pin = ["taskset", "-c", str(load_cpu)] if load_cpu is not None else []
    record = [*pin, perf, "record", "-F", "999", "-p", str(pid), "-o", str(data)]
    done = subprocess.run(
        [*record, "--", "sleep", str(seconds)],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    )
    if done.returncode != 0 or not data.exists():
        return f"perf record failed: {done.stderr.strip()[-300:]}\n"
    parts = []
    for sort, limit in (("dso", 15), ("dso,sym", 40)):
        report = subprocess.run(
            [perf, "report", "-i", str(data), "--stdio", "--no-children", "--sort", sort],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        lines = [ln for ln in report.stdout.splitlines() if ln.strip() and not ln.startswith("#")]
        parts.append(f"perf report --sort {sort} (top {limit}):\n" + "\n".join(lines[:limit]))
    return "\n\n".join(parts) + "\n"


def profile_target(
    url: str, measured: Started, out: Path, seconds: int, tmp: Path, load_cpu: int | None
) -> str:
    """Load `url` with 64 connections while py-spy, then perf, sample the busiest process."""
    pid = busiest_pid(measured.pid)
    raw = tmp / "profile.collapsed"
    result: list[WrkResult] = []

    def load() -> None:
        with contextlib.suppress(WrkError):
            result.append(run_wrk(url, 64, 2 * seconds + 4, load_cpu))

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    mode, errors = _py_spy(pid, seconds, raw, load_cpu)
    perf_text = _perf(pid, seconds, tmp / "perf.data", load_cpu)
    loader.join(timeout=2 * seconds + 30)
    header = f"profile of pid {pid} ({url}) under wrk -c64\n"
    if result:
        header += f"load meanwhile: {result[0].rps:,.0f} req/s (slowed by sampling)\n"
    if raw.exists():
        py_spy_text = f"py-spy record {seconds}s, {mode}:\n" + summarise_collapsed(
            raw.read_text().splitlines()
        )
        shutil.copy(raw, out.with_suffix(".collapsed"))
    else:
        py_spy_text = "py-spy failed:\n"
    if errors:
        py_spy_text += "py-spy attempts that failed: " + " | ".join(errors) + "\n"
    text = header + "\n" + py_spy_text + "\n" + perf_text
    out.write_text(text)
    return text
