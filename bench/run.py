"""`make bench`: one run, one table, every ratio measured in that run.

The proxy under test (its whole process tree) runs pinned to CPU 0; wrk, the nginx
upstream and this harness run on CPU 1. Targets are measured in interleaved short
slices (round-robin, several rounds) and reported as medians, because this machine has
slow spells of a few seconds that would otherwise land on one target only.

Environment: BENCH_ROUNDS, BENCH_SLICE (seconds per slice), STRANGLER_BENCH_PG_URL,
STRANGLER_BENCH_REPORT_ROWS. Flags: --quick, --profile [TARGET], --targets, --sections,
--no-sections, --no-pin, --no-halt-poll.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType

from bench.goals import collect_goals, format_goals
from bench.procs import ProcessSet, cpu_busy_ns, cpu_delta_ns
from bench.sections import SECTIONS, SectionContext, run_sections
from bench.stats import Sample, add_ratios, summarise
from bench.table import PROXY_COLUMNS, format_generic, format_table
from bench.targets import (
    PATH,
    TARGETS,
    BenchEnv,
    Running,
    Target,
    TargetFailed,
    free_port,
    json_body,
    nginx_upstream_conf,
    start_nginx,
)
from bench.wrk import WrkError, run_wrk

__all__ = ["CONNECTIONS", "Settings", "main", "measure_slice", "settings_from"]

CONNECTIONS = (1, 64)
_BENCH_DIR = Path(__file__).resolve().parent
Row = dict[str, object]


@dataclass(frozen=True, slots=True)
class Settings:
    """How long and what to run."""

    rounds: int
    slice_s: int
    warmup: bool
    quick: bool
    profile: str | None
    pin: bool
    sections: bool
    targets: tuple[str, ...]
    output: Path
    only_sections: tuple[str, ...] = ()  # empty: every section
    halt_poll: bool = True


def settings_from(argv: Sequence[str] | None, environ: dict[str, str]) -> Settings:
    """Settings from the command line and BENCH_ROUNDS / BENCH_SLICE."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2 rounds: a fast smoke run")
    parser.add_argument(
        "--profile",
        nargs="?",
        const="strangler-1w",
        default=None,
        metavar="TARGET",
        help="py-spy TARGET (default strangler-1w) at 64 connections -> bench/profile.txt",
    )
    parser.add_argument("--no-pin", action="store_true", help="no CPU pinning (for comparison)")
    parser.add_argument(
        "--no-halt-poll",
        action="store_true",
        help="leave the guest halt-poll window as the machine has it (see README)",
    )
    parser.add_argument("--targets", default="", help="comma-separated subset of target names")
    parser.add_argument("--no-sections", action="store_true", help="only the proxy table")
    parser.add_argument(
        "--sections", default="", help="comma-separated subset of section keys (e.g. shadow)"
    )
    parser.add_argument("--output", default=str(_BENCH_DIR / "results.json"))
    args = parser.parse_args(argv)
    known = [t.name for t in TARGETS]
    chosen = tuple(n for n in args.targets.split(",") if n) or tuple(known)
    unknown = [n for n in chosen if n not in known]
    if unknown:
        parser.error(f"unknown targets {unknown}; known: {', '.join(known)}")
    keys = [s.key for s in SECTIONS]
    only = tuple(k for k in args.sections.split(",") if k)
    if [k for k in only if k not in keys]:
        parser.error(f"unknown sections {list(only)}; known: {', '.join(keys)}")
    rounds = int(environ.get("BENCH_ROUNDS", "2" if args.quick else "7"))
    slice_s = int(environ.get("BENCH_SLICE", "1"))
    if rounds < 1 or slice_s < 1:
        parser.error("BENCH_ROUNDS and BENCH_SLICE must be >= 1 (wrk takes whole seconds)")
    return Settings(
        rounds=rounds,
        slice_s=slice_s,
        warmup=True,
        quick=args.quick,
        profile=args.profile,
        pin=not args.no_pin,
        sections=not args.no_sections,
        targets=chosen,
        output=Path(args.output),
        only_sections=only,
        halt_poll=not args.no_halt_poll,
    )


def _log(message: str) -> None:
    """Progress on stderr, so stdout holds only the tables."""
    print(message, file=sys.stderr, flush=True)


