"""Run the extracted Order service standalone (`strangler extracted`)."""

from __future__ import annotations

import asyncio
import signal
import sys

from aiohttp import web

from extracted.app import create_app
from extracted.schema import create_schema

__all__ = ["parse_listen", "run"]


def parse_listen(listen: str) -> tuple[str, int]:
    """Split "host:port" (IPv6 hosts in brackets) into its parts."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen address must be HOST:PORT, got {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


async def _serve(host: str, port: int, db_url: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await create_schema(db_url)
    runner = web.AppRunner(create_app(db_url), access_log=None)
    await runner.setup()
    try:
        if stop.is_set():
            return
        await web.TCPSite(runner, host, port).start()
        print(f"extracted order service listening on http://{host}:{port}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def run(listen: str, db_url: str) -> int:
    """Serve until SIGINT/SIGTERM; 0 on a clean stop, 2 on a bad address or start failure."""
    try:
        host, port = parse_listen(listen)
        asyncio.run(_serve(host, port, db_url))
    except (ValueError, OSError) as exc:
        print(f"strangler extracted: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass  # a second Ctrl-C before the handlers were installed: still a clean stop
    return 0
