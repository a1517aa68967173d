"""Automatic rollback: a canary candidate that starts failing is taken out of service."""

from __future__ import annotations

import io
import os
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from proxy.accesslog import AccessLog
from proxy.app import Proxy
from proxy.dataplane import DataPlane, RouteEntry
from proxy.holds import STATE_DIR_ENV, Hold, route_versions
from proxy.settings import loads
from shadow.store import Store
from tests.integration.proxy.shadow_support import Side, shadow_config, shadow_stack, start_app
from tests.support import (
    free_port,
    start_serve,
    stop_process,
    wait_admin_ready,
    wait_for,
    wait_until,
)

CANARY_ALL = """
  - name: orders
    match: {path: /api/*}
    mode: canary
    candidate: orders
    canary: {percent: 100, sticky: {header: X-User-Id}}
    shadow: {percent: 100, timeout: 1s}
    promotion: {max_error_rate: 0.05, max_mismatch_rate: 0.5, max_p99_ratio: 1000}
"""


def _served(side: Side) -> int:
    return sum(1 for h in side.shadow_headers if not h)


async def test_failing_canary_is_rolled_back_within_the_window(tmp_path: Path) -> None:
    db = tmp_path / "rb.db"
    async with shadow_stack(CANARY_ALL, f"sqlite+aiosqlite:///{db}") as (proxy, legacy, cand):
        legacy.release.set()
        cand.release.set()
        port = proxy.address[1]
        admin = f"http://127.0.0.1:{proxy.admin_address[1]}"
        failed_before_switch = 0
        switched_at = None
        async with aiohttp.ClientSession() as s:
            # healthy first, then the candidate starts failing 20 % of its requests
            for i in range(400):
                if i == 100:
                    cand.fail_every = 5
                async with s.get(
                    f"http://127.0.0.1:{port}/api/o{i}", headers={"X-User-Id": f"u{i}"}
                ) as r:
                    await r.read()
                    if r.status == 500:
                        failed_before_switch += 1
                entry = _entry(proxy)
                if entry.held and switched_at is None:
                    switched_at = i
            served_after = _served(cand)
            for i in range(50):
                async with s.get(
                    f"http://127.0.0.1:{port}/api/after{i}", headers={"X-User-Id": f"v{i}"}
                ) as r:
                    assert r.status == 200  # legacy serves everyone now
            assert _served(cand) == served_after
            async with s.get(f"{admin}/-/routes") as r:
                routes = (await r.json())["routes"]
            async with s.get(f"{admin}/-/metrics") as r:
                metrics = await r.text()
        assert proxy.hub is not None
        state = proxy.hub.route_state("orders")
        assert state.window is not None
        bound = state.window.failure_bound
        print(
            f"auto-rollback after request {switched_at}: {failed_before_switch} failed user "
            f"requests before the switch (window bound {bound})"
        )
        assert switched_at is not None and switched_at >= 100
        assert 1 <= failed_before_switch <= bound
        assert routes[0]["auto_rollback"] is not None
        assert "error rate" in routes[0]["auto_rollback"]["reason"]
        assert 'strangler_auto_rollback{route="orders"} 1.0' in metrics
    rows = list(sqlite3.connect(db).execute("SELECT route, kind, to_mode FROM route_changes"))
    assert rows == [("orders", "auto_rollback", "legacy")]


async def test_operator_clear_restores_the_candidate(tmp_path: Path) -> None:
    os.environ["STRANGLER_ADMIN_TOKEN"] = "t0ken"
    try:
        async with shadow_stack(CANARY_ALL, f"sqlite+aiosqlite:///{tmp_path / 'c.db'}") as (
            proxy,
            legacy,
            cand,
        ):
            await _fail_until_held(proxy, legacy, cand)
            admin = f"http://127.0.0.1:{proxy.admin_address[1]}"
            async with aiohttp.ClientSession() as s:
                await proxy.reload(proxy.settings)  # the same config: held from the start
                assert _entry(proxy).held
                async with s.post(f"{admin}/-/routes/orders/clear") as r:
                    assert r.status == 401
                async with s.post(
                    f"{admin}/-/routes/orders/clear", headers={"Authorization": "Bearer t0ken"}
                ) as r:
                    assert (await r.json())["cleared"] is True
                assert not _entry(proxy).held
    finally:
        del os.environ["STRANGLER_ADMIN_TOKEN"]
    rows = list(
        sqlite3.connect(tmp_path / "c.db").execute("SELECT kind, to_mode FROM route_changes")
    )
    assert rows == [("auto_rollback", "legacy"), ("clear", "canary")]


