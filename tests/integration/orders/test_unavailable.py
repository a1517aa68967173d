"""Losing the database mid-transaction answers 503 and leaves no half-applied change."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Any

import psycopg
import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient
from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

import extracted.app
import extracted.db
import legacy.app
from extracted.app import SERVICE
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


async def _ship_killed_at(
    stage: str, aiohttp_client: MakeClient, pg_url: str
) -> tuple[Client, int, Any, asyncio.Task[ClientResponse]]:
    """A new order, the tables, and its ship call whose backend is killed at `stage`."""
    pause = PauseAt(stage)
    client = await make_client(aiohttp_client, "extracted", pg_url, FakeClock(), checkpoint=pause)
    created = await client.post(
        "/api/v1/orders", json=new_order(), headers={"Idempotency-Key": "k"}
    )
    order_id = (await created.json())["id"]
    before = await dump_tables(pg_url)
    call = asyncio.ensure_future(client.post(f"/api/v1/orders/{order_id}/ship", json={}))
    await _kill_backend_while_paused(pause)
    return client, order_id, before, call


async def test_terminated_backend_during_transition_is_503_without_partial_state(
    aiohttp_client: MakeClient, pg_url: str
) -> None:
    client, order_id, before, call = await _ship_killed_at(
        "transition.saved", aiohttp_client, pg_url
    )
    await _assert_unavailable(call)

    assert await dump_tables(pg_url) == before
    retried = await client.post(f"/api/v1/orders/{order_id}/ship", json={})
    assert retried.status == 200
    events = await (await client.get(f"/api/v1/orders/{order_id}/events")).json()
    assert [e["type"] for e in events["items"]] == ["created", "shipped"]


async def test_a_commit_the_database_never_confirmed_is_outcome_unknown_not_retry(
    aiohttp_client: MakeClient, pg_url: str
) -> None:
    """The connection breaks once every statement ran: the COMMIT may or may not have landed
    (here it did not), so the answer must not invite a blind retry (a retried refund whose
    first COMMIT landed was applied twice): 500 outcome_unknown, no Retry-After."""
    _, _, before, call = await _ship_killed_at("transition.done", aiohttp_client, pg_url)
    resp = await asyncio.wait_for(call, 10)
    assert resp.status == 500 and "Retry-After" not in resp.headers
    assert (await resp.json())["error"]["code"] == "outcome_unknown"
    assert await dump_tables(pg_url) == before  # the order tells what happened


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


@pytest.mark.parametrize("side", ["legacy", "extracted"])
async def test_unreachable_database_is_503_on_both_sides(
    aiohttp_client: MakeClient, side: str
) -> None:
    db_url = "postgresql+psycopg://postgres@127.0.0.1:1/test"  # nothing listens on port 1
    app = legacy.app.create_app(db_url) if side == "legacy" else extracted.app.create_app(db_url)
    client = await aiohttp_client(app)
    read = await client.get("/api/v1/orders/1")
    write = await client.post("/api/v1/orders", json=new_order(), headers={"Idempotency-Key": "k"})
    for resp in (read, write):
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        assert (await resp.json())["error"]["code"] == "unavailable"


@pytest.mark.parametrize("side", ["legacy", "extracted"])
async def test_sqlite_write_lock_timeout_is_503_and_reads_go_on(
    aiohttp_client: MakeClient, sqlite_url: str, side: str
) -> None:
    client = await make_client(aiohttp_client, side, f"{sqlite_url}?timeout=0.2", FakeClock())
    body: dict[str, Any] = {"json": new_order(), "headers": {"Idempotency-Key": "k"}}
    assert (await client.post("/api/v1/orders", **body)).status == 201
    before = await dump_tables(sqlite_url)
    blocker = sqlite3.connect(sqlite_url.split("///", 1)[1], isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        await _assert_unavailable(asyncio.ensure_future(client.post("/api/v1/orders/1/ship")))
        other: dict[str, Any] = {"json": new_order(8), "headers": {"Idempotency-Key": "k"}}
        await _assert_unavailable(asyncio.ensure_future(client.post("/api/v1/orders", **other)))
        assert (await client.get("/api/v1/orders/1")).status == 200
    finally:
        blocker.rollback()
        blocker.close()
    assert await dump_tables(sqlite_url) == before
    assert (await client.post("/api/v1/orders/1/ship")).status == 200


@pytest.mark.parametrize("side", ["legacy", "extracted"])
async def test_a_postgresql_order_row_locked_elsewhere_is_503_after_the_lock_wait(
    pg_url: str, aiohttp_client: MakeClient, side: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite gives up on a held write lock after its busy timeout (503, nothing applied).
    PostgreSQL waited for a locked order row without end: the request hung past every client
    and proxy timeout, held a pooled connection, and was applied whenever the lock came free,
    after its caller had already been told it failed. (pg_url comes first: torn down last,
    after the app has finished any request left waiting.)"""
    monkeypatch.setattr(extracted.db, "PG_LOCK_TIMEOUT_MS", 300)
    client = await make_client(aiohttp_client, side, pg_url, FakeClock())
    body: dict[str, Any] = {"json": new_order(), "headers": {"Idempotency-Key": "k"}}
    assert (await client.post("/api/v1/orders", **body)).status == 201
    before = await dump_tables(pg_url)
    dsn = pg_url.replace("postgresql+psycopg://", "postgresql://", 1)
    async with await psycopg.AsyncConnection.connect(dsn) as holder:
        await holder.execute("SELECT id FROM orders WHERE id = 1 FOR UPDATE")
        await _assert_unavailable(asyncio.ensure_future(client.post("/api/v1/orders/1/ship")))
        assert (await client.get("/api/v1/orders/1")).status == 200
        await holder.rollback()
    assert await dump_tables(pg_url) == before
    assert (await client.post("/api/v1/orders/1/ship")).status == 200
    events = await (await client.get("/api/v1/orders/1/events")).json()
    assert [e["type"] for e in events["items"]] == ["created", "shipped"]


@pytest.mark.parametrize("side", ["legacy", "extracted"])
async def test_a_read_whose_commit_breaks_is_503_not_outcome_unknown(
    pg_url: str, aiohttp_client: MakeClient, side: str
) -> None:
    """A read changes nothing, so a connection that breaks at its COMMIT is an outage like
    any other (503, retry later); it answered 500 outcome_unknown, "the change may have been
    applied; read the order before trying again", without Retry-After, to a read."""
    client = await make_client(aiohttp_client, side, pg_url, FakeClock())
    body: dict[str, Any] = {"json": new_order(), "headers": {"Idempotency-Key": "k"}}
    assert (await client.post("/api/v1/orders", **body)).status == 201
    engine = client.app[SERVICE].engine if side == "extracted" else client.app[legacy.app.ENGINE]
    dsn = pg_base_url().replace("postgresql+psycopg://", "postgresql://", 1)
    killed: list[int] = []

    def kill_before_commit(conn: Connection) -> None:
        if killed:
            return
        pid = int(conn.connection.driver_connection.info.backend_pid)  # type: ignore[union-attr]
        killed.append(pid)
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            deadline = time.monotonic() + 10
            while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
                assert time.monotonic() < deadline, "the backend outlived its termination"

    event.listen(engine.sync_engine, "commit", kill_before_commit)
    try:
        await _assert_unavailable(asyncio.ensure_future(client.get("/api/v1/orders/1")))
    finally:
        event.remove(engine.sync_engine, "commit", kill_before_commit)
    assert killed
    assert (await client.get("/api/v1/orders/1")).status == 200
