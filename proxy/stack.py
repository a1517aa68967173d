"""A whole strangler stack on loopback: the seeded monolith, the ported service and the proxy.

Used by `strangler demo`, by the load tests and by end-to-end tests. Everything lives in one
work directory (SQLite databases, the generated config) and one event loop: the monolith and
the port's next build run as aiohttp apps on ephemeral loopback ports, the proxy runs the
extracted Order service in-process, and `stop()` (or leaving `async with`) tears it all down.
"""

from __future__ import annotations

import asyncio
import io
import socket
import time
from pathlib import Path
from typing import Any, Literal

from aiohttp import web
from ruamel.yaml import YAML

from proxy.app import Proxy, create_proxy
from proxy.settings import Settings, load

__all__ = [
    "PROFILES",
    "Profile",
    "Stack",
    "StackError",
    "demo_template",
    "render_config",
    "sqlite_url",
]

Profile = Literal["demo", "proxy-only"]
PROFILES: tuple[Profile, ...] = ("demo", "proxy-only")
"""`demo`: routes at every stage of the extraction; `proxy-only`: every route in legacy mode."""

_HOST = "127.0.0.1"
_CANDIDATE_BACKENDS = ("orders", "orders_next")
_START_RETRIES = 3
_SEED_AGE_MS = 11 * 24 * 3600 * 1000


class StackError(Exception):
    """The stack could not start (a missing template, a port that stayed busy, ...)."""


