"""The admin listener (aiohttp): health, readiness, metrics, effective config, routes, reload."""

from __future__ import annotations

import dataclasses
import hmac
import os
import re
import socket
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy.routes import offload_wanted
from proxy.serve import load_config
from proxy.settings import ConfigError, Settings
from shadow.redact import mask_secrets

if TYPE_CHECKING:
    from proxy.app import Proxy

__all__ = ["PROXY_KEY", "redact_secrets", "redacted_config", "start_admin"]

PROXY_KEY: web.AppKey[Proxy] = web.AppKey("proxy")
# header and query names whose values are credentials (matched values are shown otherwise)
_SECRET_NAME = re.compile(r"(?i)auth|cookie|token|secret|pass|pwd|key|session|signature|cred")
redact_secrets = mask_secrets  # passwords in URLs and secret query parameters masked


def _plain(value: object) -> Any:
    """Settings as JSON-able data: dataclasses as objects, tuples as lists, every string
    with its secrets masked."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, str):
        return redact_secrets(value)
    return value


def _masked(pairs: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """Header or query matches: the value of a secret-looking name masked, the others
    with their secrets masked."""
    return {k: "***" if _SECRET_NAME.search(k) else redact_secrets(v) for k, v in pairs}


def redacted_config(settings: Settings) -> dict[str, Any]:
    """The effective config (every key, defaults filled in) as JSON-able data, with secrets
    (passwords in URLs and query strings) masked. Durations are in seconds. Each route also
    carries `path`, `methods`, `shadow_percent` and `canary_percent` at its top level."""
    backends = {}
    for name, b in settings.backends.items():
        backends[name] = _plain(b)
        del backends[name]["name"]
    routes = []
    for r in settings.routes:
        route = _plain(r)
        # the YAML's shapes where the model's differ
        route["match"].update(headers=_masked(r.match.headers), query=_masked(r.match.query))
        route["compare"].update(
            unordered_arrays=dict(r.compare.unordered_arrays),
            normalizers=dict(r.compare.normalizers),
        )
        sticky = {"header": r.canary.sticky_header, "cookie": r.canary.sticky_cookie}
        route["canary"] = {
            "percent": r.canary.percent,
            "sticky": {k: v for k, v in sticky.items() if v is not None} or None,
        }
        route.update(
            path=r.match.path,
            methods=list(r.match.methods) if r.match.methods else None,
            shadow_percent=r.shadow.percent,
            canary_percent=r.canary.percent,
        )
        routes.append(route)
    return {
        "version": settings.version,
        "path": os.path.basename(settings.path),
        "listen": f"{settings.host}:{settings.port}",
        "admin": {
            "listen": f"{settings.admin.host}:{settings.admin.port}",
            "token_env": settings.admin.token_env,
        },
        "default_backend": settings.default_backend,
        "backends": backends,
        "store": _plain(settings.store),
        # unset: what `serve` makes of it for this config (proxy.routes.offload_wanted)
        "limits": {**_plain(settings.limits), "shadow_offload": offload_wanted(settings)},
        "capture": _plain(settings.capture),
        "access_log": settings.access_log,
        "routes": routes,
    }


def _authorized(request: web.Request, settings: Settings) -> web.Response | None:
    token = os.environ.get(settings.admin.token_env, "")
    if not token:
        return web.json_response(
            {
                "error": {
                    "code": "forbidden",
                    "message": f"mutating admin calls are disabled: {settings.admin.token_env} "
                    "is not set",
                }
            },
            status=403,
        )
    got = request.headers.get("Authorization", "")
    expected = f"Bearer {token}"
    if not hmac.compare_digest(got.encode(), expected.encode()):
        return web.json_response(
            {"error": {"code": "unauthorized", "message": "a valid bearer token is required"}},
            status=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    return None


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _ready(request: web.Request) -> web.Response:
    proxy = request.app[PROXY_KEY]
    detail = proxy.unready() if proxy.unready is not None else None
    if proxy.ready and detail is None:
        return web.json_response({"status": "ready", "config_version": proxy.settings.version})
    body = {"status": "not ready"} if detail is None else {"status": "not ready", "detail": detail}
    return web.json_response(body, status=503)


async def _metrics(request: web.Request) -> web.Response:
    proxy = request.app[PROXY_KEY]
    proxy.metrics.flush()
    body = generate_latest(proxy.metrics_registry())
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _config(request: web.Request) -> web.Response:
    proxy = request.app[PROXY_KEY]
    data = redacted_config(proxy.settings)
    data["last_reload_error"] = proxy.last_reload_error
    return web.json_response(data)


async def _routes(request: web.Request) -> web.Response:
    proxy = request.app[PROXY_KEY]
    counts = proxy.route_counts()
    holds = proxy.holds()
    routes = [
        {
            "name": r.name,
            "path": r.match.path,
            "methods": list(r.match.methods) if r.match.methods else None,
            "mode": r.mode,
            "primary": r.backend or proxy.settings.default_backend,
            "candidate": r.candidate,
            "requests": counts.get(r.name, 0),
            "auto_rollback": (
                {"reason": holds[r.name].reason, "time": holds[r.name].time}
                if r.name in holds
                else None
            ),
        }
        for r in proxy.settings.routes
    ]
    return web.json_response(
        {
            "config_version": proxy.settings.version,
            "routes": routes,
            "default": {
                "backend": proxy.settings.default_backend,
                "requests": counts.get("_default", 0),
            },
        }
    )


async def _reload(request: web.Request) -> web.Response:
    proxy = request.app[PROXY_KEY]
    denied = _authorized(request, proxy.settings)
    if denied is not None:
        return denied
    ok, errors = await proxy.reload_from_file()
    if ok:
        return web.json_response({"status": "reloaded", "config_version": proxy.settings.version})
    return web.json_response(
        {
            "status": "rejected",
            "config_version": proxy.settings.version,
            "errors": errors,
        },
        status=422,
    )


async def _clear(request: web.Request) -> web.Response:
    proxy = request.app[PROXY_KEY]
    denied = _authorized(request, proxy.settings)
    if denied is not None:
        return denied
    name = request.match_info["name"]
    if name not in {r.name for r in proxy.settings.routes}:
        return web.json_response(
            {"error": {"code": "not_found", "message": f"no route named {name!r}"}}, status=404
        )
    return web.json_response({"route": name, "cleared": proxy.clear_hold(name)})


def create_admin_app(proxy: Proxy) -> web.Application:
    """The admin aiohttp application for `proxy`."""
    app = web.Application()
    app[PROXY_KEY] = proxy
    app.router.add_get("/-/health", _health)
    app.router.add_get("/-/ready", _ready)
    app.router.add_get("/-/metrics", _metrics)
    app.router.add_get("/-/config", _config)
    app.router.add_get("/-/routes", _routes)
    app.router.add_post("/-/reload", _reload)
    app.router.add_post("/-/routes/{name}/clear", _clear)
    from proxy.ui import add_ui_routes  # proxy.ui imports this module's PROXY_KEY

    add_ui_routes(app)
    return app


async def start_admin(proxy: Proxy) -> tuple[web.AppRunner, tuple[str, int]]:
    """Start the admin listener; returns its runner and bound address."""
    runner = web.AppRunner(create_admin_app(proxy), access_log=None, handle_signals=False)
    await runner.setup()
    admin = proxy.settings.admin
    site = web.TCPSite(runner, admin.host, admin.port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    server = site._server
    assert server is not None
    sock: socket.socket = server.sockets[0]  # type: ignore[attr-defined]
    name = sock.getsockname()
    return runner, (str(name[0]), int(name[1]))


async def reload_settings(path: str) -> tuple[Settings | None, list[str]]:
    """Load a config file for a reload (a supervisor's worker: the config the supervisor
    loaded); returns (settings, []) or (None, error lines)."""
    try:
        return load_config(path), []
    except ConfigError as exc:
        return None, [redact_secrets(str(e)) for e in exc.errors]
