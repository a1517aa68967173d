"""Migrate acceptance 1 on the real demo stack: a faithful route walked to extracted, the
rounding bug refused.

One `Stack` (seeded monolith, in-process Order service, the half-even `orders_next` build,
SQLite store); `strangler migrate advance --apply --reload-url` runs as a real subprocess and
the running proxy must show every change through `/-/config`. Each step is refused right
after the previous change (no fresh evidence) and passes once new reads are compared.
Run with `-s` to see the transcript.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from ruamel.yaml import YAML

from proxy.migrate import gather_evidence, path_of
from proxy.settings import load
from proxy.stack import Stack, demo_template
from shadow.gates import Evidence
from shadow.store import Store

pytestmark = pytest.mark.slow

WALKED = "order-events"  # candidate `orders`: the in-process port, legacy fee rounding
BUGGY = "order-show"  # candidate `orders_next`: rounds the buyer-protection fee half-even
MIN_SAMPLES = 30
TOKEN_ENV = "STRANGLER_ADMIN_TOKEN"
_BATCH = 40  # reads per round: min_samples plus room for shed shadow copies
_ROUNDS = 6  # rounds per step at most
_CONCURRENCY = 8
_CLI_TIMEOUT_S = 30.0
_PATH = ("legacy", "shadow", "canary 1%", "canary 5%", "canary 25%", "canary 50%", "extracted")
_SEEDED = 500  # Stack's default seed: order ids 1..500


def _template(directory: Path) -> Path:
    """The demo config with WALKED back in shadow and both routes' gates set for a short test."""
    yaml = YAML()
    doc: Any = yaml.load(demo_template().read_text(encoding="utf-8"))
    routes = {r["name"]: r for r in doc["routes"]}
    walked = routes[WALKED]
    walked["mode"] = "shadow"
    walked["canary"] = {"sticky": {"header": "X-User-Id"}}  # no sticky key: canary never serves
    walked["promotion"] = {
        "steps": [1, 5, 25, 50, 100],
        "min_samples": MIN_SAMPLES,
        "max_mismatch_rate": 0.01,
        "max_error_rate": 0.01,
        "max_p99_ratio": 20,  # a busy 2-core box: latency is not what this test is about
    }
    buggy = routes[BUGGY]
    buggy["promotion"]["min_samples"] = MIN_SAMPLES
    buggy["promotion"]["max_p99_ratio"] = 20
    out = io.StringIO()
    yaml.dump(doc, out)
    path = directory / "template.yaml"
    path.write_text(out.getvalue(), encoding="utf-8")
    return path


@dataclass(frozen=True, slots=True)
class _Run:
    """One `strangler` invocation: exit code and output."""

    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        """Both streams, for assertion messages."""
        return f"exit {self.code}\n--- stdout\n{self.out}--- stderr\n{self.err}"


@dataclass(frozen=True, slots=True)
class _Step:
    """One line of the transcript."""

    change: str
    refused: str
    samples: int
    mismatches: int
    rounds: int
    verdict: str
    live: str
    served: str


def _strangler_cmd() -> list[str]:
    script = Path(sys.executable).with_name("strangler")  # the venv's console script
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from proxy.cli import main; main()"]