def measure_slice(
    running: Running,
    connections: int,
    slice_s: int,
    load_cpu: int | None,
    proxy_cpu: int | None = None,
) -> Sample:
    """One wrk slice against a target, with the CPU its process tree spent meanwhile.

    With `proxy_cpu`, also how busy that CPU was with anything else (a noise indicator).
    """
    busy_before = cpu_busy_ns(proxy_cpu) if proxy_cpu is not None else 0
    before = running.measured.cpu_snapshot()
    t0 = time.monotonic()
    result = run_wrk(running.url, connections, slice_s, load_cpu, running.script)
    wall_ns = (time.monotonic() - t0) * 1e9
    spent_ns = cpu_delta_ns(before, running.measured.cpu_snapshot())
    other = None
    if proxy_cpu is not None and running.measured.label != "upstream":
        other_ns = cpu_busy_ns(proxy_cpu) - busy_before - spent_ns
        other = max(0.0, 100.0 * other_ns / wall_ns)
    return Sample(
        rps=result.rps,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        cpu_us_per_req=spent_ns / 1000 / result.requests if result.requests else None,
        requests=result.requests,
        errors=result.errors,
        other_cpu_pct=other,
    )


def _cpus() -> tuple[int | None, int | None]:
    """(proxy CPU, load CPU) when this machine has two CPUs we may use, else no pinning."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None, None
    return allowed[0], allowed[1]


def _version(argv: list[str]) -> str:
    """First line a tool prints about its version (nginx prints to stderr)."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    text = (done.stdout + done.stderr).strip()
    return text.splitlines()[0] if text else "unavailable"