async def _fail_until_held(proxy: Proxy, legacy: Side, cand: Side) -> None:
    """A candidate failing every 5th request, until the route is held on legacy."""
    legacy.release.set()
    cand.release.set()
    # 20 % errors: over the route's 5 %, under the breaker's 50 %. The window then trips on
    # the candidate's own answers (the 50th, with 10 errors), however many shadow copies a
    # loaded machine sheds. Failing every other answer opened the breaker at the 10th: the
    # canary went to legacy, the window heard only from copies (shed when the loop lags),
    # and the breaker let a probe through only 5 s later: starved, it missed the deadline.
    cand.fail_every = 5
    port = proxy.address[1]
    async with aiohttp.ClientSession() as s:
        for i in range(200):
            if _entry(proxy).held:
                break
            async with s.get(
                f"http://127.0.0.1:{port}/api/o{i}", headers={"X-User-Id": f"u{i}"}
            ) as r:
                await r.read()
    # the window also hears from background copies, which may still be ending
    await wait_until(lambda: _entry(proxy).held, timeout=10)


def _entry(proxy: Proxy, name: str = "orders") -> RouteEntry:
    assert proxy.plane is not None
    return next(e for e in proxy.plane.state.entries if e.name == name)


async def test_two_workers_agree_on_a_rollback(tmp_path: Path) -> None:
    legacy, cand = Side("legacy"), Side("candidate")
    runners = [await start_app(legacy), await start_app(cand)]
    legacy.release.set()
    cand.release.set()
    port, admin = free_port(), free_port()
    text = shadow_config(legacy, cand, CANARY_ALL, f"sqlite+aiosqlite:///{tmp_path / 'w.db'}")
    text = text.replace("listen: 127.0.0.1:0", f"listen: 127.0.0.1:{port}", 1)
    text = text.replace("  listen: 127.0.0.1:0", f"  listen: 127.0.0.1:{admin}", 1)
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(text)
    proc = await start_serve(cfg, "--workers", "2")
    try:
        await wait_admin_ready(admin)
        async with aiohttp.ClientSession() as s:
            # 20 %: over the route's 5 % error gate, under the breaker's 50 % (an open
            # breaker would send the canary to legacy and starve the rollback window)
            cand.fail_every = 5
            fresh = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(connector=fresh) as spread:
                for i in range(300):
                    async with spread.get(
                        f"http://127.0.0.1:{port}/api/o{i}", headers={"X-User-Id": f"u{i}"}
                    ) as r:
                        await r.read()

                async def held() -> bool:
                    async with s.get(f"http://127.0.0.1:{admin}/-/routes") as r:
                        return (await r.json())["routes"][0]["auto_rollback"] is not None

                await wait_for(held, timeout=10)

                async def both_on_legacy() -> bool:
                    # a hold set by one worker reaches the other within a poll interval
                    before = _served(cand)
                    for i in range(20):
                        async with spread.get(
                            f"http://127.0.0.1:{port}/api/p{i}", headers={"X-User-Id": f"p{i}"}
                        ) as r:
                            await r.read()
                    return _served(cand) == before

                await wait_for(both_on_legacy, timeout=10)
                before = _served(cand)
                for i in range(100):
                    async with spread.get(
                        f"http://127.0.0.1:{port}/api/x{i}", headers={"X-User-Id": f"x{i}"}
                    ) as r:
                        await r.read()
                        assert r.status == 200
                assert _served(cand) == before
    finally:
        await stop_process(proc)
        for runner in runners:
            await runner.cleanup()


async def test_a_hold_ends_with_its_route_config_even_if_it_comes_back(tmp_path: Path) -> None:
    """A hold lasts until the route's own config changes. Left on the board, it came back
    when a later file had the same route again (rollback, fix, advance: it served nobody)."""
    async with shadow_stack(CANARY_ALL, f"sqlite+aiosqlite:///{tmp_path / 'h.db'}") as (
        proxy,
        legacy,
        cand,
    ):
        await _fail_until_held(proxy, legacy, cand)
        held = proxy.settings
        changed = held.source.replace("max_error_rate: 0.05", "max_error_rate: 0.06")
        assert changed != held.source
        await proxy.reload(loads(changed, held.path))
        assert not _entry(proxy).held
        await proxy.reload(held)  # the same route as when the hold was set
        assert not _entry(proxy).held and proxy.board.read() == {}


OTHER_ROUTE = """
  - name: health
    match: {path: /health}
"""


