"""Loopback legacy and candidate apps with controllable faults, for shadow-mode tests."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web

from proxy.accesslog import AccessLog
from proxy.app import Proxy, create_proxy
from proxy.settings import loads
from tests.support import stop_after_test, wait_until

__all__ = ["Side", "shadow_stack", "start_app"]

EMAIL = "ann.buyer@example.com"
CARD = "4111 1111 1111 1111"


@dataclass
class Side:
    """One app (legacy or candidate) and what it saw."""

    name: str
    url: str = ""
    seen: list[str] = field(default_factory=list)  # request paths (with query)
    keys: list[str] = field(default_factory=list)  # X-User-Id of each request
    shadow_headers: list[str] = field(default_factory=list)
    dry_runs: list[list[str]] = field(default_factory=list)  # X-Strangler-Dry-Run fields
    release: asyncio.Event = field(default_factory=asyncio.Event)
    finished: list[str] = field(default_factory=list)
    price: str = "12.50"
    noisy: bool = False
    fail_every: int = 0  # answer 500 to every n-th request that is not a shadow copy


def _doc(side: Side, order_id: str) -> dict[str, object]:
    return {
        "id": order_id,
        "price": side.price,
        "buyer": {"email": EMAIL, "name": "Ann"},
        "payment": {"card": CARD},
        "meta": {"generated_at": uuid.uuid4().hex if side.noisy else "fixed"},
    }


def _app(side: Side) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        side.seen.append(request.path_qs)
        side.keys.append(request.headers.get("X-User-Id", ""))
        side.shadow_headers.append(request.headers.get("X-Strangler-Shadow", ""))
        side.dry_runs.append(request.headers.getall("X-Strangler-Dry-Run", []))
        await request.read()
        tail = request.match_info["tail"]
        if side.fail_every and not request.headers.get("X-Strangler-Shadow"):
            served = sum(1 for h in side.shadow_headers if not h)
            if served % side.fail_every == 0:
                return web.json_response({"error": "injected"}, status=500)
        if tail.startswith("slow"):
            await side.release.wait()
        elif tail.startswith("err") and side.name == "candidate":
            return web.json_response({"error": "boom"}, status=500)
        elif tail.startswith("created") and side.name == "candidate":
            return web.json_response({"id": tail}, status=201)
        elif tail.startswith("reset") and side.name == "candidate":
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        elif tail.startswith("chunked") and side.name == "legacy":
            # no length: chunked on the wire, and gzip, written in two pieces
            packed = gzip.compress(json.dumps(_doc(side, tail)).encode())
            resp = web.StreamResponse(
                headers={
                    "Content-Type": "application/json; charset=utf-8",
                    "Content-Encoding": "gzip",
                }
            )
            await resp.prepare(request)
            await resp.write(packed[:7])
            await resp.write(packed[7:])
            await resp.write_eof()
            side.finished.append(tail)
            return resp
        elif tail.startswith("garbage") and side.name == "candidate":
            resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            await resp.prepare(request)
            chunk = os.urandom(1 << 20)
            try:
                for _ in range(50):
                    await resp.write(chunk)
            except (ConnectionError, RuntimeError):
                pass
            side.finished.append(tail)
            return resp
        side.finished.append(tail)
        return web.json_response(_doc(side, tail.split("/")[0]))

    app = web.Application()
    app.router.add_route("*", "/api/{tail:.*}", handle)
    return app


async def start_app(side: Side) -> web.AppRunner:
    """Serve `side` on a loopback port; sets `side.url`."""
    runner = web.AppRunner(_app(side), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    side.url = f"http://127.0.0.1:{port}"
    return runner


_counter = itertools.count()


def shadow_config(
    legacy: Side, candidate: Side, routes: str, store_url: str, *, candidate_timeout: str = "5s"
) -> str:
    """A config with legacy and candidate URL backends and the given routes block."""
    return f"""
listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
backends:
  legacy:
    url: {legacy.url}
    timeout: 5s
  orders:
    url: {candidate.url}
    timeout: {candidate_timeout}
default_backend: legacy
limits:
  shadow_cpu_budget: 1  # client, proxy and apps share this test process: shed on lag only
store:
  url: {store_url}
  redact_json_paths: ["$.buyer.name"]
routes:
{routes}
"""


@asynccontextmanager
async def shadow_stack(
    routes: str,
    store_url: str,
    *,
    log: AccessLog | None = None,
    candidate_timeout: str = "5s",
) -> AsyncIterator[tuple[Proxy, Side, Side]]:
    """Legacy + candidate apps and a started proxy in front of them."""
    legacy, candidate = Side("legacy"), Side("candidate")
    runners = [await start_app(legacy), await start_app(candidate)]
    text = shadow_config(legacy, candidate, routes, store_url, candidate_timeout=candidate_timeout)
    settings = loads(text, f"s{next(_counter)}.yaml")
    proxy = create_proxy(settings, access_log=log or AccessLog(enabled=False))
    await proxy.start()
    try:
        # Start-up work can make the loop lag for a moment, and a lagging loop sheds copies
        # (primary first): tests that count single copies start once admission is full.
        hub = proxy.hub
        if hub is not None:
            ticked = hub.loop.time() + hub.tick_s  # a tick after start-up has judged the lag
            await wait_until(
                lambda: hub._lag_expected > ticked and not hub.shedding and hub.admit >= 1.0
            )
        yield proxy, legacy, candidate
    finally:
        legacy.release.set()
        candidate.release.set()
        await stop_after_test(proxy, 2.0)
        for r in runners:
            await r.cleanup()
