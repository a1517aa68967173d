"""`strangler serve` that cannot start says why on one line and exits 2 (no traceback)."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

import proxy.app as app_module
from proxy.accesslog import AccessLog
from proxy.app import create_proxy
from proxy.handlers import start_handler_app
from proxy.listenclaim import claim_listen
from proxy.settings import BackendSettings, loads
from tests.integration.proxy.conftest import write_served_config
from tests.support import admin_ready, free_port, start_serve, stop_process, wait_admin_ready
from tests.upstreams import EchoUpstream, raw_exchange


@pytest.fixture
def taken() -> Iterator[int]:
    """A loopback port another process's socket listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


async def _serve(config: Path, *args: str, timeout: float = 60) -> tuple[int, str]:
    proc = await start_serve(config, *args, stderr=asyncio.subprocess.PIPE)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


def _config(tmp_path: Path, upstream: EchoUpstream, port: int, admin: int) -> Path:
    return write_served_config(tmp_path, upstream.url, port, admin)


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]])
async def test_a_listen_address_in_use_exits_2_with_one_line(
    tmp_path: Path, upstream: EchoUpstream, taken: int, workers: list[str]
) -> None:
    code, err = await _serve(_config(tmp_path, upstream, taken, free_port()), *workers)
    assert code == 2, err
    assert "Traceback" not in err
    assert "strangler serve: cannot start: " in err and str(taken) in err, err


async def test_an_admin_address_in_use_exits_2_with_one_line(
    tmp_path: Path, upstream: EchoUpstream, taken: int
) -> None:
    code, err = await _serve(_config(tmp_path, upstream, free_port(), taken))
    assert code == 2, err
    assert err.strip().splitlines() == [err.strip()] and "Traceback" not in err
    assert err.startswith("strangler serve: cannot start: ") and str(taken) in err, err


async def test_a_handlers_module_without_create_app_exits_2_with_one_line(
    tmp_path: Path, upstream: EchoUpstream
) -> None:
    cfg = _config(tmp_path, upstream, free_port(), free_port())
    text = cfg.read_text().replace("backends:\n", "backends:\n  inproc: {handlers: json}\n", 1)
    cfg.write_text(text)
    code, err = await _serve(cfg)
    assert code == 2, err
    missing = "module 'json' has no attribute 'create_app'"
    assert err.strip() == f"strangler serve: cannot start: AttributeError: {missing}"


