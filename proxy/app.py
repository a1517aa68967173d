"""The composition root: `create_proxy(settings)` wires the data plane, pools, admin and apps."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy.accesslog import AccessLog
from proxy.dataplane import (
    KIND_CANARY,
    KIND_EXTRACTED,
    DataPlane,
    RouteEntry,
    RoutePlan,
    RoutingState,
)
from proxy.handlers import start_handler_app
from proxy.holds import Hold, HoldBoard, route_version, route_versions
from proxy.metrics import Metrics
from proxy.offload import OffloadFeed
from proxy.routes import Route, RouteTable, offload_wanted, offloadable
from proxy.settings import BackendSettings, Settings
from proxy.shadowing import ShadowHub, ShadowPlan
from proxy.upstream import UpstreamPool
from shadow.capture import CaptureWriter
from shadow.compare import CompareRules
from shadow.record import ComparisonRecord
from shadow.recorder import Recorder
from shadow.redact import Redactor
from shadow.rollback import Breach, RollbackWindow
from shadow.store import Store

__all__ = ["STOP_OVERRUN_S", "Proxy", "create_proxy"]

DEFAULT_ROUTE = "_default"
_SHADOW_SETTLE_S = 1.0
_ACCEPT_LINGER_S = 0.2
# Proxy.stop(grace_s) returns within grace_s + this: after the grace, what is left to flush
# (the shadow helper, rollback audits, buffered records) gets at least a short floor each.
STOP_OVERRUN_S = 4.0
_FLUSH_FLOOR_S = 1.0
# An audit record the store refuses is tried again after these delays (then every last
# one) for up to _AUDIT_RETRY_FOR_S: `migrate` holds a rolled-back route on that record.
_AUDIT_RETRY_S = (0.5, 1.0, 2.0, 5.0)
_AUDIT_RETRY_FOR_S = 600.0
_GRACE_HELPER_S = 7.0  # a shadow helper turned off by a reload: finish, flush, exit


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
        offload: bool = False,
        worker_slot: int | None = None,
    ) -> None:
        self.settings = settings
        self.access_log = (
            access_log if access_log is not None else AccessLog(enabled=settings.access_log)
        )
        self.metrics = metrics if metrics is not None else Metrics()
        self.reuse_port = reuse_port
        self.with_admin = admin
        self.with_data_plane = data_plane
        self.offload = offload  # a `serve` worker: may run a shadow helper (offload_wanted)
        self.worker_slot = worker_slot  # 1..N under `serve --workers N` (N > 1), else None
        self.plane: DataPlane | None = None
        self._backends: dict[str, _Backend] = {}
        self._server: asyncio.Server | None = None
        self._admin_runner: web.AppRunner | None = None
        self._reload_lock = asyncio.Lock()
        self._reload_file_lock = asyncio.Lock()  # one reload from the file at a time
        self.address: tuple[str, int] = (settings.host, settings.port)
        self.admin_address: tuple[str, int] = (settings.admin.host, settings.admin.port)
        self.started_at = time.time()
        self.ready = False
        self.last_reload_error: str | None = None
        # supervisor fan-out: None once every worker runs the new config, else why not
        self.reload_hook: Callable[[], Awaitable[str | None]] | None = None
        # supervisor: hands a validated config to the workers before it is swapped in here
        self.reload_prepare: Callable[[Settings], None] | None = None
        self.unready: Callable[[], str | None] | None = None  # supervisor: why workers are not
        self.store: Store | None = None
        self.recorder: Recorder | None = None
        self.redactor: Redactor | None = None
        self.hub: ShadowHub | None = None
        self.board = HoldBoard.from_env()
        self._audits: set[asyncio.Task[None]] = set()
        self.scrape_registry: CollectorRegistry | None = None  # multiprocess aggregation

    async def start(self) -> None:
        """Bind the listeners; returns when the proxy is ready to serve. On a failure (an
        address in use, a store or handler app that cannot start) what was started is
        stopped again before the error is raised."""
        try:
            if self.with_data_plane:
                await self._start_data_plane()
            if self.with_admin:
                from proxy.admin import start_admin

                self._admin_runner, self.admin_address = await start_admin(self)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.stop(0.0)
            raise
        self.metrics.set_config_version(self.settings.version)
        self.ready = True

    async def _start_data_plane(self) -> None:
        loop = asyncio.get_running_loop()
        await self._start_recording(loop)
        self._backends = await self._build_backends(self.settings, {})
        state = self._build_state(self.settings, self._backends)
        self.plane = DataPlane(
            state,
            self.metrics,
            self.access_log,
            self.settings.limits,
            loop,
            self.hub,
            self._capture_writer(self.settings),
        )
        self._server = await loop.create_server(
            self.plane.protocol_factory,
            self.settings.host,
            self.settings.port,
            reuse_port=self.reuse_port or None,
            backlog=1024,
        )
        self.address = _sockname(self._server.sockets[0])
        self.plane.pools = self.pools
        self.plane.start_sweeper()

    async def _start_recording(
        self,
        loop: asyncio.AbstractEventLoop,
        configure: Callable[[ShadowHub], None] | None = None,
    ) -> None:
        """Open the comparison store (lazily: a store that is down must not stop the proxy);
        `configure` adjusts the shadow hub before its timers start."""
        st = self.settings.store
        self.store = Store(st.url)
        sink = _LazyStore(self.store)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(sink.ensure(), 5.0)
        self.recorder = Recorder(sink, buffer_size=st.buffer_size, batch_size=st.batch_size)
        await self.recorder.start()
        self.redactor = Redactor.from_env(st.redact_json_paths)
        self.access_log.redact = self.redactor.redact_text
        self.hub = ShadowHub(
            self.recorder,
            self.redactor,
            self.metrics,
            loop,
            config_version=lambda: self.settings.version,
            board=self.board,
            on_rollback=self._on_rollback,
        )
        self.hub.cpu_budget = self.settings.limits.shadow_cpu_budget
        if configure is not None:
            configure(self.hub)
        self.hub.start()
        await self._ensure_offload(self.settings)

    async def start_recording(self, configure: Callable[[ShadowHub], None]) -> None:
        """Open the store, start the recorder and the shadow hub, set up by `configure`
        first (a shadow helper's start)."""
        await self._start_recording(asyncio.get_running_loop(), configure)

    async def swap_backends(self, settings: Settings) -> dict[str, _Backend]:
        """A shadow helper's (re)load: pools for the URL backends of `settings` (unchanged
        ones kept), the replaced ones closed; `settings` becomes current."""
        old = self._backends
        backends = await self._build_backends(settings, old, urls_only=True)
        self._apply_redaction(settings)
        self._backends, self.settings = backends, settings
        await _close_replaced(old, backends)
        return backends

    def pools(self) -> list[UpstreamPool]:
        """The upstream pool of every backend."""
        return [be.pool for be in self._backends.values()]

    async def close_backends(self) -> None:
        """Close every upstream pool and in-process app."""
        old, self._backends = self._backends, {}
        await _close_replaced(old, {})

    async def _ensure_offload(self, settings: Settings) -> None:
        """Start the shadow helper when this worker may and the config asks for it; stop
        it when a reload turns it off (its copies in flight finish first)."""
        hub = self.hub
        if hub is None or not self.with_data_plane:
            return
        wanted = offload_wanted(settings)
        if hub.feed is not None:
            if not wanted:
                feed, hub.feed = hub.feed, None
                await feed.close(_GRACE_HELPER_S)
            return
        if self.offload and wanted:
            feed = hub.feed = OffloadFeed(hub, settings.path, asyncio.get_running_loop())
            try:
                await feed.start()
            except OSError as e:  # serve anyway: copies are shed until a helper starts
                feed.lost(e)

    def _apply_redaction(self, settings: Settings) -> bool:
        """Take `settings`' redacted JSON paths into the redactor of records, captures and
        the access log; whether they changed."""
        paths = settings.store.redact_json_paths
        if paths == self.settings.store.redact_json_paths or self.hub is None:
            return False
        self.redactor = self.hub.redactor = Redactor.from_env(paths)
        self.access_log.redact = self.redactor.redact_text
        return True

    def _capture_writer(self, settings: Settings) -> CaptureWriter | None:
        """A capture writer for the config's `capture:` block: `capture.path` itself, or one
        file per worker slot under `--workers N` (`PATH.w1` .. `PATH.wN`), which a worker
        restarted in that slot appends to."""
        cs = settings.capture
        if cs is None or self.redactor is None:
            return None
        path = cs.path if self.worker_slot is None else f"{cs.path}.w{self.worker_slot}"
        return CaptureWriter(cs, self.redactor, path=path)

    async def reload(self, settings: Settings) -> None:
        """Swap in a new config; in-flight requests finish on the table they started with."""
        async with self._reload_lock:
            if self.plane is None:  # admin-only (supervisor): workers reload themselves
                self.settings = settings
                self.metrics.set_config_version(settings.version)
                return
            old = self._backends
            backends = await self._build_backends(settings, old)
            await self._ensure_offload(settings)
            state = self._build_state(settings, backends)
            self.board.prune(route_versions(settings))
            if self.hub is not None:  # a hold of an unchanged route holds from the first request
                self.hub.poll_holds(state.entries)
                held = {e.name for e in state.entries if e.held}
                for entry in self.plane.state.entries:  # holds this config lifts: say so
                    if entry.held and entry.name not in held:
                        self.metrics.auto_rollback.labels(entry.name).set(0)
            self.plane.state = state
            self.plane.limits = settings.limits
            if self.hub is not None:
                self.hub.cpu_budget = settings.limits.shadow_cpu_budget
                if self.hub.feed is not None:
                    self.hub.feed.reload()
            redacting = self._apply_redaction(settings)
            if settings.capture != self.settings.capture or redacting:
                old_capture = self.plane.capture
                self.plane.capture = self._capture_writer(settings)
                if old_capture is not None:
                    await asyncio.to_thread(old_capture.close)
            self.access_log.enabled = settings.access_log
            self._backends = backends
            self.settings = settings
            await _close_replaced(old, backends)
            self.metrics.set_config_version(settings.version)

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting, let in-flight requests finish within `grace_s`, then close; all
        phases share one deadline, so this returns within `grace_s + STOP_OVERRUN_S`."""
        self.ready = False
        plane = self.plane
        deadline = time.monotonic() + grace_s
        end = deadline + STOP_OVERRUN_S

        def left(floor: float, reserve: float = 2 * _FLUSH_FLOOR_S) -> float:
            """What is left of the grace for a phase, at least `floor` while `end` allows,
            keeping `reserve` of the overrun for the phases after it: the recorder's flush
            always gets its floor, even after a helper that took its timeout and a second
            more to exit."""
            now = time.monotonic()
            return max(0.0, min(end - reserve - now, max(floor, deadline - now)))

        if plane is not None and self._server is not None:
            # Keep accepting a moment: connections already in the listen backlog would be
            # reset by closing the listener now. While draining, every response carries
            # `Connection: close`.
            plane.draining = True
            linger_until = min(deadline, time.monotonic() + _ACCEPT_LINGER_S)
            while time.monotonic() < linger_until:
                await asyncio.sleep(0.02)
                now = plane.loop.time()
                for conn in list(plane.connections):
                    conn.close_if_idle(now)
        if self._server is not None:
            self._server.close()
        if plane is not None:
            plane.draining = True
            while True:
                now = plane.loop.time()
                for conn in list(plane.connections):
                    conn.close_if_idle(now)
                if not plane.connections or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.02)
            for conn in list(plane.connections):
                conn.abort()
            plane.stop_sweeper()
            self.metrics.flush()
            if plane.capture is not None:
                await asyncio.to_thread(plane.capture.close)
                plane.capture = None
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
            self._admin_runner = None
        if self.hub is not None and self.hub.feed is not None:
            # the helper finishes its copies and flushes its records before it exits
            await self.hub.feed.close(left(_FLUSH_FLOOR_S + _SHADOW_SETTLE_S))
        if self.hub is not None:
            # Copies still waiting for the other side get a moment to finish (the hub's tick
            # still times them out meanwhile); the rest are dropped and counted as `stopped`.
            settle_until = min(deadline, time.monotonic() + _SHADOW_SETTLE_S)
            while self.hub.in_flight and time.monotonic() < settle_until:
                await asyncio.sleep(0.02)
            self.hub.stop()
        if self._audits:
            await asyncio.wait(set(self._audits), timeout=left(_FLUSH_FLOOR_S))
            lost = list(self._audits)  # a store still refusing them: say so, stop trying
            if lost:
                self.access_log.event(event="audit_lost", records=len(lost))
                for task in lost:
                    task.cancel()
                await asyncio.wait(lost, timeout=0.5)
        if self.recorder is not None:
            await self.recorder.stop(left(_FLUSH_FLOOR_S, reserve=0.0))
            if self.hub is not None:
                self.hub.sync_counters()
        await self.close_backends()
        if self.store is not None:
            await self.store.close()
            self.store = None
        self.access_log.flush()

    async def reload_from_file(self, path: str | None = None) -> tuple[bool, list[str]]:
        """Validate the config file whole and swap it in; on any error keep the old one."""
        async with self._reload_file_lock:  # a supervisor's failed reload rolls back whole
            return await self._reload_from_file(path)

    async def _reload_from_file(self, path: str | None) -> tuple[bool, list[str]]:
        from proxy.admin import reload_settings

        settings, errors = await reload_settings(path or self.settings.path)
        if settings is not None:
            fixed = restart_only_changes(self.settings, settings)
            if fixed:  # never half-applied: /-/config would show what does not run
                errors = [
                    f"{settings.path}: {', '.join(fixed)} changed; that takes a restart"
                    " (the running config is kept)"
                ]
                settings = None
        if settings is None:
            self.metrics.reloads.labels("error").inc()
            self.last_reload_error = "; ".join(errors)
            self.access_log.event(
                event="reload_rejected", errors=errors, kept_version=self.settings.version
            )
            return False, errors
        if self.reload_prepare is not None:
            try:  # the supervisor's snapshot for the workers, before anything is swapped
                self.reload_prepare(settings)
            except OSError as exc:  # a full disk: every process keeps the old config
                return self._reload_failed(f"cannot hand the config to the workers: {exc}")
        old = self.settings
        try:
            await self.reload(settings)
        except Exception as exc:  # a backend that cannot start: keep the old config
            if self.reload_prepare is not None:
                with contextlib.suppress(OSError):
                    self.reload_prepare(self.settings)
            return self._reload_failed(f"{type(exc).__name__}: {exc}")
        if self.reload_hook is not None:
            refused = await self.reload_hook()
            if refused is not None:  # a worker kept the old config: so does everyone
                await self._roll_back(old)
                return self._reload_failed(f"{refused}; the running config is kept")
        self.metrics.reloads.labels("ok").inc()
        self.last_reload_error = None
        self.access_log.event(event="reloaded", version=settings.version)
        return True, []

    def _reload_failed(self, error: str) -> tuple[bool, list[str]]:
        self.metrics.reloads.labels("error").inc()
        self.last_reload_error = error
        self.access_log.event(event="reload_failed", error=error)
        return False, [error]

    async def _roll_back(self, old: Settings) -> None:
        """A supervisor's reload some worker refused: the snapshot, this process and the
        workers that took it (and one started meanwhile) go back to `old`."""
        assert self.reload_prepare is not None and self.reload_hook is not None
        await self.reload(old)
        try:
            self.reload_prepare(old)
        except OSError as exc:  # a full disk: the workers would load the refused one
            self.access_log.event(event="reload_rollback_incomplete", error=str(exc))
            return
        again = await self.reload_hook()
        if again is not None:
            self.access_log.event(event="reload_rollback_incomplete", error=again)

    def _on_rollback(self, route: str, mode: str, breach: Breach) -> None:
        """An automatic rollback tripped here: log it and write the audit record."""
        self.access_log.event(
            event="auto_rollback",
            route=route,
            from_mode=mode,
            reason=breach.message,
            config_version=self.settings.version,
        )
        self._audit(
            route,
            kind="auto_rollback",
            actor="strangler",
            from_mode=mode,
            to_mode="legacy",
            evidence=breach.to_json(),
        )

    def _audit(
        self,
        route: str,
        *,
        kind: str,
        actor: str,
        from_mode: str,
        to_mode: str,
        evidence: dict[str, Any] | None = None,
    ) -> None:
        """Write a route change to the store's audit log in the background, stamped with
        the time of the change; a store refusing it is tried again for a while (the hold,
        or its clearing, applies regardless)."""
        store = self.store
        url = self.settings.store.url
        when = datetime.now(UTC)

        async def audit() -> None:
            own = store is None
            target = store if store is not None else Store(url)
            give_up = time.monotonic() + _AUDIT_RETRY_FOR_S
            attempt = 0
            ready = not own  # our own store is initialised once, by the first attempt it takes
            try:
                while True:
                    try:
                        if not ready:
                            await target.init()
                            ready = True
                        await target.record_route_change(
                            route=route,
                            to_mode=to_mode,
                            actor=actor,
                            kind=kind,
                            from_mode=from_mode,
                            evidence=evidence or {},
                            time=when,
                        )
                        return
                    except Exception as exc:
                        delay = _AUDIT_RETRY_S[min(attempt, len(_AUDIT_RETRY_S) - 1)]
                        retry = time.monotonic() + delay < give_up
                        self.access_log.event(
                            event="audit_failed",
                            route=route,
                            kind=kind,
                            error=str(exc),
                            retry_in_s=delay if retry else None,
                        )
                        if not retry:
                            return
                    attempt += 1
                    await asyncio.sleep(delay)
            finally:
                if own:
                    await target.close()

        task = asyncio.get_running_loop().create_task(audit())
        self._audits.add(task)
        task.add_done_callback(self._audits.discard)

    def holds(self) -> dict[str, Hold]:
        """Routes held on legacy by an automatic rollback of the route config in force."""
        versions = route_versions(self.settings)
        return {
            route: hold
            for route, hold in self.board.read().items()
            if hold.version == versions.get(route)
        }

    def clear_hold(self, route: str, actor: str = "operator") -> bool:
        """An operator lets a rolled-back route serve its candidate again."""
        had = self.board.clear(route)
        if self.hub is not None and self.plane is not None:
            self.hub.poll_holds(self.plane.state.entries)
        if had:
            self.access_log.event(event="auto_rollback_cleared", route=route)
            mode = next((r.mode for r in self.settings.routes if r.name == route), "legacy")
            self._audit(route, kind="clear", actor=actor, from_mode="legacy", to_mode=mode)
        return had

    def metrics_registry(self) -> CollectorRegistry:
        """The registry `/-/metrics` serves (all workers' values under a supervisor)."""
        return self.scrape_registry or self.metrics.registry

    def route_counts(self) -> dict[str, int]:
        """Requests answered so far per route (from the metrics)."""
        self.metrics.flush()
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
        self, settings: Settings, old: dict[str, _Backend], *, urls_only: bool = False
    ) -> dict[str, _Backend]:
        loop = asyncio.get_running_loop()
        out: dict[str, _Backend] = {}
        for name, bs in settings.backends.items():
            if urls_only and bs.handlers is not None:
                continue  # a shadow helper: in-process candidates stay with the worker
            prev = old.get(name)
            if prev is not None and prev.settings == bs:
                out[name] = prev
                continue
            runner: web.AppRunner | None = None
            if bs.handlers is not None:
                try:
                    runner, host, port = await start_handler_app(bs)
                except BaseException:
                    # a failed start or reload: the apps started for it so far are closed
                    # (those it kept from `old` go on serving)
                    await _close_replaced({n: b for n, b in out.items() if old.get(n) is not b}, {})
                    raise
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
        hub = self.hub

        def plan(name: str, mode: str, backend: str, **extra: Any) -> RoutePlan:
            be = backends[backend]
            host = be.settings.host_header
            return RoutePlan(
                name=name,
                mode=mode,
                backend=backend,
                pool=be.pool,
                metrics=metrics.route(name, backend, mode),
                host_header=host.encode() if host else None,
                **extra,
            )

        entries = [
            RouteEntry(route.name, plan(route.name, route.mode, route.primary))
            if route.mode == "legacy" or route.candidate is None or hub is None
            else _candidate_entry(
                route,
                hub,
                backends,
                plan,
                offload=hub.feed is not None and offloadable(route, settings),
                hold_version=route_version(settings, route.settings),
            )
            for route in table.routes
        ]
        default = RouteEntry(DEFAULT_ROUTE, plan(DEFAULT_ROUTE, "legacy", settings.default_backend))
        return RoutingState(settings.version, table, tuple(entries), default)


async def _close_replaced(old: dict[str, _Backend], new: dict[str, _Backend]) -> None:
    """Close the pools and in-process apps of `old` that `new` does not keep."""
    for name, be in old.items():
        if new.get(name) is not be:
            be.pool.close()
            if be.runner is not None:
                await be.runner.cleanup()


def _shadow_plan(
    route: Route,
    hub: ShadowHub,
    backends: dict[str, _Backend],
    *,
    swapped: bool,
    rules: CompareRules | None = None,
) -> ShadowPlan:
    """The background leg of `route` (toward the candidate, or toward legacy if swapped)."""
    rs = route.settings
    cand = route.candidate
    assert cand is not None
    pool_legacy = backends[route.primary].pool
    legacy_host = backends[route.primary].settings.host_header
    cand_host = backends[cand].settings.host_header
    return ShadowPlan(
        rs,
        hub.route_state(route.name),
        target_pool=pool_legacy if swapped else backends[cand].pool,
        baseline_pool=pool_legacy if rs.compare.noise_baseline and not swapped else None,
        swapped=swapped,
        record_mode=route.mode if route.mode != "legacy" else "shadow",
        percent=rs.shadow.percent,
        rules=rules if rules is not None else CompareRules.from_settings(rs.compare),
        breaker=hub.breaker(cand),
        served_host=cand_host if swapped else legacy_host,
        target_host=legacy_host if swapped else cand_host,
    )


def helper_plans(
    settings: Settings, hub: ShadowHub, backends: dict[str, _Backend]
) -> dict[str, ShadowPlan]:
    """The plans a shadow helper runs: one per offloadable route, by route name."""
    return {
        route.name: _shadow_plan(route, hub, backends, swapped=False)
        for route in RouteTable(settings).routes
        if offloadable(route, settings)
    }


def _candidate_entry(
    route: Route,
    hub: ShadowHub,
    backends: dict[str, _Backend],
    plan: Callable[..., RoutePlan],
    *,
    offload: bool = False,
    hold_version: str = "",
) -> RouteEntry:
    """The plans of a shadow, canary or extracted route."""
    rs = route.settings
    mode = route.mode
    primary, cand = route.primary, route.candidate
    assert cand is not None
    state = hub.route_state(route.name)
    breaker = hub.breaker(cand)

    rules = CompareRules.from_settings(rs.compare)  # one per route, shared by both legs

    def shadow_plan(swapped: bool) -> ShadowPlan:
        return _shadow_plan(route, hub, backends, swapped=swapped, rules=rules)

    plain = plan(route.name, mode, primary)
    forward_shadow = shadow_plan(False)
    forward_shadow.offload = offload
    forward = plan(route.name, mode, primary, shadow=forward_shadow)
    state.mode = mode
    if mode == "shadow":
        state.window = None
        state.entry = RouteEntry(route.name, forward, plain=plain)
        return state.entry
    # a change of the route starts a new rollback window; while the route is unchanged its
    # window (and hold) carry over, so reloads of other routes cannot keep it from tripping
    if state.window is None or state.hold_version != hold_version:
        state.window = RollbackWindow(rs.promotion)
    state.hold_version = hold_version
    served = plan(
        route.name,
        mode,
        cand,
        shadow=shadow_plan(True),
        fallback=plain,
        breaker=breaker,
        route_state=state,
    )
    kind = KIND_CANARY if mode == "canary" else KIND_EXTRACTED
    state.entry = RouteEntry(
        route.name,
        forward if kind == KIND_CANARY else plain,
        kind=kind,
        candidate=served,
        plain=plain,
        breaker=breaker,
        canary_percent=rs.canary.percent,
        sticky_header=rs.canary.sticky_header,
        sticky_cookie=rs.canary.sticky_cookie,
    )
    return state.entry


class _LazyStore:
    """The recorder's sink: initialises the schema on first use, so a store down at start
    only delays recording (the recorder retries with backoff) and never stops the proxy."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._ready = False

    async def ensure(self) -> None:
        if not self._ready:
            await self.store.init()
            self._ready = True

    async def insert_batch(self, records: Sequence[ComparisonRecord]) -> int:
        await self.ensure()
        return await self.store.insert_batch(records)

    async def insert_drops(
        self, writer: str, seq: int, drops: Sequence[tuple[str, str, int]]
    ) -> None:
        await self.ensure()
        await self.store.insert_drops(writer, seq, drops)


def restart_only_changes(old: Settings, new: Settings) -> list[str]:
    """The settings a running proxy cannot take over by a reload (listeners, the store and
    its buffer) that differ between `old` and `new`."""
    pairs = {
        "listen": ((old.host, old.port), (new.host, new.port)),
        "admin.listen": ((old.admin.host, old.admin.port), (new.admin.host, new.admin.port)),
        "store.url": (old.store.url, new.store.url),
        "store.buffer_size": (old.store.buffer_size, new.store.buffer_size),
        "store.batch_size": (old.store.batch_size, new.store.batch_size),
    }
    return [key for key, (a, b) in pairs.items() if a != b]


def _sockname(sock: socket.socket) -> tuple[str, int]:
    name = sock.getsockname()
    return str(name[0]), int(name[1])


def create_proxy(settings: Settings, **kwargs: Any) -> Proxy:
    """Build a proxy for `settings`; `await proxy.start()` to bind it."""
    return Proxy(settings, **kwargs)
