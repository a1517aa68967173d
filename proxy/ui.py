"""The migration dashboard on the admin listener: the page, its assets and its JSON API.

Everything is read-only. Live figures (requests, breaker and auto-rollback state) come
from the proxy's metrics registry, so they also hold under `--workers`; rates, latency
percentiles, gate verdicts and mismatch bodies come from the comparison store: the
proxy's own `Store` when it has one, else one opened here on the configured URL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from sqlalchemy import and_, func, select

from proxy.admin import PROXY_KEY
from proxy.settings import MatchSettings, RouteSettings, Settings, parse_duration
from shadow.compare import CompareRules, compare, format_path
from shadow.http_compare import parse_json_body
from shadow.report import Report, RouteReport, Thresholds, build_report
from shadow.report_format import finite
from shadow.store import Store, StoreError, comparison_paths, comparisons, sqlite_file

if TYPE_CHECKING:
    from proxy.app import Proxy

__all__ = ["add_ui_routes"]

_ASSETS = {
    "ui.html": "text/html; charset=utf-8",
    "ui.js": "text/javascript; charset=utf-8",
    "ui.css": "text/css; charset=utf-8",
}
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_log = logging.getLogger(__name__)
_DEFAULT_WINDOW = "1h"
_OVERVIEW_BUCKETS = 30
_DETAIL_BUCKETS = 60
_TOP_PATHS = 20
_RECENT_DEFAULT = 10
_RECENT_MAX = 50
_BODY_CAP = 256 << 10  # bytes of a stored body shown in the side-by-side view
_DIFFS_CAP = 500
_EXACT = 2**53 - 1  # integers past this lose digits in a browser's JSON.parse
_JSON_DEPTH = 200  # deeper bodies are shown as text (JSON encoders and browsers stop near 255)
_STORE_TIMEOUT = 10.0
_BREAKER_STATES = {0: "closed", 1: "open", 2: "half-open"}


class _BadRequest(Exception):
    """A query parameter the API cannot use."""


@dataclass(slots=True)
class _Live:
    """What the metrics registry says right now, per route and per backend."""

    requests: dict[str, dict[str, int]] = field(default_factory=dict)  # route -> class -> n
    outcomes: dict[str, dict[str, int]] = field(default_factory=dict)  # route -> outcome -> n
    dropped: dict[str, int] = field(default_factory=dict)
    breakers: dict[str, int] = field(default_factory=dict)  # backend -> state
    held: dict[str, bool] = field(default_factory=dict)  # route -> auto-rollback in force
    holds: dict[str, dict[str, Any]] = field(default_factory=dict)  # route -> reason, time


class _StoreSource:
    """The store the dashboard reads: the proxy's own once it has one, else one opened here."""

    def __init__(self) -> None:
        self._own: Store | None = None
        self._own_url = ""
        self._opening = asyncio.Lock()  # one store opened at a time, never two for one URL

    async def get(self, proxy: Proxy) -> Store | None:
        """A store to query, or None when nothing was ever stored (no SQLite file yet)."""
        shared: Store | None = getattr(proxy, "store", None)
        if shared is not None:
            return shared
        url = proxy.settings.store.url
        async with self._opening:
            if self._own is not None and self._own_url == url:
                return self._own
            await self.close()
            db = sqlite_file(url)
            if db and not os.path.exists(db):  # nothing stored yet (the workers create it)
                return None
            # Read only: a database without strangler's tables is an error (StoreError),
            # left as it is; asked again next time (the workers may be creating the tables).
            self._own, self._own_url = await Store.open(url, create=False), url
            return self._own

    async def close(self) -> None:
        """Dispose of the store opened here, if any."""
        own, self._own = self._own, None
        if own is not None:
            await own.close()


