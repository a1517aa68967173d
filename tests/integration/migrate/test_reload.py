"""`--reload-url`: after writing, migrate POSTs /-/reload with the admin bearer token."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from proxy.migrate import MigrateError
from proxy.settings import load
from shadow.store import Store
from tests.integration.migrate.helpers import changes, evidence, migrate, write_config

TOKEN = "s3cret-test-token"
ENV = {"STRANGLER_TEST_ADMIN_TOKEN": TOKEN}


@asynccontextmanager
async def _reload_server(
    port: int,
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    shutdown_timeout: float = 60.0,  # aiohttp's own default
) -> AsyncIterator[None]:
    """A stand-in server on `port` whose POST /-/reload is `handler`."""
    app = web.Application()
    app.router.add_post("/-/reload", handler)
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield
    finally:
        await runner.cleanup()


@dataclass
class _Admin:
    """A stand-in admin listener: checks the token, answers 503 first when asked to."""

    url: str
    fail_first: int = 0
    calls: list[str] = field(default_factory=list)


@pytest.fixture
async def admin(port: int) -> AsyncIterator[_Admin]:
    state = _Admin(f"http://127.0.0.1:{port}")

    async def reload(request: web.Request) -> web.Response:
        state.calls.append(request.headers.get("Authorization", ""))
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"error": {"code": "unauthorized"}}, status=401)
        if state.fail_first > 0:
            state.fail_first -= 1
            return web.json_response({"error": {"code": "busy"}}, status=503)
        return web.json_response({"status": "reloaded", "config_version": "abc123"})

    async with _reload_server(port, reload):
        yield state


async def _store(path: Path) -> str:
    url = f"sqlite+aiosqlite:///{path / 'store.db'}"
    async with Store(url):
        pass
    return url


async def test_apply_then_reload_with_bearer_token(tmp_path: Path, admin: _Admin) -> None:
    config, store = write_config(tmp_path), await _store(tmp_path)
    admin.fail_first = 1  # one 503: the reload is retried (a reload is idempotent)
    result = await asyncio.to_thread(
        migrate,
        *("rollback", "order-list", "--config", config, "--store", store, "--apply"),
        *("--reload-url", admin.url),
        env=ENV,
    )
    assert result.exit_code == 0, result.output
    assert admin.calls == [f"Bearer {TOKEN}"] * 2
    assert f"reloaded: {admin.url}/-/reload (config version abc123)" in result.stdout
    assert next(r for r in load(config).routes if r.name == "order-list").mode == "shadow"

    await asyncio.to_thread(evidence, store, "order-show", matches=150)
    full_url = f"{admin.url}/-/reload"
    result = await asyncio.to_thread(
        migrate,
        *("advance", "order-show", "--config", config, "--store", store, "--apply"),
        *("--reload-url", full_url),
        env=ENV,
    )
    assert result.exit_code == 0, result.output
    assert len(admin.calls) == 3


async def test_wrong_token_fails_after_writing(tmp_path: Path, admin: _Admin) -> None:
    config, store = write_config(tmp_path), await _store(tmp_path)
    result = await asyncio.to_thread(
        migrate,
        *("rollback", "order-list", "--config", config, "--store", store, "--apply"),
        *("--reload-url", admin.url),
        env={"STRANGLER_TEST_ADMIN_TOKEN": "wrong"},
    )
    assert result.exit_code == 2
    assert admin.calls == ["Bearer wrong"]  # a 401 is not retried
    assert "HTTP 401" in result.stderr and "Traceback" not in result.output
    assert len(await asyncio.to_thread(changes, store)) == 1  # the change itself stands
    # it said only "reload failed", as if nothing had happened: the change was applied,
    # written and audited, and only the proxy has not picked it up
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("strangler migrate: error: order-list: applied (canary"), line
    assert f"written to {config} (audit #1)" in line, line
    assert "but the reload failed: reload at" in line and "HTTP 401" in line, line
    assert "do not apply it again" in line, line
    assert next(r for r in load(config).routes if r.name == "order-list").mode == "shadow"


async def test_missing_token_refuses_before_writing(tmp_path: Path, admin: _Admin) -> None:
    config, store = write_config(tmp_path), await _store(tmp_path)
    before = Path(config).read_text()
    result = await asyncio.to_thread(
        migrate,
        *("rollback", "order-list", "--config", config, "--store", store, "--apply"),
        *("--reload-url", admin.url),
        env={"STRANGLER_TEST_ADMIN_TOKEN": ""},
    )
    assert result.exit_code == 2
    assert "needs the admin token in $STRANGLER_TEST_ADMIN_TOKEN" in result.stderr
    assert Path(config).read_text() == before and admin.calls == []


async def test_unreachable_admin_is_one_line(tmp_path: Path) -> None:
    from tests.support import free_port

    config, store = write_config(tmp_path), await _store(tmp_path)
    result = await asyncio.to_thread(
        migrate,
        *("rollback", "order-list", "--config", config, "--store", store, "--apply"),
        *("--reload-url", f"http://127.0.0.1:{free_port()}"),
        env=ENV,
    )
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "reload at" in result.stderr


async def test_a_reload_that_times_out_is_not_posted_again_and_said_unknown(port: int) -> None:
    """A supervisor's reload can take ~20 s (10 s for the workers' answers, 10 s for a
    rollback); the client gave up at 10 s, POSTed twice more (queueing more reloads) and
    said "the proxy runs the previous config", which it did not know."""
    from proxy import serve
    from proxy.migrate import RELOAD_TIMEOUT_S, ReloadUnknown, reload_proxy
    from proxy.migrate_cli import _reload

    assert RELOAD_TIMEOUT_S > 2 * serve._RELOAD_WAIT_S + 10  # above the server's worst case
    calls: list[str] = []
    done = asyncio.Event()

    async def slow_reload(request: web.Request) -> web.Response:
        calls.append(request.path)
        await done.wait()  # still reloading when the client gives up
        return web.json_response({"status": "reloaded", "config_version": "abc123"})

    async with _reload_server(port, slow_reload, shutdown_timeout=0.1):
        try:
            url = f"http://127.0.0.1:{port}"
            with pytest.raises(ReloadUnknown) as unknown:
                await reload_proxy(url, TOKEN, timeout=0.5)
            assert calls == ["/-/reload"]  # one POST: no second reload queued
            assert "no answer within 0.5 s" in str(unknown.value)
            assert "unknown" in str(unknown.value)
            with pytest.raises(MigrateError) as said:
                await _reload(url, TOKEN, "order-list: applied", timeout=0.5)
            assert "runs the previous config until" not in str(said.value)
            assert "do not apply it again" in str(said.value)
            assert len(calls) == 2
        finally:
            done.set()


@pytest.mark.parametrize("status", [502, 504])
async def test_a_gateways_502_or_504_is_not_posted_again_and_said_unknown(
    port: int, status: int
) -> None:
    """A gateway in front of the admin port giving up (504) or losing its upstream (502)
    says nothing of the reload behind it: it was POSTed again, queueing another reload."""
    from proxy.migrate import ReloadUnknown, reload_proxy

    calls: list[str] = []

    async def gateway(request: web.Request) -> web.Response:
        calls.append(request.path)
        return web.Response(status=status, text="upstream timed out")

    async with _reload_server(port, gateway, shutdown_timeout=0.1):
        with pytest.raises(ReloadUnknown) as unknown:
            await reload_proxy(f"http://127.0.0.1:{port}", TOKEN, timeout=5)
        assert calls == ["/-/reload"]
        assert f"HTTP {status} from a gateway" in str(unknown.value)


async def test_a_connection_reset_after_the_post_is_said_unknown(port: int) -> None:
    """An answer cut off after the POST was sent (a reset) was reported as "the reload
    failed ... the proxy runs the previous config", which the client cannot know."""
    from proxy.migrate import ReloadUnknown, reload_proxy

    got = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        got.set()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")  # cut short
        await writer.drain()
        writer.transport.abort()

    server = await asyncio.start_server(serve, "127.0.0.1", port)
    try:
        with pytest.raises(ReloadUnknown):
            await reload_proxy(f"http://127.0.0.1:{port}", TOKEN, timeout=5)
        assert got.is_set()
    finally:
        server.close()
        await server.wait_closed()
