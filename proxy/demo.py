"""`strangler demo`: the whole extraction story on one machine, on embedded SQLite.

It starts the seeded monolith and the proxy with one Order endpoint at each stage of its
extraction (`config/demo.yaml`), plays a bounded mix of buyers, sellers and support
agents through the proxy, waits for the comparisons to reach the store, prints the
per-route report and checks the story: the shadowed route whose candidate rounds the
buyer-protection fee half-even fails its gate, the other routes pass. Exit 0 when it did,
1 when it did not, 2 when the stack could not start, 130 when interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:  # imported when the demo runs, so order_body stays cheap to import
    from proxy.settings import RouteSettings
    from proxy.stack import Stack
    from shadow.report import Report

__all__ = [
    "BUYERS",
    "FAILING_ROUTE",
    "SELLERS",
    "WORKDIR",
    "Traffic",
    "check_story",
    "drive",
    "order_body",
    "run_demo",
]

WORKDIR = Path(".demo")
"""Where the demo keeps its databases and generated config (relative to the current dir)."""

FAILING_ROUTE = "order-show"
"""The route whose candidate has the fee-rounding bug: its gate must fail."""

_FEE_PATH = "$.amounts.buyer_protection_fee"
BUYERS = range(1, 401)
"""Buyer ids of the seeded data."""
SELLERS = range(1001, 1081)
"""Seller ids of the seeded data."""

_SEED = 500
_PORTS = (8080, 9090)  # --keep-running, when free: the URLs of config/routes.yaml
_TRAFFIC_BUDGET_S = 30.0
_FLUSH_TIMEOUT_S = 20.0
_REQUEST_TIMEOUT_S = 10.0
_THINK_S = (0.02, 0.1)
_SESSIONS = {"buyer": (12, 10), "seller": (4, 10), "support": (2, 10)}  # users, sessions each
_ROLES = {"buyer": "buyers", "seller": "sellers", "support": "support agents"}
_GOODS = (
    ("Vintage denim jacket", 3450),
    ("Film camera, 35 mm", 8900),
    ("Board game, complete", 1250),
    ("Hardcover cookbook", 1290),
    ("Leather ankle boots", 4550),
    ("Wool scarf", 1050),
    ("Vinyl record, 1978 pressing", 2210),
    ("Kids' bike helmet", 1450),
    ("Espresso cups (set of 4)", 1810),
    ("Trail running shoes", 3990),
)
_CITIES = (("Lyon", "FR", "69002"), ("Leeds", "GB", "LS1 4AP"), ("Porto", "PT", "4050-262"))


def order_body(rng: random.Random, buyer_id: int, seller_id: int) -> dict[str, Any]:
    """A realistic create-order body in the legacy contract (money as decimal strings)."""
    city, country, postal = rng.choice(_CITIES)
    items = []
    for _ in range(rng.choice((1, 1, 2, 3))):
        index = rng.randrange(len(_GOODS))
        title, price = _GOODS[index]
        price += rng.choice((0, 0, 10, 40, 50, 90))
        items.append(
            {
                "sku": f"SKU-{index * 7919 + 200003:06d}",
                "title": title,
                "quantity": rng.choice((1, 1, 1, 2)),
                "unit_price": f"{price // 100}.{price % 100:02d}",
            }
        )
    name = f"Buyer {buyer_id}"
    return {
        "buyer": {"id": buyer_id, "email": f"buyer{buyer_id}@example.com", "name": name},
        "seller": {"id": seller_id, "name": f"Seller {seller_id}"},
        "currency": "GBP" if country == "GB" else "EUR",
        "items": items,
        "shipping_fee": rng.choice(("0.00", "2.99", "4.99", "6.90")),
        "shipping_address": {
            "name": name,
            "line1": f"{rng.randint(1, 180)} Market Street",
            "city": city,
            "postal_code": postal,
            "country": country,
        },
    }


@dataclass(slots=True)
class Traffic:
    """What the simulated users did, counted for the summary and the exit verdict."""

    requests: Counter[str] = field(default_factory=Counter)  # by kind: view, list, ship...
    statuses: Counter[int] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        """Requests sent."""
        return sum(self.requests.values())


class _Client:
    """One simulated user's HTTP calls through the proxy, counted and checked."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base: str,
        user: str,
        traffic: Traffic,
        deadline: float,
        rng: random.Random,
    ) -> None:
        self.session = session
        self.base = base
        self.headers = {"X-User-Id": user}
        self.traffic = traffic
        self.deadline = deadline
        self.rng = rng

    async def call(
        self,
        kind: str,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> tuple[int, Any]:
        """Send one request; a status outside `ok` (or any 5xx) is noted as unexpected.
        Past the deadline nothing is sent: the traffic phase stays bounded in time."""
        # Think time: people read a page before they click. It also keeps the demo's load
        # where the background comparisons of one read finish before the next write lands.
        await asyncio.sleep(self.rng.uniform(*_THINK_S))
        if time.monotonic() > self.deadline:
            return 0, None
        self.traffic.requests[kind] += 1
        try:
            async with self.session.request(
                method, self.base + path, json=json, headers={**self.headers, **(headers or {})}
            ) as resp:
                status = resp.status
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            self.traffic.unexpected.append(f"{method} {path}: {type(e).__name__} {e}")
            return 0, None
        self.traffic.statuses[status] += 1
        if status not in ok:
            self.traffic.unexpected.append(f"{method} {path} -> {status}")
        return status, body


def _items(body: Any) -> list[dict[str, Any]]:
    return list(body.get("items", [])) if isinstance(body, dict) else []


async def _buyer(client: _Client, rng: random.Random, buyer_id: int) -> None:
    """Browse my orders, look at some, sometimes buy (and retry the same key), complete."""
    _, page = await client.call("list", "GET", f"/api/v1/orders?buyer_id={buyer_id}&per_page=10")
    mine = _items(page)
    for order in rng.sample(mine, min(len(mine), 2)):
        await client.call("view", "GET", f"/api/v1/orders/{order['id']}")
        if rng.random() < 0.5:
            await client.call("events", "GET", f"/api/v1/orders/{order['id']}/events")
    for _ in range(2):  # window shopping: other buyers' orders are public in this demo shop
        await client.call("view", "GET", f"/api/v1/orders/{rng.randint(1, _SEED)}")
    delivered = [o for o in mine if o.get("status") == "delivered"]
    if delivered and rng.random() < 0.5:
        oid = delivered[0]["id"]
        await client.call(
            "complete", "POST", f"/api/v1/orders/{oid}/complete", ok=(200, 409), json={}
        )
    if rng.random() < 0.4:
        body = order_body(rng, buyer_id, rng.choice(SELLERS))
        key = {"Idempotency-Key": str(uuid.UUID(int=rng.getrandbits(128)))}
        status, created = await client.call(
            "create", "POST", "/api/v1/orders", json=body, headers=key, ok=(201,)
        )
        if status == 201 and rng.random() < 0.3:  # a retry after a lost answer: same order
            _, again = await client.call(
                "create-retry", "POST", "/api/v1/orders", json=body, headers=key
            )
            if isinstance(again, dict) and again.get("id") != created.get("id"):
                client.traffic.unexpected.append("idempotent retry returned another order")
        if status == 201:
            await client.call("view", "GET", f"/api/v1/orders/{created['id']}")


async def _seller(client: _Client, rng: random.Random, seller_id: int) -> None:
    """Ship paid orders, mark shipped ones delivered (the carrier's scan)."""
    _, paid = await client.call(
        "list", "GET", f"/api/v1/orders?seller_id={seller_id}&status=paid&per_page=5"
    )
    for order in _items(paid)[:1]:
        await client.call("view", "GET", f"/api/v1/orders/{order['id']}")
        tracking = {"tracking_number": f"TRK{rng.randint(10**8, 10**9 - 1)}"}
        await client.call(
            "ship", "POST", f"/api/v1/orders/{order['id']}/ship", json=tracking, ok=(200, 409)
        )
    _, shipped = await client.call(
        "list", "GET", f"/api/v1/orders?seller_id={seller_id}&status=shipped&per_page=5"
    )
    for order in _items(shipped)[:1]:
        await client.call(
            "deliver", "POST", f"/api/v1/orders/{order['id']}/deliver", json={}, ok=(200, 409)
        )
        await client.call("events", "GET", f"/api/v1/orders/{order['id']}/events")


async def _support(client: _Client, rng: random.Random, agent: int) -> None:
    """Open disputes on recent deliveries, then refund (partly or fully) or resolve them."""
    actor = {"actor": f"support:{agent}"}
    _, delivered = await client.call("list", "GET", "/api/v1/orders?status=delivered&per_page=20")
    recent = _items(delivered)
    if recent:
        order = rng.choice(recent)
        await client.call(
            "dispute",
            "POST",
            f"/api/v1/orders/{order['id']}/dispute",
            json={**actor, "reason": "item not as described"},
            ok=(200, 409),  # 409: outside the dispute window, or another agent was first
        )
    _, disputed = await client.call("list", "GET", "/api/v1/orders?status=disputed&per_page=10")
    for order in _items(disputed)[:1]:
        oid = order["id"]
        if rng.random() < 0.5:
            await client.call(
                "resolve", "POST", f"/api/v1/orders/{oid}/resolve", json=actor, ok=(200, 409)
            )
        else:
            await client.call(
                "refund",
                "POST",
                f"/api/v1/orders/{oid}/refund",
                json={**actor, "amount": "1.00"} if rng.random() < 0.5 else actor,
                ok=(200, 409, 422),  # 422: more than is left to refund
            )
        await client.call("events", "GET", f"/api/v1/orders/{oid}/events")
        await client.call("view", "GET", f"/api/v1/orders/{oid}")


_Persona = Callable[[_Client, random.Random, int], Coroutine[Any, Any, None]]
_PERSONAS: dict[str, tuple[_Persona, range]] = {
    "buyer": (_buyer, BUYERS),
    "seller": (_seller, SELLERS),
    "support": (_support, range(1, 10)),
}


async def drive(base: str, *, seed: int = 7, budget_s: float = _TRAFFIC_BUDGET_S) -> Traffic:
    """Play the bounded traffic mix against `base`: every user runs a fixed number of
    sessions and stops early when the time budget is spent."""
    traffic = Traffic()
    deadline = time.monotonic() + budget_s
    started = time.monotonic()

    async def user(kind: str, n: int, session: aiohttp.ClientSession) -> None:
        persona, ids = _PERSONAS[kind]
        rng = random.Random(f"{seed}-{kind}-{n}")
        uid = rng.choice(ids)
        client = _Client(session, base, f"{kind}-{uid}", traffic, deadline, rng)
        for _ in range(_SESSIONS[kind][1]):
            if time.monotonic() > deadline:
                return
            await persona(client, rng, uid)

    timeout = aiohttp.ClientTimeout(total=_REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(
            *(
                user(kind, n, session)
                for kind, (users, _) in _SESSIONS.items()
                for n in range(users)
            )
        )
    traffic.seconds = time.monotonic() - started
    return traffic


def check_story(report: Report, failing: str = FAILING_ROUTE) -> list[str]:
    """Why the report does not tell the demo's story (empty when it does): `failing` fails
    on the fee-rounding mismatch and every other route passes."""
    problems: list[str] = []
    by_name = {r.route: r for r in report.routes}
    bad = by_name.get(failing)
    if bad is None:
        problems.append(f"{failing}: no comparisons recorded")
    else:
        if bad.passed:
            problems.append(f"{failing}: passed its gate, but its candidate has the rounding bug")
        if not any(p.pattern == _FEE_PATH for p in bad.top_paths):
            problems.append(f"{failing}: {_FEE_PATH} is not among its differing paths")
    others = [r for r in report.routes if r.route != failing]
    if not others:
        problems.append("no other route was compared")
    problems.extend(
        f"{r.route}: failed its gate ({'; '.join(r.reasons)})" for r in others if not r.passed
    )
    return problems


def _stage(route: RouteSettings) -> str:
    """What a route's mode means for its traffic, in a few words."""
    percent = f"{route.shadow.percent:g}%"
    if route.mode == "shadow":
        return f"legacy serves; {route.candidate} compared on {percent} of reads"
    if route.mode == "canary":
        sticky = route.canary.sticky_header or route.canary.sticky_cookie
        return f"{route.candidate} serves {route.canary.percent:g}% of users (sticky {sticky})"
    if route.mode == "extracted":
        return f"{route.candidate} serves; legacy verifies {percent} of reads"
    return "the monolith alone"


def _shown(path: Path) -> str:
    """`path` relative to the current directory when it is below it (shorter commands)."""
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(Path.cwd()))
    return str(path)


def _say(text: str = "") -> None:
    print(text, flush=True)


async def _play(stack: Stack) -> int:
    from shadow.report import Thresholds, build_report
    from shadow.report_format import render

    t0 = time.monotonic()
    await stack.start()
    s = stack.settings
    _say(f"[1/4] stack up in {time.monotonic() - t0:.1f}s (SQLite in {_shown(stack.workdir)}/)")
    _say(f"      legacy monolith   {stack.legacy_url}  ({_SEED} seeded orders)")
    _say(f"      port's next build {stack.next_url}  (rounds the fee half-even)")
    _say(f"      proxy             {stack.proxy_url}   admin {stack.admin_url}")
    for route in s.routes:
        _say(f"      route {route.name:<14} {route.mode:<9} {_stage(route)}")

    users = ", ".join(f"{n} {_ROLES[kind]}" for kind, (n, _) in _SESSIONS.items())
    _say(f"[2/4] traffic through the proxy: {users}")
    traffic = await drive(stack.proxy_url)
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(traffic.requests.items()))
    codes = ", ".join(f"{k}: {v}" for k, v in sorted(traffic.statuses.items()))
    _say(f"      {traffic.total} requests in {traffic.seconds:.1f}s ({kinds})")
    _say(f"      statuses {codes}")

    t1 = time.monotonic()
    stored = await stack.wait_recorded(_FLUSH_TIMEOUT_S)
    flushed = time.monotonic() - t1
    _say(f"[3/4] {stored} comparisons stored in {_shown(stack.store_path)} ({flushed:.1f}s)")

    thresholds = {r.name: Thresholds.from_promotion(r.promotion) for r in s.routes}
    report = await build_report(stack.store_url, thresholds_by_route=thresholds)
    html = stack.workdir / "report.html"
    html.write_text(render(report, "html"), encoding="utf-8")
    html_note = f"(HTML: {_shown(html)})"
    _say(f"[4/4] the per-route report, as strangler report prints it {html_note}:")
    _say()
    _say(render(report, "text").rstrip())
    _say()
    problems = check_story(report) + [f"unexpected answer: {u}" for u in traffic.unexpected[:5]]
    if problems:
        _say("The demo did not play out as expected:")
        for p in problems:
            _say(f"  - {p}")
    else:
        passing = ", ".join(r.route for r in report.routes if r.passed)
        _say(f"Story: {FAILING_ROUTE} FAILS its gate: the port rounds {_FEE_PATH} half-even,")
        _say(f"one cent off on some orders, so it must not be promoted. {passing}: PASS.")
    _next_steps(stack, html)
    _say(f"Done in {time.monotonic() - t0:.1f}s.")
    return 1 if problems else 0