async def _strangler(cwd: Path, *args: str) -> _Run:
    proc = await asyncio.create_subprocess_exec(
        *_strangler_cmd(),
        *args,
        cwd=cwd,
        env=dict(os.environ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), _CLI_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return _Run(proc.returncode, out.decode(), err.decode())


async def _advance(stack: Stack, route: str) -> _Run:
    return await _strangler(
        stack.workdir,
        *("migrate", "advance", route, "--apply"),
        *("--config", str(stack.config_path), "--store", stack.store_url),
        *("--reload-url", stack.admin_url),
    )


async def _reads(http: aiohttp.ClientSession, base: str, paths: list[str], tag: str) -> None:
    """GET every path through the proxy, each as its own sticky user; all must answer 200."""
    gate = asyncio.Semaphore(_CONCURRENCY)

    async def one(i: int, path: str) -> int:
        async with gate, http.get(base + path, headers={"X-User-Id": f"{tag}-{i}"}) as resp:
            await resp.read()
            return resp.status

    statuses = await asyncio.gather(*(one(i, p) for i, p in enumerate(paths)))
    assert set(statuses) == {200}, statuses


async def _evidence(store_url: str, route: str) -> Evidence:
    """What `migrate` will judge: the route's comparisons since its last change."""
    async with Store(store_url) as store:
        last = await store.last_route_change(route)
        return await gather_evidence(store, route, last.time if last else None)


async def _feed(
    stack: Stack, http: aiohttp.ClientSession, paths: list[str], route: str, tag: str
) -> tuple[Evidence, int]:
    """Fresh reads in rounds until the store holds min_samples comparisons for `route`."""
    for rounds in range(1, _ROUNDS + 1):
        await _reads(http, stack.proxy_url, paths, f"{tag}-{rounds}")
        await stack.wait_recorded(timeout=15.0)
        ev = await _evidence(stack.store_url, route)
        if ev.samples >= MIN_SAMPLES:
            return ev, rounds
    raise AssertionError(f"{route}: only {ev.samples} comparisons after {_ROUNDS} rounds")


async def _live(http: aiohttp.ClientSession, admin: str, route: str) -> dict[str, Any]:
    """The route as the running proxy has it (`/-/config`)."""
    async with http.get(f"{admin}/-/config") as resp:
        data: dict[str, Any] = await resp.json()
    return next(r for r in data["routes"] if r["name"] == route)


async def _counts(http: aiohttp.ClientSession, admin: str, route: str) -> dict[str, float]:
    """`route`'s answers by backend and its dropped shadow copies by reason (`/-/metrics`)."""
    async with http.get(f"{admin}/-/metrics") as resp:
        text = await resp.text()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("route") != route:
                continue
            if s.name == "strangler_requests_total":
                key = s.labels["backend"]
            elif s.name == "strangler_shadow_dropped_total":
                key = f"dropped:{s.labels['reason']}"
            else:
                continue
            out[key] = out.get(key, 0.0) + s.value
    return out


def _delta(before: dict[str, float], after: dict[str, float]) -> str:
    moved = {k: after[k] - before.get(k, 0.0) for k in sorted(after)}
    return ", ".join(f"{k} {v:g}" for k, v in moved.items() if v) or "none"


def _verdict_line(out: str) -> str:
    return next((ln.strip() for ln in out.splitlines() if ln.startswith("gate:")), "?")


def _verdict_reason(out: str) -> str:
    return next((ln.strip(" -") for ln in out.splitlines() if ln.startswith("  - ")), "?")


def _file_stage(config: Path, route: str) -> str:
    r = next(r for r in load(str(config)).routes if r.name == route)
    return f"canary {r.canary.percent:g}%" if r.mode == "canary" else r.mode


def _live_stage(route: dict[str, Any]) -> str:
    mode = str(route["mode"])
    return f"canary {route['canary_percent']:g}%" if mode == "canary" else mode


async def test_walk_to_extracted_and_refuse_the_rounding_bug(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = time.monotonic()
    monkeypatch.setenv(TOKEN_ENV, "e2e-migrate-token")  # /-/reload accepts migrate's POST
    template = _template(tmp_path)
    events = [f"/api/v1/orders/{i}/events" for i in range(1, _BATCH + 1)]
    shows = [f"/api/v1/orders/{i}" for i in range(1, _SEEDED + 1)]
    steps: list[_Step] = []
    timeout = aiohttp.ClientTimeout(total=10)
    async with Stack(tmp_path / "stack", template=template) as stack:
        config = stack.config_path
        await stack.wait_recorded()  # creates the store file: migrate refuses a missing one
        walk = [str(s) for s in path_of(next(r for r in stack.settings.routes if r.name == WALKED))]
        assert walk == [*_PATH]
        async with aiohttp.ClientSession(timeout=timeout) as http:
            assert _live_stage(await _live(http, stack.admin_url, WALKED)) == "shadow"

            # Before any traffic there is nothing to judge; a handful of reads is not enough.
            empty = await _advance(stack, WALKED)
            assert empty.code == 1, empty.text
            assert "no evidence: 0 comparisons since the beginning" in empty.out, empty.text
            await _reads(http, stack.proxy_url, events[:5], "few")
            await stack.wait_recorded()
            few = await _advance(stack, WALKED)
            assert few.code == 1, few.text
            assert re.search(
                r"samples short: [1-5] compared samples, below the minimum of 30", few.out
            ), few.text
            assert "refused: order-events stays at shadow" in few.err, few.text
            assert _file_stage(config, WALKED) == "shadow"

            for target in walk[2:]:
                here = _file_stage(config, WALKED)
                if here != "shadow":  # right after a change: the old stage's evidence is gone
                    stale = await _advance(stack, WALKED)
                    assert stale.code == 1, stale.text
                    assert "no evidence: 0 comparisons since" in stale.out, stale.text
                    assert _file_stage(config, WALKED) == here
                before = await _counts(http, stack.admin_url, WALKED)
                ev, rounds = await _feed(stack, http, events, WALKED, target)
                assert ev.mismatches == 0 and ev.errors == 0, ev
                after = await _counts(http, stack.admin_url, WALKED)
                by_port = after.get("orders", 0.0) - before.get("orders", 0.0)
                if here == "shadow":
                    assert by_port == 0, after  # shadow never answers users from the port
                elif here in ("canary 25%", "canary 50%"):
                    assert by_port > 0, after  # fixed sticky keys: deterministic buckets
                served = _delta(before, after)
                run = await _advance(stack, WALKED)
                assert run.code == 0, run.text
                assert "gate: pass" in run.out and f"{here} -> {target} (advance)" in run.out
                assert "applied: order-events" in run.out and "reloaded: " in run.out, run.text
                assert _file_stage(config, WALKED) == target
                live = _live_stage(await _live(http, stack.admin_url, WALKED))
                assert live == target  # the running proxy took the change
                steps.append(
                    _Step(
                        f"{here} -> {target}",
                        "no evidence" if here != "shadow" else "no evidence, samples short",
                        ev.samples,
                        ev.mismatches,
                        rounds,
                        _verdict_line(run.out),
                        live,
                        served,
                    )
                )

            # Extracted: the port answers every read, legacy verifies in the background.
            before = await _counts(http, stack.admin_url, WALKED)
            await _reads(http, stack.proxy_url, events[:10], "extracted")
            after = await _counts(http, stack.admin_url, WALKED)
            assert after.get("orders", 0.0) - before.get("orders", 0.0) == 10, after
            done = await _advance(stack, WALKED)
            assert done.code == 0 and "already fully extracted" in done.out, done.text

            async with Store(stack.store_url) as store:
                log = list(reversed(await store.route_changes(WALKED)))
                assert await store.route_changes(BUGGY) == []
            assert [f"{c.to_mode} {c.to_percent:g}" for c in log] == [
                "canary 1",
                "canary 5",
                "canary 25",
                "canary 50",
                "extracted 100",
            ]
            assert all(c.evidence["passed"] for c in log)
            assert all(c.evidence["evidence"]["samples"] >= MIN_SAMPLES for c in log)

            # The rounding bug: enough evidence, and the mismatch gate says no, with numbers.
            original = config.read_text(encoding="utf-8")
            ev, rounds = await _feed(stack, http, shows[:_BATCH], BUGGY, "buggy")
            if ev.mismatch_rate is not None and ev.mismatch_rate <= 0.01:
                ev, more = await _feed(stack, http, shows[_BATCH:], BUGGY, "buggy-all")
                rounds += more
            refused = await _advance(stack, BUGGY)
            assert refused.code == 1, refused.text
            numbers = f"samples {ev.samples}, mismatches {ev.mismatches} ({ev.mismatch_rate:.3%})"
            assert numbers in refused.out, refused.text
            reason = re.search(r"mismatch rate over: \S+ above the maximum 1%", refused.out)
            assert reason is not None, refused.text
            assert refused.out.count("\n  - ") == 1, refused.text  # the only failed gate
            assert "refused: order-show stays at shadow" in refused.err, refused.text
            assert config.read_text(encoding="utf-8") == original
            assert _live_stage(await _live(http, stack.admin_url, BUGGY)) == "shadow"
            async with http.get(f"{stack.admin_url}/-/routes") as resp:
                holds = {r["name"]: r["auto_rollback"] for r in (await resp.json())["routes"]}
            assert holds[WALKED] is None  # the faithful port never tripped the rollback
    elapsed = time.monotonic() - started

    print(f"\nmigrate acceptance 1 on the demo stack ({elapsed:.1f} s)")
    print(f"  {WALKED} in shadow: 0 reads -> exit {empty.code}, {_verdict_reason(empty.out)}")
    print(f"  {WALKED} in shadow: 5 reads -> exit {few.code}, {_verdict_reason(few.out)}")
    print(
        f"  {'change':<26} {'refused before':<27} {'reads':>5} {'samples':>7} {'mism':>4}"
        f" {'verdict':<10} {'live':<11} answered by / shadow copies dropped, at the old stage"
    )
    for s in steps:
        print(
            f"  {s.change:<26} {s.refused:<27} {s.rounds * _BATCH:>5} {s.samples:>7}"
            f" {s.mismatches:>4} {s.verdict:<10} {s.live:<11} {s.served}"
        )
    print(f"  {WALKED}: advance again -> exit {done.code}, {done.out.strip()}")
    print(f"  {BUGGY} (orders_next, half-even fee): advance -> exit {refused.code}")
    shown = refused.out.split("\n--- ", 1)[0].splitlines()[1:]  # up to the (unwritten) diff
    for line in shown + refused.err.splitlines():
        print(f"    {line.strip()}")
    print("  config file unchanged for order-show; no audit record for it")