async def test_apps_started_before_a_failing_one_are_closed(
    tmp_path: Path, upstream: EchoUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[web.AppRunner] = []
    real = start_handler_app

    async def recording(bs: BackendSettings) -> tuple[web.AppRunner, str, int]:
        runner, host, port = await real(bs)
        started.append(runner)
        return runner, host, port

    monkeypatch.setattr(app_module, "start_handler_app", recording)
    db = f"sqlite+aiosqlite:///{tmp_path / 'orders.db'}"
    text = _config(tmp_path, upstream, 0, 0).read_text()
    text = text.replace(
        "backends:\n",
        f"backends:\n  orders: {{handlers: extracted.app, db: '{db}'}}\n"
        "  broken: {handlers: json}\n",
        1,
    )
    proxy = create_proxy(loads(text, "t.yaml"), access_log=AccessLog(enabled=False))
    with pytest.raises(AttributeError):
        await proxy.start()
    [orders] = started  # the first app started, then the second failed
    assert not orders.sites  # and the first was cleaned up: no listener left behind


async def test_a_second_workers_instance_on_a_served_port_exits_2(
    tmp_path: Path, upstream: EchoUpstream
) -> None:
    """Its workers (SO_REUSEPORT) would share the port with the first instance's and split
    the users between two proxies; it must fail as a single process does."""
    port = free_port()
    first_dir, second_dir = tmp_path / "a", tmp_path / "b"
    first_dir.mkdir()
    second_dir.mkdir()
    admin = free_port()
    first = await start_serve(_config(first_dir, upstream, port, admin), "--workers", "2")
    try:
        await wait_admin_ready(admin)
        code, err = await _serve(
            _config(second_dir, upstream, port, free_port()), "--workers", "2", timeout=20
        )
        assert code == 2, err
        assert "Traceback" not in err
        assert "strangler serve: cannot start: " in err and str(port) in err, err
        assert first.returncode is None
    finally:
        assert await stop_process(first) == 0


async def test_port_0_with_workers_exits_2_with_one_line(
    tmp_path: Path, upstream: EchoUpstream
) -> None:
    """Each worker would bind its own random port: no single address served them all."""
    code, err = await _serve(
        _config(tmp_path, upstream, 0, free_port()), "--workers", "2", timeout=20
    )
    assert code == 2, err
    assert err.strip().splitlines() == [err.strip()] and "Traceback" not in err
    assert err.startswith("strangler serve: cannot start: listen 127.0.0.1:0 "), err


async def test_workers_that_die_at_start_exit_2(tmp_path: Path, upstream: EchoUpstream) -> None:
    """A worker gone during start-up without its own 2 (here a handler module that exits
    at import) is a failed start, not a failed gate (1)."""
    (tmp_path / "exits_at_import.py").write_text("import sys\n\nsys.exit(3)\n")
    cfg = _config(tmp_path, upstream, free_port(), free_port())
    text = cfg.read_text().replace(
        "backends:\n", "backends:\n  inproc: {handlers: exits_at_import}\n", 1
    )
    cfg.write_text(text)
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    proc = await start_serve(
        cfg, "--workers", "2", env={"PYTHONPATH": path}, stderr=asyncio.subprocess.PIPE
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 2, err.decode()
    assert "strangler serve: workers failed to start" in err.decode()


@pytest.mark.parametrize(
    ("first", "second"),
    [(["--workers", "2"], ["--workers", "2"]), ([], ["--workers", "2"]), (["--workers", "2"], [])],
    ids=["workers-workers", "single-workers", "workers-single"],
)
async def test_two_serves_started_at_once_on_one_port_one_exits_2(
    tmp_path: Path, upstream: EchoUpstream, first: list[str], second: list[str]
) -> None:
    """The supervisor's port probe let go of the port before its workers bound it: two
    instances started together both served it (SO_REUSEPORT), users split between two
    configs; or the other one's bind made the workers fail ("workers failed to start")."""
    port = free_port()
    admins = [free_port(), free_port()]
    procs = []
    for name, args, admin in zip("ab", (first, second), admins, strict=True):
        (tmp_path / name).mkdir()
        cfg = _config(tmp_path / name, upstream, port, admin)
        procs.append(await start_serve(cfg, *args, stderr=asyncio.subprocess.PIPE))
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 60
            while True:
                exited = [p for p in procs if p.returncode is not None]
                ready = [await admin_ready(session, a) for a in admins]
                if exited and any(ready):
                    break
                assert not all(ready), f"both instances serve port {port}"
                assert len(exited) < 2, f"neither started: {[p.returncode for p in procs]}"
                assert time.monotonic() < deadline, "no outcome"
                await asyncio.sleep(0.05)
        [loser] = exited
        assert loser.stderr is not None
        err = (await loser.stderr.read()).decode()
        assert loser.returncode == 2, err
        assert err.strip().splitlines() == [err.strip()] and "Traceback" not in err, err
        assert err.startswith("strangler serve: cannot start: "), err
        assert "address already in use" in err and "127.0.0.1" in err and str(port) in err, err
        got = await raw_exchange(port, b"GET /echo HTTP/1.1\r\nHost: shop.example\r\n\r\n")
        assert got.status == 200
    finally:
        for proc in procs:
            assert await stop_process(proc) in (0, 2)


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]])
async def test_a_port_reserved_on_every_address_refuses_loopback(
    tmp_path: Path, upstream: EchoUpstream, workers: list[str]
) -> None:
    """Another serve is starting on 0.0.0.0:P (its reservation held, not listening yet): one
    for 127.0.0.1:P must not start too, though that spelling is not reserved as such."""
    port = free_port()
    held = claim_listen("0.0.0.0", port)
    try:
        cfg = _config(tmp_path, upstream, port, free_port())
        code, err = await _serve(cfg, *workers, timeout=20)
    finally:
        for sock in held:
            sock.close()
    assert code == 2, err
    assert err.strip().splitlines() == [err.strip()] and "Traceback" not in err, err
    assert err.startswith("strangler serve: cannot start: "), err
    why = f"listen 127.0.0.1:{port}: address already in use (another strangler serve holds 0.0.0.0:"
    assert why in err, err
