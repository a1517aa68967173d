"""Hostile requests against strangler and nginx side by side: status and what reached the backend.

Both proxies front the same recording loopback upstream (tests/upstreams.EchoUpstream):
strangler in-process with default limits, nginx (nginx-light, our own conf as in
bench/targets.py) as a reverse proxy with upstream keep-alive. For every case the table
shows each proxy's status (`-` when it closed without answering) and what the upstream
got: `none`, the raw target of a complete request, or `head!` for a head whose request
never completed (streamed, then cut). Run: `python -m bench.hostile_compare`.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.procs import ProcessSet, wait_ready
from bench.targets import free_port, nginx_proxy_conf, probe_http
from proxy.accesslog import AccessLog
from proxy.app import create_proxy
from proxy.settings import loads
from tests.integration.hostile.cases import CASES
from tests.support import close_writer
from tests.upstreams import EchoUpstream, read_response

__all__ = ["Row", "main", "run"]

_PATHS = (
    ("dotdot", b"/api/v1/orders/../../admin"),
    ("pct-dotdot", b"/api/v1/orders/%2e%2e/%2e%2e/admin"),
    ("double-slash", b"/api/v1//orders/1"),
    ("encoded-slash", b"/api/v1/orders%2F1"),
    ("matrix-param", b"/api/v1/orders;jsessionid=1/1"),
    ("pct-unreserved", b"/api/v1/%6Frders/1"),
)
_EXTRA: tuple[tuple[str, str, bytes], ...] = (
    *((name, "path", b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % target) for name, target in _PATHS),
    ("absolute-uri", "ssrf", b"GET http://127.0.0.1:9/x HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n"),
    ("x-forwarded-host", "ssrf", b"GET /x HTTP/1.1\r\nHost: a\r\nX-Forwarded-Host: b\r\n\r\n"),
)


@dataclass(frozen=True, slots=True)
class Row:
    """One case's outcome on both proxies."""

    name: str
    group: str
    strangler: tuple[str, str]
    nginx: tuple[str, str]


async def _ask(port: int, request: bytes, up: EchoUpstream) -> tuple[str, str]:
    """Send `request` on a fresh connection; (status or '-', what the upstream got)."""
    up.received.clear()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        return f"connect {exc.errno}", "none"
    try:
        writer.write(request)
        await writer.drain()
        resp = await asyncio.wait_for(read_response(reader), 5)
        status = str(resp.status) if resp.status else "-"
    except (OSError, TimeoutError) as exc:
        status = type(exc).__name__
    finally:
        await close_writer(writer)
    # a barrier: a valid request whose arrival means the case's bytes have landed
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /barrier HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    await asyncio.wait_for(read_response(reader), 5)
    writer.close()
    await writer.wait_closed()
    got = [r for r in up.received if r.target != b"/barrier"]
    if not got:
        return status, "none"
    shown = ["head!" if not r.complete else r.target.decode("latin-1")[:40] for r in got]
    return status, " ".join(shown)


def _table(rows: list[Row]) -> str:
    head = ("case", "group", "strangler", "upstream got", "nginx", "upstream got", "")
    lines = [head]
    for r in rows:
        same = "" if r.strangler == r.nginx else "differs"
        lines.append((r.name, r.group, *r.strangler, *r.nginx, same))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


async def run(nginx_port: int | None, up: EchoUpstream) -> list[Row]:
    """Every case against strangler (started here) and nginx (already running, if any)."""
    config = f"""
listen: 127.0.0.1:0
admin: {{listen: 127.0.0.1:0}}
backends:
  legacy: {{url: "{up.url}", timeout: 2s}}
default_backend: legacy
store: {{url: "sqlite+aiosqlite:///{tempfile.gettempdir()}/hostile-compare.db"}}
access_log: false
"""
    proxy = create_proxy(loads(config, "hostile.yaml"), access_log=AccessLog(enabled=False))
    await proxy.start()
    rows = []
    try:
        cases = [(c.name, c.group, c.request) for c in CASES] + list(_EXTRA)
        for name, group, request in cases:
            mine = await _ask(proxy.address[1], request, up)
            theirs = await _ask(nginx_port, request, up) if nginx_port else ("n/a", "n/a")
            rows.append(Row(name, group, mine, theirs))
    finally:
        await proxy.stop(1.0)
    return rows


async def _main() -> int:
    up = await EchoUpstream().start()
    try:
        with tempfile.TemporaryDirectory() as tmp, ProcessSet() as procs:
            port: int | None = free_port()
            nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
            if nginx is None:  # strangler's column alone
                print("nginx is not installed (apt-get install -y nginx-light)", file=sys.stderr)
                port = None
            if port is not None and nginx is not None:
                conf = Path(tmp) / "nginx.conf"
                conf.write_text(nginx_proxy_conf(Path(tmp), "nginx", port, up.port, 1))
                started = procs.start(
                    "nginx",
                    [nginx, "-p", tmp, "-e", f"{tmp}/nginx-error.log", "-c", str(conf)],
                    Path(tmp) / "nginx.out",
                )
                nginx_port = port
                reason = await asyncio.to_thread(
                    wait_ready, started, lambda: probe_http(nginx_port, "/echo", None), 10.0
                )
                if reason is not None:
                    print(f"nginx did not start: {reason}", file=sys.stderr)
                    port = None
            rows = await run(port, up)
    finally:
        await up.close()
    print(_table(rows))
    differing = sum(1 for r in rows if r.strangler != r.nginx)
    print(f"\n{len(rows)} cases, {differing} differ")
    return 0


def main() -> int:
    """Entry point of `python -m bench.hostile_compare`."""
    return asyncio.run(_main())


if __name__ == "__main__":
    raise SystemExit(main())
