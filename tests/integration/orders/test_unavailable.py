"""Losing the database mid-transaction answers 503 and leaves no half-applied change."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tests.conftest import pg_base_url
from tests.integration.orders.harness import (
    FakeClock,
    MakeClient,
    dump_tables,
    make_client,
    new_order,
)

Client = TestClient[web.Request, web.Application]


class PauseAt:
    """A checkpoint that parks the first transaction reaching `stage` until released."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.reached = asyncio.Event()
        self.release = asyncio.Event()
        self.pid: int | None = None

    async def __call__(self, stage: str, conn: AsyncConnection) -> None:
        if stage != self.stage or self.pid is not None:
            return
        self.pid = int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())
        self.reached.set()
        await self.release.wait()


async def _kill_backend_while_paused(pause: PauseAt) -> None:
    await asyncio.wait_for(pause.reached.wait(), 10)
    dsn = pg_base_url().replace("postgresql+psycopg://", "postgresql://", 1)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
        cur = await admin.execute("SELECT pg_terminate_backend(%s)", (pause.pid,))
        assert (await cur.fetchone()) == (True,)
    pause.release.set()


async def _assert_unavailable(call: asyncio.Task[ClientResponse]) -> None:
    resp = await asyncio.wait_for(call, 10)
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    assert (await resp.json())["error"]["code"] == "unavailable"


async def test_terminated_backend_during_transition_is_503_without_partial_state(
    aiohttp_client: MakeClient, pg_url: str
) -> None:
    pause = PauseAt("transition.saved")
    client = await make_client(aiohttp_client, "extracted", pg_url, FakeClock(), checkpoint=pause)
    created = await client.post(
        "/api/v1/orders", json=new_order(), headers={"Idempotency-Key": "k"}
    )
    order_id = (await created.json())["id"]
    before = await dump_tables(pg_url)

    call = asyncio.ensure_future(client.post(f"/api/v1/orders/{order_id}/ship", json={}))
    await _kill_backend_while_paused(pause)
    await _assert_unavailable(call)

    assert await dump_tables(pg_url) == before
    retried = await client.post(f"/api/v1/orders/{order_id}/ship", json={})
    assert retried.status == 200
    events = await (await client.get(f"/api/v1/orders/{order_id}/events")).json()
    assert [e["type"] for e in events["items"]] == ["created", "shipped"]


async def test_terminated_backend_during_create_is_503_without_partial_state(
    aiohttp_client: MakeClient, pg_url: str
) -> None:
    pause = PauseAt("create.inserted")
    client = await make_client(aiohttp_client, "extracted", pg_url, FakeClock(), checkpoint=pause)
    before = await dump_tables(pg_url)

    body: dict[str, Any] = {"json": new_order(), "headers": {"Idempotency-Key": "k"}}
    call = asyncio.ensure_future(client.post("/api/v1/orders", **body))
    await _kill_backend_while_paused(pause)
    await _assert_unavailable(call)

    assert await dump_tables(pg_url) == before
    retried = await client.post("/api/v1/orders", **body)
    assert retried.status == 201