_PACKAGES = ("aiohttp", "httptools", "uvloop", "orjson", "SQLAlchemy")


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def _machine() -> Row:
    """Facts about the machine and tools, for comparing runs."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    commit = _version(["git", "-C", str(_BENCH_DIR), "rev-parse", "--short", "HEAD"])
    return {
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        # the minimal aiohttp proxy's speed moves with aiohttp's (the 4x goal's baseline)
        "packages": {name: _package_version(name) for name in _PACKAGES},
        "nginx": _version([nginx, "-v"]) if nginx else "missing",
        "wrk": _version(["wrk", "-v"]),
        "py_spy": "available"
        if shutil.which("py-spy") or (Path(sys.executable).parent / "py-spy").exists()
        else "not installed",
        "perf": "available" if shutil.which("perf") else "missing",
        "loadavg": os.getloadavg(),
        "git_commit": commit,
    }


HALT_POLL_PARAM = Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
HALT_POLL_NS = 200_000  # the kernel's own default for the haltpoll cpuidle governor


@contextlib.contextmanager
def guest_halt_poll(wanted: bool, param: Path = HALT_POLL_PARAM) -> Iterator[str]:
    """The KVM guest halt-poll window at the kernel default for the run, restored afterwards.

    On a KVM guest with the haltpoll cpuidle driver, an idle vCPU polls up to this long
    before it halts; at 0 (as some images ship) every wake-up of an idle vCPU is a VM exit
    costing tens of microseconds, which lands on every proxied request at one connection
    (each crosses CPUs four times) and on no direct one. Yields what applies, for the report.
    """
    try:
        before = int(param.read_text().strip())
    except (OSError, ValueError):
        yield "guest halt polling: not applicable (no haltpoll cpuidle driver)"
        return
    if not wanted or before >= HALT_POLL_NS:
        yield f"guest halt polling: {before // 1000} us (as the machine has it)"
        return
    try:
        param.write_text(str(HALT_POLL_NS))
    except OSError as exc:
        yield f"guest halt polling: {before // 1000} us (cannot raise it: {exc.strerror})"
        return
    try:
        yield (
            f"guest halt polling: {HALT_POLL_NS // 1000} us for this run (kernel default;"
            f" the machine's {before} us restored afterwards; --no-halt-poll keeps it)"
        )
    finally:
        with contextlib.suppress(OSError):
            param.write_text(str(before))


@contextlib.contextmanager
def _signals_as_exceptions() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into SystemExit and SIGINT into KeyboardInterrupt, so cleanup runs."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    # Also when started in the background with SIGINT ignored: Ctrl-C must still clean up.
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _start_targets(env: BenchEnv, targets: Sequence[Target]) -> tuple[dict[str, Running], Row]:
    """Start every target once; failures are recorded, not fatal."""
    running: dict[str, Running] = {}
    status: Row = {}
    for target in targets:
        t0 = time.monotonic()
        try:
            running[target.name] = target.start(env)
        except (TargetFailed, OSError) as exc:
            status[target.name] = {"ok": False, "reason": f"failed to start: {exc}"}
            _log(f"  {target.name}: FAILED to start: {exc}")
            continue
        status[target.name] = {"ok": True, "description": target.description}
        _log(f"  {target.name}: ready in {time.monotonic() - t0:.1f}s")
    return running, status


def _run_rounds(
    settings: Settings, env: BenchEnv, running: dict[str, Running], status: Row
) -> dict[tuple[str, int], list[Sample]]:
    """Round-robin slices over every (target, connections) pair, rotating the start."""
    pairs = [(name, c) for name in running for c in CONNECTIONS]
    samples: dict[tuple[str, int], list[Sample]] = {p: [] for p in pairs}
    if settings.warmup:
        _log("warm-up: one slice per target at 64 connections (not recorded)")
        for warm in running.values():
            with contextlib.suppress(WrkError):
                run_wrk(warm.url, 64, 1, env.load_cpu)
    for r in range(settings.rounds):
        t0 = time.monotonic()
        shift = r % len(pairs) if pairs else 0
        for name, c in pairs[shift:] + pairs[:shift]:
            target = running.get(name)
            if target is None:
                continue
            try:
                samples[(name, c)].append(
                    measure_slice(target, c, settings.slice_s, env.load_cpu, env.proxy_cpu)
                )
            except WrkError as exc:
                _log(f"  {name} c={c}: wrk failed: {exc}")
            if not target.measured.alive():
                reason = f"died during the run: {target.measured.log_tail()}"
                status[name] = {"ok": False, "reason": reason}
                running.pop(name)
                _log(f"  {name}: {reason}")
        _log(f"round {r + 1}/{settings.rounds} done in {time.monotonic() - t0:.1f}s")
    return samples


def _rows(
    targets: Sequence[Target], status: Row, samples: dict[tuple[str, int], list[Sample]]
) -> list[Row]:
    """One row per (target, connections): medians and ratios, or a note for a failure."""
    rows: list[Row] = []
    for target in targets:
        state = status.get(target.name)
        for c in CONNECTIONS:
            got = samples.get((target.name, c), [])
            ok = isinstance(state, dict) and state.get("ok")
            if ok and got:
                rows.append(summarise(target.name, c, got))
            elif isinstance(state, dict) and not state.get("ok"):
                rows.append(
                    {"target": target.name, "connections": c, "note": f"n/a ({state['reason']})"}
                )
            else:
                rows.append(
                    {"target": target.name, "connections": c, "note": "n/a (no slice succeeded)"}
                )
    return add_ratios(rows)


def _print_report(
    settings: Settings, rows: list[Row], sections: dict[str, Row], env: BenchEnv, idle: str
) -> list[Row]:
    """Print the proxy table, each section and the goal verdicts; return the goals as rows."""
    pinning = (
        f"proxy on CPU {env.proxy_cpu}, wrk + upstream on CPU {env.load_cpu}"
        if env.proxy_cpu is not None
        else "no CPU pinning"
    )
    print(
        f"\nproxy overhead: medians of {settings.rounds} rounds x {settings.slice_s}s slices;"
        f" {pinning}; 1 KB JSON from nginx `return 200`; {idle}"
    )
    print(format_table(rows, PROXY_COLUMNS))
    print(
        "cpu us/req: proxy process tree (direct: the upstream's). /direct /minimal /nginx:"
        " req/s ratios; cpu eff/nginx: nginx-1w us per request / this target's"
        " (1.0 = as lean as nginx); +p50: added over direct; other%: the proxy CPU's busy time"
        " spent on other processes during the slices (noise from whatever else runs here)."
    )
    for section in sections.values():
        print(f"\n{section['title']}:")
        section_rows = section["rows"]
        if isinstance(section_rows, list) and section_rows:
            print(format_generic(section_rows))
        if section["note"]:
            print(f"  {section['note']}")
    goals = collect_goals(rows, sections)
    print("\ngoals (issues 4, 6, 7):")
    print(format_goals(goals))
    reference = {(r["target"], r["connections"]): r for r in rows}.get(("nginx-1w", 1), {})
    if isinstance(reference.get("added_p50_ms"), float):
        print(f"  (nginx-1w adds {reference['added_p50_ms']:.3f} ms p50 at 1 conn on this pinning)")
    return [goal.as_json() for goal in goals]


def _bench(settings: Settings) -> int:
    """Start everything, measure, print, write results; cleanup is the caller's ExitStack."""
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            _log(f"{tool} is not installed; `make bench` installs it with apt-get")
            return 2
    proxy_cpu, load_cpu = _cpus() if settings.pin else (None, None)
    if load_cpu is not None:
        os.sched_setaffinity(0, {load_cpu})
    machine = _machine()
    with contextlib.ExitStack() as stack:
        idle = stack.enter_context(guest_halt_poll(settings.halt_poll))
        machine["idle"] = idle
        _log(idle)
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="strangler-bench-")))
        processes = stack.enter_context(ProcessSet())
        up_port = free_port()
        _log("starting the nginx upstream and the targets")
        try:
            conf = nginx_upstream_conf(tmp, "upstream", up_port, json_body())
            upstream = start_nginx(processes, tmp, "upstream", conf, up_port, load_cpu)
        except TargetFailed as exc:
            _log(f"the upstream nginx did not start: {exc}")
            return 1
        env = BenchEnv(tmp, processes, f"http://127.0.0.1:{up_port}", proxy_cpu, load_cpu)
        env = replace(env, upstream=upstream)
        targets = [t for t in TARGETS if t.name in settings.targets]
        running, status = _start_targets(env, targets)
        samples = _run_rounds(settings, env, running, status)
        profile_note = _maybe_profile(settings, env, running)
        for name, run in running.items():
            if name != "direct":
                processes.stop(run.measured)
        rows = _rows(targets, status, samples)
        sections = (
            run_sections(
                SectionContext(env, settings.rounds, settings.slice_s, settings.quick),
                [
                    s
                    for s in SECTIONS
                    if not settings.only_sections or s.key in settings.only_sections
                ],
            )
            if settings.sections
            else {}
        )
        goals = _print_report(settings, rows, sections, env, idle)
        if profile_note:
            print(f"\n{profile_note}")
    machine["loadavg_after"] = os.getloadavg()
    results = {
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "settings": {
            "rounds": settings.rounds,
            "slice_s": settings.slice_s,
            "quick": settings.quick,
            "connections": list(CONNECTIONS),
            "proxy_cpu": proxy_cpu,
            "load_cpu": load_cpu,
            "path": PATH,
            "body_bytes": len(json_body()),
        },
        "machine": machine,
        "targets": status,
        "rows": rows,
        "goals": goals,
        "sections": sections,
    }
    settings.output.write_text(json.dumps(results, indent=2) + "\n")
    _log(f"\nwrote {settings.output.name}")
    return 0