def demo_template() -> Path:
    """The demo config: `config/demo.yaml` of a source checkout, else the copy installed
    with the package (`proxy/demo.yaml`, kept identical by a test)."""
    here = Path(__file__).resolve().parent
    for path in (here.parent / "config" / "demo.yaml", here / "demo.yaml"):
        if path.is_file():
            return path
    raise StackError(f"demo config not found beside {here}: reinstall strangler")


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy async URL of a SQLite file."""
    return f"sqlite+aiosqlite:///{path}"


def render_config(
    template: str,
    *,
    profile: Profile,
    listen: int,
    admin: int,
    legacy_url: str,
    next_url: str,
    db_url: str,
    store_url: str,
) -> str:
    """The template with this stack's ports and paths (comments kept); `proxy-only` puts
    every route in legacy mode and drops the candidate backends."""
    yaml = YAML()
    yaml.preserve_quotes = True
    doc: Any = yaml.load(template)
    doc["listen"] = f"{_HOST}:{listen}"
    doc["admin"]["listen"] = f"{_HOST}:{admin}"
    backends = doc["backends"]
    backends["legacy"]["url"] = legacy_url
    backends["orders"]["db"] = db_url
    backends["orders_next"]["url"] = next_url
    doc["store"]["url"] = store_url
    if profile == "proxy-only":
        for name in _CANDIDATE_BACKENDS:
            del backends[name]
        for route in doc["routes"]:
            route["mode"] = "legacy"
            for key in ("candidate", "shadow", "compare", "canary", "promotion"):
                if key in route:
                    del route[key]
    out = io.StringIO()
    yaml.dump(doc, out)
    return out.getvalue()


def _free_port(preferred: int = 0) -> int:
    """`preferred` when it is free on loopback right now, else an ephemeral free port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((_HOST, preferred))
        except OSError:
            s.bind((_HOST, 0))
        return int(s.getsockname()[1])


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    """Run `app` on an ephemeral loopback port; returns its runner and base URL."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, _HOST, 0)
        await site.start()
        sockets: Any = getattr(site._server, "sockets", None)  # asyncio or uvloop server
        port = int(sockets[0].getsockname()[1])
    except BaseException:
        await runner.cleanup()
        raise
    return runner, f"http://{_HOST}:{port}"


class Stack:
    """The monolith, the port's next build and the proxy, started and stopped as one.

    `start()` replaces the `*.db` files of `workdir`: every run begins from the same seed.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        profile: Profile = "demo",
        seed: int = 500,
        template: Path | None = None,
        ports: tuple[int, int] | None = None,
    ) -> None:
        if profile not in PROFILES:
            raise ValueError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
        self.workdir = workdir
        self.profile = profile
        self.seed = seed
        self.template = template
        self.ports = ports  # preferred (listen, admin) ports, taken when free
        self.db_path = workdir / "legacy.db"
        self.store_path = workdir / "strangler.db"
        self.config_path = workdir / f"{profile}.yaml"
        self.db_url = sqlite_url(self.db_path)
        self.store_url = sqlite_url(self.store_path)
        self.legacy_url = ""
        self.next_url = ""
        self._runners: list[web.AppRunner] = []
        self._proxy: Proxy | None = None

    @property
    def proxy(self) -> Proxy:
        """The running proxy."""
        if self._proxy is None:
            raise StackError("the stack is not running")
        return self._proxy

    @property
    def settings(self) -> Settings:
        """The proxy's effective config."""
        return self.proxy.settings

    @property
    def proxy_url(self) -> str:
        """Base URL clients use: the proxy's data plane."""
        host, port = self.proxy.address
        return f"http://{host}:{port}"

    @property
    def admin_url(self) -> str:
        """Base URL of the admin listener."""
        host, port = self.proxy.admin_address
        return f"http://{host}:{port}"

    async def start(self) -> None:
        """Create and seed the database, start both Order apps, then the proxy."""
        from extracted.app import create_app as create_port
        from extracted.schema import create_schema
        from legacy.app import create_app as create_legacy
        from legacy.seed import seed_orders

        template = (self.template or demo_template()).read_text(encoding="utf-8")
        self.workdir.mkdir(parents=True, exist_ok=True)
        for stale in self.workdir.glob("*.db*"):
            stale.unlink()
        try:
            await create_schema(self.db_url)
            # Seeded timelines run up to 10 days past their order: anchor them so that every
            # seeded event lies in the past and new events sort after them.
            anchor_ms = time.time_ns() // 1_000_000 - _SEED_AGE_MS
            await seed_orders(self.db_url, self.seed, anchor_ms=anchor_ms)
            runner, self.legacy_url = await _serve(create_legacy(self.db_url))
            self._runners.append(runner)
            if self.profile == "demo":
                port = create_port(self.db_url, fee_rounding="half_even")
                runner, self.next_url = await _serve(port)
                self._runners.append(runner)
            await self._start_proxy(template)
        except BaseException:
            await self.stop()
            raise

    async def _start_proxy(self, template: str) -> None:
        for attempt in range(_START_RETRIES):
            listen, admin = self.ports if self.ports and attempt == 0 else (0, 0)
            text = render_config(
                template,
                profile=self.profile,
                listen=_free_port(listen),
                admin=_free_port(admin),
                legacy_url=self.legacy_url,
                next_url=self.next_url or self.legacy_url,
                db_url=self.db_url,
                store_url=self.store_url,
            )
            self.config_path.write_text(text, encoding="utf-8")
            proxy = create_proxy(load(str(self.config_path)))
            try:
                await proxy.start()
            except OSError as e:  # a free port taken in between: pick others
                await proxy.stop(0)
                if attempt == _START_RETRIES - 1:
                    raise StackError(f"cannot bind the proxy: {e}") from e
                continue
            self._proxy = proxy
            return

    async def wait_recorded(self, timeout: float = 15.0) -> int:
        """Poll until every started comparison is written to the store (or dropped and
        counted); returns the store's row count. Raises StackError past `timeout`."""
        from shadow.store import Store

        proxy = self.proxy
        deadline = time.monotonic() + timeout
        store = await Store.open(self.store_url)
        try:
            while True:
                recorder = proxy.recorder
                counters = recorder.counters() if recorder is not None else {}
                written = sum(c.recorded for c in counters.values())
                settled = all(c.balanced for c in counters.values())
                try:
                    stored = await store.count()
                except Exception:  # the schema may not exist before the first batch
                    stored = 0
                idle = recorder is None or not (recorder.buffered or recorder.drops_unstored)
                if settled and stored >= written and idle:
                    return stored
                if time.monotonic() > deadline:
                    raise StackError(
                        f"comparisons not flushed within {timeout:g}s"
                        f" ({stored} stored, {written} recorded)"
                    )
                await asyncio.sleep(0.05)
        finally:
            await store.close()

    async def stop(self, grace_s: float = 2.0) -> None:
        """Stop the proxy (flushing its recorder), then the apps; safe to call twice."""
        proxy, self._proxy = self._proxy, None
        runners, self._runners = self._runners, []
        try:
            if proxy is not None:
                await proxy.stop(grace_s)
        finally:
            for runner in reversed(runners):
                await runner.cleanup()

    async def __aenter__(self) -> Stack:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
