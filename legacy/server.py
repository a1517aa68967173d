"""Run the reference legacy monolith (`strangler legacy`)."""

from __future__ import annotations

import asyncio
import signal
import sys

from aiohttp import web

from extracted.schema import create_schema
from legacy.app import create_app
from legacy.seed import seed_orders

__all__ = ["run"]


def _split(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen address must be HOST:PORT, got {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


async def _serve(host: str, port: int, db_url: str, seed: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await create_schema(db_url)
    if seed > 0:
        added = await seed_orders(db_url, seed)
        note = f"seeded {added} orders" if added else "database not empty: seed skipped"
        print(f"legacy: {note}", flush=True)
    runner = web.AppRunner(create_app(db_url), access_log=None)
    await runner.setup()
    try:
        if stop.is_set():
            return
        await web.TCPSite(runner, host, port).start()
        print(f"legacy monolith listening on http://{host}:{port}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def run(listen: str, db_url: str, *, seed: int = 0) -> int:
    """Serve until SIGINT/SIGTERM (seeding `seed` orders into an empty DB first); 0 when stopped."""
    try:
        host, port = _split(listen)
        asyncio.run(_serve(host, port, db_url, seed))
    except (ValueError, OSError) as exc:
        print(f"strangler legacy: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass  # a second Ctrl-C before the handlers were installed: still a clean stop
    return 0