class _Cache:
    """Answers reused for a short while, so many open dashboards cost one set of queries.

    An answer lives at least `ttl` seconds and at least three times as long as it took to
    compute, so a large store never keeps the proxy's event loop busy with dashboard reads.
    """

    def __init__(self, ttl: float = 1.0) -> None:
        self._ttl = ttl
        self._entries: dict[tuple[str, ...], tuple[float, bytes]] = {}  # key -> (expiry, body)
        self._locks: dict[tuple[str, ...], asyncio.Lock] = {}

    async def get(self, key: tuple[str, ...], make: Callable[[], Awaitable[bytes]]) -> bytes:
        """The cached answer for `key`, computing it once when stale."""
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            hit = self._entries.get(key)
            if hit is not None and time.monotonic() < hit[0]:
                return hit[1]
            started = time.monotonic()
            body = await make()
            done = time.monotonic()
            if len(self._entries) > 64:
                self._entries.clear()
                self._locks = {key: lock}
            self._entries[key] = (done + max(self._ttl, 3 * (done - started)), body)
            return body


_SOURCE: web.AppKey[_StoreSource] = web.AppKey("ui_store", _StoreSource)
_CACHE: web.AppKey[_Cache] = web.AppKey("ui_cache", _Cache)


def add_ui_routes(app: web.Application) -> None:
    """Mount the dashboard (`/-/ui`) and its API (`/-/api/...`) on an admin application."""
    app[_SOURCE] = _StoreSource()
    app[_CACHE] = _Cache()
    app.router.add_get("/-/ui", _page)
    app.router.add_get("/-/ui/", _to_page)
    app.router.add_get("/-/ui/static/{name}", _asset)
    app.router.add_get("/-/api/overview", _overview)
    app.router.add_get("/-/api/routes/{name}", _route_detail)
    app.on_cleanup.append(_close_store)


async def _close_store(app: web.Application) -> None:
    await app[_SOURCE].close()


# --- handlers ----------------------------------------------------------------------------


async def _page(request: web.Request) -> web.Response:
    return _asset_response("ui.html")


async def _to_page(request: web.Request) -> web.Response:
    raise web.HTTPFound("../ui")


async def _asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in _ASSETS:
        raise web.HTTPNotFound()
    return _asset_response(name)


async def _overview(request: web.Request) -> web.Response:
    proxy = request.app[PROXY_KEY]
    try:
        window = _window(request)
    except _BadRequest as e:
        return _error(400, "bad_request", str(e))
    key = ("overview", window, proxy.settings.version)

    async def make() -> bytes:
        return _dumps(await _overview_data(proxy, request.app[_SOURCE], window))

    return _json_body(await request.app[_CACHE].get(key, make))


async def _route_detail(request: web.Request) -> web.Response:
    proxy = request.app[PROXY_KEY]
    name = request.match_info["name"]
    try:
        window = _window(request)
        limit = _int_param(request, "limit", _RECENT_DEFAULT, 1, _RECENT_MAX)
    except _BadRequest as e:
        return _error(400, "bad_request", str(e))
    route = _configured(proxy.settings, name)
    data = await _detail_data(proxy, request.app[_SOURCE], window, name, route, limit)
    if data is None:
        return _error(404, "not_found", f"no route named {name!r} in the config or the store")
    return _json_body(_dumps(data))


# --- the overview ------------------------------------------------------------------------


async def _overview_data(proxy: Proxy, source: _StoreSource, window: str) -> dict[str, Any]:
    """Every configured route with its live counters and its stored evidence."""
    settings = proxy.settings
    now = datetime.now(UTC)
    live = _read_live(proxy)
    names = tuple(r.name for r in settings.routes)
    report, store_state = await _report(
        proxy, source, window, now, names, top_n=1, max_buckets=_OVERVIEW_BUCKETS
    )
    by_name = {r.route: r for r in report.routes} if report is not None else {}
    bucket = report.bucket_seconds if report is not None else 0
    since = _since(window, now)
    return {
        "generated_at": _iso(now),
        "config_version": settings.version,
        "window": window,
        "bucket_seconds": bucket,
        "store": store_state,
        "recorder": _recorder_state(proxy),
        "routes": [
            _route_row(r, settings, live, by_name.get(r.name), bucket, since, now)
            for r in settings.routes
        ],
        "default": {
            "backend": settings.default_backend,
            "requests": _live_requests(live, "_default"),
        },
    }


