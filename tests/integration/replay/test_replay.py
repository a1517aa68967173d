"""Replay against real loopback servers: exact outcome counts, writes, routing, handlers."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import orjson
from aiohttp import web

from proxy.settings import loads
from shadow.replay import replay
from shadow.report import build_report
from shadow.store import Store
from tests.integration.replay.stack import (
    changed,
    config_text,
    failing,
    running_stack,
    write_traffic,
)
from tests.support import free_port

N = 10_000


async def test_replay_of_10k_reports_exactly_the_injected_differences(
    tmp_path: Path, store_url: str
) -> None:
    traffic = tmp_path / "traffic.jsonl"
    write_traffic(traffic, N)
    n_changed = sum(changed(i) for i in range(1, N + 1))
    n_failing = sum(failing(i) for i in range(1, N + 1))
    async with running_stack() as stack:
        settings = loads(config_text(stack, store_url), str(tmp_path / "routes.yaml"))
        t0 = time.perf_counter()
        summary = await replay(str(traffic), settings, None, concurrency=32)
        elapsed = time.perf_counter() - t0
    print(f"replayed {N} in {elapsed:.2f}s: {N / elapsed:.0f} req/s ({store_url.split(':')[0]})")
    assert summary.outcomes == {
        "match": N - n_changed - n_failing,
        "mismatch": n_changed,
        "candidate_error": n_failing,
    }
    assert (summary.done, summary.recorded, summary.write_failed) == (N, N, 0)
    assert summary.routes == ("order-show",) and not summary.interrupted
    assert stack.primary_hits == {"GET": N} and stack.candidate_hits == {"GET": N}

    report = await build_report(store_url, routes=["order-show"])
    (route,) = report.routes
    assert (route.matches, route.mismatches, route.candidate_errors) == (
        N - n_changed - n_failing,
        n_changed,
        n_failing,
    )
    top = route.top_paths[0]
    assert (top.pattern, top.count) == ("$.total", n_changed)
    assert len(route.top_paths) == 1
    assert top.example is not None
    assert (top.example.primary, top.example.candidate) == ("10.00", "10.01")
    async with Store(store_url) as store:
        assert await store.count("order-show") == N


async def test_lines_without_route_or_candidate_are_counted_not_sent(tmp_path: Path) -> None:
    store_url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    traffic = tmp_path / "traffic.jsonl"
    write_traffic(traffic, 5)
    extra = [{"method": "GET", "path": p} for p in ("/health", "/api/v1/orders/3/events")]
    extra.append({"method": "GET", "path": "/api/v1/orders/4/events"})
    traffic.write_bytes(traffic.read_bytes() + b"".join(orjson.dumps(e) + b"\n" for e in extra))
    async with running_stack() as stack:
        settings = loads(config_text(stack, store_url))
        summary = await replay(str(traffic), settings, None, concurrency=4)
    assert (summary.no_route, summary.no_candidate, summary.done) == (1, 2, 8)
    assert stack.primary_hits == {"GET": 5}
    assert summary.recorded == 5


async def test_writes_never_reach_the_monolith(tmp_path: Path) -> None:
    store_url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    traffic = tmp_path / "traffic.jsonl"
    write_traffic(traffic, 2, writes=3)
    async with running_stack() as stack:
        skip = await replay(str(traffic), loads(config_text(stack, store_url)), None)
        assert "POST" not in stack.primary_hits and "POST" not in stack.candidate_hits
        assert skip.outcomes.get("skipped") == 3

        dry = loads(config_text(stack, store_url, writes="dry_run"))
        summary = await replay(str(traffic), dry, None)
    assert "POST" not in stack.primary_hits
    assert stack.candidate_hits["POST"] == 3 and stack.dry_runs == 3
    assert summary.outcomes.get("skipped") == 3
    report = await build_report(store_url, routes=["order-create"])
    assert report.routes[0].skipped == 6


async def test_candidate_timeouts_are_recorded(tmp_path: Path) -> None:
    store_url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    traffic = tmp_path / "traffic.jsonl"
    write_traffic(traffic, 4)
    async with running_stack(candidate_delay=0.5) as stack:
        settings = loads(config_text(stack, store_url, candidate_timeout="50ms"))
        summary = await replay(str(traffic), settings, None, concurrency=4)
    assert summary.outcomes == {"candidate_timeout": 4}


async def test_in_process_handlers_backend(tmp_path: Path) -> None:
    store_url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    traffic = tmp_path / "traffic.jsonl"
    write_traffic(traffic, 40)
    async with running_stack() as stack:
        text = config_text(stack, store_url).replace(
            f"url: http://127.0.0.1:{stack.candidate_port}",
            "handlers: tests.integration.replay.stack\n    db: unused://",
        )
        summary = await replay(str(traffic), loads(text), None, concurrency=4)
    assert stack.candidate_hits == {}  # the in-process copy answered instead
    assert summary.outcomes == {"match": 34, "mismatch": 4, "candidate_error": 2}


async def test_each_backend_gets_its_host_header_as_through_the_proxy(tmp_path: Path) -> None:
    """Both backends behind one ingress that routes by Host (`backends.*.host_header`).

    Replay dropped `host_header` and sent the ingress's own address as Host: both sides got
    the ingress's 404 and every line was a match, so a changed total passed the gate.
    """
    seen: list[str] = []

    async def ingress(request: web.Request) -> web.Response:
        host = request.headers.get("Host", "")
        seen.append(host)
        total = {"legacy.internal": "10.00", "orders.internal": "10.01"}.get(host)
        if total is None:
            return web.json_response({"error": "unknown host"}, status=404)
        return web.json_response({"id": 1, "total": total})

    app = web.Application()
    app.router.add_get("/api/v1/orders/{order_id}", ingress)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    store_url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    traffic = tmp_path / "traffic.jsonl"
    write_traffic(traffic, 3)
    lines = traffic.read_bytes().splitlines(keepends=True)
    shop = orjson.loads(lines[0])
    shop["headers"].append(["host", "shop.example"])  # captured with `capture.headers: [host]`
    traffic.write_bytes(b"".join(lines) + orjson.dumps(shop) + b"\n")
    text = (
        f"backends:\n"
        f"  legacy: {{url: 'http://127.0.0.1:{port}', host_header: legacy.internal}}\n"
        f"  orders: {{url: 'http://127.0.0.1:{port}', host_header: orders.internal}}\n"
        f"  plain: {{url: 'http://127.0.0.1:{port}'}}\n"
        f"default_backend: legacy\n"
        f"store: {{url: '{store_url}'}}\n"
        f"routes:\n"
        f"  - name: order-show\n"
        f"    match: {{path: '/api/v1/orders/{{order_id}}', methods: [GET]}}\n"
        f"    candidate: orders\n"
        f"    mode: shadow\n"
        f"    promotion: {{min_samples: 1, max_mismatch_rate: 0}}\n"
    )
    try:
        summary = await replay(str(traffic), loads(text), None, concurrency=1)
        assert summary.outcomes == {"mismatch": 4}
        assert Counter(seen) == {"legacy.internal": 4, "orders.internal": 4}
        # A backend without host_header gets the client's captured Host, as the proxy keeps it.
        seen.clear()
        plain = text.replace("candidate: orders", "candidate: plain")
        summary = await replay(str(traffic), loads(plain), None, concurrency=1)
        assert Counter(seen) == {"legacy.internal": 4, f"127.0.0.1:{port}": 3, "shop.example": 1}
    finally:
        await runner.cleanup()
