"""Pooled HTTP/1.1 upstream connections at the protocol level (httptools response parser).

A pool per backend keeps idle keep-alive connections. `acquire` hands one to a waiting
exchange synchronously when it can; only a fresh connection costs a task (the connect).
Each connection parses responses with httptools and forwards every event to the exchange
it is serving, which owns the client side. Timeouts are timer handles, never tasks.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Sequence
from typing import Protocol, cast

import httptools

__all__ = ["Exchange", "RawTee", "UpstreamConnection", "UpstreamPool"]


class Exchange(Protocol):
    """What an upstream connection reports to (implemented by the data plane's exchange)."""

    def attach(self, conn: UpstreamConnection) -> None: ...
    def connect_failed(self, exc: BaseException, pool: UpstreamPool | None = None) -> None: ...
    def on_upstream_headers_complete(
        self,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        conn: UpstreamConnection,
    ) -> None: ...
    def on_upstream_body(self, data: bytes) -> None: ...
    def on_upstream_message_complete(self, conn: UpstreamConnection) -> None: ...
    def on_upstream_flush(self) -> None: ...
    def on_upstream_lost(self, conn: UpstreamConnection, exc: BaseException | None) -> None: ...
    def on_upstream_upgrade(self, conn: UpstreamConnection, rest: bytes) -> None: ...
    def pause_client_reading(self) -> None: ...
    def resume_client_reading(self) -> None: ...


class RawTee(Protocol):
    """Takes every read of the response an exchange is served, before it is parsed."""

    def raw_chunk(self, data: bytes) -> None: ...


class _HeadersDone(Exception):
    """Stops the parser after the head of a response that has no body (HEAD requests)."""


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to a backend; serves one exchange at a time."""

    __slots__ = (
        "_tunnel",
        "exchange",
        "feeding",
        "got_bytes",
        "head_only",
        "headers",
        "idle_since",
        "keep_alive",
        "parser",
        "pool",
        "reason",
        "release_pending",
        "reused",
        "tee",
        "trailers",
        "transport",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.got_bytes = False
        self.head_only = False
        self.headers: list[tuple[bytes, bytes]] = []
        self.reason = b""
        # the trailer section of the chunked response just completed (read by its exchange
        # in on_upstream_message_complete; never the list the next head goes into)
        self.trailers: Sequence[tuple[bytes, bytes]] = ()
        self.keep_alive = True
        self.reused = False
        self.idle_since = 0.0  # loop time it went back to the pool (the sweep expires it)
        self.tee: RawTee | None = None  # set by the exchange it serves (a shadow hand-off)
        # Inside feed_data a finished exchange's release waits for the rest of the read:
        # bytes after its response must never reach the next exchange (see data_received).
        self.feeding = False
        self.release_pending = False
        self._tunnel: asyncio.Transport | None = None

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; the interface is the same
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel.write(data)
            return
        ex = self.exchange
        if ex is None:
            # Bytes on an idle connection: the server broke framing; never reuse it.
            self.pool.discard(self)
            return
        self.got_bytes = True
        tee = self.tee
        if tee is not None:
            tee.raw_chunk(data)
        # A response that ends inside this read releases the connection (the exchange's
        # finish): that waits until the whole read is parsed, so a waiting request is never
        # sent on a connection with bytes after the response nobody asked for (a wrong
        # Content-Length, a smuggled response), nor answered with those bytes.
        self.feeding = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.feeding = False
            if self.exchange is not ex:  # a 101 after the response it was asked for
                self._drop_poisoned()
                return
            ex.on_upstream_upgrade(self, data[exc.args[0] :])
        except httptools.HttpParserError as exc:
            self.feeding = False
            if isinstance(exc.__context__, _HeadersDone):
                # Never reused after a HEAD: a backend that sends a body anyway may send
                # it in a later read, which would reach the next request sent on it.
                self.keep_alive = False
                self.parser = httptools.HttpResponseParser(self)
                try:
                    ex.on_upstream_message_complete(self)
                    ex.on_upstream_flush()
                finally:
                    self._release_if_pending()
                return
            if self.exchange is not ex:  # bytes after the response it was asked for
                self._drop_poisoned()
                return
            # A broken response: close this connection (and free its pool slot) first.
            self.keep_alive = False
            self.exchange = None
            if self.transport is not None:
                self.transport.abort()
            ex.on_upstream_lost(self, ConnectionError("invalid HTTP response from upstream"))
            return
        self.feeding = False
        try:
            ex.on_upstream_flush()
        finally:
            self._release_if_pending()

    def _take_pending(self) -> bool:
        """Whether a release waited for this read to end (no longer pending either way)."""
        if not self.release_pending:
            return False
        self.release_pending = False
        self.pool.pending -= 1
        return True

    def _release_if_pending(self) -> None:
        if self._take_pending():
            self.pool.release(self)

    def _drop_poisoned(self) -> None:
        """Close a connection whose exchange already ended (its release was pending) and
        which went on with bytes nobody asked for; nobody else is told."""
        self._take_pending()
        self.abort()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.keep_alive = False
        if self._tunnel is not None:
            self._tunnel.close()
            self._tunnel = None
        ex = self.exchange
        self.exchange = None
        self.pool.forget(self)
        if ex is not None:
            ex.on_upstream_lost(self, exc)

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.pause_client_reading()
        elif self._tunnel is not None:  # a tunnel's client waits for the backend to read
            self._tunnel.pause_reading()

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.resume_client_reading()
        elif self._tunnel is not None and not self._tunnel.is_closing():
            self._tunnel.resume_reading()

    # httptools callbacks
    def on_message_begin(self) -> None:
        # llhttp calls on_status only for a reason phrase there: without one, the last
        # response's (another user's, or the interim 100's) must not stand in for it
        self.reason = b""
        if self.exchange is None:  # a response after the one it was asked for: poisoned
            self.keep_alive = False

    def on_status(self, reason: bytes) -> None:
        self.reason += reason  # a status line split across reads comes in pieces

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        headers = self.headers
        self.headers = []
        ex = self.exchange
        if ex is not None:
            parser = self.parser
            status = parser.get_status_code()
            if not parser.should_keep_alive():
                self.keep_alive = False
            ex.on_upstream_headers_complete(status, self.reason, headers, self)
            if self.head_only and status >= 200:
                raise _HeadersDone

    def on_body(self, data: bytes) -> None:
        if self.exchange is not None:
            self.exchange.on_upstream_body(data)

    def on_message_complete(self) -> None:
        # trailer fields of a chunked body: this response's, never the next one's
        trailers = self.headers
        if trailers:
            self.headers = []
            self.trailers = trailers
        elif self.trailers:
            self.trailers = ()
        if self.exchange is not None:
            self.exchange.on_upstream_message_complete(self)

    # used by the exchange
    def send(self, data: bytes) -> None:
        """Write request bytes."""
        assert self.transport is not None
        self.transport.write(data)

    def start_tunnel(self, peer: asyncio.Transport) -> None:
        """After a 101: move raw bytes from this connection to `peer`."""
        self._tunnel = peer
        self.exchange = None

    def abort(self) -> None:
        """Drop the connection at once (the client went away or the exchange failed)."""
        self.keep_alive = False
        if self.transport is not None:
            self.transport.abort()


class UpstreamPool:
    """Keep-alive connections to one backend, at most `max_connections` at once."""

    __slots__ = (
        "_closed",
        "_idle",
        "_loop",
        "_waiters",
        "active",
        "authority",
        "connect_timeout",
        "host",
        "idle_timeout",
        "max_connections",
        "name",
        "pending",
        "port",
        "timeout",
    )

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        *,
        connect_timeout: float,
        timeout: float,
        max_connections: int,
        idle_timeout: float,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        # the Host of a request to this backend when the client sent none
        h = host.encode()
        self.authority = b"[%s]:%d" % (h, port) if b":" in h else b"%s:%d" % (h, port)
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self._loop = loop
        self._idle: list[UpstreamConnection] = []
        self._waiters: deque[Exchange] = deque()
        self.active = 0  # connections open or being opened
        self.pending = 0  # connections released inside a read, not yet handed on
        self._closed = False

    def acquire(self, ex: Exchange, *, fresh: bool = False) -> None:
        """Give `ex` a connection: now if one is idle, later (attach/connect_failed) if not."""
        if not fresh:
            idle = self._idle
            while idle:
                conn = idle.pop()
                if conn.transport is None or conn.transport.is_closing():
                    continue
                conn.reused = True
                conn.exchange = ex
                conn.got_bytes = False
                ex.attach(conn)
                return
        if (
            (self.pending and not self._closed) or self.active >= self.max_connections
        ) and not fresh:
            # a connection released inside a read (a pipelined request starts there) is
            # handed over when that read is parsed, rather than a new one being opened
            self._waiters.append(ex)
            return
        self.active += 1
        self._loop.create_task(self._connect(ex))

    def cancel_wait(self, ex: Exchange) -> None:
        """Forget a waiting exchange (it ended before a connection was free)."""
        try:
            self._waiters.remove(ex)
        except ValueError:
            pass

    async def _connect(self, ex: Exchange) -> None:
        try:
            _, conn = await asyncio.wait_for(
                self._loop.create_connection(
                    lambda: UpstreamConnection(self), self.host, self.port
                ),
                self.connect_timeout,
            )
        except (OSError, TimeoutError) as exc:
            self.active -= 1
            ex.connect_failed(exc, self)
            self._wake_waiter()
            return
        if conn.transport is None or conn.transport.is_closing():
            # Closed by the backend before this task resumed (uvloop can run
            # connection_lost first); the pool slot was already freed in `forget`.
            ex.connect_failed(ConnectionResetError("closed by the backend at connect"), self)
            return
        conn.exchange = ex
        ex.attach(conn)

    def release(self, conn: UpstreamConnection) -> None:
        """Return a connection whose exchange finished cleanly."""
        conn.exchange = None
        conn.head_only = False
        conn.tee = None  # no reads of the next exchange (or a shadow leg) go to this one's tap
        if conn.feeding:  # the rest of this read first (UpstreamConnection.data_received)
            conn.release_pending = True
            self.pending += 1
            return
        if (
            self._closed
            or not conn.keep_alive
            or conn.transport is None
            or conn.transport.is_closing()
        ):
            self.discard(conn)
            return
        if self._waiters:
            ex = self._waiters.popleft()
            conn.reused = True
            conn.exchange = ex
            conn.got_bytes = False
            ex.attach(conn)
            return
        conn.idle_since = self._loop.time()
        self._idle.append(conn)

    def expire_idle(self, now: float) -> None:
        """Close connections idle for `idle_timeout` (the data plane's sweep calls this).

        The idle list is a stack (the most recently used is reused first), so the ones that
        have waited longest are at its bottom.
        """
        idle = self._idle
        limit = now - self.idle_timeout
        while idle and idle[0].idle_since <= limit:
            self.discard(idle.pop(0))

    def discard(self, conn: UpstreamConnection) -> None:
        """Close a connection that must not be reused."""
        conn.exchange = None
        conn.keep_alive = False
        if conn.transport is not None and not conn.transport.is_closing():
            conn.transport.close()
        else:
            self.forget(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        """Account for a connection that is gone (called once from connection_lost)."""
        if conn in self._idle:
            self._idle.remove(conn)
        if conn.pool is self and conn.transport is not None:
            conn.transport = None
            self.active -= 1
            self._wake_waiter()

    def _wake_waiter(self) -> None:
        # A closed pool (a reload replaced its backend) still serves the requests routed to
        # it before: their connections close when they end (release on a closed pool).
        if self._waiters and self.active < self.max_connections:
            self.acquire(self._waiters.popleft())

    def close(self) -> None:
        """Close idle connections now and busy ones when their exchange ends."""
        self._closed = True
        for conn in list(self._idle):
            self.discard(conn)
        self._idle.clear()
