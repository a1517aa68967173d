"""The shadow helper at full throttle: CPU per compared copy, without a worker around it.

Issue 6 point 8 (a) at half load is limited by how many copies the worker's SCHED_IDLE
helper can compare in the CPU that users leave over, so its cost per copy is the figure to
move; the half-load rows show it only through the noise of a paced run. This section starts
one helper (`python -m proxy.shadow_worker`, on the proxy CPU) on one end of a socket pair,
hands it `copies` frames as a worker would (a GET of the bench path and the upstream's
1 KB answer as the served response), and waits until the helper has acknowledged every one
of them as ended. The candidate is the bench's nginx upstream, so every copy is a match,
stored in a SQLite file of its own. Figures: copies/s and CPU microseconds per copy (all
the helper's threads, from /proc schedstat), medians over the rounds.
"""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import statistics
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from bench.procs import Started, cpu_delta_ns
from bench.sections import SectionContext, SectionResult
from bench.shadow_bench import mode_config
from bench.targets import PATH, BenchEnv
from proxy.offload import READY, decode_ack, encode_frame

__all__ = ["helper_config", "run_section"]

_ROUTE = "bench"  # the route name mode_config gives
_TIMEOUT_S = 120.0  # a round that takes longer than this is reported as failed


def helper_config(upstream_url: str, db: Path) -> str:
    """The shadow section's default shadow config (copies in a helper), its store at `db`,
    with long timeouts.

    Every frame is handed over at once, and a copy that waits in the helper's queue longer
    than the shadow timeout would be dropped as stale, not compared; a helper kept off the
    CPU (it runs at SCHED_IDLE) must not fail its candidate calls either. It listens nowhere.
    """
    return mode_config(
        db.parent,
        db.stem,
        0,
        0,
        upstream_url,
        "shadow",
        backend_timeout="30s",
        connect_timeout="5s",
        shadow_timeout="60s",
    )


def _frames(upstream_url: str, copies: int) -> list[bytes]:
    with urllib.request.urlopen(upstream_url + PATH, timeout=5) as response:
        body = response.read()
        # the served response as a worker hands it over, the backend's bytes rebuilt from
        # what urllib read (nginx answers with a Content-Length, so nothing was de-chunked)
        raw = f"HTTP/1.1 {response.status} {response.reason}\r\n".encode()
        raw += b"".join(f"{k}: {v}\r\n".encode() for k, v in response.getheaders())
        raw += b"\r\n" + body
    frames = []
    for i in range(copies):
        rid = f"helper-bench-{i:08x}"
        head = (
            f"GET {PATH} HTTP/1.1\r\nhost: 127.0.0.1\r\nx-request-id: {rid}\r\n"
            "x-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\nvia: 1.1 strangler\r\n\r\n"
        ).encode()
        frames.append(encode_frame(_ROUTE.encode(), rid, head, b"", raw, 0.5, False))
    return frames


def _round(env: BenchEnv, config: Path, frames: Sequence[bytes], n: int) -> dict[str, float]:
    ours, theirs = socket.socketpair()
    log = env.tmp / f"helper-bench-{n}.log"
    try:
        helper = env.processes.start(
            f"shadow helper {n}",
            [
                sys.executable,
                "-m",
                "proxy.shadow_worker",
                "--config",
                str(config),
                "--fd",
                str(theirs.fileno()),
            ],
            log,
            cpu=env.proxy_cpu,
            pass_fds=(theirs.fileno(),),
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    try:
        return _feed(helper, ours, frames)
    finally:
        with contextlib.suppress(OSError):
            ours.shutdown(socket.SHUT_WR)  # the helper drains, flushes and exits
        with contextlib.suppress(Exception):
            helper.popen.wait(timeout=10)
        env.processes.stop(helper)
        ours.close()


def _feed(helper: Started, sock: socket.socket, frames: Sequence[bytes]) -> dict[str, float]:
    sock.settimeout(_TIMEOUT_S)
    buf = b""
    while READY not in buf:
        data = sock.recv(4096)
        if not data:
            raise RuntimeError(f"the helper exited before it was ready: {helper.log_tail()}")
        buf += data
    buf = buf.split(READY, 1)[1]
    before = helper.cpu_snapshot()
    t0 = time.perf_counter()

    def send() -> None:
        with contextlib.suppress(OSError):
            for i in range(0, len(frames), 32):
                sock.sendall(b"".join(frames[i : i + 32]))

    writer = threading.Thread(target=send, daemon=True)
    writer.start()
    ended = 0
    deadline = time.monotonic() + _TIMEOUT_S
    while ended < len(frames):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{ended} of {len(frames)} copies ended in {_TIMEOUT_S:g}s")
        data = sock.recv(65536)
        if not data:
            raise RuntimeError(f"the helper went away: {helper.log_tail()}")
        *lines, buf = (buf + data).split(b"\n")
        for line in lines:
            acked = decode_ack(line)
            if acked is not None:
                ended = acked.get(_ROUTE, ended)
    seconds = time.perf_counter() - t0
    cpu_ns = cpu_delta_ns(before, helper.cpu_snapshot())
    writer.join(timeout=5)
    return {"seconds": seconds, "cpu_us": cpu_ns / 1000.0 / len(frames)}


def _stored(db: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return dict(conn.execute("SELECT outcome, count(*) FROM comparisons GROUP BY outcome"))


def run_section(ctx: SectionContext) -> SectionResult:
    """Copies/s and CPU per copy of one shadow helper given all its copies at once."""
    env = ctx.env
    copies = 3_000 if ctx.quick else 20_000
    rounds = 1 if ctx.quick else 3
    db = env.tmp / "helper-bench.db"
    config = env.tmp / "helper-bench.yaml"
    config.write_text(helper_config(env.upstream_url, db))
    frames = _frames(env.upstream_url, copies)
    results = [_round(env, config, frames, n) for n in range(rounds)]
    stored = _stored(db)
    row: dict[str, object] = {
        "copies": copies,
        "rounds": rounds,
        "copies_per_s": round(statistics.median([copies / r["seconds"] for r in results])),
        "cpu_us_per_copy": round(statistics.median([r["cpu_us"] for r in results]), 1),
        "stored": sum(stored.values()),
        "match": stored.get("match", 0),
    }
    note = (
        "one helper on the proxy CPU, every copy handed over at once (frames of a GET and the"
        " upstream's 1 KB answer), candidate = the nginx upstream, SQLite store; medians of"
        f" {rounds} rounds; stored/match over all rounds"
    )
    return SectionResult(rows=[row], note=note)
