"""Shadow, canary and extracted modes against real loopback apps and a real store."""

from __future__ import annotations

import asyncio
import io
import socket
import sqlite3
import struct
from pathlib import Path

import aiohttp
import orjson
import pytest
from prometheus_client import generate_latest

from proxy.accesslog import AccessLog
from proxy.app import Proxy, create_proxy
from proxy.settings import loads
from shadow.recorder import RouteCounters
from shadow.report import build_report
from tests.integration.proxy.shadow_support import (
    CARD,
    EMAIL,
    Side,
    shadow_config,
    shadow_stack,
    start_app,
)
from tests.support import reset_while_waiting, stop_after_test, wait_until

SHADOW_ROUTE = """
  - name: orders
    match: {path: /api/*}
    mode: shadow
    candidate: orders
    shadow: {percent: 100, timeout: 1s, max_concurrency: 64, writes: skip}
    compare:
      ignore_headers: [date, server, content-length]
"""


def _counters(proxy: Proxy, route: str = "orders") -> RouteCounters:
    assert proxy.recorder is not None
    return proxy.recorder.counters().get(route) or RouteCounters()


def _ended(proxy: Proxy, n: int, route: str = "orders") -> bool:
    c = _counters(proxy, route)
    return (
        c.recorded + c.dropped_total + c.failed >= n
        and proxy.hub is not None
        and (proxy.hub.in_flight == 0)
    )


async def _get(port: int, path: str, **headers: str) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{port}{path}", headers=headers) as r,
    ):
        return r.status, await r.read()


@pytest.mark.parametrize(
    ("tail", "outcome"),
    [
        ("slow/1", "candidate_timeout"),
        ("err/1", "candidate_error"),
        ("reset/1", "candidate_error"),
        ("garbage/1", "candidate_error"),
    ],
)
async def test_candidate_faults_never_touch_the_user_response(
    tmp_path: Path, tail: str, outcome: str
) -> None:
    store = f"sqlite+aiosqlite:///{tmp_path / 'c.db'}"
    async with shadow_stack(SHADOW_ROUTE, store) as (proxy, legacy, candidate):
        if tail.startswith("slow"):
            legacy.release.set()  # only the candidate hangs
        port = proxy.address[1]
        status, body = await _get(port, f"/api/{tail}")
        # the user got legacy's answer while the candidate had not finished
        assert status == 200
        assert b'"price":"12.50"' in body.replace(b" ", b"")
        assert tail not in candidate.finished
        await wait_until(lambda: _ended(proxy, 1), timeout=10)
        c = _counters(proxy)
        assert c.outcomes == {outcome: 1}, c
        assert c.started == 1
        assert candidate.shadow_headers == ["1"]


async def test_matching_and_mismatching_candidates_are_recorded(tmp_path: Path) -> None:
    store = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    async with shadow_stack(SHADOW_ROUTE, store) as (proxy, legacy, candidate):
        legacy.release.set()
        candidate.release.set()
        port = proxy.address[1]
        for i in range(5):
            assert (await _get(port, f"/api/o{i}"))[0] == 200
        candidate.price = "12.49"
        for i in range(3):
            assert (await _get(port, f"/api/p{i}"))[0] == 200
        await wait_until(lambda: _ended(proxy, 8), timeout=10)
        assert proxy.recorder is not None
        assert await proxy.recorder.flush(5)
        c = _counters(proxy)
        assert c.outcomes == {"match": 5, "mismatch": 3}
        assert c.recorded == 8 and c.started == 8
    rows = sqlite3.connect(tmp_path / "m.db").execute(
        "SELECT outcome, count(*) FROM comparisons GROUP BY outcome ORDER BY outcome"
    )
    assert list(rows) == [("match", 5), ("mismatch", 3)]


async def test_writes_are_skipped_and_never_reach_the_candidate(tmp_path: Path) -> None:
    store = f"sqlite+aiosqlite:///{tmp_path / 'w.db'}"
    async with shadow_stack(SHADOW_ROUTE, store) as (proxy, legacy, candidate):
        port = proxy.address[1]
        async with (
            aiohttp.ClientSession() as s,
            s.post(f"http://127.0.0.1:{port}/api/o1/ship", json={"carrier": "dhl"}) as r,
        ):
            assert r.status == 200
        await wait_until(lambda: _ended(proxy, 1), timeout=10)
        assert _counters(proxy).outcomes == {"skipped": 1}
        assert candidate.seen == []
        assert legacy.seen == ["/api/o1/ship"]


