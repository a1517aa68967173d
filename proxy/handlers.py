"""In-process candidate apps: a `handlers:` backend served on an internal loopback listener."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from aiohttp import web

from proxy.settings import BackendSettings

__all__ = ["factory_problem", "start_handler_app"]


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


def factory_problem(bs: BackendSettings) -> str | None:
    """Why `start_handler_app(bs)` would fail to call the factory, found without running it:
    no such module, no `create_app`, or one that cannot take what it is given (`db` when
    set, else nothing). None when it fits, or when the module fails for other reasons (a
    missing dependency of its own: `serve` says so when it starts)."""
    assert bs.handlers is not None
    name = bs.handlers
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            return f"no module named {exc.name!r}"
        return None
    except Exception:
        return None
    factory = getattr(module, "create_app", None)
    if not callable(factory):
        return f"module {name!r} has no create_app"
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin or C callable: nothing to tell
        return None
    given: tuple[object, ...] = (bs.db,) if bs.db is not None else ()
    if _binds(sig, given):
        return None
    call = f"{name}.create_app({', '.join(_required(sig))})"
    if bs.db is None and _binds(sig, ("db",)):
        return f"{call} needs a database URL: set backends.{bs.name}.db"
    if bs.db is not None and _binds(sig, ()):
        return f"{call} takes no database URL: remove backends.{bs.name}.db"
    return f"{call} cannot be called as create_app(db) or create_app()"


def _binds(sig: inspect.Signature, args: tuple[object, ...]) -> bool:
    try:
        sig.bind(*args)
    except TypeError:
        return False
    return True


def _required(sig: inspect.Signature) -> list[str]:
    return [
        p.name
        for p in sig.parameters.values()
        if p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
