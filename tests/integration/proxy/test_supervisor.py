"""The `strangler serve --workers N` supervisor keeping its workers: respawns, signals."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.integration.proxy.conftest import write_served_config
from tests.support import (
    child_pids,
    free_port,
    start_serve,
    stop_process,
    wait_admin_ready,
    wait_for,
    wait_until,
)
from tests.upstreams import EchoUpstream


@dataclass
class _Served:
    proc: asyncio.subprocess.Process
    port: int
    admin: int
    config: Path


def _config(tmp_path: Path, upstream: EchoUpstream, port: int, admin: int) -> Path:
    return write_served_config(tmp_path, upstream.url, port, admin)


@pytest.fixture
async def served(tmp_path: Path, upstream: EchoUpstream) -> AsyncIterator[_Served]:
    port, admin = free_port(), free_port()
    cfg = _config(tmp_path, upstream, port, admin)
    proc = await start_serve(cfg, "--workers", "2", env={"STRANGLER_GRACE_S": "2"})
    try:
        await wait_admin_ready(admin)
        yield _Served(proc, port, admin, cfg)
    finally:
        await stop_process(proc)


def _doomed_app(tmp_path: Path, module: str, message: str) -> Path:
    """A handlers module `module` in tmp_path whose create_app raises `message` while the
    returned path exists."""
    doom = tmp_path / "doom"
    (tmp_path / f"{module}.py").write_text(
        "import os\n\nfrom aiohttp import web\n\n\n"
        "def create_app() -> web.Application:\n"
        f"    if os.path.exists({str(doom)!r}):\n"
        f"        raise RuntimeError({message!r})\n"
        "    return web.Application()\n"
    )
    return doom


@pytest.fixture
async def doomable(tmp_path: Path, upstream: EchoUpstream) -> AsyncIterator[tuple[_Served, Path]]:
    """Served, with an in-process backend whose app cannot start while the returned path
    exists: a worker started then dies at start (the config itself stays good)."""
    doom = _doomed_app(tmp_path, "doomed", "this worker cannot start")
    port, admin = free_port(), free_port()
    cfg = _config(tmp_path, upstream, port, admin)
    text = cfg.read_text().replace("backends:\n", "backends:\n  inproc: {handlers: doomed}\n", 1)
    cfg.write_text(text)
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    env = {"STRANGLER_GRACE_S": "2", "PYTHONPATH": path}
    proc = await start_serve(cfg, "--workers", "2", env=env)
    try:
        await wait_admin_ready(admin)
        yield _Served(proc, port, admin, cfg), doom
    finally:
        await stop_process(proc)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _metrics_dir(worker: int) -> Path:
    """The supervisor's multiprocess directory, where a ready worker leaves `ready-PID`."""
    for item in Path(f"/proc/{worker}/environ").read_bytes().split(b"\0"):
        if item.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
            return Path(item.split(b"=", 1)[1].decode())
    raise AssertionError(f"worker {worker} has no PROMETHEUS_MULTIPROC_DIR")


async def _workers(sup: int, n: int, timeout: float = 20) -> list[int]:
    found: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = child_pids(sup)
        if len(found) == n:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"workers of {sup}: {found}")


