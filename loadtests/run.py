"""`python -m loadtests.run` (`make loadtest`): Locust, headless, against a demo stack.

Starts a stack (`proxy.stack`: seeded monolith, proxy, extracted service) in this process,
runs Locust in a subprocess for a bounded time (Locust monkey-patches with gevent, so it
never runs inside an asyncio process), writes its CSV stats under `loadtests/results/`,
prints a per-endpoint summary and the shadow comparisons recorded meanwhile, and exits 1
when any request failed (0 otherwise, 2 on bad arguments).

Profiles: `demo` (routes at every stage, as in `strangler demo`), `proxy-only` (every
route in legacy mode: the proxy's raw overhead) and `direct` (the same users straight at
the monolith: the baseline to hold `proxy-only` against). Environment defaults: LOADTEST_USERS (50),
LOADTEST_DURATION (60s), LOADTEST_PROFILE (demo).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from loadtests.summary import EndpointStats, format_summary, parse_stats

if TYPE_CHECKING:  # the stack is imported when a run starts, so --help stays fast
    from proxy.stack import Profile, Stack

__all__ = ["Options", "main", "parse_args", "parse_duration"]

_ROOT = Path(__file__).resolve().parent.parent
_LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
_RESULTS = Path(__file__).resolve().parent / "results"
_DURATION = re.compile(r"([0-9]+)(s|m|h)?")
_UNITS = {"s": 1, "m": 60, "h": 3600}
_SEED = 500
_LOCUST_GRACE_S = 60.0  # start-up, spawning and stop timeout on top of the run time
_PROFILES = ("demo", "proxy-only", "direct")


def parse_duration(text: str) -> int:
    """Seconds from `60`, `60s`, `2m` or `1h`; ValueError otherwise."""
    m = _DURATION.fullmatch(text.strip())
    if m is None or int(m.group(1)) <= 0:
        raise ValueError(f"duration must look like 60s, 2m or 1h, got {text!r}")
    return int(m.group(1)) * _UNITS[m.group(2) or "s"]


@dataclass(frozen=True, slots=True)
class Options:
    """One load test run."""

    profile: str
    users: int
    duration_s: int
    spawn_rate: float
    results: Path


def parse_args(argv: Sequence[str] | None, env: dict[str, str] | None = None) -> Options:
    """Options from the command line, defaulting to the LOADTEST_* environment variables."""
    env = dict(os.environ) if env is None else env
    parser = argparse.ArgumentParser(prog="python -m loadtests.run", description=__doc__)
    parser.add_argument("--profile", choices=_PROFILES, default=env.get("LOADTEST_PROFILE", "demo"))
    parser.add_argument("--users", type=int, default=None, help="default LOADTEST_USERS or 50")
    parser.add_argument("--duration", default=env.get("LOADTEST_DURATION", "60s"))
    parser.add_argument("--spawn-rate", type=float, default=None, help="users started per second")
    parser.add_argument("--results", type=Path, default=_RESULTS, help="CSV output directory")
    args = parser.parse_args(argv)
    try:
        users = args.users if args.users is not None else int(env.get("LOADTEST_USERS", "50"))
        duration = parse_duration(args.duration)
    except ValueError as e:
        parser.error(str(e))
    if users < 1:
        parser.error("--users must be at least 1")
    if args.profile not in _PROFILES:
        parser.error(f"--profile must be one of {', '.join(_PROFILES)}")
    spawn = args.spawn_rate if args.spawn_rate is not None else max(1.0, users / 5)
    return Options(args.profile, users, duration, spawn, args.results)


def _locust_command(opts: Options, host: str, prefix: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(_LOCUSTFILE),
        "--headless",
        "--users",
        str(opts.users),
        "--spawn-rate",
        f"{opts.spawn_rate:g}",
        "--run-time",
        f"{opts.duration_s}s",
        "--stop-timeout",
        "5",
        "--host",
        host,
        "--csv",
        str(prefix),
        "--only-summary",
        "--loglevel",
        "WARNING",
        "--exit-code-on-error",
        "1",
    ]


async def _run_locust(opts: Options, host: str, prefix: Path, log: Path) -> int:
    """Run Locust to completion (bounded); returns its exit code."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(_ROOT), os.environ.get("PYTHONPATH")) if p),
        "STRANGLER_LOADTEST_ORDERS": str(_SEED),
    }
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *_locust_command(opts, host, prefix),
            cwd=str(_ROOT),
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            return await asyncio.wait_for(proc.wait(), opts.duration_s + _LOCUST_GRACE_S)
        except TimeoutError:
            print("loadtest: Locust did not finish in time; stopping it", file=sys.stderr)
            return 124
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                try:
                    await asyncio.wait_for(asyncio.shield(proc.wait()), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


async def _shadow_summary(stack: Stack) -> list[str]:
    """One line per shadowed route: comparisons, mismatch rate, drops, verdict."""
    from shadow.report import Thresholds, build_report

    stored = await stack.wait_recorded(30.0)
    thresholds = {r.name: Thresholds.from_promotion(r.promotion) for r in stack.settings.routes}
    report = await build_report(stack.store_url, thresholds_by_route=thresholds)
    lines = [f"shadow comparisons stored: {stored}"]
    for r in report.routes:
        rate = r.mismatch_rate
        shown = "-" if rate is None else f"{rate * 100:.2f}%"
        verdict = "PASS" if r.passed else "FAIL"
        lines.append(
            f"  {r.route:<14} {r.samples:>6} compared  {shown:>7} mismatched"
            f"  {r.dropped:>5} dropped  {verdict}"
        )
    return lines


async def _run(opts: Options) -> int:
    from proxy.stack import Stack

    task = asyncio.current_task()
    assert task is not None
    # SIGTERM too must unwind through the finally blocks: Locust stopped, the stack closed.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    opts.results.mkdir(parents=True, exist_ok=True)
    prefix = opts.results / opts.profile.replace("-", "_")
    for old in opts.results.glob(f"{prefix.name}_*.csv"):
        old.unlink()
    log = prefix.with_suffix(".log")
    with tempfile.TemporaryDirectory(prefix="strangler-loadtest-") as tmp:
        profile: Profile = "demo" if opts.profile == "demo" else "proxy-only"
        stack = Stack(Path(tmp), profile=profile, seed=_SEED)
        try:
            await stack.start()
            target = stack.legacy_url if opts.profile == "direct" else stack.proxy_url
            print(
                f"loadtest: profile {opts.profile}, {opts.users} users for {opts.duration_s}s"
                f" against {target} (Locust log: {log})",
                flush=True,
            )
            started = time.monotonic()
            rc = await _run_locust(opts, target, prefix, log)
            took = time.monotonic() - started
            shadow = await _shadow_summary(stack) if opts.profile == "demo" else []
        finally:
            await stack.stop()
    return _report(rc, took, prefix, log, shadow)


def _report(rc: int, took: float, prefix: Path, log: Path, shadow: list[str]) -> int:
    stats_csv = prefix.parent / f"{prefix.name}_stats.csv"
    rows: list[EndpointStats] = []
    if stats_csv.is_file():
        rows = parse_stats(stats_csv.read_text(encoding="utf-8"))
    print(f"\nLocust finished in {took:.0f}s (exit {rc}); CSV stats: {prefix}_*.csv\n")
    if rows:
        print(format_summary(rows), end="")
    for line in shadow:
        print(line)
    total = next((r for r in rows if r.aggregated), None)
    if total is None or total.requests == 0:
        print("loadtest: FAILED: no requests were made", file=sys.stderr)
        _tail(log)
        return 1
    if total.failures or rc != 0:
        print(f"loadtest: FAILED: {total.failures} failed requests (exit {rc})", file=sys.stderr)
        failures = prefix.parent / f"{prefix.name}_failures.csv"
        if failures.is_file():
            print(failures.read_text(encoding="utf-8")[:4000], file=sys.stderr)
        _tail(log)
        return 1
    print(f"loadtest: ok: {total.requests} requests, 0 failures")
    return 0


def _tail(log: Path, lines: int = 30) -> None:
    if log.is_file():
        text = log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
        print("\n".join(text), file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one load test; the exit code says whether every request succeeded."""
    opts = parse_args(argv)
    try:
        return asyncio.run(_run(opts))
    except KeyboardInterrupt:
        return 130
    except asyncio.CancelledError:
        return 143


if __name__ == "__main__":
    sys.exit(main())
