"""Shadow and canary modes under load: two table targets and the issue 6 shadow section.

Both backends are the bench's nginx upstream (`legacy` and `candidate` name the same URL,
each with its own pool), so every comparison is a match and what is measured is the cost
of the shadow leg, not a slow candidate. Each strangler here stores its comparisons in its
own SQLite file in the bench's temp dir.

The section runs its own legacy-mode and shadow-mode strangler (one worker each, on the
proxy CPU) and measures, interleaved round by round:
(b) saturating load: 64 connections unpaced; both legacy-mode proxies give the capacity;
(a) half load: 64 connections paced by a wrk Lua `delay()` at about 50 % of that capacity.
Shadow copies compared vs shed come from the proxy's /-/metrics read around each slice.
"""

from __future__ import annotations

import http.client
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bench.procs import Started
from bench.run import measure_slice
from bench.sections import SectionContext, SectionResult
from bench.stats import Sample, median
from bench.targets import (
    PATH,
    BenchEnv,
    Running,
    TargetFailed,
    free_port,
    probe_http,
    start_strangler,
)
from bench.wrk import WrkError

__all__ = [
    "COMPARED_OUTCOMES",
    "CONTROL",
    "IN_LOOP",
    "OFFLOAD",
    "ShadowCounts",
    "fetch_shadow_counts",
    "floor_exp_mean",
    "mode_config",
    "paced_script",
    "parse_shadow_counts",
    "run_section",
    "start_mode_target",
    "user_id_script",
]

COMPARED_OUTCOMES = frozenset({"match", "mismatch", "candidate_error", "candidate_timeout"})
_CONNECTIONS = 64
IN_LOOP = "shadow 100% in-loop"  # limits.shadow_offload: false (copies in the worker's loop)
OFFLOAD = "shadow 100%"  # the default under `serve`: copies in the worker's SCHED_IDLE helper
CONTROL = "legacy A/A"  # a second legacy-mode proxy: its ratios are the run's noise floor
_HALF = 0.5
_PACED_SLICE_S = 2  # paced slices carry fewer requests; 2 s keeps p99 meaningful
_CANARY_PERCENT = 50.0
_USER_KEYS = 10_000

Row = dict[str, object]


def mode_config(
    tmp: Path,
    name: str,
    port: int,
    admin_port: int,
    upstream_url: str,
    mode: str,
    canary_percent: float = _CANARY_PERCENT,
    *,
    backend_timeout: str = "5s",
    connect_timeout: str = "500ms",
    shadow_timeout: str = "2s",
) -> str:
    """A strangler config whose `/bench/*` route runs in `mode` with the upstream as candidate.

    `shadow` shadows 100 % of requests; `canary` serves `canary_percent` of X-User-Id keys
    from the candidate (the rest shadowed at 100 %, the project's default).
    """
    if mode not in ("legacy", "shadow", "shadow-in-loop", "canary"):
        raise ValueError(f"unsupported bench mode {mode!r}")
    limits = ""
    if mode == "shadow-in-loop":  # shadow copies in the worker's own event loop
        mode, limits = "shadow", "limits: {shadow_offload: false}\n"
    backend = (
        f"{{url: {json.dumps(upstream_url)}, timeout: {backend_timeout},"
        f" connect_timeout: {connect_timeout}, max_connections: 200}}"
    )
    route = "  - name: bench\n    match: {path: /bench/*}\n" + f"    mode: {mode}\n"
    if mode != "legacy":
        route += "    candidate: candidate\n"
        route += f"    shadow: {{percent: 100, timeout: {shadow_timeout}, max_concurrency: 64}}\n"
    if mode == "canary":
        route += f"    canary: {{percent: {canary_percent:g}, sticky: {{header: X-User-Id}}}}\n"
    return (
        f"listen: 127.0.0.1:{port}\n"
        f"admin: {{listen: 127.0.0.1:{admin_port}}}\n"
        "backends:\n"
        f"  legacy: {backend}\n"
        f"  candidate: {backend}\n"
        "default_backend: legacy\n"
        f"store: {{url: {json.dumps(f'sqlite+aiosqlite:///{tmp}/{name}.db')}}}\n"
        f"{limits}"
        "routes:\n" + route
    )


