"""A purpose-built primary and candidate on loopback, traffic files and configs for replay tests.

The primary answers `GET /api/v1/orders/{id}` with a small order. The candidate answers the
same, except on two known, disjoint subsets of ids: `total` changed where `id % 10 == 3`,
and a 500 where `id % 20 == 7`. Both count what they receive.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import orjson
from aiohttp import web

__all__ = [
    "Stack",
    "changed",
    "config_text",
    "create_app",
    "failing",
    "running_stack",
    "write_traffic",
]


def changed(order_id: int) -> bool:
    """Ids on which the candidate changes `$.total`."""
    return order_id % 10 == 3


def failing(order_id: int) -> bool:
    """Ids on which the candidate answers 500."""
    return order_id % 20 == 7


@dataclass
class Stack:
    """The two running apps: their ports and what they received."""

    primary_port: int = 0
    candidate_port: int = 0
    primary_hits: dict[str, int] = field(default_factory=dict)
    candidate_hits: dict[str, int] = field(default_factory=dict)
    dry_runs: int = 0


def _order(order_id: int, total: str) -> bytes:
    doc = {
        "id": order_id,
        "status": "paid",
        "total": total,
        "items": [{"sku": f"sku-{order_id % 7}", "qty": 1}],
        "meta": {"generated_at": time.time()},
    }
    return orjson.dumps(doc)


def _app(stack: Stack, *, candidate: bool, delay: float) -> web.Application:
    hits = stack.candidate_hits if candidate else stack.primary_hits

    async def show(request: web.Request) -> web.Response:
        hits[request.method] = hits.get(request.method, 0) + 1
        if delay:
            await asyncio.sleep(delay)
        order_id = int(request.match_info["order_id"])
        if candidate and failing(order_id):
            return web.json_response({"error": "boom"}, status=500)
        total = "10.01" if candidate and changed(order_id) else "10.00"
        return web.Response(body=_order(order_id, total), content_type="application/json")

    async def create(request: web.Request) -> web.Response:
        hits[request.method] = hits.get(request.method, 0) + 1
        if request.headers.get("X-Strangler-Dry-Run") == "1":
            stack.dry_runs += 1
        return web.json_response({"id": 1, "status": "paid"}, status=201)

    app = web.Application()
    app.router.add_get("/api/v1/orders/{order_id}", show)
    app.router.add_post("/api/v1/orders", create)
    return app


def create_app(db_url: str) -> web.Application:
    """The candidate as an in-process `handlers:` backend (`db_url` is not used)."""
    return _app(Stack(), candidate=True, delay=0.0)


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.Server)
    return runner, int(server.sockets[0].getsockname()[1])


@asynccontextmanager
async def running_stack(candidate_delay: float = 0.0) -> AsyncIterator[Stack]:
    """Start the primary and the candidate on loopback ports; stop both after."""
    stack = Stack()
    primary, stack.primary_port = await _serve(_app(stack, candidate=False, delay=0.0))
    try:
        cand, stack.candidate_port = await _serve(
            _app(stack, candidate=True, delay=candidate_delay)
        )
        try:
            yield stack
        finally:
            await cand.cleanup()
    finally:
        await primary.cleanup()


def write_traffic(path: os.PathLike[str] | str, count: int, *, writes: int = 0) -> None:
    """`count` GETs of orders 1..count (then `writes` POSTs) as capture lines."""
    with open(path, "wb") as fh:
        for i in range(1, count + 1):
            line = {
                "ts": 1767225600.0 + i / 1000,
                "method": "GET",
                "path": f"/api/v1/orders/{i}",
                "query": "",
                "headers": [["accept", "application/json"]],
                "body": None,
                "body_encoding": None,
                "request_id": f"req-{i}",
            }
            fh.write(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))
        for i in range(writes):
            line = {
                "ts": 1767225700.0 + i,
                "method": "POST",
                "path": "/api/v1/orders",
                "query": "",
                "headers": [["content-type", "application/json"]],
                "body": '{"buyer": {"email": "REDACTED:0123456789"}}',
                "body_encoding": "utf-8",
                "request_id": f"write-{i}",
            }
            fh.write(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))


def config_text(
    stack: Stack,
    store_url: str,
    *,
    writes: str = "skip",
    max_mismatch_rate: float = 0.5,
    max_error_rate: float = 0.5,
    min_samples: int = 1,
    candidate_timeout: str = "2s",
) -> str:
    """A routing config: legacy and candidate URLs of `stack`, one shadowed order route."""
    return f"""
listen: 127.0.0.1:0
backends:
  legacy:
    url: http://127.0.0.1:{stack.primary_port}
  orders:
    url: http://127.0.0.1:{stack.candidate_port}
default_backend: legacy
store:
  url: {store_url}
  redact_json_paths: ["$.buyer.email"]
routes:
  - name: order-show
    match:
      path: /api/v1/orders/{{order_id}}
      methods: [GET]
    candidate: orders
    mode: shadow
    shadow:
      timeout: {candidate_timeout}
    compare:
      ignore_json_paths: ["$.meta.generated_at"]
    promotion:
      min_samples: {min_samples}
      max_mismatch_rate: {max_mismatch_rate}
      max_error_rate: {max_error_rate}
      max_p99_ratio: 1000
  - name: order-create
    match:
      path: /api/v1/orders
      methods: [POST]
    candidate: orders
    mode: shadow
    shadow:
      writes: {writes}
    promotion:
      min_samples: 0
      max_mismatch_rate: 1
      max_error_rate: 1
  - name: order-other
    match:
      path: /api/v1/orders/{{order_id}}/events
    mode: legacy
"""
