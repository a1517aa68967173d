"""A minimal aiohttp pass-through proxy: the reference a plain aiohttp design reaches.

One aiohttp web server, one ClientSession, bodies streamed both ways, no access log.
Run: `python -m bench.minimal_proxy --listen 127.0.0.1:8000 --upstream http://127.0.0.1:8001`.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import uvloop
from aiohttp import ClientSession, TCPConnector, web

__all__ = ["main"]

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"} | {
    "transfer-encoding",
    "proxy-authenticate",
    "proxy-authorization",
    "host",
}
_SESSION = web.AppKey("session", ClientSession)
_UPSTREAM = web.AppKey("upstream", str)


async def _forward(request: web.Request) -> web.StreamResponse:
    """Send one request upstream and stream the answer back."""
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
    body = request.content if request.body_exists else None
    url = request.app[_UPSTREAM] + request.raw_path
    async with request.app[_SESSION].request(
        request.method, url, headers=headers, data=body, allow_redirects=False
    ) as upstream:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for name, value in upstream.headers.items():
            if name.lower() not in _HOP_BY_HOP:
                response.headers.add(name, value)
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


async def _serve(host: str, port: int, upstream: str) -> None:
    """Run the proxy until SIGINT or SIGTERM."""
    app = web.Application()
    app[_UPSTREAM] = upstream.rstrip("/")
    app[_SESSION] = ClientSession(
        connector=TCPConnector(limit=256), auto_decompress=False, skip_auto_headers=["User-Agent"]
    )
    app.router.add_route("*", "/{tail:.*}", _forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    await app[_SESSION].close()


def main() -> None:
    """Parse the command line and run the proxy on uvloop."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:8000")
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(host, int(port), args.upstream))


if __name__ == "__main__":
    main()
