"""The composition root: `create_proxy(settings)` wires the data plane, pools, admin and apps."""

from __future__ import annotations

import asyncio
import importlib
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy.accesslog import AccessLog
from proxy.dataplane import DataPlane, RoutePlan, RoutingState
from proxy.metrics import Metrics
from proxy.routes import RouteTable
from proxy.settings import BackendSettings, Settings
from proxy.upstream import UpstreamPool

__all__ = ["Proxy", "create_proxy"]

DEFAULT_ROUTE = "_default"


@dataclass(frozen=True, slots=True)
class _Backend:
    """A live backend: its settings, pool and, for in-process handlers, the internal site."""

    settings: BackendSettings
    pool: UpstreamPool
    runner: web.AppRunner | None


class Proxy:
    """A running (or ready to run) strangler: data plane, admin listener, in-process apps."""

    def __init__(
        self,
        settings: Settings,
        *,
        access_log: AccessLog | None = None,
        metrics: Metrics | None = None,
        reuse_port: bool = False,
        admin: bool = True,
        data_plane: bool = True,
    ) -> None:
        self.settings = settings
        self.access_log = (
            access_log if access_log is not None else AccessLog(enabled=settings.access_log)
        )
        self.metrics = metrics if metrics is not None else Metrics()
        self.reuse_port = reuse_port
        self.with_admin = admin
        self.with_data_plane = data_plane
        self.plane: DataPlane | None = None
        self._backends: dict[str, _Backend] = {}
        self._server: asyncio.Server | None = None
        self._admin_runner: web.AppRunner | None = None
        self._reload_lock = asyncio.Lock()
        self.address: tuple[str, int] = (settings.host, settings.port)
        self.admin_address: tuple[str, int] = (settings.admin.host, settings.admin.port)
        self.started_at = time.time()
        self.ready = False
        self.last_reload_error: str | None = None
        self.reload_hook: Callable[[], Awaitable[None]] | None = None  # supervisor fan-out
        self.scrape_registry: CollectorRegistry | None = None  # multiprocess aggregation

    async def start(self) -> None:
        """Bind the listeners; returns when the proxy is ready to serve."""
        if self.with_data_plane:
            await self._start_data_plane()
        if self.with_admin:
            from proxy.admin import start_admin

            self._admin_runner, self.admin_address = await start_admin(self)
        self.metrics.set_config_version(self.settings.version)
        self.ready = True

    async def _start_data_plane(self) -> None:
        loop = asyncio.get_running_loop()
        self._backends = await self._build_backends(self.settings, {})
        state = self._build_state(self.settings, self._backends)
        self.plane = DataPlane(state, self.metrics, self.access_log, self.settings.limits, loop)
        self._server = await loop.create_server(
            self.plane.protocol_factory,
            self.settings.host,
            self.settings.port,
            reuse_port=self.reuse_port or None,
            backlog=1024,
        )
        self.address = _sockname(self._server.sockets[0])
        self.plane.start_sweeper()

    async def reload(self, settings: Settings) -> None:
        """Swap in a new config; in-flight requests finish on the table they started with."""
        async with self._reload_lock:
            if self.plane is None:  # admin-only (supervisor): workers reload themselves
                self.settings = settings
                self.metrics.set_config_version(settings.version)
                return
            old = self._backends
            backends = await self._build_backends(settings, old)
            state = self._build_state(settings, backends)
            self.plane.state = state
            self.plane.limits = settings.limits
            self.access_log.enabled = settings.access_log
            self._backends = backends
            self.settings = settings
            for name, be in old.items():
                if backends.get(name) is not be:
                    be.pool.close()
                    if be.runner is not None:
                        await be.runner.cleanup()
            self.metrics.set_config_version(settings.version)

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting, let in-flight requests finish within `grace_s`, then close."""
        self.ready = False
        plane = self.plane
        if self._server is not None:
            self._server.close()
        if plane is not None:
            plane.draining = True
            deadline = time.monotonic() + grace_s
            while True:
                for conn in list(plane.connections):
                    conn.close_if_idle()
                if not plane.connections or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.02)
            for conn in list(plane.connections):
                conn.abort()
            plane.stop_sweeper()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
            self._admin_runner = None
        for be in self._backends.values():
            be.pool.close()
            if be.runner is not None:
                await be.runner.cleanup()
        self._backends = {}
        self.access_log.flush()

    async def reload_from_file(self, path: str | None = None) -> tuple[bool, list[str]]:
        """Validate the config file whole and swap it in; on any error keep the old one."""
        from proxy.admin import reload_settings

        settings, errors = await reload_settings(path or self.settings.path)
        if settings is None:
            self.metrics.reloads.labels("error").inc()
            self.last_reload_error = "; ".join(errors)
            self.access_log.event(
                event="reload_rejected", errors=errors, kept_version=self.settings.version
            )
            return False, errors
        try:
            await self.reload(settings)
        except Exception as exc:  # a backend that cannot start: keep the old config
            self.metrics.reloads.labels("error").inc()
            self.last_reload_error = f"{type(exc).__name__}: {exc}"
            self.access_log.event(event="reload_failed", error=self.last_reload_error)
            return False, [self.last_reload_error]
        self.metrics.reloads.labels("ok").inc()
        self.last_reload_error = None
        self.access_log.event(event="reloaded", version=settings.version)
        if self.reload_hook is not None:
            await self.reload_hook()
        return True, []

    def metrics_registry(self) -> CollectorRegistry:
        """The registry `/-/metrics` serves (all workers' values under a supervisor)."""
        return self.scrape_registry or self.metrics.registry

    def route_counts(self) -> dict[str, int]:
        """Requests answered so far per route (from the metrics)."""
        counts: dict[str, int] = {}
        for family in self.metrics_registry().collect():
            if family.name != "strangler_requests":
                continue
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    route = sample.labels.get("route", "")
                    counts[route] = counts.get(route, 0) + int(sample.value)
        return counts

    async def _build_backends(
        self, settings: Settings, old: dict[str, _Backend]
    ) -> dict[str, _Backend]:
        loop = asyncio.get_running_loop()
        out: dict[str, _Backend] = {}
        for name, bs in settings.backends.items():
            prev = old.get(name)
            if prev is not None and prev.settings == bs:
                out[name] = prev
                continue
            runner: web.AppRunner | None = None
            if bs.handlers is not None:
                runner, host, port = await _start_handlers(bs)
            else:
                host, port = bs.host, bs.port
            pool = UpstreamPool(
                name,
                host,
                port,
                connect_timeout=bs.connect_timeout,
                timeout=bs.timeout,
                max_connections=bs.max_connections,
                idle_timeout=bs.idle_timeout,
                loop=loop,
            )
            out[name] = _Backend(bs, pool, runner)
        return out

    def _build_state(self, settings: Settings, backends: dict[str, _Backend]) -> RoutingState:
        table = RouteTable(settings)
        metrics = self.metrics

        def plan(name: str, mode: str, backend: str) -> RoutePlan:
            be = backends[backend]
            host = be.settings.host_header
            return RoutePlan(
                name=name,
                mode=mode,
                backend=backend,
                pool=be.pool,
                metrics=metrics.route(name, backend, mode),
                host_header=host.encode() if host else None,
            )

        plans = []
        for route in table.routes:
            serving = route.primary
            if route.mode == "extracted" and route.candidate is not None:
                serving = route.candidate
            plans.append(plan(route.name, route.mode, serving))
        default = plan(DEFAULT_ROUTE, "legacy", settings.default_backend)
        return RoutingState(settings.version, table, tuple(plans), default)


async def _start_handlers(bs: BackendSettings) -> tuple[web.AppRunner, str, int]:
    """Run an in-process handler app on an internal loopback listener."""
    assert bs.handlers is not None
    module = importlib.import_module(bs.handlers)
    factory = module.create_app
    app = factory(bs.db) if bs.db is not None else factory()
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None and isinstance(server, asyncio.Server)
    host, port = _sockname(server.sockets[0])
    return runner, host, port


def _sockname(sock: socket.socket) -> tuple[str, int]:
    name = sock.getsockname()
    return str(name[0]), int(name[1])


def create_proxy(settings: Settings, **kwargs: Any) -> Proxy:
    """Build a proxy for `settings`; `await proxy.start()` to bind it."""
    return Proxy(settings, **kwargs)
