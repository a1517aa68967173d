"""`strangler legacy --seed` and `strangler extracted` as real processes, and the seed itself."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from extracted.schema import create_schema
from legacy.seed import seed_orders
from tests.integration.orders.harness import dump_tables
from tests.support import free_port, wait_for

_STRANGLER = str(Path(sys.executable).with_name("strangler"))


async def _start(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        _STRANGLER,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def _get(
    session: aiohttp.ClientSession, url: str
) -> tuple[int, dict[str, str], dict[str, object]]:
    async with session.get(url) as resp:
        doc = await resp.json()
        return resp.status, dict(resp.headers), doc


async def _up(session: aiohttp.ClientSession, base: str) -> bool:
    try:
        status, _, _ = await _get(session, f"{base}/api/v1/orders?per_page=1")
    except aiohttp.ClientError:
        return False
    return status == 200


async def _stop(proc: asyncio.subprocess.Process, sig: signal.Signals) -> tuple[int, str]:
    proc.send_signal(sig)
    out, _ = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def _stable(doc: dict[str, object]) -> str:
    meta = dict(doc.pop("meta"))  # type: ignore[call-overload]
    meta.pop("generated_at")
    return json.dumps({**doc, "meta": meta}, sort_keys=True)


async def test_seeded_legacy_and_extracted_processes_serve_the_same_orders(sqlite_url: str) -> None:
    legacy_port, extracted_port = free_port(), free_port()
    legacy = await _start(
        "legacy", "--listen", f"127.0.0.1:{legacy_port}", "--db", sqlite_url, "--seed", "40"
    )
    extracted = None
    try:
        async with aiohttp.ClientSession() as session:
            old, new = f"http://127.0.0.1:{legacy_port}", f"http://127.0.0.1:{extracted_port}"
            await wait_for(lambda: _up(session, old), timeout=20)
            extracted = await _start(
                "extracted", "--listen", f"127.0.0.1:{extracted_port}", "--db", sqlite_url
            )
            await wait_for(lambda: _up(session, new), timeout=20)
            for path in [
                "/api/v1/orders?per_page=50",
                "/api/v1/orders/17",
                "/api/v1/orders/17/events",
            ]:
                a, b = await _get(session, old + path), await _get(session, new + path)
                assert a[0] == b[0] == 200
                assert a[1].get("X-Total-Count") == b[1].get("X-Total-Count")
                assert _stable(a[2]) == _stable(b[2])
            _, headers, listing = await _get(session, old + "/api/v1/orders?per_page=50")
            assert headers["X-Total-Count"] == "40"
            assert len(listing["items"]) == 40  # type: ignore[arg-type]
    finally:
        code, out = await _stop(legacy, signal.SIGINT)
        if extracted is not None:
            assert (await _stop(extracted, signal.SIGTERM))[0] == 0
    assert code == 0
    assert "seeded 40 orders" in out


async def test_bad_listen_address_exits_2(sqlite_url: str) -> None:
    proc = await _start("extracted", "--listen", "nowhere", "--db", sqlite_url)
    _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 2
    assert b"HOST:PORT" in err


@pytest.mark.parametrize(
    ("command", "db", "needle"),
    [
        ("extracted", "notaurl", b"the database URL is not a URL"),
        ("legacy", "mysql://shop:pw@127.0.0.1/orders", b"unsupported database URL"),
        ("legacy", "sqlite+aiosqlite:////nonexistent/dir/x.db", b"no directory '/nonexistent/dir'"),
    ],
)
async def test_a_bad_db_url_exits_2_with_one_line(command: str, db: str, needle: bytes) -> None:
    proc = await _start(command, "--listen", "127.0.0.1:0", "--db", db)
    _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 2
    assert err.startswith(f"strangler {command}: ".encode()) and needle in err, err
    assert len(err.strip().splitlines()) == 1 and b"pw" not in err


async def test_seed_is_deterministic_across_databases_and_only_fills_empty_ones(
    sqlite_url: str, pg_url: str, tmp_path: Path
) -> None:
    other = f"sqlite+aiosqlite:///{tmp_path / 'other.db'}"
    for url in (sqlite_url, pg_url, other):
        await create_schema(url)
        assert await seed_orders(url, 120) == 120
    first = await dump_tables(sqlite_url)
    assert first == await dump_tables(other) == await dump_tables(pg_url)
    assert len(first["orders"]) == 120
    assert {row[8] for row in first["orders"]} >= {"paid", "shipped", "completed", "refunded"}
    assert await seed_orders(sqlite_url, 10) == 0
    assert await dump_tables(sqlite_url) == first


async def test_seed_zero_adds_nothing(sqlite_url: str) -> None:
    await create_schema(sqlite_url)
    assert await seed_orders(sqlite_url, 0) == 0
    assert (await dump_tables(sqlite_url))["orders"] == []