def floor_exp_mean(target_ms: float) -> float:
    """The exponential mean m whose floored samples average `target_ms` (wrk delays are whole ms).

    E[floor(X)] for X ~ Exp(mean m) is 1 / (e^(1/m) - 1); solved for m.
    """
    if target_ms <= 0:
        raise ValueError("target delay must be positive")
    return 1.0 / math.log1p(1.0 / target_ms)


_SEED = """local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("seed", threads)
end
"""


def paced_script(rate_rps: float, connections: int) -> str:
    """A wrk Lua script pacing `connections` to about `rate_rps` in total.

    Each connection waits an exponential, whole-ms delay between requests (Poisson-like
    arrivals, so connections do not move in lock-step bursts).
    """
    if rate_rps <= 0 or connections < 1:
        raise ValueError("rate and connections must be positive")
    mean = floor_exp_mean(connections * 1000.0 / rate_rps)
    return _SEED + (
        "function init(args)\n"
        "  math.randomseed(seed * 7919)\n"
        "end\n"
        "function delay()\n"
        f"  return math.floor(-{mean:.6f} * math.log(1 - math.random()))\n"
        "end\n"
    )


def user_id_script(keys: int = _USER_KEYS) -> str:
    """A wrk Lua script sending a different X-User-Id (out of `keys`) on each request."""
    return _SEED + (
        "local n = 0\n"
        "function request()\n"
        "  n = n + 1\n"
        f'  wrk.headers["X-User-Id"] = "u" .. ((n * 7919 + seed * 104729) % {keys})\n'
        "  return wrk.format()\n"
        "end\n"
    )


@dataclass(frozen=True, slots=True)
class ShadowCounts:
    """Shadow counters of one route at one moment: comparisons by outcome, drops by reason."""

    outcomes: Mapping[str, float] = field(default_factory=dict)
    dropped: Mapping[str, float] = field(default_factory=dict)

    @property
    def compared(self) -> float:
        """Copies that reached a verdict (match, mismatch, candidate error or timeout)."""
        return sum(v for k, v in self.outcomes.items() if k in COMPARED_OUTCOMES)

    @property
    def shed(self) -> float:
        """Copies dropped for any reason (shed on lag, concurrency, body too large...)."""
        return sum(self.dropped.values())

    def minus(self, before: ShadowCounts) -> ShadowCounts:
        """What was counted since `before`."""
        return ShadowCounts(
            {k: v - before.outcomes.get(k, 0.0) for k, v in self.outcomes.items()},
            {k: v - before.dropped.get(k, 0.0) for k, v in self.dropped.items()},
        )

    def plus(self, other: ShadowCounts) -> ShadowCounts:
        """Both counts added up."""
        return ShadowCounts(_add(self.outcomes, other.outcomes), _add(self.dropped, other.dropped))


def _add(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, float]:
    return {k: a.get(k, 0.0) + b.get(k, 0.0) for k in {*a, *b}}


def parse_shadow_counts(text: str, route: str = "bench") -> ShadowCounts:
    """The shadow comparison and drop counters of `route` from Prometheus text."""
    outcomes: dict[str, float] = {}
    dropped: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "strangler_shadow_comparisons":
            into, label = outcomes, "outcome"
        elif family.name == "strangler_shadow_dropped":
            into, label = dropped, "reason"
        else:
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get("route") == route:
                key = sample.labels.get(label, "")
                into[key] = into.get(key, 0.0) + sample.value
    return ShadowCounts(outcomes, dropped)


def fetch_shadow_counts(admin_port: int) -> ShadowCounts:
    """GET /-/metrics on the admin port and parse the bench route's shadow counters."""
    conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=5.0)
    try:
        conn.request("GET", "/-/metrics")
        response = conn.getresponse()
        body = response.read().decode()
    finally:
        conn.close()
    if response.status != 200:
        raise RuntimeError(f"/-/metrics answered {response.status}")
    return parse_shadow_counts(body)


