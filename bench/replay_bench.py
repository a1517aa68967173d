"""Benchmark: `strangler replay` throughput (captured requests per second) on a local stack.

A child process serves a primary and a candidate (small aiohttp apps on loopback; the
candidate changes a field on 10 % of orders and answers 500 on 5 %), so the replay process
has the event loop to itself. The replay sends 10,000 captured GETs at concurrency 32 to
both sides, compares them and stores every result in a fresh SQLite store; timed once on
asyncio's loop and once on uvloop's. Rows report lines/s and HTTP exchanges/s.

Run alone: `python -m bench.replay_bench [REQUESTS]`; `--serve` is the child's entry point.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from proxy.settings import loads
from shadow.replay import replay

__all__ = ["run"]

_REQUESTS = 10_000
_CONCURRENCY = 32

_CONFIG = """
backends:
  legacy: {{url: "http://127.0.0.1:{primary}"}}
  orders: {{url: "http://127.0.0.1:{candidate}"}}
default_backend: legacy
store: {{url: "{store}"}}
routes:
  - name: order-show
    match: {{path: "/api/v1/orders/{{order_id}}", methods: [GET]}}
    candidate: orders
    mode: shadow
    compare: {{ignore_json_paths: ["$.meta.generated_at"]}}
"""


def _app(candidate: bool) -> web.Application:
    async def show(request: web.Request) -> web.Response:
        order_id = int(request.match_info["order_id"])
        if candidate and order_id % 20 == 7:
            return web.json_response({"error": "boom"}, status=500)
        total = "10.01" if candidate and order_id % 10 == 3 else "10.00"
        doc = {"id": order_id, "status": "paid", "total": total, "meta": {"generated_at": 1}}
        return web.Response(body=orjson.dumps(doc), content_type="application/json")

    app = web.Application()
    app.router.add_get("/api/v1/orders/{order_id}", show)
    return app


async def _serve() -> None:
    ports = []
    runners = []
    for candidate in (False, True):
        runner = web.AppRunner(_app(candidate), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        ports.append(int(server.sockets[0].getsockname()[1]))
        runners.append(runner)
    print(orjson.dumps(ports).decode(), flush=True)
    # Serve until the parent closes our stdin.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for runner in runners:
        await runner.cleanup()


def _traffic(path: str, count: int) -> None:
    with open(path, "wb") as fh:
        for i in range(1, count + 1):
            line = {"method": "GET", "path": f"/api/v1/orders/{i}", "request_id": f"r{i}"}
            fh.write(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))


def _loops() -> list[tuple[str, Callable[[], asyncio.AbstractEventLoop]]]:
    loops: list[tuple[str, Callable[[], asyncio.AbstractEventLoop]]] = [
        ("asyncio", asyncio.new_event_loop)
    ]
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return loops
    loops.append(("uvloop", uvloop.new_event_loop))
    return loops


def run(requests: int = _REQUESTS) -> list[dict[str, Any]]:
    """One row per event loop: requests, seconds, lines/s, HTTP exchanges/s, outcomes."""
    rows: list[dict[str, Any]] = []
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.replay_bench", "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        primary, candidate = orjson.loads(child.stdout.readline())
        with tempfile.TemporaryDirectory(prefix="replay-bench-") as tmp:
            traffic = os.path.join(tmp, "traffic.jsonl")
            _traffic(traffic, requests)
            for name, factory in _loops():
                store = f"sqlite+aiosqlite:///{os.path.join(tmp, name + '.db')}"
                settings = loads(_CONFIG.format(primary=primary, candidate=candidate, store=store))
                with asyncio.Runner(loop_factory=factory) as runner:
                    t0 = time.perf_counter()
                    summary = runner.run(replay(traffic, settings, None, _CONCURRENCY))
                    elapsed = time.perf_counter() - t0
                if summary.recorded != requests:
                    raise AssertionError(f"{summary.recorded} of {requests} recorded")
                rows.append(
                    {
                        "case": f"{requests} GETs, concurrency {_CONCURRENCY}, SQLite store",
                        "loop": name,
                        "seconds": round(elapsed, 2),
                        "req_s": round(requests / elapsed),
                        "http_s": round(2 * requests / elapsed),
                        "mismatch": summary.outcomes.get("mismatch", 0),
                        "candidate_error": summary.outcomes.get("candidate_error", 0),
                    }
                )
    finally:
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
    return rows


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        asyncio.run(_serve())
    else:
        for row in run(int(sys.argv[1]) if len(sys.argv) > 1 else _REQUESTS):
            print(row)
