"""The migration dashboard in headless Chromium, against a running proxy and a real SQLite store.

The page is served by the real admin application of a started proxy (`create_admin_app`,
with `proxy.ui.add_ui_routes` mounted on it unless it already is), on a listener of its
own. Screenshots go to test-artifacts/; set STRANGLER_UPDATE_SCREENSHOT=1 to refresh the
README's copy in docs/img/.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from playwright.async_api import Browser, FloatRect, Page, async_playwright, expect

from proxy.accesslog import AccessLog
from proxy.admin import PROXY_KEY, create_admin_app
from proxy.app import Proxy, create_proxy
from proxy.holds import Hold, route_versions
from proxy.settings import load
from proxy.ui import add_ui_routes
from shadow.record import ComparisonRecord, DiffExample
from shadow.store import Store
from tests.support import free_port, stop_after_test, wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
README_IMAGE = ROOT / "docs" / "img" / "dashboard.png"
TOKEN = "ui-test-token"


@dataclass
class UiStack:
    """A started proxy, its backends and the listener serving the dashboard."""

    proxy: Proxy
    base: str  # http://127.0.0.1:PORT

    @property
    def page_url(self) -> str:
        return self.base + "/-/ui"

    @property
    def data_plane(self) -> str:
        host, port = self.proxy.address
        return f"http://{host}:{port}"


async def _json_backend() -> web.AppRunner:
    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "path": request.path})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


def _port(runner: web.AppRunner) -> int:
    return int(runner.addresses[0][1])


def _config(legacy: int, candidate: int, store_url: str, routes: str) -> str:
    return f"""
listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
  token_env: STRANGLER_UI_TEST_TOKEN
backends:
  legacy: {{url: "http://127.0.0.1:{legacy}", timeout: 2s}}
  orders: {{url: "http://127.0.0.1:{candidate}", timeout: 2s}}
default_backend: legacy
store:
  url: {store_url}
access_log: false
routes:
{routes}
"""


@asynccontextmanager
async def ui_stack(
    tmp_path: Path, store_url: str, routes: str, records: Sequence[ComparisonRecord]
) -> AsyncIterator[UiStack]:
    """Fill the store, start backends and a proxy, and serve the dashboard beside it."""
    async with Store(store_url) as store:
        await store.insert_batch(records)
    legacy, candidate = await _json_backend(), await _json_backend()
    path = tmp_path / "routes.yaml"
    path.write_text(_config(_port(legacy), _port(candidate), store_url, routes), encoding="utf-8")
    proxy = create_proxy(load(str(path)), access_log=AccessLog(enabled=False))
    await proxy.start()
    app = create_admin_app(proxy)  # the real admin app, for its token-guarded actions
    if not any(r.resource and r.resource.canonical == "/-/ui" for r in app.router.routes()):
        add_ui_routes(app)  # until create_admin_app mounts the dashboard itself
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield UiStack(proxy, f"http://127.0.0.1:{_port(runner)}")
    finally:
        await runner.cleanup()
        await stop_after_test(proxy, 1.0)
        await legacy.cleanup()
        await candidate.cleanup()


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Debian's headless Chromium driven by Playwright (no downloaded browsers)."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium)")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


# The tests that drive the browser run in the module's event loop, where it was launched.
_SHARED_LOOP = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def _chromium() -> AsyncIterator[Browser]:
    """One headless Chromium for the module: each launch took ~0.8 s of a test's 2 s."""
    async with chromium() as browser:
        yield browser


@pytest_asyncio.fixture(loop_scope="module")
async def browser(_chromium: Browser) -> AsyncIterator[Browser]:
    """The module's Chromium; a test's pages each get their own fresh browser context
    (`new_page`), and whatever a test leaves open is closed after it."""
    yield _chromium
    for context in _chromium.contexts:
        await context.close()


def _watch(page: Page, base: str) -> list[str]:
    """Collect page errors and any request leaving the strangler listener (the page is offline)."""
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on(
        "console",
        lambda m: (
            problems.append(f"console {m.type}: {m.text}")
            if m.type == "error" and "status of 401" not in m.text  # the refused token, on purpose
            else None
        ),
    )
    page.on(
        "request",
        lambda r: (
            None
            if r.url.startswith(base) or r.url.startswith("data:")
            else problems.append(f"external request: {r.url}")
        ),
    )
    return problems