async def test_a_write_is_copied_to_the_candidate_alone_with_the_proxys_headers(
    tmp_path: Path,
) -> None:
    """A client's X-Strangler-Dry-Run: 0 placed before the copy's own made the candidate
    commit a dry-run write (a refund applied twice, with the monolith's): never forwarded.
    And a noise baseline asks legacy again for safe requests only (a POST went twice)."""
    route = SHADOW_ROUTE.replace("writes: skip", "writes: dry_run")
    route += "      noise_baseline: true\n"
    async with shadow_stack(route, f"sqlite+aiosqlite:///{tmp_path / 'h.db'}") as (
        proxy,
        legacy,
        candidate,
    ):
        legacy.release.set()
        candidate.release.set()
        headers = {"X-Strangler-Dry-Run": "0", "X-Strangler-Shadow": "1"}
        async with (
            aiohttp.ClientSession() as s,
            s.post(f"http://127.0.0.1:{proxy.address[1]}/api/r1", data=b"{}", headers=headers) as r,
        ):
            assert r.status == 200
        await wait_until(lambda: _ended(proxy, 1), timeout=10)
        assert (legacy.dry_runs, legacy.shadow_headers) == ([[]], [""])
        assert (candidate.dry_runs, candidate.shadow_headers) == ([["1"]], ["1"])


async def test_noise_baseline_turns_random_fields_into_noise(tmp_path: Path) -> None:
    routes_noisy = SHADOW_ROUTE + "      noise_baseline: true\n"
    for baseline, expected in ((False, "mismatch"), (True, "match")):
        store = f"sqlite+aiosqlite:///{tmp_path / f'n{baseline}.db'}"
        async with shadow_stack(routes_noisy if baseline else SHADOW_ROUTE, store) as (
            proxy,
            legacy,
            candidate,
        ):
            legacy.noisy = candidate.noisy = True
            port = proxy.address[1]
            for i in range(3):
                assert (await _get(port, f"/api/o{i}"))[0] == 200
            await wait_until(lambda p=proxy: _ended(p, 3), timeout=10)  # type: ignore[misc]
            assert _counters(proxy).outcomes == {expected: 3}
            if baseline:
                assert len(legacy.seen) == 6  # each safe request asked legacy twice
                assert proxy.recorder is not None
                assert await proxy.recorder.flush(5)
        if baseline:
            rows = sqlite3.connect(tmp_path / f"n{baseline}.db").execute(
                "SELECT kind, pattern FROM comparison_paths"
            )
            assert set(rows) == {("noise", "$.meta.generated_at")}