async def test_a_hold_survives_a_reload_that_leaves_its_route_alone(tmp_path: Path) -> None:
    """Any reload (a comment, another route) lifted every hold: the rolled-back route went
    straight back to its failing candidate."""
    async with shadow_stack(
        OTHER_ROUTE + CANARY_ALL, f"sqlite+aiosqlite:///{tmp_path / 'k.db'}"
    ) as (
        proxy,
        legacy,
        cand,
    ):
        await _fail_until_held(proxy, legacy, cand)
        held = proxy.settings
        # another route edited, and a line added above the held one (its line moves)
        other = held.source.replace("path: /health}", "path: /healthz}")
        other = other.replace("\nroutes:\n", "\n# a note\nroutes:\n")
        await proxy.reload(loads(other, held.path))
        assert proxy.settings.version != held.version
        assert _entry(proxy).held, "an unrelated reload lifted the hold"
        assert "orders" in proxy.holds()
        served = _served(cand)
        async with aiohttp.ClientSession() as s:
            for i in range(20):
                async with s.get(
                    f"http://127.0.0.1:{proxy.address[1]}/api/k{i}", headers={"X-User-Id": f"k{i}"}
                ) as r:
                    assert r.status == 200
        assert _served(cand) == served


async def test_the_rollback_gauge_falls_when_a_reload_lifts_the_hold(tmp_path: Path) -> None:
    """A hold lifted by a change of its route (a threshold, or `migrate rollback` to shadow)
    left strangler_auto_rollback at 1 for good: the alert on it never cleared."""
    async with shadow_stack(CANARY_ALL, f"sqlite+aiosqlite:///{tmp_path / 'g.db'}") as (
        proxy,
        legacy,
        cand,
    ):
        await _fail_until_held(proxy, legacy, cand)
        assert proxy.hub is not None
        gauge = 'strangler_auto_rollback{route="orders"}'
        admin = f"http://127.0.0.1:{proxy.admin_address[1]}/-/metrics"
        held = proxy.settings
        async with aiohttp.ClientSession() as s:
            for changed in (
                held.source.replace("max_error_rate: 0.05", "max_error_rate: 0.06"),  # canary
                held.source.replace("mode: canary", "mode: shadow"),  # no window at all
            ):
                if not _entry(proxy).held:  # held again, as a trip would
                    await proxy.reload(held)
                    version = route_versions(held)["orders"]
                    proxy.board.put(Hold("orders", version, time.time(), "test"))
                    proxy.hub.poll_holds(_plane(proxy).state.entries)
                async with s.get(admin) as r:
                    assert f"{gauge} 1.0" in await r.text()
                await proxy.reload(loads(changed, held.path))
                assert proxy.holds() == {}
                async with s.get(admin) as r:
                    text = await r.text()
                assert f"{gauge} 0.0" in text, [x for x in text.splitlines() if gauge in x]


def _plane(proxy: Proxy) -> DataPlane:
    assert proxy.plane is not None
    return proxy.plane


async def test_reloads_of_other_routes_do_not_restart_a_routes_rollback_window(
    tmp_path: Path,
) -> None:
    """Every reload started every route's rollback window again: with reloads more often
    than the window's 50 observations (migrate watch stepping other routes, --watch), a
    failing canary was never rolled back and kept failing its users."""
    async with shadow_stack(
        OTHER_ROUTE + CANARY_ALL, f"sqlite+aiosqlite:///{tmp_path / 'w.db'}"
    ) as (
        proxy,
        legacy,
        cand,
    ):
        legacy.release.set()
        cand.release.set()
        cand.fail_every = 5  # 20 % errors, over the route's 5 %; too few to open the breaker
        base = proxy.settings
        texts = [base.source + f"# edit {i}\n" for i in range(2)]
        port = proxy.address[1]
        async with aiohttp.ClientSession() as s:
            for n in range(16):
                for i in range(12):
                    async with s.get(
                        f"http://127.0.0.1:{port}/api/r{n}-{i}", headers={"X-User-Id": f"u{n}-{i}"}
                    ) as r:
                        await r.read()
                if _entry(proxy).held:
                    break
                await proxy.reload(loads(texts[n % 2], base.path))  # another route's edit
        await wait_until(lambda: _entry(proxy).held, timeout=5)