async def _open_page(
    browser: Browser, stack: UiStack, fragment: str = ""
) -> tuple[Page, list[str]]:
    """A fresh page on the dashboard (at `fragment`), and the problems `_watch` collects."""
    page = await browser.new_page(viewport={"width": 1360, "height": 820})
    problems = _watch(page, stack.base)
    await page.goto(stack.page_url + fragment)
    return page, problems


@asynccontextmanager
async def _order_show_page(
    browser: Browser, tmp_path: Path, store_url: str, record: ComparisonRecord
) -> AsyncIterator[tuple[Page, list[str]]]:
    """The dashboard's `order-show` page over TWO_ROUTES with `record` stored (`_open_page`)."""
    async with ui_stack(tmp_path, store_url, TWO_ROUTES, [record]) as stack:
        yield await _open_page(browser, stack, "#/routes/order-show")


def _record(
    route: str,
    outcome: str,
    at: datetime,
    *,
    path: str,
    legacy_ms: float,
    candidate_ms: float,
    legacy_body: object = None,
    candidate_body: object = None,
    diffs: Sequence[DiffExample] = (),
) -> ComparisonRecord:
    return ComparisonRecord(
        route=route,
        outcome=outcome,  # type: ignore[arg-type]
        time=at,
        method="GET",
        path=path,
        request_path=path.replace("{order_id}", "42"),
        status_primary=200,
        status_candidate=200,
        latency_primary_ms=legacy_ms,
        latency_candidate_ms=candidate_ms,
        diff_paths=tuple(d.pattern for d in diffs),
        diff_examples=tuple(diffs),
        primary_body=orjson.dumps(legacy_body) if legacy_body is not None else None,
        candidate_body=orjson.dumps(candidate_body) if candidate_body is not None else None,
        request_id=f"req-{route}-{at.timestamp():.0f}",
    )


def _show_mismatch(
    *, legacy_body: object, candidate_body: object, diffs: Sequence[DiffExample]
) -> ComparisonRecord:
    """One `order-show` mismatch a minute ago between these two bodies."""
    return _record(
        "order-show",
        "mismatch",
        datetime.now(UTC) - timedelta(minutes=1),
        path="/api/v1/orders/{order_id}",
        legacy_ms=10.0,
        candidate_ms=9.0,
        legacy_body=legacy_body,
        candidate_body=candidate_body,
        diffs=diffs,
    )


def _order(total: str, *, page: int | None) -> dict[str, object]:
    body: dict[str, object] = {
        "items": [
            {"id": 7, "sku": "tea-1kg", "quantity": 2, "total": total, "currency": "EUR"},
            {"id": 8, "sku": "cup", "quantity": 1, "total": "4.00", "currency": "EUR"},
        ],
        "count": 2,
    }
    if page is not None:
        body["meta"] = {"page": page}
    return body


def two_routes_records(now: datetime) -> list[ComparisonRecord]:
    """`order-show` matches 60 of 60; `order-list` mismatches 15 of 60 (25 %)."""
    records: list[ComparisonRecord] = []
    for i in range(60):
        at = now - timedelta(minutes=50) + timedelta(seconds=50 * i)
        records.append(
            _record(
                "order-show",
                "match",
                at,
                path="/api/v1/orders/{order_id}",
                legacy_ms=10.0 + i % 7,
                candidate_ms=8.0 + i % 5,
            )
        )
        mismatch = i % 4 == 3
        if not mismatch:
            records.append(
                _record(
                    "order-list",
                    "match",
                    at,
                    path="/api/v1/orders",
                    legacy_ms=20.0 + i % 9,
                    candidate_ms=12.0 + i % 4,
                )
            )
            continue
        diffs = [DiffExample("$.items[*].total", "$.items[0].total", "31.50", "31.5")]
        legacy_page: int | None = 1
        if i % 12 == 3:  # a third of the mismatches also lose the page number
            diffs.append(DiffExample("$.meta", "$.meta", {"page": 1}, None))
            legacy_page = 1
        records.append(
            _record(
                "order-list",
                "mismatch",
                at,
                path="/api/v1/orders",
                legacy_ms=20.0 + i % 9,
                candidate_ms=12.0 + i % 4,
                legacy_body=_order("31.50", page=legacy_page),
                candidate_body=_order("31.5", page=None if i % 12 == 3 else 1),
                diffs=diffs,
            )
        )
    return records