def _maybe_profile(settings: Settings, env: BenchEnv, running: dict[str, Running]) -> str | None:
    """With --profile, py-spy a target (one-worker strangler) under load into bench/profile.txt."""
    if not settings.profile:
        return None
    run = running.get(settings.profile)
    if run is None:
        return f"profile: skipped, {settings.profile} is not running"
    from bench.profile import profile_target

    out = _BENCH_DIR / "profile.txt"
    _log(f"profiling {settings.profile} with py-spy (64 connections)")
    try:
        text = profile_target(run.url, run.measured, out, 5, env.tmp, env.load_cpu)
    except (OSError, subprocess.SubprocessError, WrkError) as exc:
        return f"profile: failed: {exc}"
    head = "\n".join(text.splitlines()[:20])
    return f"profile (top of bench/profile.txt):\n{head}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m bench.run`."""
    # One redaction key for every process of the run (the proxies, helpers and this
    # harness), as a deployment sets one; without it each warned on the bench's output.
    # Not a secret: nothing personal is redacted here.
    os.environ.setdefault("STRANGLER_REDACT_KEY", "strangler-bench-run")
    settings = settings_from(argv, dict(os.environ))
    with _signals_as_exceptions():
        try:
            return _bench(settings)
        except KeyboardInterrupt:
            _log("interrupted; everything started was stopped")
            return 130


if __name__ == "__main__":
    sys.exit(main())
