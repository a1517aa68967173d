"""Processes the bench starts: pinned, in their own process groups, always cleaned up.

CPU time comes from /proc/<pid>/task/<tid>/schedstat (first field: nanoseconds on a CPU),
summed over a process and all its descendants.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

__all__ = [
    "ProcessSet",
    "Started",
    "cpu_busy_ns",
    "cpu_delta_ns",
    "cpu_ns_by_task",
    "parse_cpu_busy_ns",
    "parse_stat_line",
    "process_tree",
    "tree_cpu_ns",
    "wait_ready",
]

_PROC = Path("/proc")


def parse_stat_line(line: str) -> tuple[int, int]:
    """(pid, ppid) from one /proc/<pid>/stat line; the comm field may hold spaces or parens."""
    head, _, tail = line.rpartition(")")
    pid = int(head.split("(", 1)[0])
    fields = tail.split()
    return pid, int(fields[1])


def process_tree(root: int, proc: Path = _PROC) -> list[int]:
    """`root` and every live descendant of it."""
    children: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            pid, ppid = parse_stat_line((entry / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def cpu_ns_by_task(pids: Sequence[int], proc: Path = _PROC) -> dict[tuple[int, int], int]:
    """Nanoseconds on a CPU so far, per (pid, tid), for the given processes."""
    result: dict[tuple[int, int], int] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for task in (proc / str(pid) / "task").iterdir():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    result[(pid, int(task.name))] = int((task / "schedstat").read_text().split()[0])
    return result


def parse_cpu_busy_ns(proc_stat: str, cpu: int, tick_ns: int) -> int:
    """Busy time (all but idle and iowait) of one CPU from /proc/stat text, in ns."""
    prefix = f"cpu{cpu} "
    for line in proc_stat.splitlines():
        if line.startswith(prefix):
            ticks = [int(v) for v in line.split()[1:]]
            return (sum(ticks[:8]) - ticks[3] - ticks[4]) * tick_ns
    raise ValueError(f"no cpu{cpu} line in /proc/stat")


def cpu_busy_ns(cpu: int) -> int:
    """Busy nanoseconds of `cpu` since boot (clock-tick resolution)."""
    tick_ns = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    return parse_cpu_busy_ns((_PROC / "stat").read_text(), cpu, tick_ns)


def tree_cpu_ns(root: int) -> dict[tuple[int, int], int]:
    """CPU nanoseconds per task over `root`'s whole process tree."""
    return cpu_ns_by_task(process_tree(root))


def cpu_delta_ns(
    before: Mapping[tuple[int, int], int], after: Mapping[tuple[int, int], int]
) -> int:
    """CPU spent between two snapshots; tasks born in between count from zero."""
    return sum(max(0, ns - before.get(task, 0)) for task, ns in after.items())


class Started:
    """A process the bench started: its Popen, its log file and a label for messages."""

    def __init__(self, label: str, popen: subprocess.Popen[bytes], log: Path) -> None:
        self.label = label
        self.popen = popen
        self.log = log

    @property
    def pid(self) -> int:
        """The process id (also its process group id)."""
        return self.popen.pid

    def alive(self) -> bool:
        """True while the process has not exited."""
        return self.popen.poll() is None

    def log_tail(self, limit: int = 400) -> str:
        """The end of the process's output, squeezed to one line for a table cell."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
        return " | ".join(lines[-3:])[-limit:]

    def cpu_snapshot(self) -> dict[tuple[int, int], int]:
        """CPU nanoseconds per task of this process and its descendants."""
        return tree_cpu_ns(self.pid)


class ProcessSet:
    """Starts processes in new sessions and kills every one of their groups on close."""

    def __init__(self) -> None:
        self._started: list[Started] = []

    def start(
        self,
        label: str,
        argv: Sequence[str],
        log: Path,
        cpu: int | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        discard_stdout: bool = False,
        pass_fds: Sequence[int] = (),
    ) -> Started:
        """Start `argv` (pinned to `cpu` with taskset), stderr (and stdout) into `log`.

        `discard_stdout` sends stdout to /dev/null: for access logs, which would fill the disk.
        `pass_fds` stay open in the child (a socket pair's end, say).
        """
        command = ["taskset", "-c", str(cpu), *argv] if cpu is not None else list(argv)
        out: IO[bytes] = log.open("ab")
        try:
            popen = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL if discard_stdout else out,
                stderr=out,
                start_new_session=True,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                pass_fds=tuple(pass_fds),
            )
        finally:
            out.close()
        started = Started(label, popen, log)
        self._started.append(started)
        return started

    def stop(self, started: Started, grace_s: float = 3.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left after `grace_s`."""
        _signal_group(started.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while started.alive() and time.monotonic() < deadline:
            with contextlib.suppress(subprocess.TimeoutExpired):
                started.popen.wait(timeout=0.05)
        _signal_group(started.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            started.popen.wait(timeout=2.0)
        if started in self._started:
            self._started.remove(started)

    def close(self) -> None:
        """Stop everything still running, newest first."""
        for started in reversed(list(self._started)):
            self.stop(started)

    def __enter__(self) -> ProcessSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    """Signal a whole process group, ignoring one that is already gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def wait_ready(
    started: Started, probe: Callable[[], str | None], timeout_s: float = 20.0
) -> str | None:
    """Poll `probe` (None = ready, else why not) until ready; return the last reason on failure."""
    deadline = time.monotonic() + timeout_s
    reason: str | None = "not probed"
    while time.monotonic() < deadline:
        if not started.alive():
            tail = started.log_tail()
            return f"exited with {started.popen.returncode}" + (f": {tail}" if tail else "")
        reason = probe()
        if reason is None:
            return None
        time.sleep(0.05)  # polling interval while the process binds its sockets
    tail = started.log_tail()
    return f"not ready within {timeout_s:.0f}s ({reason})" + (f"; log: {tail}" if tail else "")
