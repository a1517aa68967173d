"""`--profile`: py-spy on the busiest strangler process during a 64-connection load.

py-spy is installed into the running venv only when asked for; it is not a dependency.
The summary (self and inclusive shares per function) goes to bench/profile.txt.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from bench.procs import Started, cpu_ns_by_task, process_tree
from bench.wrk import WrkResult, run_wrk

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


def profile_target(
    url: str, measured: Started, out: Path, seconds: int, tmp: Path, load_cpu: int | None
) -> str:
    """Load `url` with 64 connections while py-spy samples the busiest process; write `out`."""
    py_spy = ensure_py_spy()
    pid = busiest_pid(measured.pid)
    raw = tmp / "profile.collapsed"
    result: list[WrkResult] = []
    load = threading.Thread(
        target=lambda: result.append(run_wrk(url, 64, seconds + 2, load_cpu)), daemon=True
    )
    load.start()
    argv = [py_spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "499"]
    argv += ["--format", "raw", "--output", str(raw), "--nonblocking", "--function"]
    if load_cpu is not None:
        argv = ["taskset", "-c", str(load_cpu), *argv]
    attempts = [[*argv, "--native"], argv]
    errors: list[str] = []
    mode = "python + native frames"
    for attempt in attempts:
        done = subprocess.run(attempt, capture_output=True, text=True, timeout=seconds + 60)
        if done.returncode == 0 and raw.exists():
            break
        errors.append(done.stderr.strip()[-300:])
        mode = "python frames only (--native failed)"
    load.join(timeout=seconds + 30)
    if not raw.exists():
        text = "py-spy failed:\n" + "\n".join(errors) + "\n"
    else:
        header = f"py-spy record, {mode}, pid {pid} ({url}, 64 connections, {seconds}s)\n"
        if result:
            header += f"load during profile: {result[0].rps:,.0f} req/s (slowed by sampling)\n"
        text = header + "\n" + summarise_collapsed(raw.read_text().splitlines())
        shutil.copy(raw, out.with_suffix(".collapsed"))
    out.write_text(text)
    return text
