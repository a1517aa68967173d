"""In-process candidate apps: a `handlers:` backend served on an internal loopback listener."""

from __future__ import annotations

import importlib
from typing import Any

from aiohttp import web

from proxy.settings import BackendSettings

__all__ = ["start_handler_app"]


async def start_handler_app(bs: BackendSettings) -> tuple[web.AppRunner, str, int]:
    """Import `bs.handlers`, call its `create_app([db])` and serve it on 127.0.0.1:<free port>."""
    assert bs.handlers is not None
    factory: Any = importlib.import_module(bs.handlers).create_app
    app = factory(bs.db) if bs.db is not None else factory()
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        # uvloop's Server is not an asyncio.Server subclass; both have `.sockets`
        sockets = getattr(site._server, "sockets", None)
        assert sockets
        host, port = sockets[0].getsockname()[:2]
    except BaseException:
        await runner.cleanup()
        raise
    return runner, str(host), int(port)