TWO_ROUTES = """
  - name: order-show
    match: {path: "/api/v1/orders/{order_id}", methods: [GET]}
    candidate: orders
    mode: shadow
    promotion: {min_samples: 50}
  - name: order-list
    match: {path: /api/v1/orders, methods: [GET]}
    candidate: orders
    mode: shadow
    promotion: {min_samples: 50}
  - name: order-create
    match: {path: /api/v1/orders, methods: [POST]}
    candidate: orders
    mode: canary
    canary: {percent: 5, sticky: {header: X-User-Id}}
    promotion: {min_samples: 50}
  - name: health
    match: {path: /health}
    mode: legacy
"""


@_SHARED_LOOP
async def test_dashboard_shows_rates_and_the_highlighted_difference(
    browser: Browser, tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRANGLER_UI_TEST_TOKEN", TOKEN)
    ARTIFACTS.mkdir(exist_ok=True)
    now = datetime.now(UTC)
    async with ui_stack(tmp_path, sqlite_url, TWO_ROUTES, two_routes_records(now)) as stack:
        async with aiohttp.ClientSession() as s:  # live traffic on a legacy-only route
            for _ in range(7):
                async with s.get(stack.data_plane + "/health") as r:
                    assert r.status == 200
        page, problems = await _open_page(browser, stack)

        show = page.locator('tr[data-route="order-show"]')
        mism = page.locator('tr[data-route="order-list"]')
        await expect(mism.locator("td.rate")).to_have_text("25.00%")
        await expect(show.locator("td.rate")).to_have_text("0.00%")
        await expect(show.locator("td.samples")).to_have_text("60")
        await expect(mism.locator("td.samples")).to_have_text("60")
        await expect(show.locator("td.gate")).to_have_text("pass")
        await expect(mism.locator("td.gate")).to_have_text("fail")
        await expect(mism.locator("td.rate")).to_have_class("rate num bad")
        await expect(page.locator('tr[data-route="health"] td.requests')).to_contain_text("7")
        await expect(page.locator('tr[data-route="health"] td.gate')).to_have_text("n/a")
        await expect(page.locator('tr[data-route="order-create"] td.share')).to_contain_text("5%")
        assert await mism.locator("svg.spark polyline, svg.spark circle").count() >= 1
        foot = await page.locator("#foot").bounding_box()
        assert foot is not None
        clip: FloatRect = {"x": 0, "y": 0, "width": 1360, "height": foot["y"] + foot["height"] + 16}
        await page.screenshot(path=str(ARTIFACTS / "ui-overview.png"), clip=clip)
        if os.environ.get("STRANGLER_UPDATE_SCREENSHOT") == "1":
            README_IMAGE.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ARTIFACTS / "ui-overview.png", README_IMAGE)

        # An automatic rollback holds the mismatching route on legacy.
        reason = "mismatch rate 25% above 0.1%"
        version = route_versions(stack.proxy.settings)["order-list"]
        stack.proxy.board.put(Hold("order-list", version, time.time(), reason))
        await expect(mism.locator("td.mode")).to_contain_text("rolled back")
        await expect(show.locator("td.mode")).not_to_contain_text("rolled back")

        await mism.locator("td.name a").click()
        await expect(page.locator("#rate .value")).to_have_text("25.00%")
        await expect(page.locator("#title")).to_contain_text("order-list shadow")
        await expect(page.locator("#title")).not_to_contain_text("[object")
        await expect(page.locator("#gate .reasons")).to_contain_text("mismatch rate 25%")
        top = page.locator('#top-paths tr[data-path="$.items[*].total"]')
        await expect(top.locator("td").nth(1)).to_have_text("15")
        await expect(top.locator("td").nth(2)).to_have_text("100.0%")
        await expect(top.locator("td").nth(3)).to_contain_text("ago")
        meta = page.locator('#top-paths tr[data-path="$.meta"]')
        await expect(meta.locator("td").nth(1)).to_have_text("5")
        assert await page.locator("#mismatches tbody tr").count() == 10
        # The newest mismatch is selected: both sides show the differing field highlighted.
        cand = page.locator('.side-candidate .ln.diff[data-path="$.items[0].total"]')
        legacy = page.locator('.side-legacy .ln.diff[data-path="$.items[0].total"]')
        await expect(cand).to_be_visible()
        await expect(cand).to_contain_text('"total": "31.5"')
        await expect(legacy).to_contain_text('"total": "31.50"')
        assert (
            await page.locator('.side-candidate .ln.diff[data-path="$.items[1].total"]').count()
            == 0
        )
        await expect(page.locator('#differences tr[data-path="$.items[0].total"]')).to_contain_text(
            "changed"
        )
        await page.screenshot(path=str(ARTIFACTS / "ui-route.png"), full_page=True)

        # A mismatch whose candidate lost `meta`: highlighted on the legacy side only.
        await page.locator("#mismatches tbody tr", has_text="$.meta").first.click()
        removed = page.locator('.side-legacy .ln.diff-removed[data-path="$.meta"]')
        await expect(removed).to_be_visible()
        assert await page.locator('.side-candidate .ln[data-path="$.meta"]').count() == 0

        # The one action: clearing the hold needs the admin token, sent as a bearer header.
        await expect(page.locator("#rollback")).to_be_visible()
        await expect(page.locator("#rollback-why")).to_contain_text(reason)
        await page.fill("#token", "not-the-token")
        await page.click("#clear-form button")
        await expect(page.locator("#clear-result")).to_contain_text("refused (401)")
        assert "order-list" in stack.proxy.holds()
        await page.fill("#token", TOKEN)
        await page.click("#clear-form button")
        await expect(page.locator("#clear-result")).to_have_text("cleared")
        assert stack.proxy.holds() == {}
        assert await page.input_value("#token") == ""
        await expect(page.locator("#rollback")).to_be_hidden()
        await expect(page.locator("#changes")).to_contain_text("clear")  # the audit record

        await page.click("text=← all routes")
        await expect(mism.locator("td.mode")).not_to_contain_text("rolled back")
        assert problems == []


