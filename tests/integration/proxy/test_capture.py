"""Traffic capture from the data plane, replayable by `strangler replay`."""

from __future__ import annotations

import gzip
import os
import signal
from pathlib import Path

import aiohttp
import orjson

from shadow.replay import parse_line
from tests.integration.proxy.conftest import write_served_config
from tests.integration.proxy.shadow_support import EMAIL, shadow_stack
from tests.support import (
    child_pids,
    free_port,
    start_serve,
    stop_process,
    wait_admin_ready,
    wait_until,
)
from tests.upstreams import EchoUpstream

ROUTE = """
  - name: orders
    match: {path: /api/*}
    mode: legacy
"""


async def test_sampled_requests_are_captured_redacted_and_replayable(tmp_path: Path) -> None:
    out = tmp_path / "traffic.jsonl"
    capture = f"""
capture:
  path: {out}
  percent: 100
  methods: [GET, POST]
  headers: [content-type, x-user-id]
"""
    store = f"sqlite+aiosqlite:///{tmp_path / 'c.db'}"
    async with shadow_stack(ROUTE + capture, store) as (proxy, legacy, _):
        legacy.release.set()
        port = proxy.address[1]
        async with aiohttp.ClientSession() as s:
            async with s.get(
                f"http://127.0.0.1:{port}/api/o1?q=a+b&a=1&a=2", headers={"X-User-Id": "u1"}
            ) as r:
                assert r.status == 200
            async with s.post(
                f"http://127.0.0.1:{port}/api/orders",
                json={"buyer": {"email": EMAIL}, "total": "12.50"},
            ) as r:
                assert r.status == 200
            async with s.delete(f"http://127.0.0.1:{port}/api/o1") as r:
                assert r.status == 200  # DELETE is not a captured method
    lines = out.read_bytes().splitlines()
    assert len(lines) == 2
    first, second = (orjson.loads(line) for line in lines)
    assert (first["method"], first["path"], first["query"]) == ("GET", "/api/o1", "q=a+b&a=1&a=2")
    assert ["x-user-id", "u1"] in first["headers"]
    assert second["method"] == "POST"
    assert EMAIL not in out.read_text()
    assert "REDACTED:" in out.read_text()
    for i, line in enumerate(lines, 1):
        parse_line(line, i)  # what `strangler replay` reads


async def test_encoded_bodies_are_decoded_and_redacted_under_the_default_headers(
    tmp_path: Path,
) -> None:
    # Content-Encoding is not among the default capture headers: the gzip body was kept
    # as sent, never redacted (the e-mail inside it on disk, compressed), and unreplayable.
    out = tmp_path / "traffic.jsonl"
    capture = f"""
capture:
  path: {out}
  methods: [POST]
"""
    store = f"sqlite+aiosqlite:///{tmp_path / 'c.db'}"
    body = orjson.dumps({"buyer": {"email": EMAIL}, "total": "12.50"})
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    async with shadow_stack(ROUTE + capture, store) as (proxy, legacy, _):
        legacy.release.set()
        async with aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{proxy.address[1]}/api/orders"
            async with s.post(url, data=gzip.compress(body), headers=headers) as r:
                assert r.status == 200
    (line,) = out.read_bytes().splitlines()
    captured = parse_line(line, 1)
    assert dict(captured.headers)["content-type"] == "application/json"
    assert "content-encoding" not in dict(captured.headers)
    doc = orjson.loads(captured.body)
    assert doc["total"] == "12.50" and doc["buyer"]["email"].startswith("REDACTED:")


def _captured(directory: Path) -> dict[str, int]:
    """Capture files in `directory` (the config aside) and how many lines each holds."""
    return {
        p.name: len(p.read_bytes().splitlines())
        for p in directory.iterdir()
        if p.name.startswith("traffic.jsonl")
    }


async def _get_many(port: int, start: int, n: int) -> None:
    connector = aiohttp.TCPConnector(force_close=True)  # new connections spread over workers
    async with aiohttp.ClientSession(connector=connector) as s:
        for i in range(start, start + n):
            async with s.get(f"http://127.0.0.1:{port}/echo?i={i}") as r:
                assert r.status == 200
                await r.read()


def _served_capture_config(
    tmp_path: Path, upstream_url: str, port: int, admin: int, extra: str
) -> Path:
    cfg = write_served_config(tmp_path, upstream_url, port, admin)
    cfg.write_text(
        cfg.read_text()
        + f"""
capture:
  path: {tmp_path / "traffic.jsonl"}
  percent: 100
{extra}
"""
    )
    return cfg


async def test_workers_capture_into_one_file_per_slot_across_restarts(
    tmp_path: Path, upstream: EchoUpstream
) -> None:
    """Under `--workers N` each worker life wrote `PATH.<pid>`: files piled up across
    restarts, under names nobody could predict. Now slot k writes `PATH.wk`, appended to by
    the worker restarted in that slot."""
    port, admin = free_port(), free_port()
    cfg = _served_capture_config(tmp_path, upstream.url, port, admin, "")
    proc = await start_serve(cfg, "--workers", "2", env={"STRANGLER_GRACE_S": "5"})
    try:
        await wait_admin_ready(admin)
        await _get_many(port, 0, 30)
        await wait_until(lambda: sum(_captured(tmp_path).values()) == 30, timeout=10)
        first = child_pids(proc.pid)
        assert len(first) == 2
        os.kill(first[0], signal.SIGKILL)  # the supervisor starts another in its slot
        await wait_until(lambda: first[0] not in child_pids(proc.pid), timeout=10)
        await wait_until(lambda: len(child_pids(proc.pid)) == 2, timeout=20)
        await wait_admin_ready(admin)
        await _get_many(port, 30, 30)
        await wait_until(lambda: sum(_captured(tmp_path).values()) == 60, timeout=10)
    finally:
        assert await stop_process(proc) == 0
    files = _captured(tmp_path)
    assert set(files) <= {"traffic.jsonl.w1", "traffic.jsonl.w2"}, files
    assert sum(files.values()) == 60


async def test_one_offloading_worker_captures_into_the_configured_path(
    tmp_path: Path, upstream: EchoUpstream
) -> None:
    """`limits.shadow_offload` runs one worker under a supervisor: it wrote `PATH.<pid>`
    instead of the configured `PATH`."""
    port, admin = free_port(), free_port()
    extra = "limits:\n  shadow_offload: true\n"
    cfg = _served_capture_config(tmp_path, upstream.url, port, admin, extra)
    proc = await start_serve(cfg, env={"STRANGLER_GRACE_S": "5"})
    try:
        await wait_admin_ready(admin)
        await _get_many(port, 0, 5)
        await wait_until(lambda: sum(_captured(tmp_path).values()) == 5, timeout=10)
    finally:
        assert await stop_process(proc) == 0
    assert _captured(tmp_path) == {"traffic.jsonl": 5}