def _settled_counts(admin_port: int, deadline_s: float = 3.0) -> ShadowCounts:
    """The counters once in-flight shadow copies have finished (no change over 100 ms)."""
    last = fetch_shadow_counts(admin_port)
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        time.sleep(0.1)  # polling interval: shadow legs still in flight finish meanwhile
        now = fetch_shadow_counts(admin_port)
        if now == last:
            return now
        last = now
    return last


@dataclass(frozen=True, slots=True)
class _Proxy:
    """A strangler this module started: what wrk loads and where its metrics are."""

    running: Running
    admin_port: int


def _start(env: BenchEnv, name: str, mode: str, script: Path | None = None) -> _Proxy:
    """Start a one-worker strangler in `mode` on the proxy CPU and wait until it proxies."""
    port, admin_port = free_port(), free_port()
    config = mode_config(env.tmp, name, port, admin_port, env.upstream_url, mode)
    started = start_strangler(env, name, config, 1, admin_port)
    reason = probe_http(port, PATH)
    if reason is not None:
        env.processes.stop(started)
        raise TargetFailed(reason)
    return _Proxy(Running(f"http://127.0.0.1:{port}{PATH}", started, script), admin_port)


def start_mode_target(env: BenchEnv, name: str, mode: str) -> Running:
    """A table target: strangler in `mode` (canary loads with a varying X-User-Id)."""
    script = None
    if mode == "canary":
        script = env.tmp / "user-id.lua"
        script.write_text(user_id_script())
    return _start(env, name, mode, script).running


@dataclass(slots=True)
class _Series:
    """The slices of one (phase, mode) pair and the shadow counters they moved."""

    samples: list[Sample] = field(default_factory=list)
    counts: ShadowCounts = field(default_factory=ShadowCounts)


def _slice(
    env: BenchEnv, proxy: _Proxy, seconds: int, script: Path | None, series: _Series
) -> None:
    """One slice of `proxy` (optionally paced by `script`), its shadow counter deltas added."""
    running = Running(proxy.running.url, proxy.running.measured, script)
    before = _settled_counts(proxy.admin_port)
    series.samples.append(
        measure_slice(running, _CONNECTIONS, seconds, env.load_cpu, env.proxy_cpu)
    )
    series.counts = series.counts.plus(_settled_counts(proxy.admin_port).minus(before))


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _row(
    phase: str,
    mode: str,
    offered: float | None,
    series: _Series,
    base: _Series | None,
    *,
    shadow: bool = True,
) -> Row:
    """A section row: medians, ratios to legacy (`base`) and, for shadow, compared vs shed."""
    s = series.samples
    rps, p50, p99 = (median(getattr(x, k) for x in s) for k in ("rps", "p50_ms", "p99_ms"))
    row: Row = {"phase": phase, "mode": mode, "offered_rps": offered, "rps": rps}
    row.update({"p50_ms": p50, "p99_ms": p99})
    if base is not None:
        b = base.samples
        row["rps_x"] = _ratio(rps, median(x.rps for x in b))
        row["p50_x"] = _ratio(p50, median(x.p50_ms for x in b))
        row["p99_x"] = _ratio(p99, median(x.p99_ms for x in b))
    row["cpu_us_req"] = median(x.cpu_us_per_req for x in s)
    if base is not None and shadow:
        counts = series.counts
        total = counts.compared + counts.shed
        row["compared"] = int(counts.compared)
        row["shed"] = int(counts.shed)
        row["compared_pct"] = round(100.0 * counts.compared / total, 1) if total else None
        row["mismatch"] = int(counts.outcomes.get("mismatch", 0.0))
        row["cand_err"] = int(
            counts.outcomes.get("candidate_error", 0.0)
            + counts.outcomes.get("candidate_timeout", 0.0)
        )
        row["drop_reasons"] = {k: int(v) for k, v in counts.dropped.items() if v}
    row["errors"] = sum(x.errors for x in s)
    row["other%"] = median(x.other_cpu_pct for x in s)
    row["samples"] = {
        "rps": [x.rps for x in s],
        "p50_ms": [x.p50_ms for x in s],
        "p99_ms": [x.p99_ms for x in s],
        "cpu_us_per_req": [x.cpu_us_per_req for x in s],
    }
    return row


