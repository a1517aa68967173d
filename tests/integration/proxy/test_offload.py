"""`limits.shadow_offload`: `strangler serve` runs shadow copies in a SCHED_IDLE helper.

A real process tree (supervisor, worker, the worker's helper) in front of loopback legacy
and candidate apps whose prices differ, so every copy is a mismatch on `$.price`. The
config leaves `shadow_offload` unset: a shadow route with URL backends gets a helper by
default.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.proxy.shadow_support import Side, shadow_config, start_app
from tests.support import (
    free_port,
    start_serve,
    stop_process,
    wait_admin_ready,
    wait_for,
    wait_until,
)

ROUTE = """  - name: order-show
    match: {path: /api/*}
    mode: shadow
    candidate: orders
    shadow: {percent: 100, timeout: 5s}
"""


@dataclass
class Served:
    proc: asyncio.subprocess.Process
    port: int
    admin: int
    config: Path
    db: Path
    legacy: Side
    candidate: Side


@dataclass
class Counts:
    started: float = 0.0
    recorded: float = 0.0
    failed: float = 0.0
    dropped: dict[str, float] | None = None
    outcomes: dict[str, float] | None = None

    @property
    def ended(self) -> float:
        return self.recorded + self.failed + sum((self.dropped or {}).values())


def _config(
    legacy: Side,
    candidate: Side,
    port: int,
    admin: int,
    db: Path,
    extra: str = "",
    offload: str = "",
) -> str:
    text = shadow_config(legacy, candidate, ROUTE + extra, f"sqlite+aiosqlite:///{db}")
    text = text.replace("listen: 127.0.0.1:0", f"listen: 127.0.0.1:{port}", 1)
    text = text.replace("  listen: 127.0.0.1:0", f"  listen: 127.0.0.1:{admin}", 1)
    if offload:
        text = text.replace("limits:\n", f"limits:\n  shadow_offload: {offload}\n", 1)
    return text


@contextlib.asynccontextmanager
async def _serving(
    tmp_path: Path, edit: Callable[[str], str] = lambda text: text, offload: str = ""
) -> AsyncIterator[Served]:
    """`strangler serve` with the config (`edit`ed) in front of the two apps, until the end."""
    legacy, candidate = Side("legacy"), Side("candidate", price="13.00")
    runners = [await start_app(legacy), await start_app(candidate)]
    port, admin = free_port(), free_port()
    db = tmp_path / "cmp.db"
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(edit(_config(legacy, candidate, port, admin, db, offload=offload)))
    proc = await start_serve(cfg)
    try:
        await wait_admin_ready(admin)
        yield Served(proc, port, admin, cfg, db, legacy, candidate)
    finally:
        await stop_process(proc)
        for r in runners:
            await r.cleanup()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with _serving(tmp_path) as s:
        yield s


async def _counts(s: aiohttp.ClientSession, admin: int) -> Counts:
    async with s.get(f"http://127.0.0.1:{admin}/-/metrics") as r:
        text = await r.text()
    c = Counts(dropped={}, outcomes={})
    assert c.dropped is not None and c.outcomes is not None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("route") != "order-show" or not sample.name.endswith("_total"):
                continue
            name = sample.name.removesuffix("_total")
            if name == "strangler_shadow_started":
                c.started += sample.value
            elif name == "strangler_shadow_recorded":
                c.recorded += sample.value
            elif name == "strangler_shadow_failed":
                c.failed += sample.value
            elif name == "strangler_shadow_dropped":
                reason = sample.labels["reason"]
                c.dropped[reason] = c.dropped.get(reason, 0.0) + sample.value
            elif name == "strangler_shadow_comparisons":
                outcome = sample.labels["outcome"]
                c.outcomes[outcome] = c.outcomes.get(outcome, 0.0) + sample.value
    return c


async def _burst(s: aiohttp.ClientSession, port: int, first: int, n: int) -> list[str]:
    sem = asyncio.Semaphore(8)

    async def one(i: int) -> str:
        async with sem, s.get(f"http://127.0.0.1:{port}/api/o{i}") as r:
            assert r.status == 200
            doc = await r.json()
            return str(doc["price"])

    return await asyncio.gather(*(one(i) for i in range(first, first + n)))


async def _settled(s: aiohttp.ClientSession, admin: int, started: int) -> Counts:
    """The counters once `started` copies were counted and every one of them ended."""
    last = Counts()

    async def done() -> bool:
        nonlocal last
        last = await _counts(s, admin)
        return last.started >= started and last.ended == last.started

    await wait_for(done, timeout=20, interval=0.1)
    return last


def _helpers() -> dict[int, str]:
    """pid -> command line of every shadow helper process on this machine."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "proxy.shadow_worker" in cmd:
            found[int(entry.name)] = cmd
    return found


def _ours(served: Served) -> list[int]:
    return [pid for pid, cmd in _helpers().items() if str(served.config) in cmd]


def _asleep(pid: int) -> bool:
    """Whether every thread of `pid` is sleeping (waiting on a timer or a socket)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        stat = (task / "stat").read_text()
        if stat[stat.rindex(")") + 2] != "S":
            return False
    return True


def _rows(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT outcome, count(*) FROM comparisons GROUP BY outcome"))


async def test_copies_run_in_an_idle_helper_and_every_one_is_accounted_for(
    served: Served,
) -> None:
    [helper] = _ours(served)
    # it lowers its own priority first thing after start-up
    await wait_until(lambda: os.sched_getscheduler(helper) == os.SCHED_IDLE, timeout=10)
    n = 300
    async with aiohttp.ClientSession() as s:
        prices = await _burst(s, served.port, 0, n)
        assert prices == ["12.50"] * n  # users get legacy's answer
        c = await _settled(s, served.admin, n)
    assert c.started == n
    assert c.failed == 0
    print(f"offload: started={c.started} recorded={c.recorded} dropped={c.dropped} {c.outcomes}")
    assert c.outcomes is not None and c.outcomes.get("mismatch", 0) == c.recorded
    assert c.recorded >= n // 2  # an idle test machine compares (nearly) all of them
    # anything not compared was shed for load, never lost or failed
    assert c.dropped is not None and set(c.dropped) <= {"shed", "stale", "starved"}
    assert await stop_process(served.proc) == 0
    assert not _ours(served)  # the helper exits with its worker
    assert _rows(served.db) == {"mismatch": int(c.recorded)}  # stored before it exited


async def test_the_helper_reads_the_served_response_as_the_backend_sent_it(
    served: Served,
) -> None:
    """The worker hands the legacy answer over unparsed: chunked, gzip, and HEAD answers
    read back in the helper as they were served, so only the real difference is reported."""
    n = 20
    async with aiohttp.ClientSession() as s:
        for i in range(n):  # legacy: chunked and gzip; the candidate: plain JSON
            async with s.get(f"http://127.0.0.1:{served.port}/api/chunked{i}") as r:
                assert r.status == 200
                assert r.headers["Content-Encoding"] == "gzip"
                assert (await r.json())["price"] == "12.50"  # aiohttp decodes it
        for i in range(n):
            async with s.head(f"http://127.0.0.1:{served.port}/api/h{i}") as r:
                assert r.status == 200
        c = await _settled(s, served.admin, 2 * n)
    assert c.dropped == {} and c.failed == 0, c
    assert c.outcomes == {"mismatch": n, "match": n}, c  # HEAD: status and headers agree
    with sqlite3.connect(served.db) as conn:
        gets = conn.execute(
            "SELECT diff_paths FROM comparisons WHERE method = 'GET' AND outcome = 'mismatch'"
        ).fetchall()
        heads = conn.execute("SELECT outcome FROM comparisons WHERE method = 'HEAD'").fetchall()
    assert gets == [('["$.price"]',)] * n  # the decoded bodies differ in the price only
    assert heads == [("match",)] * n


async def test_a_served_body_over_the_limit_is_dropped_before_any_candidate_call(
    tmp_path: Path,
) -> None:
    def limited(text: str) -> str:
        return text.replace("timeout: 5s}", "timeout: 5s, max_body_bytes: 16}", 1)

    async with _serving(tmp_path, limited) as served, aiohttp.ClientSession() as s:
        assert await _burst(s, served.port, 0, 10) == ["12.50"] * 10  # users: legacy, whole
        c = await _settled(s, served.admin, 10)
    assert c.dropped == {"body_too_large": 10} and c.recorded == 0, c
    assert served.candidate.shadow_headers.count("1") == 0  # the helper knew it before calling


async def test_a_killed_helper_is_restarted_and_a_reload_reaches_it(served: Served) -> None:
    [first] = _ours(served)
    os.kill(first, signal.SIGKILL)
    # the worker reaps it (and so has seen its socket close) before traffic comes
    await wait_until(lambda: first not in _helpers(), timeout=10)
    async with aiohttp.ClientSession() as s:
        # users never notice: requests are served while the helper is away
        assert await _burst(s, served.port, 0, 50) == ["12.50"] * 50

        async def restarted() -> bool:
            return len(_ours(served)) == 1 and _ours(served) != [first]

        await wait_for(restarted, timeout=10, interval=0.05)
        [second] = _ours(served)
        away = await _settled(s, served.admin, 50)
        assert away.dropped is not None and away.dropped.get("offload_down", 0) >= 1
        before = away
        await _burst(s, served.port, 50, 50)
        after = await _settled(s, served.admin, int(before.started) + 50)
        assert after.outcomes is not None and before.outcomes is not None
        assert after.outcomes.get("mismatch", 0) > before.outcomes.get("mismatch", 0)

        # ignore the price from now on: the helper compares with the new rules
        served.config.write_text(
            _config(
                served.legacy,
                served.candidate,
                served.port,
                served.admin,
                served.db,
                '    compare: {ignore_json_paths: ["$.price"]}\n',
            )
        )
        served.proc.send_signal(signal.SIGHUP)

        async def matching() -> bool:
            mark = await _counts(s, served.admin)
            await _burst(s, served.port, 1000, 10)
            now = await _settled(s, served.admin, int(mark.started) + 10)
            assert now.outcomes is not None
            return now.outcomes.get("match", 0) > 0

        await wait_for(matching, timeout=15, interval=0.1)
    assert _ours(served) == [second]  # reloaded in place, not restarted


async def test_copies_held_by_a_killed_helper_are_counted_as_lost(served: Served) -> None:
    """started = recorded + dropped + failed holds even when the helper dies holding copies:
    the worker counts what the helper never acknowledged as ended."""
    [helper] = _ours(served)
    served.legacy.release.set()  # users are answered at once; the candidate holds the copies
    n = 20
    async with aiohttp.ClientSession() as s:

        async def one(i: int) -> str:
            async with s.get(f"http://127.0.0.1:{served.port}/api/slow{i}") as r:
                assert r.status == 200
                return str((await r.json())["price"])

        assert await asyncio.gather(*(one(i) for i in range(n))) == ["12.50"] * n
        # well within the copies' 5 s timeout, so none can end before the kill
        await wait_until(lambda: served.candidate.shadow_headers.count("1") == n, timeout=3)
        os.kill(helper, signal.SIGKILL)
        c = await _settled(s, served.admin, n)
    served.candidate.release.set()
    assert c.started == n
    assert c.dropped == {"offload_lost": n}
    assert c.recorded == 0 and c.failed == 0


async def test_copies_stored_just_before_the_helper_dies_are_not_counted_as_lost(
    served: Served,
) -> None:
    """The helper acknowledges a batch as soon as it is stored: a kill right after the
    commit must not count stored comparisons as `offload_lost` too (rows != counters)."""
    served.legacy.release.set()
    served.candidate.release.set()
    [helper] = _ours(served)
    n = 20
    async with aiohttp.ClientSession() as s:
        assert await _burst(s, served.port, 0, n) == ["12.50"] * n
        await wait_until(lambda: sum(_rows(served.db).values()) > 0, timeout=20, interval=0.002)
        # every thread of the helper asleep: it has seen the commit end and acted on it
        # (before the fix it slept until its next counter sync, up to 250 ms later)
        await wait_until(lambda: _asleep(helper), timeout=10, interval=0.002)
        os.kill(helper, signal.SIGKILL)
        c = await _settled(s, served.admin, n)
    stored = sum(_rows(served.db).values())
    assert c.started == n and c.recorded == stored, (stored, c)
    assert c.dropped is not None and c.dropped.get("offload_lost", 0) == n - stored, (stored, c)


async def test_gauges_of_a_killed_helper_leave_the_metrics(served: Served) -> None:
    """The live gauges of a helper that died were scraped forever (its breaker state too)."""
    [first] = _ours(served)
    environ = Path(f"/proc/{first}/environ").read_bytes().split(b"\0")
    [mp] = [e.split(b"=", 1)[1].decode() for e in environ if e.startswith(b"PROMETHEUS_MULTI")]
    await wait_until(lambda: bool(list(Path(mp).glob(f"gauge_live*_{first}.db"))), timeout=20)
    os.kill(first, signal.SIGKILL)
    await wait_until(lambda: len(_ours(served)) == 1 and _ours(served) != [first], timeout=10)
    await wait_until(lambda: not list(Path(mp).glob(f"gauge_live*_{first}.db")), timeout=10)


async def test_the_helper_is_not_handed_the_workers_heartbeat_pipe(served: Served) -> None:
    """The worker took its heartbeat variable out of its environment only after it had
    started its shadow helper, which inherited it (and could have beaten for the worker)."""
    await wait_until(lambda: len(_ours(served)) == 1, timeout=10)
    [helper] = _ours(served)
    env = Path(f"/proc/{helper}/environ").read_bytes().split(b"\0")
    assert not [x for x in env if x.startswith(b"STRANGLER_HEARTBEAT_FD=")]
    assert [x for x in env if x.startswith(b"STRANGLER_CONFIG_SNAPSHOT=")]  # a worker's child


async def test_shadow_offload_false_keeps_the_copies_in_the_serving_process(
    tmp_path: Path,
) -> None:
    n = 20
    async with _serving(tmp_path, offload="false") as served, aiohttp.ClientSession() as s:
        assert await _burst(s, served.port, 0, n) == ["12.50"] * n
        c = await _settled(s, served.admin, n)
        pid = served.proc.pid
        # one process: no supervisor, no worker, no helper
        assert Path(f"/proc/{pid}/task/{pid}/children").read_text().split() == []
        assert not _ours(served)
    # every copy ended in that process: compared, or shed by its event loop's budget
    assert c.started == n and c.failed == 0
    assert c.outcomes is not None and c.outcomes.get("mismatch", 0) == c.recorded
    assert c.dropped is not None and set(c.dropped) <= {"shed", "concurrency"}