async def test_stored_data_and_logs_hold_no_personal_data(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    log = io.BytesIO()
    async with shadow_stack(SHADOW_ROUTE, f"sqlite+aiosqlite:///{db}", log=AccessLog(log)) as (
        proxy,
        _,
        candidate,
    ):
        candidate.price = "99.99"  # every comparison is a mismatch: bodies are stored
        port = proxy.address[1]
        sem = asyncio.Semaphore(32)
        async with aiohttp.ClientSession() as s:

            async def one(i: int) -> int:
                async with (
                    sem,
                    s.get(
                        f"http://127.0.0.1:{port}/api/o{i}?email={EMAIL}&card=4111111111111111"
                    ) as r,
                ):
                    await r.read()
                    return r.status

            statuses = await asyncio.gather(*(one(i) for i in range(1000)))
        assert statuses == [200] * 1000
        await wait_until(lambda: _ended(proxy, 1000), timeout=30)
        assert proxy.recorder is not None
        assert await proxy.recorder.flush(10)
        c = _counters(proxy)
        # on a busy machine some copies may be shed (event-loop lag); each one is counted
        assert c.outcomes.get("mismatch", 0) + c.dropped_total == 1000
        assert c.outcomes.get("mismatch", 0) >= 100
    dump = _full_dump(db)
    logs = log.getvalue().decode()
    assert "REDACTED:" in dump
    for secret in (EMAIL, CARD, "4111111111111111", "Ann"):
        assert secret not in dump, secret
        assert secret not in logs, secret


async def test_dropped_copies_reach_the_store_and_the_report(tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    route = SHADOW_ROUTE.replace("max_concurrency: 64", "max_concurrency: 1")
    async with shadow_stack(route, f"sqlite+aiosqlite:///{db}") as (proxy, legacy, _):
        legacy.release.set()  # the candidate hangs: the first copy holds the only slot
        port = proxy.address[1]
        for i in range(5):
            assert (await _get(port, f"/api/slow/{i}"))[0] == 200
        await wait_until(lambda: _ended(proxy, 5), timeout=10)
        c = _counters(proxy)
        assert c.dropped == {"concurrency": 4} and c.outcomes == {"candidate_timeout": 1}, c
    rows = sqlite3.connect(db).execute(
        "SELECT route, reason, sum(copies) FROM shadow_drops GROUP BY route, reason"
    )
    assert list(rows) == [("orders", "concurrency", 4)]
    report = await build_report(f"sqlite+aiosqlite:///{db}")
    assert [(r.route, r.dropped, r.candidate_timeouts) for r in report.routes] == [("orders", 4, 1)]


async def test_a_pipelined_request_whose_client_left_ends_its_copy(tmp_path: Path) -> None:
    """A request queued behind a slow one when its client goes: its copy is counted as
    ended, and the route's concurrency slot is free again (it leaked, for good, before)."""
    async with shadow_stack(SHADOW_ROUTE, f"sqlite+aiosqlite:///{tmp_path / 'q.db'}") as (
        proxy,
        legacy,
        candidate,
    ):
        candidate.release.set()
        hub = proxy.hub
        assert hub is not None and proxy.plane is not None
        _, writer = await asyncio.open_connection("127.0.0.1", proxy.address[1])
        writer.write(
            b"GET /api/slow/1 HTTP/1.1\r\nHost: a\r\n\r\nGET /api/o2 HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        await wait_until(lambda: "/api/slow/1" in legacy.seen)
        await wait_until(lambda: _counters(proxy).started == 2)  # the queued one's copy too
        sock = writer.get_extra_info("socket")  # the client resets: gone, not half-closed
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
        plane = proxy.plane
        await wait_until(lambda: plane.in_flight == 0 and _ended(proxy, 2), timeout=10)
        c = _counters(proxy)
        assert c.balanced and c.dropped == {"primary_failed": 2}, c
        assert hub.route_state("orders").in_flight == 0


CANARY_ROUTE = """
  - name: orders
    match: {path: /api/*}
    mode: canary
    candidate: orders
    canary: {percent: 30, sticky: {header: X-User-Id}}
    shadow: {percent: 100, timeout: 1s}
    promotion: {max_p99_ratio: 1000}  # latency on a loaded test machine must not roll back
    compare:
      ignore_headers: [date, server, content-length]
"""


async def test_canary_share_is_sticky_and_close_to_percent(tmp_path: Path) -> None:
    store = f"sqlite+aiosqlite:///{tmp_path / 'k.db'}"
    n = 10_000
    async with shadow_stack(CANARY_ROUTE, store) as (proxy, legacy, candidate):
        legacy.release.set()
        candidate.release.set()
        port = proxy.address[1]
        connector = aiohttp.TCPConnector(limit=16)
        async with aiohttp.ClientSession(connector=connector) as s:
            sem = asyncio.Semaphore(16)

            async def one(i: int) -> None:
                async with (
                    sem,
                    s.get(
                        f"http://127.0.0.1:{port}/api/o{i}", headers={"X-User-Id": f"user-{i}"}
                    ) as r,
                ):
                    await r.read()
                    assert r.status == 200

            await asyncio.gather(*(one(i) for i in range(n)))
            # the same keys again: every one lands on the same side as before
            served_first = set(_served(candidate))
            await asyncio.gather(*(one(i) for i in range(200)))
        served_by_candidate = _served(candidate)
        share = len(served_first) / n * 100
        print(f"canary share over {n} keys: {share:.2f} % (target 30 %)")
        assert abs(share - 30) <= 1.0
        again = served_by_candidate[len(served_first) :]
        assert set(again) == {f"user-{i}" for i in range(200)} & served_first
        # requests without the key stay on legacy
        before = len(served_by_candidate)
        assert (await _get(port, "/api/nokey"))[0] == 200
        assert len(_served(candidate)) == before


EXTRACTED_ROUTE = """
  - name: orders
    match: {path: /api/*}
    mode: extracted
    candidate: orders
    shadow: {percent: 100, timeout: 1s}
    compare:
      ignore_headers: [date, server, content-length]
"""


async def test_extracted_serves_from_candidate_and_verifies_against_legacy(tmp_path: Path) -> None:
    store = f"sqlite+aiosqlite:///{tmp_path / 'e.db'}"
    async with shadow_stack(EXTRACTED_ROUTE, store) as (proxy, legacy, candidate):
        legacy.release.set()
        candidate.release.set()
        candidate.price = "13.00"
        port = proxy.address[1]
        status, body = await _get(port, "/api/o1")
        assert status == 200 and b"13.00" in body  # the candidate served
        await wait_until(lambda: _ended(proxy, 1), timeout=10)
        assert _counters(proxy).outcomes == {"mismatch": 1}
        assert legacy.shadow_headers == ["1"]  # legacy got the background copy


async def test_failing_candidate_falls_back_inline_and_opens_breaker(tmp_path: Path) -> None:
    store = f"sqlite+aiosqlite:///{tmp_path / 'b.db'}"
    async with shadow_stack(EXTRACTED_ROUTE, store) as (proxy, legacy, candidate):
        legacy.release.set()
        port = proxy.address[1]
        for i in range(8):
            status, body = await _get(port, f"/api/reset/{i}")
            assert status == 200 and b"12.50" in body  # legacy answered in-line
        assert proxy.hub is not None
        assert proxy.hub.breakers["orders"].state == 1  # open
        seen = len(candidate.seen)
        status, _ = await _get(port, "/api/o9")
        assert status == 200
        assert len(candidate.seen) == seen  # while open, the candidate gets nothing


async def test_clients_at_fault_are_no_verdict_and_users_who_give_up_are(tmp_path: Path) -> None:
    # found in review: a client's broken or too-slow request counted as a candidate failure
    # (five of them opened the breaker), while a user who gives up waiting for a response
    # head is how a hung candidate shows first, so that one still counts
    legacy, candidate = Side("legacy"), Side("candidate")
    runners = [await start_app(legacy), await start_app(candidate)]
    store = f"sqlite+aiosqlite:///{tmp_path / 'gone.db'}"
    text = shadow_config(legacy, candidate, EXTRACTED_ROUTE, store)
    text = text.replace("limits:\n", "limits:\n  body_timeout: 200ms\n", 1)
    proxy = create_proxy(loads(text, "gone.yaml"), access_log=AccessLog(enabled=False))
    await proxy.start()
    try:
        legacy.release.set()
        port = proxy.address[1]
        assert proxy.hub is not None and proxy.plane is not None
        plane = proxy.plane
        breaker = proxy.hub.breakers["orders"]
        for i in range(6):  # a body that stops coming: 408 from the proxy, not the candidate
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                f"POST /api/slow{i} HTTP/1.1\r\nHost: a\r\ncontent-length: 9\r\n\r\n{{}}".encode()
            )
            await writer.drain()
            await wait_until(lambda i=i: f"/api/slow{i}" in candidate.seen)  # type: ignore[misc]
            await wait_until(lambda: plane.in_flight == 0)
            writer.close()
        assert (breaker.state, breaker.failures_in_window) == (0, 0)
        assert proxy.hub.board.read() == {}  # no automatic rollback either
        for i in range(5):  # users who give up on a candidate that does not answer
            path = f"/api/slow-gone{i}"
            request = f"GET {path} HTTP/1.1\r\nHost: a\r\n\r\n".encode()
            await reset_while_waiting(port, request, lambda p=path: p in candidate.seen)  # type: ignore[misc]
            await wait_until(lambda: plane.in_flight == 0)
        assert breaker.state == 1  # open: the next users go to legacy
    finally:
        candidate.release.set()
        await stop_after_test(proxy, 2.0)
        for r in runners:
            await r.cleanup()


def _served(candidate: Side) -> list[str]:
    """Keys of the requests the candidate served (not the background copies)."""
    pairs = zip(candidate.keys, candidate.shadow_headers, strict=True)
    return [key for key, shadow in pairs if not shadow]


def _full_dump(db: Path) -> str:
    """Every value of every table as text (blobs decoded, so nothing hides in hex)."""
    conn = sqlite3.connect(db)
    out = []
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    for table in tables:
        for row in conn.execute(f'SELECT * FROM "{table}"'):
            for value in row:
                if isinstance(value, bytes):
                    out.append(value.decode("utf-8", "replace"))
                else:
                    out.append(str(value))
    return "\n".join(out)


async def test_an_answer_that_ends_with_its_connection_is_compared(tmp_path: Path) -> None:
    """No Content-Length, no chunks, then close: valid HTTP/1.1 framing. The copy's answer
    read as `candidate_error` (connection closed) and opened the candidate's breaker."""
    loop = asyncio.get_running_loop()
    answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{}"

    class _CloseDelimited(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            if b"\r\n\r\n" in data:
                self.transport.write(answer)
                self.transport.close()

    servers = [await loop.create_server(_CloseDelimited, "127.0.0.1", 0) for _ in range(2)]
    legacy_url, candidate_url = (
        f"http://127.0.0.1:{s.sockets[0].getsockname()[1]}" for s in servers
    )
    config = f"""
listen: 127.0.0.1:0
backends:
  legacy: {{url: "{legacy_url}"}}
  orders: {{url: "{candidate_url}"}}
default_backend: legacy
store: {{url: "sqlite+aiosqlite:///{tmp_path / "c.db"}"}}
routes:
{SHADOW_ROUTE}"""
    proxy = create_proxy(loads(config, "c.yaml"), access_log=AccessLog(enabled=False))
    await proxy.start()
    try:
        hub = proxy.hub
        assert hub is not None  # start-up lag sheds copies: start once admission is full
        ticked = hub.loop.time() + hub.tick_s
        await wait_until(lambda: hub._lag_expected > ticked and hub.admit >= 1.0)
        for i in range(3):
            assert await _get(proxy.address[1], f"/api/o{i}") == (200, b"{}")
        await wait_until(lambda: _ended(proxy, 3), timeout=10)
        assert _counters(proxy).outcomes == {"match": 3}, _counters(proxy)
    finally:
        await stop_after_test(proxy, 1.0)
        for s in servers:
            s.close()


async def test_the_access_log_shows_no_personal_data_in_paths(tmp_path: Path) -> None:
    log = io.BytesIO()
    store = f"sqlite+aiosqlite:///{tmp_path / 'a.db'}"
    async with shadow_stack(SHADOW_ROUTE, store, log=AccessLog(log)) as (proxy, legacy, cand):
        legacy.release.set()
        cand.release.set()
        port = proxy.address[1]
        for path in (f"/api/{EMAIL}", "/api/ann%40example.com", "/api/4111111111111111", "/api/42"):
            assert (await _get(port, path))[0] == 200
        proxy.access_log.flush()
    paths = [e["path"] for e in map(orjson.loads, log.getvalue().splitlines()) if "path" in e]
    assert len(paths) == 4 and paths[3] == "/api/42"
    for secret in (EMAIL, "ann%40", "4111111111111111"):
        assert not any(secret in p for p in paths), paths


async def test_a_canary_comparison_times_the_candidates_answer_not_legacys(
    tmp_path: Path,
) -> None:
    # In canary mode the candidate serves and legacy is the background leg: the candidate
    # latency histogram took legacy's time (here 0.3 s) for the candidate's.
    route = CANARY_ROUTE.replace("percent: 30", "percent: 100")
    async with shadow_stack(route, f"sqlite+aiosqlite:///{tmp_path / 'l.db'}") as (
        proxy,
        legacy,
        candidate,
    ):
        candidate.release.set()
        async with aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{proxy.address[1]}/api/slow-1"
            async with s.get(url, headers={"X-User-Id": "u1"}) as r:
                assert r.status == 200
                await r.read()
        await wait_until(lambda: "/api/slow-1" in legacy.seen)
        await asyncio.sleep(0.3)  # a slow legacy answer, not synchronisation
        legacy.release.set()
        hub = proxy.hub
        assert hub is not None
        await wait_until(lambda: hub.in_flight == 0)
        proxy.metrics.flush()
        text = generate_latest(proxy.metrics.registry).decode()
        sample = 'strangler_candidate_duration_seconds_sum{route="orders"} '
        (total,) = [float(ln[len(sample) :]) for ln in text.splitlines() if ln.startswith(sample)]
        assert 0 < total < 0.3
