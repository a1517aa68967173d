"""`make soak`: bounded mixed load through `strangler serve` in shadow mode, watching memory.

A single proxy process (shadow route with a loopback candidate, SQLite store) fronts two
recording loopback upstreams run by this harness. Clients send a paced mix of shadowed
GETs, POSTs with JSON and chunked bodies, HEADs, default-route requests and a few
malformed ones, on keep-alive and fresh connections. Every interval the proxy's RSS and
open file descriptors are printed; after the warm-up they may grow by less than 10 %.
Environment: SOAK_SECONDS (600), SOAK_INTERVAL (30), SOAK_RATE (requests/s, 300).
Exit code 0 when within bounds, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.targets import free_port
from tests.support import close_writer, stop_process
from tests.upstreams import EchoUpstream, read_response

__all__ = ["Sample", "main", "run"]

_GROWTH_LIMIT = 0.10


@dataclass(frozen=True, slots=True)
class Sample:
    """The proxy's footprint at one moment."""

    t: float
    rss_kb: int
    fds: int
    requests: int
    errors: int


@dataclass
class _Load:
    requests: int = 0
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)


def _footprint(pid: int) -> tuple[int, int]:
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def _config(port: int, admin: int, legacy: str, candidate: str, db: str) -> str:
    return f"""
listen: 127.0.0.1:{port}
admin: {{listen: 127.0.0.1:{admin}}}
backends:
  legacy: {{url: "{legacy}", timeout: 5s}}
  orders: {{url: "{candidate}", timeout: 5s}}
default_backend: legacy
store: {{url: "sqlite+aiosqlite:///{db}"}}
access_log: false
routes:
  - name: orders
    match: {{path: /api/v1/orders/*}}
    mode: shadow
    candidate: orders
    shadow: {{percent: 100, timeout: 1s, max_concurrency: 64, writes: dry_run}}
    compare: {{ignore_headers: [date, server, content-length]}}
"""


def _request(rng: random.Random, n: int) -> bytes:
    kind = rng.random()
    if kind < 0.5:
        return b"GET /api/v1/orders/%d HTTP/1.1\r\nHost: soak\r\n\r\n" % (n % 5000)
    if kind < 0.65:
        body = b'{"sku": "SKU-%04d", "qty": %d}' % (n % 9999, n % 7 + 1)
        return (
            b"POST /api/v1/orders/new HTTP/1.1\r\nHost: soak\r\ncontent-type: application/json"
            b"\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        )
    if kind < 0.72:
        return (
            b"PUT /api/v1/orders/%d HTTP/1.1\r\nHost: soak\r\ntransfer-encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n" % (n % 5000)
        )
    if kind < 0.8:
        return b"HEAD /api/v1/orders/%d HTTP/1.1\r\nHost: soak\r\n\r\n" % (n % 5000)
    return b"GET /catalog/items?page=%d HTTP/1.1\r\nHost: soak\r\n\r\n" % (n % 50)


async def _client(
    port: int, seed: int, load: _Load, deadline: float, pace: float, cap: int
) -> None:
    """Keep-alive bursts of 1-20 requests, a malformed one now and then, paced."""
    rng = random.Random(seed)
    while time.monotonic() < deadline and load.requests < cap:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            load.errors += 1
            await asyncio.sleep(pace)
            continue
        try:
            if rng.random() < 0.01:
                writer.write(b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
                resp = await asyncio.wait_for(read_response(reader), 10)
                load.statuses[resp.status] = load.statuses.get(resp.status, 0) + 1
                continue
            for _ in range(rng.randint(1, 20)):
                if time.monotonic() >= deadline or load.requests >= cap:
                    break
                req = _request(rng, load.requests)
                writer.write(req)
                resp = await asyncio.wait_for(
                    read_response(reader, head_only=req.startswith(b"HEAD")), 10
                )
                load.requests += 1
                load.statuses[resp.status] = load.statuses.get(resp.status, 0) + 1
                if not resp.complete or resp.status >= 500:
                    load.errors += 1
                    break
                await asyncio.sleep(pace)  # pacing: bounded rate, not synchronisation
        except (OSError, TimeoutError):
            load.errors += 1
        finally:
            await close_writer(writer)


async def run(seconds: float, interval: float, rate: float) -> list[Sample]:
    """Run the soak; print and return one sample per interval."""
    legacy, candidate = await EchoUpstream().start(), await EchoUpstream().start()
    samples: list[Sample] = []
    with tempfile.TemporaryDirectory() as tmp:
        port, admin = free_port(), free_port()
        cfg = Path(tmp) / "soak.yaml"
        cfg.write_text(_config(port, admin, legacy.url, candidate.url, f"{tmp}/soak.db"))
        exe = Path(sys.executable).with_name("strangler")
        proc = await asyncio.create_subprocess_exec(
            str(exe), "serve", "--config", str(cfg), stdout=asyncio.subprocess.DEVNULL
        )
        try:
            await _wait_listening(port, proc)
            load = _Load()
            clients = 8
            deadline = time.monotonic() + seconds
            pace = clients / rate
            cap = int(rate * seconds * 1.2) + 100
            tasks = [
                asyncio.create_task(_client(port, i, load, deadline, pace, cap))
                for i in range(clients)
            ]
            start = time.monotonic()
            print(f"{'t (s)':>6} {'RSS (MB)':>9} {'fds':>5} {'requests':>9} {'errors':>7}")
            while time.monotonic() < deadline:
                await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))
                rss, fds = _footprint(proc.pid)
                s = Sample(time.monotonic() - start, rss, fds, load.requests, load.errors)
                samples.append(s)
                print(
                    f"{s.t:6.0f} {s.rss_kb / 1024:9.1f} {s.fds:5d} {s.requests:9d} {s.errors:7d}",
                    flush=True,
                )
            await asyncio.gather(*tasks)
            print(f"statuses: {dict(sorted(load.statuses.items()))}")
            print("shadow: " + await _shadow_counts(admin))
        finally:
            await stop_process(proc, 15)
            await legacy.close()
            await candidate.close()
    return samples