async def _respawned(sup: int, old: list[int], timeout: float = 20) -> int:
    """The pid of a worker the supervisor started after `old` (polled every 5 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = set(child_pids(sup)) - set(old)
        if new:
            return min(new)
        await asyncio.sleep(0.005)
    raise AssertionError(f"no new worker of {sup} besides {old}")


async def test_a_reload_while_a_worker_restarts_does_not_kill_it(served: _Served) -> None:
    """A SIGHUP fanned out to a worker still importing killed it (the default action)."""
    sup = served.proc.pid
    old = await _workers(sup, 2)
    ready_dir = _metrics_dir(old[1])
    os.kill(old[0], signal.SIGKILL)
    fresh = await _respawned(sup, old)
    os.kill(sup, signal.SIGHUP)  # a reload while `fresh` is starting
    deadline = time.monotonic() + 20
    while _alive(fresh) and not (ready_dir / f"ready-{fresh}").exists():
        assert time.monotonic() < deadline, "the new worker never got ready"
        await asyncio.sleep(0.02)
    assert _alive(fresh), "the reload killed the worker that was starting"
    assert served.proc.returncode is None


async def test_a_worker_starting_when_the_supervisor_dies_exits(served: _Served) -> None:
    """It asked for SIGTERM on its parent's death only after its imports: a supervisor
    killed before that left it serving the port forever, an orphan."""
    sup = served.proc.pid
    old = await _workers(sup, 2)
    ready_dir = _metrics_dir(old[1])
    os.kill(old[0], signal.SIGKILL)
    fresh = await _respawned(sup, old)
    os.kill(sup, signal.SIGKILL)  # while `fresh` is starting
    try:
        deadline = time.monotonic() + 20
        while any(_alive(pid) for pid in (fresh, old[1])):
            assert time.monotonic() < deadline, f"orphans: {fresh}, {old[1]}"
            await asyncio.sleep(0.02)
    finally:
        for pid in (fresh, old[1]):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(ready_dir, ignore_errors=True)  # the supervisor had no time to


async def test_a_worker_that_cannot_start_is_restarted_with_backoff(
    doomable: tuple[_Served, Path],
) -> None:
    """A worker dying at start (here: a handler app that cannot start) was restarted every
    ~0.8 s, forever; restarts now back off (1 s, 2 s, 4 s ...) and are counted."""
    served, doom = doomable
    sup = served.proc.pid
    old = await _workers(sup, 2)
    ready_dir = _metrics_dir(old[1])
    doom.touch()
    os.kill(old[0], signal.SIGKILL)
    started: set[int] = set()
    window = time.monotonic() + 6
    while time.monotonic() < window:  # count the workers started in 6 s
        started |= set(child_pids(sup)) - set(old)
        await asyncio.sleep(0.01)
    assert 1 <= len(started) <= 3, f"{len(started)} workers started in 6 s"
    doom.unlink()
    deadline = time.monotonic() + 20
    while not any(
        (ready_dir / f"ready-{pid}").exists() for pid in child_pids(sup) if pid != old[1]
    ):
        assert time.monotonic() < deadline, "no worker came back once it could start"
        await asyncio.sleep(0.05)
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{served.admin}/-/metrics") as r,
    ):
        text = await r.text()
    [restarts] = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("strangler_worker_restarts_total ")
    ]
    assert restarts >= len(started)  # each died, and maybe the one after the window


async def test_a_respawned_worker_runs_the_config_the_others_run(
    served: _Served, upstream: EchoUpstream
) -> None:
    """A worker restarted after a crash read the file on disk, edited but not reloaded
    (here: legacy moved to a port not up yet): its share of the users got 502s while the
    other worker still ran the loaded config. It now runs what the supervisor loaded."""
    sup = served.proc.pid
    old = await _workers(sup, 2)
    ready_dir = _metrics_dir(old[1])
    text = served.config.read_text()
    moved = text.replace(upstream.url, f"http://127.0.0.1:{free_port()}")
    assert moved != text
    served.config.write_text(moved)  # edited, not reloaded
    os.kill(old[0], signal.SIGKILL)
    fresh = await _respawned(sup, old)
    deadline = time.monotonic() + 20
    while not (ready_dir / f"ready-{fresh}").exists():
        assert _alive(fresh), "the new worker exited"
        assert time.monotonic() < deadline, "the new worker never got ready"
        await asyncio.sleep(0.02)
    fresh_conns = aiohttp.TCPConnector(force_close=True)  # new connections reach both workers
    async with aiohttp.ClientSession(connector=fresh_conns) as s:

        async def one(i: int) -> int:
            async with s.get(f"http://127.0.0.1:{served.port}/echo?i={i}") as r:
                await r.read()
                return r.status

        statuses = [await one(i) for i in range(60)]
    assert statuses.count(200) == len(statuses), f"{statuses.count(502)} of 60 answered 502"


async def test_ready_only_while_every_worker_is_up(doomable: tuple[_Served, Path]) -> None:
    """The supervisor said ready with workers dead (even all of them)."""
    served, doom = doomable
    sup = served.proc.pid
    old = await _workers(sup, 2)
    doom.touch()  # the replacement cannot start
    os.kill(old[0], signal.SIGKILL)
    url = f"http://127.0.0.1:{served.admin}/-/ready"
    async with aiohttp.ClientSession() as s:

        async def answer() -> tuple[int, dict[str, str]]:
            async with s.get(url) as r:
                return r.status, await r.json()

        async def not_ready() -> bool:
            return (await answer())[0] == 503

        await wait_for(not_ready, timeout=5)
        status, body = await answer()
        assert status == 503
        assert body == {"status": "not ready", "detail": "1 of 2 workers not ready"}
        doom.unlink()

        async def ready() -> bool:
            return (await answer())[0] == 200

        await wait_for(ready, timeout=30)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_stop_while_workers_start_cleans_up(
    tmp_path: Path, upstream: EchoUpstream, sig: signal.Signals
) -> None:
    """A SIGTERM or SIGINT while the workers started (up to 30 s) killed the supervisor
    outright: no worker stopped by it, the metrics directory left behind."""
    go = tmp_path / "go"
    (tmp_path / "slow_start.py").write_text(
        "import os, time\n\n"
        "deadline = time.monotonic() + 30\n"
        f"while not os.path.exists({str(go)!r}) and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
    )
    cfg = _config(tmp_path, upstream, free_port(), free_port())
    text = cfg.read_text().replace(
        "backends:\n", "backends:\n  inproc: {handlers: slow_start}\n", 1
    )
    cfg.write_text(text)
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    proc = await start_serve(cfg, "--workers", "2", env={"PYTHONPATH": path})
    try:
        workers = await _workers(proc.pid, 2)
        ready_dir = _metrics_dir(workers[0])
        proc.send_signal(sig)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        assert not ready_dir.exists()
        assert not any(_alive(pid) for pid in workers)
    finally:
        go.touch()  # let any worker left finish its imports and take the SIGTERM
        await stop_process(proc)


async def test_a_reload_the_workers_cannot_get_fails_and_keeps_the_old_config(
    served: _Served,
) -> None:
    """The workers' snapshot could not be written (here a directory in the way; a full
    disk alike): the reload said "reloaded" and the new version while every worker kept the
    old config, so `migrate rollback --apply` reported a rollback nobody ran."""
    sup = served.proc.pid
    (worker, _) = await _workers(sup, 2)
    snapshot = _metrics_dir(worker) / "config.yaml"
    assert snapshot.exists()
    before = snapshot.read_bytes()
    snapshot.with_suffix(".tmp").mkdir()
    served.config.write_text(served.config.read_text() + "# edited\n")
    admin = f"http://127.0.0.1:{served.admin}"
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{admin}/-/ready") as r:
            old_version = (await r.json())["config_version"]
        os.kill(sup, signal.SIGHUP)

        async def reload_failed() -> bool:
            async with s.get(f"{admin}/-/config") as r:
                return bool((await r.json())["last_reload_error"])

        await wait_for(reload_failed, timeout=10)
        async with s.get(f"{admin}/-/config") as r:
            error = (await r.json())["last_reload_error"]
        assert "cannot hand the config to the workers" in error
        async with s.get(f"{admin}/-/ready") as r:
            assert (await r.json())["config_version"] == old_version
    assert snapshot.read_bytes() == before


async def test_workers_of_a_crlf_config_report_the_supervisors_version(
    tmp_path: Path, upstream: EchoUpstream
) -> None:
    """The snapshot was read back with newline translation: a CRLF file got another version
    in the workers (stored rows, metrics) than the one /-/ready and /-/reload reported."""
    port, admin = free_port(), free_port()
    cfg = _config(tmp_path, upstream, port, admin)
    cfg.write_bytes(cfg.read_bytes().replace(b"\n", b"\r\n"))
    proc = await start_serve(cfg, "--workers", "2", env={"STRANGLER_GRACE_S": "2"})
    try:
        await wait_admin_ready(admin)
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{admin}/-/ready") as r:
                version = (await r.json())["config_version"]

            async def versions() -> bool:
                async with s.get(f"http://127.0.0.1:{admin}/-/metrics") as r:
                    text = await r.text()
                lines = [x for x in text.splitlines() if x.startswith("strangler_config_info{")]
                return any(version in x and x.endswith(" 1.0") for x in lines)

            await wait_for(versions, timeout=10)
            async with s.get(f"http://127.0.0.1:{admin}/-/metrics") as r:
                text = await r.text()
        live = {
            x.split('version="')[1].split('"')[0]
            for x in text.splitlines()
            if x.startswith("strangler_config_info{") and not x.endswith(" 0.0")
        }
        assert live == {version}, text
    finally:
        await stop_process(proc)


async def test_a_hung_worker_is_killed_and_replaced(served: _Served) -> None:
    """A worker whose event loop stopped (here SIGSTOP; a CPU-bound bug or a deadlock alike)
    kept its share of the port: about half the new connections hung forever while /-/ready
    said ready. The supervisor now sees its heartbeat stop, says not ready, kills it after
    10 s of silence and starts another; then every request succeeds again."""
    sup = served.proc.pid
    old = await _workers(sup, 2)
    ready_dir = _metrics_dir(old[1])
    os.kill(old[0], signal.SIGSTOP)
    try:
        url = f"http://127.0.0.1:{served.admin}/-/ready"
        async with aiohttp.ClientSession() as s:

            async def not_ready() -> bool:
                async with s.get(url) as r:
                    return r.status == 503

            await wait_for(not_ready, timeout=5)
        fresh = await _respawned(sup, old, timeout=15)
        assert not _alive(old[0]), "the hung worker was left running"
        await wait_until(lambda: (ready_dir / f"ready-{fresh}").exists(), timeout=10)
        await wait_admin_ready(served.admin, timeout=10)
    finally:
        if _alive(old[0]):
            os.kill(old[0], signal.SIGKILL)
    fresh_conns = aiohttp.TCPConnector(force_close=True)  # new connections reach both workers
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(connector=fresh_conns, timeout=timeout) as s:

        async def one(i: int) -> int:
            async with s.get(f"http://127.0.0.1:{served.port}/echo?i={i}") as r:
                await r.read()
                return r.status

        statuses = [await one(i) for i in range(60)]
    assert statuses == [200] * 60
    assert served.proc.returncode is None


async def test_a_reload_a_worker_cannot_apply_keeps_the_old_config_everywhere(
    tmp_path: Path, upstream: EchoUpstream
) -> None:
    """The supervisor validated a reload, wrote it for the workers and said "reloaded"
    without hearing from them. A worker that could not apply it (here: a new handler app
    that fails to start) kept the old config, while a worker restarted during the reload
    started on the rejected one: users got two configs at random. A reload a worker cannot
    apply now fails as a whole, and every worker, the restarted one too, runs the old one."""
    other = await EchoUpstream().start()
    doom = _doomed_app(tmp_path, "fragile", "this app cannot start now")
    port, admin = free_port(), free_port()
    cfg = _config(tmp_path, upstream, port, admin)
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    env = {"STRANGLER_GRACE_S": "2", "PYTHONPATH": path}
    proc = await start_serve(cfg, "--workers", "2", env=env)
    try:
        await wait_admin_ready(admin)
        sup = proc.pid
        old = await _workers(sup, 2)
        ready_dir = _metrics_dir(old[1])
        base = f"http://127.0.0.1:{admin}"
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{base}/-/ready") as r:
                old_version = (await r.json())["config_version"]
            text = cfg.read_text().replace(upstream.url, other.url)
            text = text.replace("backends:\n", "backends:\n  fragile: {handlers: fragile}\n", 1)
            cfg.write_text(text)
            doom.touch()  # the surviving worker cannot start the new app
            os.kill(old[0], signal.SIGKILL)
            os.kill(sup, signal.SIGHUP)  # a reload while the killed worker is restarted

            async def reload_errors() -> bool:
                async with s.get(f"{base}/-/metrics") as r:
                    body = await r.text()
                return any(
                    x.startswith('strangler_config_reloads_total{result="error"}')
                    and not x.endswith(" 0.0")
                    for x in body.splitlines()
                )

            await wait_for(reload_errors, timeout=10)
            doom.unlink()  # the restarted worker can start it (a transient failure)
            fresh = await _respawned(sup, old)

            def fresh_ready() -> bool:
                assert _alive(fresh), "the new worker exited"
                return (ready_dir / f"ready-{fresh}").exists()

            await wait_until(fresh_ready, timeout=20)
            await wait_admin_ready(admin)
            async with s.get(f"{base}/-/ready") as r:
                version = (await r.json())["config_version"]
        fresh_conns = aiohttp.TCPConnector(force_close=True)  # new connections reach both
        async with aiohttp.ClientSession(connector=fresh_conns) as s:
            for i in range(60):
                async with s.get(f"http://127.0.0.1:{port}/echo?i={i}") as r:
                    await r.read()
                    assert r.status == 200
        assert len(other.received) == 0, f"{len(other.received)} of 60 ran the rejected config"
        assert version == old_version
    finally:
        await stop_process(proc)
        await other.close()


_ADMIN_AUTH = {"Authorization": "Bearer t0ken"}


def _lowest_free_fd(pid: int) -> int:
    used = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    return next(n for n in range(len(used) + 1) if n not in used)


async def test_a_worker_that_cannot_read_the_snapshot_says_why(
    tmp_path: Path, upstream: EchoUpstream
) -> None:
    """A worker whose read of the config snapshot failed (here: out of file descriptors, as
    under a flood of connections) fell back to the file on disk without a word; the reload
    failed as refused by it, and nothing said why. The worker says so on stderr, and the
    refused reload names the reason."""
    import resource

    port, admin = free_port(), free_port()
    cfg = _config(tmp_path, upstream, port, admin)
    proc = await start_serve(
        cfg,
        "--workers",
        "2",
        env={"STRANGLER_GRACE_S": "2", "STRANGLER_ADMIN_TOKEN": "t0ken"},
        stderr=asyncio.subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{admin}"
    try:
        await wait_admin_ready(admin)
        (worker, _) = await _workers(proc.pid, 2)
        snapshot = _metrics_dir(worker) / "config.yaml"
        async with aiohttp.ClientSession() as s:
            # a first reload, which runs: the reload path's modules are imported then
            async with s.post(f"{base}/-/reload", headers=_ADMIN_AUTH) as r:
                assert r.status == 200, await r.text()
            limits = resource.prlimit(worker, resource.RLIMIT_NOFILE)
            resource.prlimit(worker, resource.RLIMIT_NOFILE, (_lowest_free_fd(worker), limits[1]))
            try:
                async with s.post(f"{base}/-/reload", headers=_ADMIN_AUTH) as r:
                    status, answer = r.status, await r.text()
            finally:
                resource.prlimit(worker, resource.RLIMIT_NOFILE, limits)
    finally:
        await stop_process(proc)
    assert proc.stderr is not None
    stderr = (await proc.stderr.read()).decode()
    assert status == 422
    why = f"cannot read the config snapshot {snapshot}: Too many open files"
    assert why in answer, answer
    lines = [x for x in stderr.splitlines() if why in x]  # the reload, and its roll-back
    assert lines, stderr
    for line in lines:
        assert f"worker {worker}: " in line and f"loading the config file {cfg} instead" in line