def many_routes(n: int) -> tuple[str, list[ComparisonRecord]]:
    """`n` shadow routes; route i has i % 7 mismatches among 20 comparisons."""
    now = datetime.now(UTC)
    routes = []
    records = []
    for i in range(n):
        name = f"r{i:03d}"
        path = f"/api/v1/things{i}/{{order_id}}"
        routes.append(
            f'  - name: {name}\n    match: {{path: "{path}"}}\n    candidate: orders\n'
            "    mode: shadow\n    promotion: {min_samples: 10}\n"
        )
        for j in range(20):
            at = now - timedelta(seconds=170 * j + i)
            outcome = "mismatch" if j < i % 7 else "match"
            diffs = [DiffExample("$.total", "$.total", 1, 2)] if outcome == "mismatch" else []
            records.append(
                _record(
                    name,
                    outcome,
                    at,
                    path=path,
                    legacy_ms=5.0 + j,
                    candidate_ms=4.0 + j,
                    diffs=diffs,
                )
            )
    return "".join(routes), records


@_SHARED_LOOP
async def test_two_hundred_routes_render_quickly(
    browser: Browser, tmp_path: Path, sqlite_url: str
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    routes, records = many_routes(200)
    async with ui_stack(tmp_path, sqlite_url, routes, records) as stack:
        async with aiohttp.ClientSession() as s:
            t0 = time.perf_counter()
            async with s.get(stack.base + "/-/api/overview?since=1h") as r:
                assert r.status == 200
                data = await r.json()
            api_ms = (time.perf_counter() - t0) * 1000
        assert len(data["routes"]) == 200
        page = await browser.new_page(viewport={"width": 1360, "height": 820})
        problems = _watch(page, stack.base)
        t0 = time.perf_counter()
        await page.goto(stack.page_url)
        await expect(page.locator("#rows tr")).to_have_count(200)
        load_ms = (time.perf_counter() - t0) * 1000
        render_ms = await page.evaluate("window.strangler.lastRenderMs")
        await expect(page.locator('tr[data-route="r006"] td.rate')).to_have_text("30.00%")
        await page.screenshot(path=str(ARTIFACTS / "ui-200-routes.png"))

        await page.fill("#filter", "r19")
        await expect(page.locator("#rows tr")).to_have_count(10)
        await page.fill("#filter", "")
        await page.click('th[data-sort="rate"]')
        await expect(page.locator("#rows tr").first.locator("td.rate")).to_have_text("30.00%")
        assert problems == []
    line = (
        f"200 routes: overview API {api_ms:.0f} ms, page load to 200 rows {load_ms:.0f} ms, "
        f"table render {render_ms:.1f} ms"
    )
    print(line)
    (ARTIFACTS / "ui-timings.txt").write_text(line + "\n", encoding="utf-8")


async def _get(s: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any], str]:
    async with s.get(url, allow_redirects=False) as r:
        body = await r.read()
        data = json.loads(body) if r.content_type == "application/json" else {}
        return r.status, data, r.headers.get("Location", "")


