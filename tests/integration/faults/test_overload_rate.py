"""Overload: offered twice the rate it sustains, a proxy running its shadow copies in its
event loop sheds shadow work, not users."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp

from tests.integration.proxy.shadow_support import Side, shadow_config, start_app
from tests.support import free_port, start_serve, stop_process, wait_admin_ready

ROUTE = """
  - name: orders
    match: {path: /api/*}
    mode: shadow
    candidate: orders
    shadow: {percent: 100, timeout: 2s, max_concurrency: 64}
"""


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _metric(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{")
    )


async def test_twice_the_sustainable_rate_sheds_shadow_work_first(tmp_path: Path) -> None:
    legacy, cand = Side("legacy"), Side("candidate")
    runners = [await start_app(legacy), await start_app(cand)]
    legacy.release.set()
    cand.release.set()
    port, admin = free_port(), free_port()
    text = shadow_config(legacy, cand, ROUTE, f"sqlite+aiosqlite:///{tmp_path / 'o.db'}")
    text = text.replace("listen: 127.0.0.1:0", f"listen: 127.0.0.1:{port}", 1)
    text = text.replace("  listen: 127.0.0.1:0", f"  listen: 127.0.0.1:{admin}", 1)
    # Copies in the serving process's event loop (`shadow_offload: false`; in-process
    # candidates always), whose own shedding is under test: the default budget, on the
    # process's CPU share as well as on loop lag. (The default helper process instead gets
    # what CPU is free, which on a test machine with a spare core is enough for every copy.)
    text = text.replace("shadow_cpu_budget: 1", "shadow_cpu_budget: 0.85\n  shadow_offload: false")
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(text)
    proc = await start_serve(cfg, env={"STRANGLER_GRACE_S": "5"})
    try:
        await wait_admin_ready(admin)
        url = f"http://127.0.0.1:{port}/api/o"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512)) as s:
            # 1. what it sustains: a closed loop of 16 clients for one second
            done = 0
            end = time.monotonic() + 1.0

            async def closed_loop() -> None:
                nonlocal done
                while time.monotonic() < end:
                    async with s.get(url) as r:
                        await r.read()
                        done += 1

            await asyncio.gather(*(closed_loop() for _ in range(16)))
            sustained = done / 1.0
            rss_before = _rss_mb(proc.pid)

            # 2. twice that, open loop, for two seconds (bounded count and time)
            offered = int(2 * sustained)
            statuses: list[int] = []
            errors: list[str] = []

            async def one(i: int) -> None:
                try:
                    async with s.get(f"{url}{i}", timeout=aiohttp.ClientTimeout(total=30)) as r:
                        body = await r.read()
                        statuses.append(r.status)
                        if r.status != 200:
                            errors.append(body.decode()[:300])
                except (aiohttp.ClientError, TimeoutError) as e:
                    statuses.append(0)
                    errors.append(repr(e))

            tasks = []
            start = time.monotonic()
            for i in range(offered * 2):
                delay = start + i / offered - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)  # pacing the offered load, not synchronisation
                tasks.append(asyncio.create_task(one(i)))
            await asyncio.gather(*tasks)
            rss_after = _rss_mb(proc.pid)
            async with s.get(f"http://127.0.0.1:{admin}/-/metrics") as r:
                metrics = await r.text()
        shed = _metric(metrics, "strangler_shadow_dropped_total")
        compared = _metric(metrics, "strangler_shadow_comparisons_total")
        ok = statuses.count(200)
        print(
            f"overload: sustained {sustained:.0f} req/s, offered {offered} req/s for 2 s: "
            f"{ok}/{len(statuses)} answered 200, shadow compared {compared:.0f}, shed {shed:.0f}, "
            f"proxy RSS {rss_before:.1f} -> {rss_after:.1f} MB"
        )
        # every user request served
        assert ok == len(statuses) == offered * 2, (sorted(set(statuses)), errors[:5])
        assert shed > 0  # shadow work was shed first ...
        assert rss_after - rss_before < 50  # ... and memory stayed bounded
    finally:
        await stop_process(proc)
        for runner in runners:
            await runner.cleanup()
