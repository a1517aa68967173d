"""A SIGHUP while single-process `strangler serve` is still starting neither kills it (the
default action, exit 129) nor is lost: it is a reload once the proxy is up.

The process is watched with PYTHONPROFILEIMPORTTIME: its first `click` line on stderr says
the CLI's own code runs (the hold comes before that import). Only the interpreter's start-up
before any strangler code is out of the process's reach; the supervisor covers it for its
workers by spawning them with SIGHUP blocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from tests.integration.proxy.conftest import write_served_config
from tests.support import admin_ready, free_port, start_serve, stop_process, wait_for
from tests.upstreams import EchoUpstream, raw_exchange

_CLICK_DONE = re.compile(rb"\|\s+click\s*$")  # the package, not click.core etc.
_RELOADS_OK = re.compile(rb'^strangler_config_reloads_total\{result="ok"\} (\S+)$', re.M)


@dataclass
class _Starting:
    """A `strangler serve` process caught right after its CLI began to import."""

    proc: asyncio.subprocess.Process
    port: int
    admin: int
    cli_runs: asyncio.Event = field(default_factory=asyncio.Event)
    stderr: list[bytes] = field(default_factory=list)


async def _drain(starting: _Starting) -> None:
    """Read the child's stderr to its end (the import profile fills a pipe), noting when
    `click`, the CLI's first import after the hold, is done."""
    stream = starting.proc.stderr
    assert stream is not None
    async for line in stream:
        if _CLICK_DONE.search(line):
            starting.cli_runs.set()
        elif not line.startswith(b"import time:"):
            starting.stderr.append(line)


@pytest.fixture
async def starting(tmp_path: Path, upstream: EchoUpstream) -> AsyncIterator[_Starting]:
    port, admin = free_port(), free_port()
    cfg = write_served_config(tmp_path, upstream.url, port, admin)
    proc = await start_serve(
        cfg, env={"PYTHONPROFILEIMPORTTIME": "1"}, stderr=asyncio.subprocess.PIPE
    )
    started = _Starting(proc, port, admin)
    drain = asyncio.create_task(_drain(started))
    try:
        await asyncio.wait_for(started.cli_runs.wait(), 30)
        yield started
    finally:
        await stop_process(proc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(drain, 5)


async def _reloads_ok(session: aiohttp.ClientSession, admin: int) -> float:
    async with session.get(f"http://127.0.0.1:{admin}/-/metrics") as r:
        m = _RELOADS_OK.search(await r.read())
    return float(m.group(1)) if m else 0.0


def _alive(starting: _Starting) -> None:
    code = starting.proc.returncode
    assert code is None, f"exited {code} (SIGHUP: {-signal.SIGHUP}): {starting.stderr}"


async def _serves(starting: _Starting) -> None:
    got = await raw_exchange(starting.port, b"GET /echo HTTP/1.1\r\nHost: shop.example\r\n\r\n")
    assert got.status == 200


async def test_a_sighup_while_starting_is_a_reload_once_up(starting: _Starting) -> None:
    os.kill(starting.proc.pid, signal.SIGHUP)  # still importing: nothing handles it yet
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + 30
        while not await admin_ready(session, starting.admin):
            _alive(starting)
            assert time.monotonic() < deadline, "never got ready"
            await asyncio.sleep(0.02)
        await wait_for(lambda: _ok_once(session, starting.admin), timeout=10)
    _alive(starting)
    await _serves(starting)


async def _ok_once(session: aiohttp.ClientSession, admin: int) -> bool:
    return await _reloads_ok(session, admin) == 1.0


async def test_sighups_all_through_start_up_do_not_kill_it(starting: _Starting) -> None:
    sent = 0
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + 30
        while True:
            os.kill(starting.proc.pid, signal.SIGHUP)
            sent += 1
            await asyncio.sleep(0.005)
            _alive(starting)
            if await admin_ready(session, starting.admin):
                break
            assert time.monotonic() < deadline, "never got ready"
        assert sent > 1
        await wait_for(lambda: _some_reload(session, starting.admin), timeout=10)
    _alive(starting)
    await _serves(starting)


async def _some_reload(session: aiohttp.ClientSession, admin: int) -> bool:
    return await _reloads_ok(session, admin) >= 1.0