async def test_api_overview_and_route_detail(tmp_path: Path, sqlite_url: str) -> None:
    now = datetime.now(UTC)
    retired = [  # a route no longer in the config, with bodies that are not plain JSON
        ComparisonRecord(
            route="retired",
            outcome="mismatch",
            time=now - timedelta(minutes=1),
            path="/old",
            primary_body=b'{"id": 123456789012345678901234567890, "ok": true}',
            candidate_body=b"<html>oops</html>",
            diff_paths=("$",),
        ),
        ComparisonRecord(
            route="retired",
            outcome="mismatch",
            time=now - timedelta(minutes=2),
            path="/old",
            primary_body=b'{"id": 123456789012345678901234567890, "ok": true}',
            candidate_body=b'{"id": 123456789012345678901234567891, "ok": NaN}',
            diff_paths=("$.id", "$.ok"),
        ),
    ]
    records = two_routes_records(now) + retired
    async with (
        ui_stack(tmp_path, sqlite_url, TWO_ROUTES, records) as stack,
        aiohttp.ClientSession() as s,
    ):
        status, data, _ = await _get(s, stack.base + "/-/api/overview")
        assert status == 200
        rows = {r["name"]: r for r in data["routes"]}
        assert list(rows) == ["order-show", "order-list", "order-create", "health"]
        bad, good = rows["order-list"], rows["order-show"]
        assert (bad["samples"], bad["mismatches"], bad["mismatch_rate"]) == (60, 15, 0.25)
        lo, hi = bad["mismatch_ci95"]
        assert 0.15 < lo < 0.25 < hi < 0.4
        assert bad["gate"]["verdict"] == "fail" and "mismatch rate" in bad["gate"]["reasons"][0]
        assert good["gate"] == {"verdict": "pass", "reasons": []}
        assert good["mismatch_rate"] == 0.0 and good["latency_ms"]["legacy"]["p50"] == 13.0
        assert bad["top_path"] == {"path": "$.items[*].total", "share": 1.0}
        assert sum(b["samples"] for b in bad["series"]) == 60
        assert rows["health"]["gate"]["verdict"] == "n/a"
        assert not any(r["auto_rollback"] for r in rows.values())
        fresh = rows["order-create"]  # configured, with a candidate, nothing stored yet
        assert (fresh["share"], fresh["samples"], fresh["mismatch_rate"]) == (5.0, 0, None)
        assert fresh["gate"]["verdict"] == "fail"
        assert fresh["gate"]["reasons"][0].startswith("0 compared samples")
        assert data["store"] == {"ok": True, "error": None}

        status, detail, _ = await _get(s, stack.base + "/-/api/routes/order-list?limit=3")
        assert status == 200
        paths = detail["top_paths"]
        assert [(p["path"], p["count"]) for p in paths] == [
            ("$.items[*].total", 15),
            ("$.meta", 5),
        ]
        assert paths[0]["first_seen"] < paths[0]["last_seen"]
        recent = detail["recent"]
        assert len(recent) == 3 and recent[0]["time"] > recent[1]["time"]
        newest = recent[0]
        assert newest["bodies"]["legacy"]["format"] == "json"
        assert newest["differences"] == [
            {
                "path": "$.items[0].total",
                "pattern": "$.items[*].total",
                "kind": "changed",
                "legacy": "31.50",
                "candidate": "31.5",
            }
        ]

        # Under --workers the hold is seen through the aggregated metric.
        stack.proxy.metrics.auto_rollback.labels("order-show").set(1)
        status, data, _ = await _get(s, stack.base + "/-/api/overview?since=2h")
        held = {r["name"] for r in data["routes"] if r["auto_rollback"]}
        assert held == {"order-show"}
        assert next(r for r in data["routes"] if r["name"] == "order-show")["share"] == 0.0

        status, gone, _ = await _get(s, stack.base + "/-/api/routes/retired")
        assert status == 200 and gone["route"]["configured"] is False
        assert gone["route"]["path"] == "/old"
        html, nan = gone["recent"]
        assert html["bodies"]["legacy"]["value"]["id"] == 123456789012345678901234567890
        assert html["bodies"]["candidate"] == {"format": "text", "value": "<html>oops</html>"}
        assert html["differences"] == [] and html["patterns"] == ["$"]
        # Decoded as the compare pipeline does; NaN goes out as null (browsers reject NaN).
        assert nan["bodies"]["candidate"]["value"] == {
            "id": 123456789012345678901234567891,
            "ok": None,
        }
        assert [d["path"] for d in nan["differences"]] == ["$.id", "$.ok"]
        assert (await _get(s, stack.base + "/-/api/routes/nope"))[0] == 404
        assert (await _get(s, stack.base + "/-/api/overview?since=soon"))[0] == 400
        assert (await _get(s, stack.base + "/-/api/overview?since=all"))[0] == 200
        assert (await _get(s, stack.base + "/-/ui/static/ui.py"))[0] == 404
        assert (await _get(s, stack.base + "/-/ui/static/..%2Fui.py"))[0] == 404
        assert (await _get(s, stack.base + "/-/ui/"))[2] == "../ui"
        async with s.get(stack.page_url) as r:
            assert r.status == 200 and "script-src 'self'" in r.headers["Content-Security-Policy"]
            assert 'src="ui/static/ui.js"' in await r.text()


