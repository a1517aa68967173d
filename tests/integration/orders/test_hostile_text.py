"""Text a database cannot store (NUL, lone surrogates) is refused up front on both sides, never
a 500."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.integration.orders.harness import (
    FakeClock,
    MakeClient,
    database_url,
    dump_tables,
    make_client,
    new_order,
)

Client = TestClient[web.Request, web.Application]
SIDES_AND_DBS = [
    pytest.mark.parametrize("side", ["legacy", "extracted"]),
    pytest.mark.parametrize("db", ["sqlite", "pg"]),
]


def _order_with(path: tuple[str | int, ...], value: str) -> dict[str, Any]:
    body = copy.deepcopy(new_order())
    here: Any = body
    for step in path[:-1]:
        here = here[step]
    here[path[-1]] = value
    return body


async def _post(client: Client, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with client.post(path, **kwargs) as resp:
        # content_type=None: a plain-text 500 must fail the status check, not the decoding.
        return resp.status, await resp.json(content_type=None) if resp.status != 500 else None


async def _disputed(client: Client) -> int:
    status, doc = await _post(
        client, "/api/v1/orders", json=new_order(), headers={"Idempotency-Key": "setup"}
    )
    assert status == 201
    for action in ("ship", "deliver", "dispute"):
        assert (await _post(client, f"/api/v1/orders/{doc['id']}/{action}"))[0] == 200
    return int(doc["id"])


def _refused(reply: tuple[int, Any], field: str) -> None:
    status, doc = reply
    assert status == 422, reply
    assert doc["error"]["code"] == "validation_error"
    assert doc["error"]["message"] == f"{field}: must not contain a NUL character"


@pytest.mark.parametrize(
    ("where", "field"),
    [
        (("buyer", "name"), "buyer.name"),
        (("buyer", "email"), "buyer.email"),
        (("items", 1, "title"), "items[1].title"),
        (("shipping_address", "line2"), "shipping_address.line2"),
    ],
)
@SIDES_AND_DBS[0]
@SIDES_AND_DBS[1]
async def test_a_nul_in_an_order_field_is_a_422_naming_it(
    aiohttp_client: MakeClient,
    request: pytest.FixtureRequest,
    side: str,
    db: str,
    where: tuple[str | int, ...],
    field: str,
) -> None:
    """PostgreSQL refuses NUL in text (a plain 500); SQLite stored it: both now say 422."""
    db_url = database_url(request, db)
    client = await make_client(aiohttp_client, side, db_url, FakeClock())
    before = await dump_tables(db_url)
    body = _order_with(where, "Ana\u0000Lima@x")
    _refused(
        await _post(client, "/api/v1/orders", json=body, headers={"Idempotency-Key": "n"}), field
    )
    assert await dump_tables(db_url) == before


@pytest.mark.parametrize(
    ("action", "body", "field"),
    [
        ("refund", {"amount": "5.00", "actor": "support:\u00001"}, "body.actor"),
        ("refund", {"amount": "5.00", "reason": "\u0000"}, "body.reason"),
        ("resolve", {"reason": "ok\u0000"}, "body.reason"),
    ],
)
@SIDES_AND_DBS[0]
@SIDES_AND_DBS[1]
async def test_a_nul_in_a_transition_field_is_a_422_naming_it(
    aiohttp_client: MakeClient,
    request: pytest.FixtureRequest,
    side: str,
    db: str,
    action: str,
    body: dict[str, Any],
    field: str,
) -> None:
    db_url = database_url(request, db)
    client = await make_client(aiohttp_client, side, db_url, FakeClock())
    order_id = await _disputed(client)
    before = await dump_tables(db_url)
    path = f"/api/v1/orders/{order_id}/{action}"
    _refused(await _post(client, path, json=body), field)
    assert await dump_tables(db_url) == before


@SIDES_AND_DBS[0]
@SIDES_AND_DBS[1]
async def test_a_nul_in_a_tracking_number_is_a_422(
    aiohttp_client: MakeClient, request: pytest.FixtureRequest, side: str, db: str
) -> None:
    db_url = database_url(request, db)
    client = await make_client(aiohttp_client, side, db_url, FakeClock())
    status, doc = await _post(
        client, "/api/v1/orders", json=new_order(), headers={"Idempotency-Key": "t"}
    )
    assert status == 201
    before = await dump_tables(db_url)
    path = f"/api/v1/orders/{doc['id']}/ship"
    _refused(
        await _post(client, path, json={"tracking_number": "TRK\u00001"}), "body.tracking_number"
    )
    assert await dump_tables(db_url) == before


def _unreadable(reply: tuple[int, Any]) -> None:
    status, doc = reply
    assert status == 400, reply
    assert doc["error"]["code"] == "invalid_json"


_SURROGATE_BODIES = {
    "a field": json.dumps(_order_with(("buyer", "name"), "Ana \ud800")),
    "an ignored field": json.dumps({**new_order(), "note": "\udfff"}),
    "a key": json.dumps({**new_order(), "\ud83d": 1}),
}


@pytest.mark.parametrize("where", sorted(_SURROGATE_BODIES))
@SIDES_AND_DBS[0]
@SIDES_AND_DBS[1]
async def test_a_lone_surrogate_in_an_order_body_is_a_400(
    aiohttp_client: MakeClient, request: pytest.FixtureRequest, side: str, db: str, where: str
) -> None:
    """A JSON escape of half a surrogate pair is no Unicode text: it cannot be encoded for
    the database, the request hash or the response (a 500); now 400 invalid_json, like a body
    that is not UTF-8."""
    db_url = database_url(request, db)
    client = await make_client(aiohttp_client, side, db_url, FakeClock())
    before = await dump_tables(db_url)
    body = _SURROGATE_BODIES[where]
    assert "\\ud" in body
    headers = {"Idempotency-Key": "s", "Content-Type": "application/json"}
    _unreadable(await _post(client, "/api/v1/orders", data=body, headers=headers))
    assert await dump_tables(db_url) == before


@pytest.mark.parametrize("key", [None, "refund-1"])
@SIDES_AND_DBS[0]
@SIDES_AND_DBS[1]
async def test_a_lone_surrogate_in_a_transition_body_is_a_400(
    aiohttp_client: MakeClient,
    request: pytest.FixtureRequest,
    side: str,
    db: str,
    key: str | None,
) -> None:
    db_url = database_url(request, db)
    client = await make_client(aiohttp_client, side, db_url, FakeClock())
    order_id = await _disputed(client)
    before = await dump_tables(db_url)
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    body = json.dumps({"amount": "5.00", "reason": "broken \udc00"})
    path = f"/api/v1/orders/{order_id}/refund"
    _unreadable(await _post(client, path, data=body, headers=headers))
    assert await dump_tables(db_url) == before


async def _raw_post(client: Client, path: str, key: bytes, body: bytes) -> tuple[int, Any]:
    """POST with an Idempotency-Key of raw bytes (no client library sends non-UTF-8)."""
    assert client.server.host is not None and client.server.port is not None
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(
            b"POST %s HTTP/1.1\r\nHost: orders\r\nContent-Type: application/json\r\n"
            b"Idempotency-Key: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (path.encode(), key, len(body), body)
        )
        raw = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, payload = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(payload) if status != 500 else None


@SIDES_AND_DBS[0]
@SIDES_AND_DBS[1]
async def test_an_idempotency_key_that_is_not_utf8_is_a_400_on_create(
    aiohttp_client: MakeClient, request: pytest.FixtureRequest, side: str, db: str
) -> None:
    """aiohttp decodes such header bytes to lone surrogates, which the key column refused."""
    db_url = database_url(request, db)
    client = await make_client(aiohttp_client, side, db_url, FakeClock())
    before = await dump_tables(db_url)
    body = json.dumps(new_order()).encode()
    status, doc = await _raw_post(client, "/api/v1/orders", b"caf\xe9-1", body)
    assert status == 400, (status, doc)
    assert doc["error"]["code"] == "missing_idempotency_key"
    assert await dump_tables(db_url) == before


@pytest.mark.parametrize("db", ["sqlite", "pg"])
async def test_a_transition_key_that_is_not_utf8_is_a_400(
    aiohttp_client: MakeClient, request: pytest.FixtureRequest, db: str
) -> None:
    db_url = database_url(request, db)
    client = await make_client(aiohttp_client, "extracted", db_url, FakeClock())
    order_id = await _disputed(client)
    before = await dump_tables(db_url)
    path = f"/api/v1/orders/{order_id}/refund"
    status, doc = await _raw_post(client, path, b"caf\xe9-1", b'{"amount": "5.00"}')
    assert status == 400, (status, doc)
    assert doc["error"]["code"] == "invalid_idempotency_key"
    assert await dump_tables(db_url) == before


@SIDES_AND_DBS[0]
@SIDES_AND_DBS[1]
async def test_an_escaped_surrogate_pair_is_text_and_kept(
    aiohttp_client: MakeClient, request: pytest.FixtureRequest, side: str, db: str
) -> None:
    client = await make_client(aiohttp_client, side, database_url(request, db), FakeClock())
    body = json.dumps(_order_with(("buyer", "name"), "Ana \ud83d\ude00"))
    assert "\\ud83d\\ude00" in body
    headers = {"Idempotency-Key": "pair", "Content-Type": "application/json"}
    status, doc = await _post(client, "/api/v1/orders", data=body, headers=headers)
    assert status == 201, (status, doc)
    assert doc["buyer"]["name"] == "Ana \U0001f600"


@pytest.mark.parametrize("side", ["legacy", "extracted"])
@pytest.mark.parametrize("path", ["/api/v1/orders", "/api/v1/orders/1/ship"])
async def test_a_body_nested_deeper_than_the_parser_goes_is_a_400(
    aiohttp_client: MakeClient, sqlite_url: str, side: str, path: str
) -> None:
    """The stdlib parser raises RecursionError (not ValueError) past its depth: it was a 500."""
    client = await make_client(aiohttp_client, side, sqlite_url, FakeClock())
    created = await _post(
        client, "/api/v1/orders", json=new_order(), headers={"Idempotency-Key": "d"}
    )
    assert created[0] == 201
    before = await dump_tables(sqlite_url)
    deep = '{"a": ' + "[" * 50_000 + "]" * 50_000 + "}"
    headers = {"Idempotency-Key": "deep", "Content-Type": "application/json"}
    _unreadable(await _post(client, path, data=deep, headers=headers))
    assert await dump_tables(sqlite_url) == before
