"""The admin listener (aiohttp): health, readiness, metrics, effective config, routes, reload."""

from __future__ import annotations

import hmac
import os
import re
import socket
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy.settings import ConfigError, Settings, load

if TYPE_CHECKING:
    from proxy.app import Proxy

__all__ = ["PROXY_KEY", "redact_secrets", "redacted_config", "start_admin"]

PROXY_KEY: web.AppKey[Proxy] = web.AppKey("proxy")
_PASSWORD_IN_URL = re.compile(r"(://[^/:@\s'\"]*:)[^@/\s'\"]*@")
_SECRET_PARAM = re.compile(r"(?i)\b((?:ssl)?password|pass|passwd|pwd|token|secret)=([^&\s'\"]*)")


def redact_secrets(text: str) -> str:
    """`text` with passwords in URLs and secret-looking query parameters masked."""
    return _SECRET_PARAM.sub(r"\1=***", _PASSWORD_IN_URL.sub(r"\1***@", text))


_redact_url = redact_secrets


def redacted_config(settings: Settings) -> dict[str, Any]:
    """The effective config as JSON-able data, with secrets (store passwords) masked."""
    return {
        "version": settings.version,
        "path": os.path.basename(settings.path),
        "listen": f"{settings.host}:{settings.port}",
        "admin": {
            "listen": f"{settings.admin.host}:{settings.admin.port}",
            "token_env": settings.admin.token_env,
        },
        "default_backend": settings.default_backend,
        "backends": {
            name: {
                "url": _redact_url(b.url) if b.url else None,
                "handlers": b.handlers,
                "timeout": b.timeout,
                "connect_timeout": b.connect_timeout,
                "max_connections": b.max_connections,
            }
            for name, b in settings.backends.items()
        },
        "store": {
            "url": _redact_url(settings.store.url),
            "redact_json_paths": list(settings.store.redact_json_paths),
        },
        "routes": [
            {
                "name": r.name,
                "path": r.match.path,
                "methods": list(r.match.methods) if r.match.methods else None,
                "mode": r.mode,
                "candidate": r.candidate,
                "shadow_percent": r.shadow.percent,
                "canary_percent": r.canary.percent,
            }
            for r in settings.routes
        ],
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
    if proxy.ready:
        return web.json_response({"status": "ready", "config_version": proxy.settings.version})
    return web.json_response({"status": "not ready"}, status=503)


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
    await site.start()
    server = site._server
    assert server is not None
    sock: socket.socket = server.sockets[0]  # type: ignore[attr-defined]
    name = sock.getsockname()
    return runner, (str(name[0]), int(name[1]))


async def reload_settings(path: str) -> tuple[Settings | None, list[str]]:
    """Load a config file for a reload; returns (settings, []) or (None, error lines)."""
    try:
        return load(path), []
    except ConfigError as exc:
        return None, [redact_secrets(str(e)) for e in exc.errors]