async def test_dashboard_opens_the_store_itself_when_the_proxy_has_none(
    tmp_path: Path, sqlite_url: str
) -> None:
    now = datetime.now(UTC)
    async with ui_stack(tmp_path, sqlite_url, TWO_ROUTES, two_routes_records(now)) as stack:
        proxy_store = getattr(stack.proxy, "store", None)
        stack.proxy.store = None  # as before the proxy owned a store, or under a supervisor
        try:
            async with aiohttp.ClientSession() as s:
                status, data, _ = await _get(s, stack.base + "/-/api/overview?since=2h")
        finally:
            stack.proxy.store = proxy_store
        assert status == 200 and data["store"] == {"ok": True, "error": None}
        rows = {r["name"]: r for r in data["routes"]}
        assert rows["order-list"]["mismatch_rate"] == 0.25


async def test_store_down_keeps_live_counters(tmp_path: Path) -> None:
    dead = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test"
    legacy, candidate = await _json_backend(), await _json_backend()
    path = tmp_path / "routes.yaml"
    path.write_text(_config(_port(legacy), _port(candidate), dead, TWO_ROUTES), encoding="utf-8")
    proxy = create_proxy(load(str(path)), access_log=AccessLog(enabled=False))
    await proxy.start()
    app = web.Application()
    app[PROXY_KEY] = proxy
    add_ui_routes(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        host, port = proxy.address
        async with aiohttp.ClientSession() as s:
            for _ in range(3):
                async with s.get(f"http://{host}:{port}/health") as r:
                    assert r.status == 200
            # The proxy counts a request once its response is fully written.
            await wait_until(lambda: proxy.route_counts().get("health") == 3)
            status, data, _ = await _get(s, f"http://127.0.0.1:{_port(runner)}/-/api/overview")
    finally:
        await runner.cleanup()
        await stop_after_test(proxy, 1.0)
        await legacy.cleanup()
        await candidate.cleanup()
    assert status == 200
    store = data["store"]
    assert store["ok"] is False and store["error"]
    rows = {r["name"]: r for r in data["routes"]}
    assert rows["health"]["live"]["requests"] == 3
    assert rows["order-list"]["mismatch_rate"] is None


@_SHARED_LOOP
async def test_ids_past_2_to_the_53_show_their_exact_digits(
    browser: Browser, tmp_path: Path, sqlite_url: str
) -> None:
    """A browser reads JSON numbers as doubles: a candidate's id off by one (a 64-bit id,
    as snowflake ids are) showed the same rounded number on both sides of the diff."""
    legacy_id, candidate_id = 1234567890123456789, 1234567890123456788
    record = _show_mismatch(
        legacy_body={"id": legacy_id, "owner": {"ids": [legacy_id]}, "total": "1.00"},
        candidate_body={"id": candidate_id, "owner": {"ids": [legacy_id]}, "total": "1.00"},
        diffs=[DiffExample("$.id", "$.id", legacy_id, candidate_id)],
    )
    async with _order_show_page(browser, tmp_path, sqlite_url, record) as (page, problems):
        row = page.locator('#differences tr[data-path="$.id"]')
        await expect(row).to_contain_text(str(legacy_id))
        await expect(row).to_contain_text(str(candidate_id))
        example = page.locator('#top-paths tr[data-path="$.id"] td.example')
        await expect(example).to_contain_text(f"{legacy_id} → {candidate_id}")
        legacy = page.locator(".side-legacy")
        await expect(legacy.locator('.ln[data-path="$.id"]')).to_contain_text(f'"id": {legacy_id},')
        await expect(legacy).to_contain_text(f"{legacy_id}")
        cand = page.locator(".side-candidate")
        await expect(cand.locator('.ln[data-path="$.id"]')).to_contain_text(
            f'"id": {candidate_id},'
        )
        nested = await cand.locator(".ln").all_inner_texts()
        assert any(line.strip() == str(legacy_id) for line in nested), nested
        assert problems == []


@_SHARED_LOOP
async def test_long_values_show_where_they_differ(
    browser: Browser, tmp_path: Path, sqlite_url: str
) -> None:
    """Both sides were cut at 80 characters: two URLs differing after that read the same."""
    image = "https://cdn.example.com/images/products/12345/large-variant-with-a-long-name.jpg?v="
    legacy_body = {"image": image + "1", "total": "1.00"}
    candidate_body = {"image": image + "2", "total": "1.00"}
    record = _show_mismatch(
        legacy_body=legacy_body,
        candidate_body=candidate_body,
        diffs=[DiffExample("$.image", "$.image", image + "1", image + "2")],
    )
    async with _order_show_page(browser, tmp_path, sqlite_url, record) as (page, problems):
        row = page.locator('#differences tr[data-path="$.image"] td code')
        await expect(row.nth(1)).to_contain_text('v=1"')
        await expect(row.nth(2)).to_contain_text('v=2"')
        example = page.locator('#top-paths tr[data-path="$.image"] td.example')
        await expect(example).to_contain_text('v=1" → ')
        await expect(example).to_contain_text('v=2"')
        assert problems == []


@_SHARED_LOOP
async def test_a_status_mismatch_between_json_bodies_is_not_called_non_json(
    browser: Browser, tmp_path: Path, sqlite_url: str
) -> None:
    """Equal JSON bodies under different statuses: the page said the bodies were not JSON."""
    record = _show_mismatch(
        legacy_body={"id": 42},
        candidate_body={"id": 42},
        diffs=[DiffExample("status", "status", 200, 201)],
    )
    async with _order_show_page(browser, tmp_path, sqlite_url, record) as (page, problems):
        note = page.locator("#diff .diffview p.muted")
        await expect(note).to_contain_text("recorded differing paths: status")
        await expect(note).not_to_contain_text("not both JSON")
        assert problems == []


@_SHARED_LOOP
async def test_a_link_with_a_stray_percent_does_not_stop_the_page(
    browser: Browser, tmp_path: Path, sqlite_url: str
) -> None:
    """`#/routes/100%` threw in the poller before its first request: the page said
    `connecting…` for good and never refreshed, even after going back to the overview."""
    async with ui_stack(tmp_path, sqlite_url, TWO_ROUTES, []) as stack:
        page, problems = await _open_page(browser, stack, "#/routes/100%")
        await expect(page.locator("#status")).to_contain_text("error: no route named '100%'")
        await page.click("text=← all routes")
        await expect(page.locator('tr[data-route="order-show"]')).to_be_visible()
        assert [p for p in problems if "status of 404" not in p] == []  # the route's 404


@_SHARED_LOOP
async def test_more_differing_paths_than_shown_are_counted(
    browser: Browser, tmp_path: Path, sqlite_url: str
) -> None:
    """The route page lists the top 20 differing paths; the others went unmentioned."""
    diffs = [DiffExample(f"$.field{i:02d}", f"$.field{i:02d}", 1, 2) for i in range(25)]
    record = _show_mismatch(
        legacy_body={f"field{i:02d}": 1 for i in range(25)},
        candidate_body={f"field{i:02d}": 2 for i in range(25)},
        diffs=diffs,
    )
    async with _order_show_page(browser, tmp_path, sqlite_url, record) as (page, problems):
        await expect(page.locator("#top-paths tbody tr")).to_have_count(20)
        await expect(page.locator("#paths")).to_contain_text("… and 5 more paths")
        assert problems == []