def _route_row(
    route: RouteSettings,
    settings: Settings,
    live: _Live,
    rep: RouteReport | None,
    bucket: int,
    since: datetime | None,
    now: datetime,
) -> dict[str, Any]:
    held = live.held.get(route.name, False)
    breaker = live.breakers.get(route.candidate) if route.candidate else None
    outcomes = live.outcomes.get(route.name, {})
    row: dict[str, Any] = {
        "name": route.name,
        "path": route.match.path,
        "methods": list(route.match.methods) if route.match.methods else None,
        "mode": route.mode,
        "primary": route.backend or settings.default_backend,
        "candidate": route.candidate,
        "share": _candidate_share(route, held),
        "shadow_percent": route.shadow.percent if route.mode != "legacy" else 0.0,
        "live": {
            "requests": _live_requests(live, route.name),
            "by_class": live.requests.get(route.name, {}),
            "comparisons": outcomes,
            "dropped": live.dropped.get(route.name, 0),
        },
        "breaker": _BREAKER_STATES.get(breaker, str(breaker)) if breaker is not None else None,
        "auto_rollback": held,
        "rollback": live.holds.get(route.name),
    }
    row.update(_evidence(route, rep, bucket, since, now))
    return row


def _evidence(
    route: RouteSettings,
    rep: RouteReport | None,
    bucket: int,
    since: datetime | None,
    now: datetime,
) -> dict[str, Any]:
    """The stored figures of a route (all None when the store has nothing for it)."""
    gate: dict[str, Any]
    if route.candidate is None:
        gate = {"verdict": "n/a", "reasons": ["no candidate backend"]}
    elif route.mode == "extracted":  # as `report --config` and `migrate` judge it
        gate = {"verdict": "n/a", "reasons": ["extracted: no gate left (verification shown)"]}
    elif rep is None:
        gate = {"verdict": "unknown", "reasons": ["no evidence: the store is empty or unreadable"]}
    else:
        gate = {"verdict": "pass" if rep.passed else "fail", "reasons": list(rep.reasons)}
    if rep is None:
        rep = RouteReport(route=route.name, thresholds=Thresholds.from_promotion(route.promotion))
    ci = rep.mismatch_ci
    top = rep.top_paths[0] if rep.top_paths else None
    return {
        "samples": rep.samples,
        "matches": rep.matches,
        "mismatches": rep.mismatches,
        "errors": rep.errors,
        "stored_dropped": rep.dropped,
        "mismatch_rate": rep.mismatch_rate,
        "mismatch_ci95": list(ci) if ci else None,
        "error_rate": rep.error_rate,
        "latency_ms": {
            "legacy": {"p50": rep.latency_primary.p50, "p99": rep.latency_primary.p99},
            "candidate": {"p50": rep.latency_candidate.p50, "p99": rep.latency_candidate.p99},
        },
        "p99_ratio": rep.p99_ratio,
        "top_path": {"path": top.pattern, "share": top.share} if top else None,
        "distinct_paths": rep.distinct_paths,
        "first_seen": _iso(rep.first_seen),
        "last_seen": _iso(rep.last_seen),
        "series": _series(rep, bucket, since, now),
        "gate": gate,
        "thresholds": {
            "min_samples": rep.thresholds.min_samples,
            "max_mismatch_rate": rep.thresholds.max_mismatch_rate,
            "max_error_rate": rep.thresholds.max_error_rate,
            "max_p99_ratio": rep.thresholds.max_p99_ratio,
        },
    }


