"""Run the extracted Order service standalone (`strangler extracted`), and the serve loop it
shares with the reference legacy monolith (`legacy.server`)."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from extracted.app import create_app
from extracted.schema import create_schema

__all__ = ["parse_listen", "run", "run_app"]


def parse_listen(listen: str) -> tuple[str, int]:
    """Split "host:port" (IPv6 hosts in brackets) into its parts."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen address must be HOST:PORT, got {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


async def _serve(
    host: str, port: int, prepare: Callable[[], Awaitable[web.Application]], banner: str
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(await prepare(), access_log=None)
    await runner.setup()
    try:
        if stop.is_set():
            return
        await web.TCPSite(runner, host, port).start()
        print(f"{banner} listening on http://{host}:{port}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def run_app(
    command: str, banner: str, listen: str, prepare: Callable[[], Awaitable[web.Application]]
) -> int:
    """Serve the app `prepare` builds on `listen` until SIGINT/SIGTERM; 0 on a clean stop, 2
    on a bad address, a database that cannot be opened or another start failure (said on
    one line of stderr as `strangler COMMAND: ...`)."""
    try:
        host, port = parse_listen(listen)
        asyncio.run(_serve(host, port, prepare, banner))
    except (ValueError, OSError, SQLAlchemyError) as exc:  # address, --db URL or database
        detail = str(exc).strip().splitlines()
        print(
            f"strangler {command}: {detail[0] if detail else type(exc).__name__}", file=sys.stderr
        )
        return 2
    except KeyboardInterrupt:
        pass  # a second Ctrl-C before the handlers were installed: still a clean stop
    return 0


def run(listen: str, db_url: str) -> int:
    """Serve until SIGINT/SIGTERM; 0 on a clean stop, 2 on a bad address or start failure."""

    async def prepare() -> web.Application:
        await create_schema(db_url)
        return create_app(db_url)

    return run_app("extracted", "extracted order service", listen, prepare)