def _alive(proxies: Sequence[_Proxy]) -> None:
    for proxy in proxies:
        if not proxy.running.measured.alive():
            tail = proxy.running.measured.log_tail()
            raise RuntimeError(f"{proxy.running.measured.label} died: {tail}")


def _measure(
    env: BenchEnv,
    rounds: int,
    slice_s: int,
    legacy: _Proxy,
    shadows: Mapping[str, _Proxy],
    control: _Proxy,
) -> list[Row]:
    """Saturating rounds, then paced rounds at half the legacy capacity; rows for each."""
    # The control sits opposite legacy in the rotation (the farthest from it in time), so it
    # shows at least the drift between slices that the shadow rows see.
    others = list(shadows.items())
    order = [("legacy", legacy), *others[:1], (CONTROL, control), *others[1:]]
    proxies = dict(order)
    saturated = {mode: _Series() for mode in proxies}
    for r in range(rounds):
        for mode, proxy in order[r % len(order) :] + order[: r % len(order)]:
            try:
                _slice(env, proxy, slice_s, None, saturated[mode])
            except WrkError as exc:
                print(f"  shadow section: {mode} saturating slice failed: {exc}")
        _alive(list(proxies.values()))
    # Both legacy-mode proxies are the same thing: the capacity is the median of all their
    # saturating slices (twice the samples of one; a single slow spell moves it less).
    capacity = median(x.rps for m in ("legacy", CONTROL) for x in saturated[m].samples)
    if capacity is None:
        raise RuntimeError("no saturating legacy slice succeeded: capacity unknown")
    offered = _HALF * capacity
    script = env.tmp / "paced.lua"
    script.write_text(paced_script(offered, _CONNECTIONS))
    paced = {mode: _Series() for mode in proxies}
    for r in range(rounds):
        for mode, proxy in order[r % len(order) :] + order[: r % len(order)]:
            try:
                _slice(env, proxy, _PACED_SLICE_S, script, paced[mode])
            except WrkError as exc:
                print(f"  shadow section: {mode} paced slice failed: {exc}")
        _alive(list(proxies.values()))
    rows = []
    for phase, series, load in (("half", paced, offered), ("saturating", saturated, None)):
        base = series["legacy"]
        rows.append(_row(phase, "legacy", load, base, None))
        rows.append(_row(phase, CONTROL, load, series[CONTROL], base, shadow=False))
        rows += [_row(phase, mode, load, series[mode], base) for mode in shadows]
    return rows


def run_section(ctx: SectionContext) -> SectionResult:
    """Issue 6 point 8: shadow at 100 % vs legacy mode at half and at saturating load."""
    env = ctx.env
    started: list[Started] = []
    try:
        legacy = _start(env, "shadow-bench-legacy", "legacy")
        started.append(legacy.running.measured)
        control = _start(env, "shadow-bench-legacy-aa", "legacy")
        started.append(control.running.measured)
        shadows: dict[str, _Proxy] = {}
        for mode, kind in ((OFFLOAD, "shadow"), (IN_LOOP, "shadow-in-loop")):
            proxy = _start(env, f"shadow-bench-{kind}", kind)
            started.append(proxy.running.measured)
            shadows[mode] = proxy
        rows = _measure(env, ctx.rounds, ctx.slice_s, legacy, shadows, control)
    finally:
        for proc in started:
            env.processes.stop(proc)
    note = (
        "64 conns; saturating = unpaced, the median req/s of both legacy-mode proxies there is"
        " the capacity; half = wrk paced by a Lua delay() at 50% of that (offered_rps; closed"
        " loop, so a slower proxy gets fewer)."
        " Both backends are the nginx upstream (copies compare equal); one worker each on the"
        f" proxy CPU; medians of {ctx.rounds} interleaved rounds ({ctx.slice_s}s saturating,"
        f" {_PACED_SLICE_S}s paced slices); *_x = shadow / legacy; compared_pct = compared /"
        " (compared + shed), from /-/metrics deltas around each shadow slice; legacy A/A = a"
        " second legacy-mode proxy measured alike: its *_x show how far two identical proxies"
        " differ in this run"
    )
    return SectionResult(rows=rows, note=note)
