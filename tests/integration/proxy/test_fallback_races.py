"""Fallback to legacy while a candidate connect is still under way (found in review).

A candidate whose accept queue is full answers a connect only after the kernel's SYN
retransmit (about 1 s); the request's 300 ms timeout falls it back to legacy meanwhile. The
late candidate connection must go back to the candidate's own pool: before, it was released
into legacy's, and the next legacy request (a POST) was sent to the candidate.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from prometheus_client import generate_latest

from proxy.accesslog import AccessLog
from proxy.app import Proxy, create_proxy
from proxy.settings import loads
from tests.integration.proxy.conftest import proxy_config
from tests.support import stop_after_test, wait_until
from tests.upstreams import EchoUpstream, raw_exchange

ANSWER = b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\ncandidate"


class SlowToConnect:
    """A candidate whose connects hang (accept queue full) until `accepting` is set."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(0)
        self.port = self.server.getsockname()[1]
        self.fillers = []
        for _ in range(3):  # complete handshakes that nobody accepts: the queue is full
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", self.port))
            self.fillers.append(s)
        self.accepting = threading.Event()
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        if not self.accepting.wait(10) or self.stop.is_set():  # closed without accepting
            return
        self.server.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        with conn:
            try:
                while conn.recv(65536):
                    conn.sendall(ANSWER)
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.accepting.set()
        for s in self.fillers:
            s.close()
        self.server.close()


@pytest.fixture
def candidate() -> Iterator[SlowToConnect]:
    c = SlowToConnect()
    yield c
    c.close()


async def _extracted(
    upstream: EchoUpstream, candidate: SlowToConnect, *, timeout: str, connect_timeout: str
) -> Proxy:
    """A started proxy whose /api/* route is extracted to `candidate` (no verification)."""
    text = proxy_config(
        upstream.url,
        extra="""routes:
  - name: orders
    match: {path: /api/*}
    mode: extracted
    candidate: orders
    shadow: {percent: 0}
""",
        backend_extra=f"""  orders:
    url: http://127.0.0.1:{candidate.port}
    timeout: {timeout}
    connect_timeout: {connect_timeout}
""",
    )
    proxy = create_proxy(loads(text, "t.yaml"), access_log=AccessLog(enabled=False))
    await proxy.start()
    return proxy


async def test_a_late_candidate_connection_never_serves_legacy_traffic(
    upstream: EchoUpstream, candidate: SlowToConnect
) -> None:
    proxy = await _extracted(upstream, candidate, timeout="300ms", connect_timeout="5s")
    try:
        port = proxy.address[1]
        got = await raw_exchange(port, b"GET /api/orders/1 HTTP/1.1\r\nHost: a\r\n\r\n")
        assert got.status == 200 and b"candidate" not in got.body  # served by legacy
        candidate.accepting.set()  # the SYN retransmit now completes the candidate connect
        legacy_pool = proxy._backends["legacy"].pool
        orders_pool = proxy._backends["orders"].pool

        def landed() -> bool:
            idle = [*legacy_pool._idle, *orders_pool._idle]
            return any(c.pool is orders_pool for c in idle)

        await wait_until(landed, timeout=10)
        assert all(c.pool is legacy_pool for c in legacy_pool._idle)
        for _ in range(2):  # legacy traffic, on legacy's (reused) connections
            got = await raw_exchange(
                port, b"POST /checkout HTTP/1.1\r\nHost: a\r\ncontent-length: 2\r\n\r\n{}"
            )
            assert got.status == 200 and b"candidate" not in got.body
        assert [r.method for r in upstream.received].count(b"POST") == 2
    finally:
        await stop_after_test(proxy, 0.5)


async def test_a_timed_out_candidate_connect_falls_back_at_once_and_a_write_tries_again(
    upstream: EchoUpstream, candidate: SlowToConnect
) -> None:
    # A GET that legacy can serve goes there after one timed-out connect (not two); a POST,
    # which cannot fall back, gets one more connect (nothing of it was sent) before its 502.
    proxy = await _extracted(upstream, candidate, timeout="5s", connect_timeout="200ms")

    def timeouts() -> float:
        proxy.metrics.flush()
        sample = 'strangler_upstream_errors_total{backend="orders",kind="timeout"} '
        text = generate_latest(proxy.metrics.registry).decode()
        return sum(float(ln[len(sample) :]) for ln in text.splitlines() if ln.startswith(sample))

    try:
        port = proxy.address[1]
        got = await raw_exchange(port, b"GET /api/orders/1 HTTP/1.1\r\nHost: a\r\n\r\n")
        assert got.status == 200 and b"candidate" not in got.body  # served by legacy
        assert timeouts() == 1
        got = await raw_exchange(
            port, b"POST /api/orders HTTP/1.1\r\nHost: a\r\ncontent-length: 2\r\n\r\n{}"
        )
        assert got.status == 502
        assert timeouts() == 3
        assert [r.method for r in upstream.received] == [b"GET"]
    finally:
        await stop_after_test(proxy, 0.5)
