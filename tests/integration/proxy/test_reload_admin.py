"""Hot reload under load and the admin listener."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from proxy.accesslog import AccessLog
from proxy.app import Proxy, create_proxy
from proxy.settings import load
from shadow.redact import KEY_ENV
from tests.integration.proxy.conftest import proxy_config
from tests.support import free_port, start_serve, stop_after_test, stop_process, wait_admin_ready
from tests.upstreams import EchoUpstream

TOKEN = "test-admin-token"


def _routes(n: int) -> str:
    return f"""
routes:
  - name: orders-{n}
    match: {{path: /api/v1/orders/*}}
    mode: legacy
"""


class _AdminStack:
    def __init__(self, proxy: Proxy, path: Path, log: io.BytesIO) -> None:
        self.proxy = proxy
        self.path = path
        self.log = log

    def url(self, p: str) -> str:
        host, port = self.proxy.admin_address
        return f"http://{host}:{port}{p}"


@pytest.fixture
async def admin_stack(
    tmp_path: Path, upstream: EchoUpstream, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[_AdminStack]:
    monkeypatch.setenv("STRANGLER_ADMIN_TOKEN", TOKEN)
    path = tmp_path / "routes.yaml"
    base = proxy_config(
        upstream.url, store_url="postgresql+psycopg://reporter:s3cret-pw@127.0.0.1:5432/test"
    )
    path.write_text(base + _routes(0))
    log = io.BytesIO()
    proxy = create_proxy(load(str(path)), access_log=AccessLog(log, enabled=True))
    await proxy.start()
    yield _AdminStack(proxy, path, log)
    await stop_after_test(proxy, 1.0)


async def test_health_ready_metrics_config_routes(admin_stack: _AdminStack) -> None:
    async with aiohttp.ClientSession() as s:
        host, port = admin_stack.proxy.address
        async with s.get(f"http://{host}:{port}/api/v1/orders/7") as r:
            assert r.status == 200
        async with s.get(admin_stack.url("/-/health")) as r:
            assert r.status == 200
        async with s.get(admin_stack.url("/-/ready")) as r:
            assert (await r.json())["status"] == "ready"
        async with s.get(admin_stack.url("/-/metrics")) as r:
            text = await r.text()
            assert (
                'strangler_requests_total{backend="legacy",mode="legacy",'
                'route="orders-0",status_class="2xx"} 1.0' in text
            )
            assert "strangler_request_duration_seconds_bucket" in text
            assert "strangler_config_info{" in text
        async with s.get(admin_stack.url("/-/config")) as r:
            raw = await r.text()
            assert "s3cret-pw" not in raw
            cfg = orjson.loads(raw)
            assert cfg["store"]["url"] == "postgresql+psycopg://reporter:***@127.0.0.1:5432/test"
            assert cfg["version"] == admin_stack.proxy.settings.version
        async with s.get(admin_stack.url("/-/routes")) as r:
            routes = (await r.json())["routes"]
            assert routes[0]["name"] == "orders-0"
            assert routes[0]["requests"] == 1


async def test_reload_requires_bearer_token(
    admin_stack: _AdminStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(admin_stack.url("/-/reload")) as r:
            assert r.status == 401
        async with s.post(
            admin_stack.url("/-/reload"), headers={"Authorization": "Bearer wrong"}
        ) as r:
            assert r.status == 401
        monkeypatch.delenv("STRANGLER_ADMIN_TOKEN")
        async with s.post(
            admin_stack.url("/-/reload"), headers={"Authorization": f"Bearer {TOKEN}"}
        ) as r:
            assert r.status == 403


async def _load(port: int, stop: asyncio.Event, results: list[int], deadline: float) -> None:
    async with aiohttp.ClientSession() as s:
        n = 0
        while not stop.is_set() and time.monotonic() < deadline and n < 5000:
            n += 1
            try:
                async with s.get(f"http://127.0.0.1:{port}/api/v1/orders/{n}") as r:
                    await r.read()
                    results.append(r.status)
            except aiohttp.ClientError:
                results.append(0)


async def test_reload_under_load_keeps_serving_and_last_good_config(
    admin_stack: _AdminStack, upstream: EchoUpstream
) -> None:
    stop = asyncio.Event()
    results: list[int] = []
    deadline = time.monotonic() + 30
    port = admin_stack.proxy.address[1]
    clients = [asyncio.create_task(_load(port, stop, results, deadline)) for _ in range(4)]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    base = admin_stack.path.read_text().split("routes:")[0]
    verdicts = []
    last_good = admin_stack.proxy.settings.version
    async with aiohttp.ClientSession() as s:
        for i in range(1, 21):
            before = len(results)
            while len(results) < before + 5 and time.monotonic() < deadline:
                await asyncio.sleep(0.005)  # let some traffic through between reloads
            if i % 2:
                admin_stack.path.write_text(base + _routes(i))
            else:
                admin_stack.path.write_text(base + _routes(i) + "  - name: [broken\n")
            async with s.post(admin_stack.url("/-/reload"), headers=auth) as r:
                verdicts.append(r.status)
                if r.status == 200:
                    last_good = (await r.json())["config_version"]
        stop.set()
        await asyncio.gather(*clients)
        async with s.get(admin_stack.url("/-/config")) as r:
            cfg = await r.json()
    assert verdicts == [200, 422] * 10
    assert results and all(code == 200 for code in results), set(results)
    assert cfg["version"] == last_good
    assert cfg["routes"][0]["name"] == "orders-19"
    assert cfg["last_reload_error"]
    events = [orjson.loads(line) for line in admin_stack.log.getvalue().splitlines()]
    rejected = [e for e in events if e.get("event") == "reload_rejected"]
    assert len(rejected) == 10
    assert all(e["errors"] for e in rejected)
    print(f"reload under load: {len(results)} requests, all 200; 10 ok + 10 rejected reloads")


async def test_inflight_request_finishes_on_old_table(
    admin_stack: _AdminStack, upstream: EchoUpstream
) -> None:
    gate = asyncio.Event()

    def held(t: asyncio.Transport, rec: object) -> None:
        async def later() -> None:
            await gate.wait()
            t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nheld")

        asyncio.get_running_loop().create_task(later())

    upstream.extra[b"/api/v1/orders/held"] = held
    port = admin_stack.proxy.address[1]
    async with aiohttp.ClientSession() as s:
        req = asyncio.create_task(s.get(f"http://127.0.0.1:{port}/api/v1/orders/held"))
        await asyncio.wait_for(upstream.got_request.wait(), 5)
        base = admin_stack.path.read_text().split("routes:")[0]
        admin_stack.path.write_text(base + _routes(99))
        ok, errors = await admin_stack.proxy.reload_from_file()
        assert ok, errors
        gate.set()
        resp = await req
        assert resp.status == 200
        assert await resp.read() == b"held"
        resp.release()


async def test_a_reload_that_needs_a_restart_is_refused_whole(admin_stack: _AdminStack) -> None:
    """A new store URL (or listener) cannot take effect in a running proxy: the reload was
    accepted and /-/config showed it while comparisons kept going to the old store."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    text = admin_stack.path.read_text()
    kept = admin_stack.proxy.settings.version
    admin_stack.path.write_text(text.replace("/test", "/other") + "  # and another route\n")
    async with (
        aiohttp.ClientSession() as s,
        s.post(admin_stack.url("/-/reload"), headers=auth) as r,
    ):
        assert r.status == 422
        assert "store.url changed; that takes a restart" in (await r.text())
    assert admin_stack.proxy.settings.version == kept


async def test_a_reload_applies_new_redaction_paths(tmp_path: Path, upstream: EchoUpstream) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(proxy_config(upstream.url, store_url=f"sqlite+aiosqlite:///{tmp_path}/s.db"))
    proxy = create_proxy(load(str(path)), access_log=AccessLog(enabled=False))
    await proxy.start()
    try:
        assert proxy.redactor is not None and proxy.hub is not None
        doc = b'{"buyer": {"name": "Ann"}}'
        assert b"Ann" in proxy.hub.redactor.redact_body(doc, "application/json", None)
        text = path.read_text().replace(
            "store:\n", 'store:\n  redact_json_paths: ["$.buyer.name"]\n', 1
        )
        path.write_text(text)
        ok, errors = await proxy.reload_from_file()
        assert ok, errors
        assert b"Ann" not in proxy.hub.redactor.redact_body(doc, "application/json", None)
    finally:
        await stop_after_test(proxy, 1.0)


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_missing_redaction_key_is_warned_about_once_per_serve(
    tmp_path: Path, upstream: EchoUpstream, monkeypatch: pytest.MonkeyPatch, workers: str
) -> None:
    # Without the key every process hashes with its own random key: tokens of one value
    # differ between workers and restarts, and nothing said so. One warning per `serve`
    # (not one per worker and helper), after a good start, not again on a reload.
    port, admin = free_port(), free_port()
    path = tmp_path / "routes.yaml"
    text = proxy_config(upstream.url, store_url=f"sqlite+aiosqlite:///{tmp_path}/s.db")
    text = text.replace("listen: 127.0.0.1:0", f"listen: 127.0.0.1:{port}", 1)
    path.write_text(text.replace("  listen: 127.0.0.1:0", f"  listen: 127.0.0.1:{admin}", 1))

    async def serve_and_reload() -> str:
        proc = await start_serve(
            path,
            "--workers",
            workers,
            env={"STRANGLER_GRACE_S": "1"},
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            await wait_admin_ready(admin)
            auth = {"Authorization": "Bearer t0ken"}
            async with (
                aiohttp.ClientSession() as s,
                s.post(f"http://127.0.0.1:{admin}/-/reload", headers=auth) as r,
            ):
                assert r.status == 200, await r.text()
        finally:
            await stop_process(proc)
        assert proc.stderr is not None
        return (await proc.stderr.read()).decode()

    monkeypatch.setenv("STRANGLER_ADMIN_TOKEN", "t0ken")
    monkeypatch.delenv(KEY_ENV, raising=False)
    err = await serve_and_reload()
    assert err.count(KEY_ENV) == 1, err
    monkeypatch.setenv(KEY_ENV, "a shared secret")
    assert KEY_ENV not in await serve_and_reload()