async def _shadow_counts(admin: int) -> str:
    """The proxy's shadow counters (started, recorded, dropped, by outcome) from /-/metrics."""
    reader, writer = await asyncio.open_connection("127.0.0.1", admin)
    writer.write(b"GET /-/metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    resp = await asyncio.wait_for(read_response(reader), 10)
    writer.close()
    await writer.wait_closed()
    wanted = tuple(
        f"strangler_shadow_{name}_total"
        for name in ("started", "recorded", "dropped", "comparisons")
    )
    lines = [
        line.replace("strangler_shadow_", "")
        for line in resp.body.decode().splitlines()
        if line.startswith(wanted)
    ]
    return ", ".join(lines)


async def _wait_listening(port: int, proc: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"strangler serve exited with {proc.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise RuntimeError("strangler serve did not listen within 30 s")


def verdict(samples: list[Sample]) -> tuple[bool, str]:
    """Growth from the first sample after warm-up (the second one) to the last."""
    if len(samples) < 3:
        return False, "too few samples for a verdict (need 3 intervals)"
    base, last = samples[1], samples[-1]
    rss_growth = (last.rss_kb - base.rss_kb) / base.rss_kb
    fd_growth = (last.fds - base.fds) / base.fds
    ok = rss_growth < _GROWTH_LIMIT and fd_growth < _GROWTH_LIMIT and last.errors == 0
    text = (
        f"after warm-up (t={base.t:.0f}s -> {last.t:.0f}s): RSS {rss_growth:+.1%},"
        f" fds {fd_growth:+.1%}, errors {last.errors}; limit {_GROWTH_LIMIT:.0%}:"
        f" {'PASS' if ok else 'FAIL'}"
    )
    return ok, text


def main() -> int:
    """Entry point of `python -m bench.soak`."""
    seconds = float(os.environ.get("SOAK_SECONDS", "600"))
    interval = float(os.environ.get("SOAK_INTERVAL", "30"))
    rate = float(os.environ.get("SOAK_RATE", "300"))
    samples = asyncio.run(run(seconds, interval, rate))
    ok, text = verdict(samples)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
