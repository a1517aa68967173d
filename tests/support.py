"""Helpers shared by tests: free ports, polling with a deadline, tiny loopback servers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import aiohttp

    from proxy.app import Proxy

__all__ = [
    "child_pids",
    "free_port",
    "start_serve",
    "stop_after_test",
    "stop_process",
    "wait_admin_ready",
    "wait_for",
    "wait_until",
]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on `host` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def child_pids(pid: int) -> list[int]:
    """Live (not zombie) child pids of `pid`, e.g. a supervisor's workers."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry))
    return sorted(out)


async def wait_until(
    predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01
) -> None:
    """Poll `predicate` until true or fail after `timeout` seconds (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


async def wait_for(
    probe: Callable[[], Awaitable[bool]], timeout: float = 5.0, interval: float = 0.02
) -> None:
    """Await `probe` until it returns true or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


async def start_serve(
    config: Path,
    *args: str,
    env: dict[str, str] | None = None,
    stderr: int = asyncio.subprocess.DEVNULL,
) -> asyncio.subprocess.Process:
    """`strangler serve --config CONFIG [ARGS]` as a real process of the venv's console script
    (`stderr=asyncio.subprocess.PIPE` to read what it says)."""
    return await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("strangler")),
        "serve",
        "--config",
        str(config),
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=stderr,
        env={**os.environ, **(env or {})},
    )


async def reset_while_waiting(port: int, request: bytes, seen: Callable[[], bool]) -> None:
    """Send `request` to 127.0.0.1:`port`, wait until `seen()` (the backend has it), then
    reset the connection (RST, as a client that gives up abruptly)."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    await wait_until(seen)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def close_writer(writer: asyncio.StreamWriter) -> None:
    """Close a client stream and wait until its socket is gone."""
    writer.close()
    # uvloop reports a peer that already reset as ENOTCONN (OSError), not ConnectionError
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def stop_after_test(proxy: Proxy, grace_s: float = 1.0) -> None:
    """`proxy.stop(grace_s)` as a fixture's clean-up, once the test is done with the proxy
    (not for a test of the stop itself). The stop's accept linger (kept open so that
    connections already in the listen backlog are served, not reset) has no one to serve
    then and only waited out its 0.2 s, in some 170 tests; every other phase of the stop
    (drain, shadow settle, recorder and access-log flush) runs as usual."""
    from unittest import mock

    from proxy import app as proxy_app

    with mock.patch.object(proxy_app, "_ACCEPT_LINGER_S", 0.0):
        await proxy.stop(grace_s)


async def stop_process(proc: asyncio.subprocess.Process, timeout: float = 20.0) -> int:
    """SIGTERM a process and wait for its exit code (SIGKILL after `timeout`)."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode


async def admin_ready(session: aiohttp.ClientSession, admin_port: int) -> bool:
    """Whether `GET /-/ready` on the admin port answers 200 now (False if it cannot connect)."""
    import aiohttp

    try:
        async with session.get(f"http://127.0.0.1:{admin_port}/-/ready") as r:
            return r.status == 200
    except aiohttp.ClientError:
        return False


async def wait_admin_ready(admin_port: int, timeout: float = 20.0) -> None:
    """Poll `GET /-/ready` on the admin port until it answers 200."""
    import aiohttp

    async with aiohttp.ClientSession() as s:
        await wait_for(lambda: admin_ready(s, admin_port), timeout=timeout)