def _series(
    rep: RouteReport, bucket: int, since: datetime | None, now: datetime
) -> list[dict[str, Any]]:
    """Mismatch rate per time bucket over the whole window, empty buckets included."""
    if bucket <= 0:
        return []
    start = since or rep.first_seen
    if start is None:
        return []
    first = int(start.timestamp()) // bucket
    last = int(now.timestamp()) // bucket
    first = max(first, last - 2 * _DETAIL_BUCKETS)
    cells = {int(b.start.timestamp()) // bucket: b for b in rep.series}
    out = []
    for idx in range(first, last + 1):
        b = cells.get(idx)
        out.append(
            {
                "t": _iso(datetime.fromtimestamp(idx * bucket, UTC)),
                "samples": b.samples if b else 0,
                "mismatches": b.mismatches if b else 0,
                "rate": b.mismatch_rate if b else None,
            }
        )
    return out


def _candidate_share(route: RouteSettings, held: bool) -> float:
    """Percent of the route's traffic the candidate serves."""
    if held or route.candidate is None:
        return 0.0
    if route.mode == "extracted":
        return 100.0
    if route.mode == "canary":
        return route.canary.percent
    return 0.0


# --- the route detail --------------------------------------------------------------------


async def _detail_data(
    proxy: Proxy,
    source: _StoreSource,
    window: str,
    name: str,
    route: RouteSettings | None,
    limit: int,
) -> dict[str, Any] | None:
    now = datetime.now(UTC)
    live = _read_live(proxy)
    report, store_state = await _report(
        proxy, source, window, now, (name,), top_n=_TOP_PATHS, max_buckets=_DETAIL_BUCKETS
    )
    rep = report.routes[0] if report is not None and report.routes else None
    if route is None and (rep is None or rep.total == 0):
        return None
    if route is None:  # stored but no longer configured: show what the store holds
        assert rep is not None
        methods = (rep.method,) if rep.method else None
        route = RouteSettings(name=name, match=MatchSettings(rep.path, methods))
    bucket = report.bucket_seconds if report is not None else 0
    since = _since(window, now)
    row = _route_row(route, proxy.settings, live, rep, bucket, since, now)
    row["configured"] = _configured(proxy.settings, name) is not None
    extra: dict[str, Any] = {"top_paths": [], "recent": [], "changes": []}
    try:  # the report's store (asked only when it found the route: else nothing to show)
        store = await source.get(proxy) if store_state["ok"] and rep is not None else None
    except StoreError as e:  # the store's URL changed since the report: not a store (yet)
        store, store_state = None, {"ok": False, "error": _short(e)}
    if store is not None and rep is not None:
        try:
            extra = await asyncio.wait_for(
                _stored_detail(
                    store, name, rep, since, limit, CompareRules.from_settings(route.compare)
                ),
                _STORE_TIMEOUT,
            )
        except (StoreError, OSError, TimeoutError) as e:
            store_state = {"ok": False, "error": _short(e)}
        except Exception as e:  # a store that answers but cannot be read
            store_state = {"ok": False, "error": _short(e)}
    return {
        "generated_at": _iso(now),
        "config_version": proxy.settings.version,
        "window": window,
        "bucket_seconds": bucket,
        "store": store_state,
        "route": row,
        "noise_paths": [{"path": n.pattern, "count": n.count} for n in rep.noise_paths]
        if rep is not None
        else [],
        **extra,
    }


async def _stored_detail(
    store: Store,
    name: str,
    rep: RouteReport,
    since: datetime | None,
    limit: int,
    rules: CompareRules,
) -> dict[str, Any]:
    """Top paths with first/last seen, the latest mismatches with both bodies, route changes."""
    patterns = [p.pattern for p in rep.top_paths]
    t, c = comparison_paths, comparisons
    seen: dict[str, tuple[datetime | None, datetime | None]] = {}
    recent: list[dict[str, Any]] = []
    async with store.engine.connect() as conn:
        if patterns:
            where = [t.c.route == name, t.c.kind == "diff", t.c.pattern.in_(patterns)]
            if since is not None:
                where.append(t.c.time >= since)
            query = (
                select(t.c.pattern, func.min(t.c.time), func.max(t.c.time))
                .where(and_(*where))
                .group_by(t.c.pattern)
            )
            for pattern, first, last in await conn.execute(query):
                seen[pattern] = (first, last)
        where = [c.c.route == name, c.c.outcome == "mismatch"]
        if since is not None:
            where.append(c.c.time >= since)
        query = (
            select(
                c.c.id,
                c.c.time,
                c.c.method,
                c.c.request_path,
                c.c.status_primary,
                c.c.status_candidate,
                c.c.latency_primary_ms,
                c.c.latency_candidate_ms,
                c.c.diff_paths,
                c.c.primary_body,
                c.c.candidate_body,
                c.c.request_id,
                c.c.config_version,
            )
            .where(and_(*where))
            .order_by(c.c.time.desc(), c.c.id.desc())
            .limit(limit)
        )
        for row in await conn.execute(query):
            recent.append(_mismatch(row, rules))
    changes = await store.route_changes(name, limit=10)
    return {
        "top_paths": [
            {
                "path": p.pattern,
                "count": p.count,
                "share": p.share,
                "first_seen": _iso(seen.get(p.pattern, (None, None))[0]),
                "last_seen": _iso(seen.get(p.pattern, (None, None))[1]),
                "example": {
                    "path": p.example.path,
                    "legacy": p.example.primary,
                    "candidate": p.example.candidate,
                    **_exact_texts(p.example.primary, p.example.candidate),
                }
                if p.example
                else None,
            }
            for p in rep.top_paths
        ],
        "recent": recent,
        "changes": [
            {
                "time": _iso(ch.time),
                "kind": ch.kind,
                "actor": ch.actor,
                "from_mode": ch.from_mode,
                "to_mode": ch.to_mode,
                "from_percent": ch.from_percent,
                "to_percent": ch.to_percent,
            }
            for ch in changes
        ],
    }


def _mismatch(row: Any, rules: CompareRules) -> dict[str, Any]:
    """One stored mismatch with both bodies and, when both are JSON, their differences."""
    legacy_kind, legacy = _decode_body(row.primary_body)
    cand_kind, cand = _decode_body(row.candidate_body)
    diffs: list[dict[str, Any]] = []
    truncated = False
    if legacy_kind == "json" and cand_kind == "json":
        result = compare(legacy, cand, rules)
        truncated = result.truncated or len(result.differences) > _DIFFS_CAP
        diffs = [
            {
                "path": d.path,
                "pattern": d.pattern,
                "kind": d.kind,
                "legacy": d.primary,
                "candidate": d.candidate,
                **_exact_texts(d.primary, d.candidate),
            }
            for d in result.differences[:_DIFFS_CAP]
        ]
    try:
        patterns = [str(p) for p in orjson.loads(row.diff_paths or "[]")]
    except orjson.JSONDecodeError:
        patterns = []
    return {
        "id": row.id,
        "time": _iso(row.time),
        "method": row.method,
        "request_path": row.request_path,
        "request_id": row.request_id,
        "config_version": row.config_version,
        "status": {"legacy": row.status_primary, "candidate": row.status_candidate},
        "latency_ms": {"legacy": row.latency_primary_ms, "candidate": row.latency_candidate_ms},
        "patterns": patterns,
        "bodies": {
            "legacy": _body(legacy_kind, legacy),
            "candidate": _body(cand_kind, cand),
        },
        "differences": diffs,
        "differences_truncated": truncated,
    }


def _decode_body(raw: bytes | str | None) -> tuple[str, Any]:
    """("json", value), ("text", str) or ("none", None) for a stored body."""
    if raw is None:
        return "none", None
    data = raw.encode() if isinstance(raw, str) else bytes(raw)
    if len(data) <= _BODY_CAP:
        try:  # decoded as the compare pipeline decodes (exact big integers)
            value = parse_json_body(data)
        except ValueError:
            pass
        else:
            if _nesting(value) <= _JSON_DEPTH:
                return "json", value
    text = data[:_BODY_CAP].decode("utf-8", "replace")
    return "text", text + ("\n... (truncated)" if len(data) > _BODY_CAP else "")


def _body(kind: str, value: Any) -> dict[str, Any]:
    """A body for the page; `exact`, when present, holds the digits of its integers past
    2^53 by path (a browser's JSON.parse rounds them)."""
    exact = _exact_numbers(value) if kind == "json" else {}
    return {"format": kind, "value": value, **({"exact": exact} if exact else {})}


def _exact_numbers(value: Any) -> dict[str, str]:
    """Path -> digits of every integer a browser would round (paths as `compare` writes them)."""
    found: dict[str, str] = {}
    stack: list[tuple[Any, str]] = [(value, "$")]
    while stack:
        v, path = stack.pop()
        if type(v) is int:
            if not -_EXACT <= v <= _EXACT:
                found[path] = str(v)
        elif isinstance(v, dict):
            stack.extend((x, path + format_path([str(k)])[1:]) for k, x in v.items())
        elif isinstance(v, list):
            stack.extend((x, f"{path}[{i}]") for i, x in enumerate(v))
    return found


def _exact_texts(legacy: Any, candidate: Any) -> dict[str, str]:
    """`legacy_text` / `candidate_text`: the exact JSON text of a value holding integers past
    2^53 (absent otherwise: the browser's own rendering is exact)."""
    texts = {}
    for key, value in (("legacy_text", legacy), ("candidate_text", candidate)):
        if _exact_numbers(value):
            texts[key] = json.dumps(
                finite(value), default=str, ensure_ascii=False, separators=(",", ":")
            )
    return texts


def _nesting(value: Any) -> int:
    """How deep arrays and objects nest in a decoded JSON value (without recursion)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict):
            v = list(v.values())
        if isinstance(v, list):
            deepest = max(deepest, depth)
            stack.extend((x, depth + 1) for x in v if isinstance(x, dict | list))
    return deepest


# --- shared reading ----------------------------------------------------------------------


async def _report(
    proxy: Proxy,
    source: _StoreSource,
    window: str,
    now: datetime,
    names: tuple[str, ...],
    *,
    top_n: int,
    max_buckets: int,
) -> tuple[Report | None, dict[str, Any]]:
    """The report over the window, or None with the reason the store could not give one."""
    try:
        store = await source.get(proxy)
    except StoreError as e:
        return None, {"ok": False, "error": _short(e)}
    if store is None:
        return None, {"ok": True, "error": None, "empty": True}
    thresholds = {r.name: Thresholds.from_promotion(r.promotion) for r in proxy.settings.routes}
    since = _since(window, now)

    async def read(routes: tuple[str, ...]) -> Report:
        return await build_report(
            store,
            since=since,
            routes=routes,
            thresholds_by_route=thresholds,
            top_n=top_n,
            max_buckets=max_buckets,
            now=now,
        )

    async def read_all() -> Report:
        if len(names) <= 1:
            return await read(names)
        # Unfiltered, the report finds the time span in two queries instead of two per
        # route; the configured routes it did not see are then judged on no data.
        report = await read(())
        seen = {r.route for r in report.routes}
        missing = tuple(n for n in names if n not in seen)
        if not missing:
            return report
        extra = await read(missing)
        return replace(report, routes=report.routes + extra.routes)

    try:
        report = await asyncio.wait_for(read_all(), _STORE_TIMEOUT)
    except (StoreError, OSError, TimeoutError) as e:
        return None, {"ok": False, "error": _short(e) or "the store did not answer in time"}
    return report, {"ok": True, "error": None}


def _read_live(proxy: Proxy) -> _Live:
    """One pass over the metrics registry."""
    live = _Live()
    for family in proxy.metrics_registry().collect():
        name = family.name
        for s in family.samples:
            labels = s.labels
            if name == "strangler_requests" and s.name.endswith("_total"):
                per = live.requests.setdefault(labels.get("route", ""), {})
                cls = labels.get("status_class", "")
                per[cls] = per.get(cls, 0) + int(s.value)
            elif name == "strangler_shadow_comparisons" and s.name.endswith("_total"):
                per = live.outcomes.setdefault(labels.get("route", ""), {})
                out = labels.get("outcome", "")
                per[out] = per.get(out, 0) + int(s.value)
            elif name == "strangler_shadow_dropped" and s.name.endswith("_total"):
                route = labels.get("route", "")
                live.dropped[route] = live.dropped.get(route, 0) + int(s.value)
            elif name == "strangler_breaker_state" and not math.isnan(s.value):
                live.breakers[labels.get("backend", "")] = int(s.value)
            elif name == "strangler_auto_rollback" and not math.isnan(s.value):
                route = labels.get("route", "")
                live.held[route] = live.held.get(route, False) or s.value >= 1
    holds = getattr(proxy, "holds", None)
    if callable(holds):
        try:
            for route, hold in holds().items():
                live.held[route] = True
                live.holds[route] = {
                    "reason": str(getattr(hold, "reason", "")),
                    "time": _iso(datetime.fromtimestamp(float(getattr(hold, "time", 0)), UTC)),
                }
        except Exception:  # the page must render even if the holds cannot be read
            _log.exception("dashboard: cannot read the automatic-rollback holds")
    return live


def _live_requests(live: _Live, route: str) -> int:
    return sum(live.requests.get(route, {}).values())


def _recorder_state(proxy: Proxy) -> dict[str, Any] | None:
    recorder = getattr(proxy, "recorder", None)
    if recorder is None:
        return None
    return {
        "buffered": getattr(recorder, "buffered", None),
        "store_down_for": getattr(recorder, "store_down_for", None),
        "last_error": getattr(recorder, "last_error", "") or None,
    }


def _configured(settings: Settings, name: str) -> RouteSettings | None:
    for route in settings.routes:
        if route.name == name:
            return route
    return None


def _window(request: web.Request) -> str:
    window = request.query.get("since", _DEFAULT_WINDOW).strip() or _DEFAULT_WINDOW
    if window == "all":
        return window
    try:
        seconds = _window_seconds(window)
    except ValueError as e:
        raise _BadRequest(f"since: {e}; or 'all'") from None
    if seconds <= 0:
        raise _BadRequest("since must be positive")
    try:
        _since(window, datetime.now(UTC))
    except OverflowError:
        raise _BadRequest("since reaches before the year 1; use 'all'") from None
    return window


def _window_seconds(window: str) -> float:
    if window.endswith("d") and window[:-1].isdigit():
        return int(window[:-1]) * 86400.0
    return parse_duration(window)


def _since(window: str, now: datetime) -> datetime | None:
    return None if window == "all" else now - timedelta(seconds=_window_seconds(window))


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _BadRequest(f"{name} must be an integer") from None
    return min(max(value, lo), hi)


def _asset_response(name: str) -> web.Response:
    body = _read_asset(name)
    return web.Response(body=body, headers={**_HEADERS, "Content-Type": _ASSETS[name]})


_ASSET_CACHE: dict[str, bytes] = {}


def _read_asset(name: str) -> bytes:
    body = _ASSET_CACHE.get(name)
    if body is None:
        body = resources.files("proxy").joinpath("static", name).read_bytes()
        _ASSET_CACHE[name] = body
    return body


def _dumps(data: Mapping[str, Any]) -> bytes:
    try:
        return orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:  # integers beyond 64 bits from a stored body: the stdlib writes them
        return json.dumps(finite(data), default=str).encode()


def _json_body(body: bytes) -> web.Response:
    return web.Response(
        body=body,
        headers={**_HEADERS, "Content-Type": "application/json"},
    )


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None
