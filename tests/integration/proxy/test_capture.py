"""Traffic capture from the data plane, replayable by `strangler replay`."""

from __future__ import annotations

import gzip
from pathlib import Path

import aiohttp
import orjson

from shadow.replay import parse_line
from tests.integration.proxy.shadow_support import EMAIL, shadow_stack

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
