"""`strangler serve --workers 2` under load: SIGHUP, SIGTERM and a SIGKILLed worker.

Clients keep connections alive and count what a user would call a failure: a reset, or a
connection closed after a request was sent and before its response. A response with
`connection: close`, an orderly close between requests, or a refused new connection
(the listener is gone after SIGTERM) are graceful ends.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from tests.integration.proxy.conftest import proxy_config
from tests.support import child_pids, close_writer, free_port, stop_process, wait_for, wait_until
from tests.upstreams import EchoUpstream, RawResponse, Received, read_response


@dataclass
class _Served:
    proc: asyncio.subprocess.Process
    port: int
    admin: int
    config: Path
    upstream_url: str


@dataclass
class _Tally:
    ok: int = 0
    failed: list[str] = field(default_factory=list)
    refused: int = 0
    retried: int = 0


@pytest.fixture
async def served(tmp_path: Path, upstream: EchoUpstream) -> AsyncIterator[_Served]:
    port, admin = free_port(), free_port()
    text = proxy_config(upstream.url).replace("listen: 127.0.0.1:0", f"listen: 127.0.0.1:{port}", 1)
    text = text.replace("  listen: 127.0.0.1:0", f"  listen: 127.0.0.1:{admin}", 1)
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(text)
    exe = Path(sys.executable).with_name("strangler")
    proc = await asyncio.create_subprocess_exec(
        str(exe),
        "serve",
        "--config",
        str(cfg),
        "--workers",
        "2",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "STRANGLER_GRACE_S": "5"},
    )

    async def ready() -> bool:
        try:
            async with (
                aiohttp.ClientSession() as s,
                s.get(f"http://127.0.0.1:{admin}/-/ready") as r,
            ):
                return r.status == 200
        except aiohttp.ClientError:
            return False

    try:
        await wait_for(ready, timeout=20)
        yield _Served(proc, port, admin, cfg, upstream.url)
    finally:
        await stop_process(proc, 15)


@pytest.fixture
async def upstream() -> AsyncIterator[EchoUpstream]:
    up = await EchoUpstream().start()
    yield up
    await up.close()


async def _client(port: int, stop: asyncio.Event, tally: _Tally, limit: int) -> None:
    """Keep-alive GETs until `stop` or `limit`, as a well-behaved HTTP client would send them.

    Like browsers and HTTP libraries, it retries an idempotent request once on a new
    connection when the old one closed before any byte of the response (RFC 9112 9.3.1:
    the server may close an idle persistent connection at any time) or the connect was
    reset from the accept queue of a listener being closed. A request that fails again, or
    a response cut after it started, is a failure.
    """
    sent, retry = 0, False
    while not stop.is_set() and sent < limit:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except ConnectionRefusedError:
            tally.refused += 1
            return
        except ConnectionResetError as exc:
            if retry:
                tally.failed.append(f"connect after retry: {exc!r}")
                return
            retry, tally.retried = True, tally.retried + 1
            continue
        try:
            while not stop.is_set() and sent < limit:
                if not retry:
                    sent += 1
                writer.write(b"GET /echo?n=%d HTTP/1.1\r\nHost: a\r\n\r\n" % sent)
                try:
                    resp = await asyncio.wait_for(read_response(reader), 10)
                except ConnectionResetError:
                    resp = RawResponse(0, b"", [], b"", False)
                if resp.status == 0 and not retry:
                    retry, tally.retried = True, tally.retried + 1
                    break  # closed before any response byte: retry on a new connection
                retry = False
                if not resp.complete or resp.status != 200:
                    tally.failed.append(f"status {resp.status} complete={resp.complete}")
                    return
                tally.ok += 1
                if resp.header(b"connection") == [b"close"]:
                    break
        except (ConnectionError, TimeoutError) as exc:
            tally.failed.append(repr(exc))
            return
        finally:
            await close_writer(writer)


async def _load(
    port: int, clients: int = 8, limit: int = 400
) -> tuple[asyncio.Event, _Tally, list[asyncio.Task[None]]]:
    stop, tally = asyncio.Event(), _Tally()
    tasks = [asyncio.create_task(_client(port, stop, tally, limit)) for _ in range(clients)]
    await wait_until(lambda: tally.ok >= 50, timeout=10)
    return stop, tally, tasks


async def test_sighup_under_load_fails_no_request(served: _Served) -> None:
    stop, tally, tasks = await _load(served.port)
    for i in range(4):
        served.config.write_text(served.config.read_text() + f"# reload {i}\n")
        before = tally.ok
        served.proc.send_signal(signal.SIGHUP)
        await wait_until(lambda b=before: tally.ok >= b + 30, timeout=10)  # type: ignore[misc]
    stop.set()
    await asyncio.gather(*tasks)
    assert tally.failed == []
    assert served.proc.returncode is None


async def test_sigterm_under_load_resets_no_connection(served: _Served) -> None:
    stop, tally, tasks = await _load(served.port, limit=100_000)
    served.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(served.proc.wait(), 20) == 0
    stop.set()
    await asyncio.gather(*tasks)
    print(
        f"SIGTERM under load: {tally.ok} ok, {len(tally.failed)} failed,"
        f" {tally.retried} retried (closed idle / reset in accept queue), {tally.refused} refused"
    )
    assert tally.failed == []
    assert tally.ok >= 50


async def test_killed_worker_is_replaced_and_traffic_continues(
    served: _Served, upstream: EchoUpstream
) -> None:
    workers = await _wait_workers(served.proc.pid, 2)
    stop, tally, tasks = await _load(served.port, clients=4, limit=100_000)
    before = {_worker_of(r) for r in upstream.received}
    os.kill(workers[0], signal.SIGKILL)
    replaced = await _wait_workers(served.proc.pid, 2, without=workers[0])
    stop.set()
    await asyncio.gather(*tasks)
    # clients of the killed worker may see a reset (it had no chance to drain); the
    # survivor's clients must not, and every new connection must be served
    assert len(tally.failed) <= 4, tally.failed
    assert workers[0] not in replaced
    fresh, stop = _Tally(), asyncio.Event()
    deadline = time.monotonic() + 20  # the replacement needs a few seconds to start
    seen_new = False
    while not seen_new and time.monotonic() < deadline and fresh.ok < 50_000:
        await asyncio.gather(*(_client(served.port, stop, fresh, 1) for _ in range(20)))
        seen_new = bool({_worker_of(r) for r in upstream.received} - before)
    print(f"SIGKILL worker: {len(tally.failed)} reset on its connections, {fresh.ok} new served")
    assert fresh.failed == []
    assert seen_new, "the replacement worker never served a request"
    assert served.proc.returncode is None


def _worker_of(rec: Received) -> bytes:
    """The random per-process prefix of the request id the proxy generated."""
    return rec.header(b"x-request-id")[0][:12]


async def _wait_workers(pid: int, n: int, without: int | None = None) -> list[int]:
    found: list[int] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = [p for p in child_pids(pid) if p != without]
        if len(found) == n:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"workers of {pid}: {found}")