async def test_a_hold_that_cannot_be_written_does_not_stick_the_tripping_connection(
    tmp_path: Path,
) -> None:
    """Writing the hold file raised in the request path (state dir gone or full, or two
    workers writing the same temporary file): the connection of the request that tripped
    the rollback was stuck (its next request never answered), and the rollback was neither
    audited nor exported."""
    state = tmp_path / "state"
    os.environ[STATE_DIR_ENV] = str(state)
    try:
        async with shadow_stack(CANARY_ALL, f"sqlite+aiosqlite:///{tmp_path / 'u.db'}") as (
            proxy,
            legacy,
            cand,
        ):
            assert proxy.board.dir is not None
            # the hold file cannot be written (as on a full disk): a directory in its way
            (proxy.board.dir / f"orders.{os.getpid()}.tmp").mkdir()
            (proxy.board.dir / "orders.tmp").mkdir()
            legacy.release.set()
            cand.release.set()
            cand.fail_every = 3  # too few to open the breaker; a POST is never compared
            port = proxy.address[1]
            answers: list[int | str] = []
            after = 0
            timeout = aiohttp.ClientTimeout(total=5)
            async with aiohttp.ClientSession(timeout=timeout) as s:
                for i in range(80):
                    try:
                        async with s.post(
                            f"http://127.0.0.1:{port}/api/p{i}",
                            data=b"{}",
                            headers={"X-User-Id": f"p{i}"},
                        ) as r:
                            await r.read()
                            answers.append(r.status)
                    except (TimeoutError, aiohttp.ClientError) as e:
                        answers.append(type(e).__name__)
                    after += _entry(proxy).held
                    if after == 3:  # and the next requests on that connection
                        break
            print("answers:", answers)
            assert all(isinstance(a, int) for a in answers), answers
            # this worker keeps holding it through its polls of the board
            assert proxy.hub is not None
            proxy.hub.poll_holds(_plane(proxy).state.entries)
            assert _entry(proxy).held and "orders" in proxy.holds()
            assert _plane(proxy).in_flight == 0
            metrics = f"http://127.0.0.1:{proxy.admin_address[1]}/-/metrics"
            async with aiohttp.ClientSession() as s, s.get(metrics) as r:
                assert 'strangler_auto_rollback{route="orders"} 1.0' in await r.text()
    finally:
        del os.environ[STATE_DIR_ENV]
    rows = list(sqlite3.connect(tmp_path / "u.db").execute("SELECT kind FROM route_changes"))
    assert rows == [("auto_rollback",)]


async def test_failing_writes_are_rolled_back_at_the_configured_error_rate(tmp_path: Path) -> None:
    """A served GET counted twice in the rollback window (its answer, then its comparison
    with legacy), a served POST once: a candidate failing every write, 1 request in 14
    (7 % of its calls, over the route's 5 %), showed as 3.7 % and kept failing users."""
    async with shadow_stack(CANARY_ALL, f"sqlite+aiosqlite:///{tmp_path / 'e.db'}") as (
        proxy,
        legacy,
        cand,
    ):
        legacy.release.set()
        cand.release.set()
        port = proxy.address[1]
        failed = 0
        async with aiohttp.ClientSession() as s:
            for i in range(420):
                if _entry(proxy).held:
                    break
                url = f"http://127.0.0.1:{port}/api/"
                if i % 14 == 13:  # a write: the candidate fails it (never compared)
                    req = s.post(url + f"err{i}", data=b"{}", headers={"X-User-Id": f"e{i}"})
                else:
                    req = s.get(url + f"o{i}", headers={"X-User-Id": f"e{i}"})
                async with req as r:
                    await r.read()
                    failed += r.status == 500
            # the last comparisons with legacy may still be under way
            await wait_until(lambda: proxy.hub is not None and proxy.hub.in_flight == 0)
        print(f"held: {_entry(proxy).held} after {failed} failed writes")
        assert _entry(proxy).held
        assert failed <= 10


async def test_a_rollback_audit_refused_by_the_store_is_written_once_it_is_back(
    tmp_path: Path,
) -> None:
    """The audit record of an automatic rollback was tried once: a store refusing writes at
    that moment lost it for good, and `migrate watch` (which holds a route only on that
    record) stepped the rolled-back route on, lifting the hold."""
    db = tmp_path / "a.db"
    url = f"sqlite+aiosqlite:///{db}"
    async with Store(url):
        pass
    with sqlite3.connect(db) as conn:  # the store refuses audit records for now
        conn.execute(
            "CREATE TRIGGER no_audit BEFORE INSERT ON route_changes"
            " BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
        )
    events = io.BytesIO()
    log = AccessLog(events, enabled=False)
    async with shadow_stack(CANARY_ALL, url, log=log) as (proxy, legacy, cand):
        await _fail_until_held(proxy, legacy, cand)
        tripped = time.time()
        await wait_until(lambda: b'"audit_failed"' in events.getvalue(), timeout=10)
        with sqlite3.connect(db) as conn:
            conn.execute("DROP TRIGGER no_audit")

        def rows() -> list[tuple[str, str]]:
            with sqlite3.connect(db) as conn:
                return list(conn.execute("SELECT kind, time FROM route_changes"))

        await wait_until(lambda: rows() != [], timeout=15)
    [(kind, when)] = rows()
    assert kind == "auto_rollback"
    # stamped with the time of the rollback, not of the retry that wrote it
    assert datetime.fromisoformat(when).replace(tzinfo=UTC).timestamp() <= tripped + 1.0