def _next_steps(stack: Stack, html: Path) -> None:
    config = _shown(stack.config_path)
    store = f"sqlite:///{_shown(stack.store_path)}"
    _say()
    _say("Try next:")
    _say(f"  strangler report --store {store} --config {config} --format markdown")
    _say(f"  strangler report --store {store} --config {config} --format html -o {_shown(html)}")
    _say(f"  strangler migrate status --config {config} --store {store}")
    _say(f"  strangler explain --config {config} GET /api/v1/orders/42")
    _say(f"  strangler check --config {config}")
    admin, proxy = f"http://127.0.0.1:{_PORTS[1]}", f"http://127.0.0.1:{_PORTS[0]}"
    if stack.ports is not None:  # the running stack's own addresses
        admin, proxy = stack.admin_url, stack.proxy_url
    _say("  strangler demo --keep-running   # keeps the stack up; then, while it runs:")
    _say(f"    curl {admin}/-/routes")
    _say(f"    curl {admin}/-/metrics")
    _say(f"    open {admin}/-/ui")
    _say(f"    curl {proxy}/api/v1/orders/42")


async def _main(keep_running: bool) -> int:
    from proxy.stack import Stack, StackError

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    stop = asyncio.Event()  # set by a signal once the story is told (--keep-running)
    told = False

    def interrupt() -> None:
        if stop.is_set():  # later signals must not cut the clean-up short
            return
        stop.set()
        _say("\nstopping...")
        if not told:
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupt)
    stack = Stack(WORKDIR.resolve(), seed=_SEED, ports=_PORTS if keep_running else None)
    try:
        code = await _play(stack)
        if keep_running:
            told = True
            _say("The stack keeps running (--keep-running); Ctrl-C stops it.")
            await stop.wait()
        return code
    except asyncio.CancelledError:
        return 130
    except (StackError, OSError) as e:
        print(f"strangler demo: {e}", file=sys.stderr)
        return 2
    finally:
        await asyncio.shield(stack.stop())


def run_demo(*, keep_running: bool) -> int:
    """Run the demo; see the module docstring for the exit codes."""
    _say("strangler demo: a legacy Order API, its extracted service, and the proxy between them")
    with asyncio.Runner() as runner:
        return runner.run(_main(keep_running))
