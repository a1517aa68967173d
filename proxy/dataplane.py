"""The data plane: a client-facing asyncio.Protocol that forwards HTTP/1.1 at the byte level.

One `ClientConnection` per client connection parses requests with httptools (llhttp, strict)
and one `_Exchange` per request carries it to a pooled upstream connection. Callbacks
move bytes; output is gathered during one `data_received` and written once. Reads are
paused on either side when the other side's write buffer is full.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, cast

import httptools
import orjson

from proxy.accesslog import AccessLog
from proxy.breaker import CLOSED, HALF_OPEN, Breaker
from proxy.metrics import Metrics, RouteMetrics
from proxy.pathguard import is_suspicious, other_reading
from proxy.routes import sticky_key
from proxy.shadowing import (
    SAFE_METHODS,
    RouteState,
    ShadowHub,
    ShadowPlan,
    ShadowTap,
    bucket,
    with_host,
)
from proxy.upstream import UpstreamConnection, UpstreamPool
from shadow.capture import MAX_BODY_BYTES as MAX_CAPTURE_BODY
from shadow.capture import CaptureWriter

if TYPE_CHECKING:
    from proxy.routes import RouteTable
    from proxy.settings import LimitsSettings

__all__ = [
    "KIND_CANARY",
    "KIND_EXTRACTED",
    "KIND_PRIMARY",
    "ClientConnection",
    "DataPlane",
    "RouteEntry",
    "RoutePlan",
    "RoutingState",
]

# RFC 9110 7.6.1 hop-by-hop fields, plus the proxy headers we set ourselves: a client's
# X-Strangler-Dry-Run placed before the copy's own made a candidate commit a dry-run write.
_REQ_DROP = frozenset(
    {
        b"x-strangler-dry-run",
        b"x-strangler-shadow",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-for",
    }
)
_RESP_DROP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# never forwarded in a trailer section (RFC 9110 6.5.1: framing, routing, and what the
# head drops in that direction, the proxy's own request headers included)
_REQ_TRAILER_DROP = _REQ_DROP | {b"content-length", b"host"}
_RESP_TRAILER_DROP = _RESP_DROP | {b"content-length", b"host"}
_LAST_CHUNK = b"0\r\n\r\n"


def _last_chunk(trailers: Sequence[tuple[bytes, bytes]], drop: frozenset[bytes]) -> bytes:
    """A chunked body's end: the last chunk, then the trailer fields not in `drop`."""
    if not trailers:
        return _LAST_CHUNK
    fields = [b"%s: %s\r\n" % (n, v) for n, v in trailers if n.lower() not in drop]
    return b"0\r\n" + b"".join(fields) + b"\r\n"


_CONN_STANDARD_TOKENS = frozenset({b"close", b"keep-alive", b"upgrade"})
# Never removed because a Connection header names them: the message's framing and its
# Host are end-to-end, and without them a body would reach the backend (or the client) as
# the start of a next message (request smuggling, responses handed to the wrong user).
_CONN_NEVER_NAMES = frozenset({b"content-length", b"transfer-encoding", b"host"})
_PLAIN_CONNECTION = _CONN_STANDARD_TOKENS  # a Connection header naming no other header
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}
_VIA = b"via: 1.1 strangler\r\n"
_REPLAY_LIMIT = 64 << 10
_SWEEP_INTERVAL = 0.05  # the resolution of every timeout on the data plane
_FLUSH_INTERVAL = 0.25
_FRESH_GRACE_S = 0.5  # while draining, a new connection's time to send its request
_PENDING_LIMIT = 1 << 20
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset
_REASONS = {
    400: b"Bad Request",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    501: b"Not Implemented",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """How one request of a route is served, resolved once per config."""

    name: str
    mode: str
    backend: str
    pool: UpstreamPool
    metrics: RouteMetrics
    host_header: bytes | None
    shadow: ShadowPlan | None = None  # the background leg, if any
    fallback: RoutePlan | None = None  # legacy, when this plan serves from a candidate
    breaker: Breaker | None = None  # the candidate's breaker, when serving from it
    route_state: RouteState | None = None  # rollback window and hold, when serving from it


KIND_PRIMARY, KIND_CANARY, KIND_EXTRACTED = 0, 1, 2


class RouteEntry:
    """A route's plans and the per-request choice between them (canary, extracted, breaker)."""

    __slots__ = (
        "breaker",
        "candidate",
        "held",
        "kind",
        "name",
        "plain",
        "primary",
        "salt",
        "sticky_cookie",
        "sticky_header",
        "threshold",
    )

    def __init__(
        self,
        name: str,
        primary: RoutePlan,
        *,
        kind: int = KIND_PRIMARY,
        candidate: RoutePlan | None = None,
        plain: RoutePlan | None = None,
        breaker: Breaker | None = None,
        canary_percent: float = 0.0,
        sticky_header: str | None = None,
        sticky_cookie: str | None = None,
    ) -> None:
        self.name = name
        self.primary = primary  # legacy serves (with the forward shadow, if any)
        self.candidate = candidate  # the candidate serves (with the reverse shadow, if any)
        self.plain = plain or primary  # legacy serves, nothing else
        self.kind = kind
        self.breaker = breaker
        self.threshold = round(canary_percent * 100)
        self.sticky_header = sticky_header.lower().encode() if sticky_header else None
        self.sticky_cookie = sticky_cookie.encode() if sticky_cookie else None
        self.salt = name.encode() + b"/"  # a key's bucket: bucket(salt + key) (as explain)
        self.held = False  # an automatic rollback holds the route on legacy

    def choose(self, headers: list[tuple[bytes, bytes]]) -> RoutePlan:
        """The plan for one request of a canary or extracted route."""
        cand = self.candidate
        if self.held or cand is None:
            return self.primary if self.kind == KIND_CANARY else self.plain
        br = self.breaker
        if self.kind == KIND_EXTRACTED:
            return cand if br is None or br.allow() else self.plain
        key = sticky_key(headers, self.sticky_header, self.sticky_cookie)
        if key is None or bucket(self.salt + key) >= self.threshold:
            return self.primary
        return cand if br is None or br.allow() else self.primary


@dataclass(frozen=True, slots=True)
class RoutingState:
    """One config's compiled routing: swapped atomically on reload."""

    version: str
    table: RouteTable
    entries: tuple[RouteEntry, ...]  # by route index
    default: RouteEntry


def _error_body(status: int, code: str, message: str, backend: str, request_id: str) -> bytes:
    return orjson.dumps(
        {
            "error": {
                "code": code,
                "message": message,
                "backend": backend,
                "request_id": request_id,
            }
        }
    )


def _simple_response(
    status: int, body: bytes, *, close: bool, extra: bytes = b"", head_request: bool = False
) -> bytes:
    """A whole error response; the answer to a HEAD has the headers of the body, never it
    (RFC 9110 9.3.2: on a kept-alive connection it would be read as the next response)."""
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % (
        status,
        _REASONS.get(status, b"Error"),
        len(body),
    )
    if close:
        head += b"connection: close\r\n"
    return head + extra + _VIA + (b"\r\n" if head_request else b"\r\n" + body)


class DataPlane:
    """Shared state of all client connections of one listener."""

    def __init__(
        self,
        state: RoutingState,
        metrics: Metrics,
        access_log: AccessLog,
        limits: LimitsSettings,
        loop: asyncio.AbstractEventLoop,
        hub: ShadowHub | None = None,
        capture: CaptureWriter | None = None,
    ) -> None:
        self.state = state
        self.hub = hub
        self.capture = capture
        self.metrics = metrics
        self.access_log = access_log
        self.limits = limits
        self.loop = loop
        self.connections: set[ClientConnection] = set()
        self.draining = False
        self.in_flight = 0
        self._rid_prefix = os.urandom(6).hex()
        self._rid_counter = 0
        self._sweeper: asyncio.TimerHandle | None = None
        self._next_flush = 0.0
        metrics.in_flight_source = lambda: self.in_flight
        self.exchange_hook: Callable[[_Exchange], None] | None = None
        # The upstream pools whose idle connections the sweep expires (set by the app).
        self.pools: Callable[[], Iterable[UpstreamPool]] = tuple

    def protocol_factory(self) -> ClientConnection:
        """Make the protocol for one accepted connection."""
        return ClientConnection(self)

    def new_request_id(self) -> str:
        """A request id unique across processes (random prefix + counter)."""
        self._rid_counter += 1
        return f"{self._rid_prefix}{self._rid_counter:08x}"

    def start_sweeper(self) -> None:
        """Start the once-per-interval check of client header/body/idle deadlines."""
        self._sweeper = self.loop.call_later(_SWEEP_INTERVAL, self._sweep)

    def stop_sweeper(self) -> None:
        """Stop deadline checks."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def _sweep(self) -> None:
        # One timer for every connection: client header/body/idle deadlines and upstream
        # timeouts are plain floats checked here, so no request arms a timer of its own.
        now = self.loop.time()
        if now >= self._next_flush:
            self.metrics.flush()
            self._next_flush = now + _FLUSH_INTERVAL
            if self.hub is not None:
                self.hub.poll_holds(self.state.entries)
        for pool in self.pools():
            pool.expire_idle(now)
        for conn in list(self.connections):
            if conn.deadline and now >= conn.deadline:
                conn.deadline_expired()
            ex = conn.current
            if ex is not None:
                ex.check_timeout(now)
        self._sweeper = self.loop.call_later(_SWEEP_INTERVAL, self._sweep)


class _Exchange:
    """One request/response through the proxy."""

    __slots__ = (
        "backend",
        "cap",
        "chunked_req",
        "chunked_resp",
        "client",
        "client_host",
        "close_after",
        "close_delimited",
        "done",
        "eof_body",
        "head_request",
        "http11",
        "interim",
        "keep_alive",
        "last_activity",
        "method",
        "path",
        "plan",
        "probe",
        "replay",
        "replay_size",
        "request_complete",
        "request_id",
        "resp_started",
        "retried",
        "shadow",
        "status",
        "t0",
        "up_buf",
        "up_size",
        "upgrade_req",
        "upgrading",
        "upstream",
        "write_sampled",
    )

    client_host: bytes  # set only when the head carries an override (off the hot path)
    probe: bool  # set only on a half-open breaker's probe (read off the hot path)
    write_sampled: bool  # set only on a write the candidate serves (read only for those)

    def __init__(
        self,
        client: ClientConnection,
        plan: RoutePlan,
        method: str,
        path: str,
        head: bytes,
        request_id: str,
    ) -> None:
        self.client = client
        self.plan = plan
        self.backend = plan.backend
        self.method = method
        self.path = path
        self.request_id = request_id
        self.up_buf: list[bytes] = [head]
        self.up_size = len(head)
        self.replay: list[bytes] | None = [head] if method in _IDEMPOTENT else None
        self.replay_size = len(head)
        self.upstream: UpstreamConnection | None = None
        self.chunked_req = False
        self.head_request = method == "HEAD"
        # this request's own version and keep-alive (pipelined ones may differ)
        self.http11 = client.http11
        self.keep_alive = client.keep_alive
        self.request_complete = False
        self.status = 0
        self.resp_started = False
        self.chunked_resp = False
        self.close_delimited = False
        self.eof_body = False  # the client's body ends at our close (HTTP/1.0, no length)
        self.close_after = False
        self.interim = False
        self.upgrade_req = False
        self.upgrading = False
        self.retried = False
        self.shadow: ShadowTap | None = None
        self.cap: _Capture | None = None
        self.done = False
        self.t0 = perf_counter()
        self.last_activity = client.plane.loop.time()

    # request direction
    def start(self) -> None:
        """Ask the pool for a connection and arm the upstream timeout."""
        plane = self.client.plane
        plane.in_flight += 1
        self.last_activity = plane.loop.time()
        self.plan.pool.acquire(self)

    def send_body(self, data: bytes) -> None:
        """Queue request body bytes (already framed) for the upstream."""
        self.up_buf.append(data)
        self.up_size += len(data)
        if self.replay is not None:
            self.replay_size += len(data)
            if self.replay_size > _REPLAY_LIMIT:
                self.replay = None
            else:
                self.replay.append(data)

    def flush_up(self) -> None:
        """Write gathered request bytes to the upstream in one write."""
        up = self.upstream
        if up is not None and self.up_buf:
            data = self.up_buf[0] if len(self.up_buf) == 1 else b"".join(self.up_buf)
            self.up_buf = []
            self.up_size = 0
            up.send(data)

    def attach(self, conn: UpstreamConnection) -> None:
        """The pool found us a connection."""
        pool = conn.pool
        if self.done or pool is not self.plan.pool or self.upstream is not None:
            # Ended, or fallen back to legacy while this candidate connect was under way:
            # the connection goes back to its own pool, never to the one serving now.
            pool.release(conn) if not conn.got_bytes else pool.discard(conn)
            return
        self.upstream = conn
        conn.head_only = self.head_request
        if self.client.write_paused and conn.transport is not None:
            # The client stopped reading an earlier response: this one waits too (its
            # resume_writing resumes it), or it would pile up here as fast as it comes.
            conn.transport.pause_reading()
        sh = self.shadow
        conn.tee = sh if sh is not None and sh.tees_raw else None  # set or cleared
        if not self.client.feeding:
            # Inside the client's feed_data the tail of data_received flushes, once the
            # whole read parsed cleanly: nothing travels ahead of a parse error.
            self.flush_up()
        if self.client.reading_paused_for is self:
            self.client.resume_reading()

    def connect_failed(self, exc: BaseException, pool: UpstreamPool | None = None) -> None:
        """No connection could be opened (by `pool`: a connect of a backend this request
        has since fallen back from is no concern of it any more)."""
        if self.done or (pool is not None and pool is not self.plan.pool) or self.resp_started:
            return
        kind = "timeout" if isinstance(exc, TimeoutError) else "connect"
        self.client.plane.metrics.upstream_errors.labels(self.backend, kind).inc()
        if not self.retried and (kind == "connect" or not self._can_fall_back()):
            # Nothing of the request was sent, so one more connect is safe for every method.
            # A timed-out connect is tried again too: on Linux a SYN dropped by a full
            # accept queue (a burst of new connections) is resent only after 1 s, past
            # connect_timeout; so is a connect whose completion our own loop saw late. A
            # candidate's timed-out connect goes to legacy instead when the request can.
            self.retried = True
            self.last_activity = self.client.plane.loop.time()  # the backend's timeout anew
            self.plan.pool.acquire(self, fresh=True)
            return
        self._fail(
            502, "bad_gateway", f"cannot connect to backend {self.backend!r}: {_describe(exc)}"
        )

    def pause_client_reading(self) -> None:
        self.client.pause_reading(self)

    def resume_client_reading(self) -> None:
        if self.client.reading_paused_for is self:
            self.client.resume_reading()

    # response direction
    def on_upstream_headers_complete(
        self,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        conn: UpstreamConnection,
    ) -> None:
        client = self.client
        if status < 200 and status != 101:
            # Interim response (100 Continue, 103 Early Hints): relay it as it came, to an
            # HTTP/1.1 client only (RFC 9110 15.2: 1.0 would read it as the answer).
            self.interim = True
            if not self.http11:
                return
            parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
            for name, value in headers:
                parts += (name, b": ", value, b"\r\n")
            parts.append(b"\r\n")
            client.out += parts
            return
        self.status = status
        self.resp_started = True
        if self.shadow is not None:
            self.shadow.served_head(status, headers)
        out = client.out
        mark = len(out)  # where this response's head starts (after any interim one)
        out.append(b"HTTP/1.1 %d %s\r\n" % (status, reason))
        te: bytes | None = None
        has_length = False
        conn_tokens: bytes | None = None
        for name, value in headers:
            lname = name.lower()
            if lname in _RESP_DROP:
                if lname == b"transfer-encoding":
                    te = value if te is None else te + b"," + value
                elif lname == b"connection":
                    conn_tokens = value if conn_tokens is None else conn_tokens + b"," + value
                if status == 101 and lname in (b"upgrade", b"connection"):
                    out += (name, b": ", value, b"\r\n")
                continue
            if lname == b"content-length":
                has_length = True
            out += (name, b": ", value, b"\r\n")
        if conn_tokens is not None and conn_tokens.lower() not in _PLAIN_CONNECTION:
            _drop_connection_named(out, conn_tokens, start=mark + 1)
        if status == 101:
            self.upgrading = True
            out.append(_VIA + b"\r\n")
            return
        no_body = self.head_request or status in (204, 304)
        http11 = self.http11
        if not no_body and not has_length:
            if te is not None and te.lower() != b"chunked":
                coding = _coded_framing(te, http11)
                if coding is None:
                    del out[mark:]
                    self.status = 0
                    self.resp_started = False
                    self._fail(
                        502,
                        "bad_gateway",
                        f"backend {self.backend!r} sent a transfer coding ({te.decode('latin-1')})"
                        " this client cannot receive",
                        # only the client's HTTP/1.0 stands in the way: no verdict on the backend
                        verdict=http11 or _coded_framing(te, True) is None,
                    )
                    return
                # Kept: the body's bytes stay coded (RFC 9112 6.1), only rechunked; without
                # a final chunked the body ends at the upstream's close (RFC 9112 6.3).
                self.close_delimited = not te.lower().rstrip().endswith(b"chunked")
                self.chunked_resp = True
                out.append(coding)
            else:
                # The body ends at the upstream's close unless it is chunked.
                self.close_delimited = te is None
                if http11:
                    self.chunked_resp = True
                    out.append(b"transfer-encoding: chunked\r\n")
                else:
                    self.close_after = True
                    self.eof_body = True
        if (
            not self.keep_alive
            or client.last_answer()
            or client.plane.draining
            or self.close_after
            or not self.request_complete  # answered before its body came: never reused
        ):
            self.close_after = True
            out.append(b"connection: close\r\n")
        elif not http11:
            out.append(b"connection: keep-alive\r\n")
        out.append(_VIA + b"\r\n")

    def on_upstream_body(self, data: bytes) -> None:
        if self.shadow is not None:
            self.shadow.served_chunk(data)
        if self.chunked_resp:
            self.client.out += (b"%x\r\n" % len(data), data, b"\r\n")
        else:
            self.client.out.append(data)

    def on_upstream_message_complete(self, conn: UpstreamConnection) -> None:
        if self.interim:
            self.interim = False
            return
        if self.upgrading:
            return  # the upgrade exception follows
        if self.chunked_resp:
            self.client.out.append(_last_chunk(conn.trailers, _RESP_TRAILER_DROP))
        self._finish(conn)

    def on_upstream_flush(self) -> None:
        client = self.client
        if client.out:
            client.flush()
        self.last_activity = client.plane.loop.time()

    def on_upstream_upgrade(self, conn: UpstreamConnection, rest: bytes) -> None:
        """The backend switched protocols: tunnel raw bytes both ways from now on."""
        client = self.client
        client.flush()
        self.upstream = None
        if self.shadow is not None:
            self.shadow.drop("upgrade")
            self.shadow = None
        assert client.transport is not None and conn.transport is not None
        _keep_alive_probes(client.transport)
        _keep_alive_probes(conn.transport)
        conn.start_tunnel(client.transport)
        client.start_tunnel(conn)
        if rest:
            client.transport.write(rest)
        self._account(101, None)
        self.done = True

    def on_upstream_lost(self, conn: UpstreamConnection, exc: BaseException | None) -> None:
        if self.done or conn is not self.upstream:
            return
        self.upstream = None
        if self.resp_started:
            if self.close_delimited and exc is None:
                # A clean close ends such a body; an error (a reset) cuts it: aborted below.
                if self.chunked_resp:
                    self.client.out.append(b"0\r\n\r\n")
                self._finish(None)
                return
            self.client.plane.metrics.upstream_errors.labels(self.backend, "reset").inc()
            self._abort("reset")
            return
        if conn.reused and not conn.got_bytes and self.replay is not None and not self.retried:
            # A stale keep-alive connection closed under us before any response byte:
            # safe to resend once, on a fresh connection, for idempotent requests.
            self.retried = True
            self.up_buf = list(self.replay)
            self.up_size = self.replay_size
            self.plan.pool.acquire(self, fresh=True)
            return
        self.client.plane.metrics.upstream_errors.labels(self.backend, "reset").inc()
        self._fail(
            502,
            "bad_gateway",
            f"backend {self.backend!r} closed the connection: {_describe(exc)}",
        )

    # ends
    def check_timeout(self, now: float) -> None:
        """Called by the data plane's sweeper: fail an exchange idle past its timeout."""
        if self.done or now - self.last_activity < self.plan.pool.timeout:
            return
        client = self.client
        if not self.request_complete and client.reading is self:
            # The body is still coming from the client: its body deadline covers that time,
            # and a slow client is no backend timeout (nor a breaker failure).
            return
        if client.write_paused:
            # The client is not reading (so neither are we, from the backend): no backend
            # timeout, a healthy response is not cut for it. A client stalled past the
            # body timeout is cut as the slow one.
            limits = client.plane.limits
            if now - self.last_activity < limits.body_timeout:
                return
            client.plane.metrics.client_errors.labels("timeout").inc()
            self._abort("client_timeout")
            return
        client.plane.metrics.upstream_errors.labels(self.backend, "timeout").inc()
        if self.resp_started:
            self._abort("timeout")
        else:
            self._fail(
                504,
                "gateway_timeout",
                f"backend {self.backend!r} did not answer within {self.plan.pool.timeout:g}s",
            )

    def _fail(self, status: int, code: str, message: str, *, verdict: bool = True) -> None:
        """Answer with a JSON error when nothing of the response was sent yet (`verdict`:
        whether the failure is the backend's, for its breaker and the rollback window)."""
        up = self.upstream
        self.upstream = None
        if up is not None:
            self.plan.pool.discard(up)
        else:
            self.plan.pool.cancel_wait(self)
        if self._fall_back(verdict):
            return
        client = self.client
        close = (
            not self.request_complete
            or not self.keep_alive
            or client.last_answer()
            or client.plane.draining
        )
        body = _error_body(status, code, message, self.backend, self.request_id)
        client.out.append(
            _simple_response(
                status,
                body,
                close=close,
                extra=b"x-request-id: %s\r\n" % self.request_id.encode(),
                head_request=self.head_request,
            )
        )
        self.close_after = close
        self.status = status
        client.flush()  # the answer first, the bookkeeping after (as in _finish)
        self._end(code if verdict else "client_protocol")
        client.exchange_done(self)

    def _can_fall_back(self) -> bool:
        """Whether a failure of this request's candidate would be served from legacy."""
        return (
            self.plan.fallback is not None
            and self.replay is not None
            and self.method in SAFE_METHODS
            and not self.resp_started
            and self.request_complete
        )

    def _fall_back(self, verdict: bool = True) -> bool:
        """A candidate failed before any response byte: serve a safe request from legacy
        (`verdict`: the failure is the candidate's, counted against it)."""
        if not self._can_fall_back():
            return False
        plan = self.plan
        fb = plan.fallback
        assert fb is not None
        br = plan.breaker
        if br is not None and verdict:
            br.failure()
        elif br is not None and getattr(self, "probe", False):
            br.abandon()  # no verdict: the probe's turn goes to the next request
        hub = self.client.plane.hub
        if plan.route_state is not None and hub is not None and verdict:
            hub.observe(plan.route_state, "candidate_error", None, None)
        if self.shadow is not None:
            self.shadow.drop("fallback")
            self.shadow = None
        self.plan = fb
        self.backend = fb.backend
        self.retried = False  # legacy gets its own retry of a stale or refused connection
        replay = self.replay
        assert replay is not None
        head = replay[0]
        replay[0] = self._rehosted(head, plan, fb)
        self.replay_size += len(replay[0]) - len(head)
        self.up_buf = list(replay)
        self.up_size = self.replay_size
        self.last_activity = self.client.plane.loop.time()
        fb.pool.acquire(self)
        return True

    def _rehosted(self, head: bytes, plan: RoutePlan, fb: RoutePlan) -> bytes:
        """`head` (made for `plan`'s backend) with the Host `fb`'s backend is sent."""
        client_host = getattr(self, "client_host", None)
        if fb.host_header == plan.host_header and client_host != b"":
            return head
        host = fb.host_header
        if host is None:  # the client's, dropped from the head for the override
            host = client_host or fb.pool.authority  # or legacy's, when it sent none
        return with_host(head, host)

    def recheck_breaker(self) -> None:
        """Before a queued request starts: if its candidate's breaker opened while it
        waited, it goes to legacy like a request arriving now (nothing of it was sent)."""
        plan = self.plan
        br = plan.breaker
        fb = plan.fallback
        if br is None or fb is None or br.state == CLOSED:
            return
        if br.state == HALF_OPEN and getattr(self, "probe", False):
            return  # admitted as the probe
        if br.allow():
            self.probe = True  # the probe's turn was free: this request takes it
            return
        if self.shadow is not None:
            self.shadow.drop("fallback")
            self.shadow = None
        self.plan = fb
        self.backend = fb.backend
        head = self.up_buf[0]
        new = self._rehosted(head, plan, fb)
        self.up_buf[0] = new
        self.up_size += len(new) - len(head)
        if self.replay is not None:
            self.replay[0] = new
            self.replay_size += len(new) - len(head)

    def _abort(self, why: str) -> None:
        """The response was already under way: the client must see a broken connection."""
        up = self.upstream
        self.upstream = None
        if up is not None:
            up.abort()
        self._end(why)
        # an HTTP/1.0 client's body without a length ends at the close (whatever framing
        # the backend's had, close or chunked): only a reset shows it was cut
        self.client.abort(reset=self.eof_body)

    def _finish(self, conn: UpstreamConnection | None) -> None:
        self.upstream = None
        client = self.client
        # The response's last bytes go out first: the bookkeeping below (pool, metrics,
        # access log, shadow hand-off) is then off the user's latency.
        client.flush()
        if conn is not None:
            if self.request_complete:
                self.plan.pool.release(conn)
            else:
                # The backend answered before reading the whole body: that connection's
                # framing is unknown now, and the client must not keep sending either.
                self.plan.pool.discard(conn)
                self.close_after = True
        self._end(None)
        client.exchange_done(self)

    def _end(self, error: str | None) -> None:
        self.done = True
        sh = self.shadow
        if sh is not None:
            self.shadow = None
            sh.served_end(error is None and self.request_complete)
        plan = self.plan
        br = plan.breaker
        if br is not None and error is not None and self._no_verdict(error):
            if getattr(self, "probe", False):  # an earlier request never holds the turn
                br.abandon()
            if self.method not in SAFE_METHODS and getattr(self, "write_sampled", False):
                self._served_write(error, (perf_counter() - self.t0) * 1000.0, verdict=False)
        elif br is not None:
            failed = error is not None or self.status >= 500
            if failed:
                br.failure()
            else:
                br.success()
            st = plan.route_state
            hub = self.client.plane.hub
            if st is not None and hub is not None:
                ms = (perf_counter() - self.t0) * 1000.0
                hub.observe(st, "candidate_error" if failed else "ok", None, ms)
                if self.method not in SAFE_METHODS and getattr(self, "write_sampled", False):
                    self._served_write(error, ms)
        self._account(self.status, error)

    def _served_write(self, error: str | None, ms: float, *, verdict: bool = True) -> None:
        """Store a write the candidate served: the route's background leg compares safe
        methods only, so without this row the store would hold no evidence of it."""
        hub = self.client.plane.hub
        sp = self.plan.shadow
        if hub is not None and sp is not None:
            status = self.status if self.resp_started else None  # else the proxy's 502/504
            hub.write_row(
                sp, self.method, self.path, self.request_id, status, ms, error, verdict=verdict
            )

    def _no_verdict(self, error: str | None) -> bool:
        """Whether this end says nothing about the backend (for its breaker and the route's
        rollback window): the client broke its request (bad, or its body too slow) or left
        while still sending it or once the answer had started. Not when the proxy was
        holding the client back for this request (the backend stopped reading its body),
        and not when a user gave up waiting for a response head (a hung candidate shows
        that way first)."""
        if self.client.reading_paused_for is self:
            return False
        if error in _CLIENT_FAULTS:
            return True
        return error == "client_disconnected" and (self.resp_started or not self.request_complete)

    def _account(self, status: int, error: str | None) -> None:
        plane = self.client.plane
        plane.in_flight -= 1
        elapsed = perf_counter() - self.t0
        self.plan.metrics.observe(status, elapsed)
        plane.access_log.log(
            self.request_id,
            self.plan.name,
            self.backend,
            self.method,
            self.path,
            status,
            elapsed * 1000.0,
            error,
        )
        hook = plane.exchange_hook
        if hook is not None:
            hook(self)

    def client_gone(self, why: str = "client_disconnected", status: int = 499) -> None:
        """The client disconnected (or broke the request, `why` says, and was told `status`):
        cancel the upstream request."""
        if self.done:
            return
        up = self.upstream
        self.upstream = None
        if up is not None:
            up.abort()
        else:
            self.plan.pool.cancel_wait(self)
        if self.status == 0:
            self.status = status  # logged as what the client was told
        self._end(why)


def _discard(ex: _Exchange, why: str = "primary_failed") -> None:
    """A pipelined request that will never start (its client left, or it was refused): its
    shadow copy ends (counted as `why`), and a half-open breaker's probe turn passes on."""
    ex.done = True
    if ex.shadow is not None:
        ex.shadow.drop(why)
        ex.shadow = None
    br = ex.plan.breaker
    if br is not None and getattr(ex, "probe", False):
        br.abandon()


# How a client can end an exchange by its own fault (a bad request, a body too slow, an
# HTTP/1.0 that cannot receive the response's transfer coding)
def _keep_alive_probes(transport: asyncio.BaseTransport) -> None:
    """TCP keepalive on a tunnel's socket, where the platform has the options.

    A tunnel (WebSocket) may be quiet for hours, so no timeout of ours cuts it; without
    probes a peer that vanished without a FIN held both sockets forever. Probes start after
    5 min of silence, every 30 s; 4 unanswered close the connection (then the tunnel).
    """
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (
            ("TCP_KEEPIDLE", 300),
            ("TCP_KEEPINTVL", 30),
            ("TCP_KEEPCNT", 4),
        ):
            option = getattr(socket, name, None)
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
    except OSError:  # a socket already closing: nothing to keep alive
        pass


_CLIENT_FAULTS = frozenset({"client_timeout", "bad_request", "client_protocol"})


def _coded_framing(te: bytes, http11: bool) -> bytes | None:
    """The Transfer-Encoding line that forwards a response's codings other than chunked,
    rechunked by us; None when they cannot be forwarded (an HTTP/1.0 client, RFC 9112 6.1;
    chunked anywhere but last)."""
    codings = [c.strip() for c in te.lower().split(b",") if c.strip()]
    if codings and codings[-1] == b"chunked":
        codings.pop()
    if not http11 or not codings or b"chunked" in codings:
        return None
    return b"transfer-encoding: %s, chunked\r\n" % b", ".join(codings)


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "connection closed"
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text


def _drop_connection_named(out: list[bytes], tokens: bytes, start: int) -> set[bytes]:
    """Remove header lines named in a Connection header (RFC 9110 7.6.1) from `out`; the
    (lower-case) names removed."""
    names = {t.strip().lower() for t in tokens.split(b",")}
    names -= _CONN_STANDARD_TOKENS
    names -= _CONN_NEVER_NAMES
    if not names:
        return names
    # `out` holds groups of (name, b": ", value, b"\r\n") after position `start`.
    i = start
    kept: list[bytes] = out[:start]
    while i < len(out):
        if i + 3 < len(out) and out[i + 1] == b": " and out[i + 3] == b"\r\n":
            if out[i].lower() not in names:
                kept += out[i : i + 4]
            i += 4
        else:
            kept.append(out[i])
            i += 1
    out[:] = kept
    return names


class ClientConnection(asyncio.Protocol):
    """One client connection: parses requests, runs exchanges one at a time, in order."""

    __slots__ = (
        "_chunked",
        "_headers",
        "_tunnel",
        "_url",
        "born",
        "current",
        "deadline",
        "error_after",
        "feeding",
        "head_bytes",
        "head_raw",
        "held",
        "http11",
        "keep_alive",
        "lingering",
        "out",
        "parser",
        "peer",
        "plane",
        "queue",
        "reading",
        "reading_paused_for",
        "served",
        "transport",
        "write_paused",
    )

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.out: list[bytes] = []
        self.current: _Exchange | None = None  # the exchange whose response is being sent
        self.reading: _Exchange | None = None  # the exchange whose request is being read
        self.queue: deque[_Exchange] = deque()
        self.peer = b""
        self.keep_alive = True
        self.http11 = True
        self.reading_paused_for: _Exchange | None = None
        self.write_paused = False
        self.feeding = False  # inside parser.feed_data
        self.served = 0  # responses completed on this connection
        self.born = plane.loop.time()
        self.error_after: bytes | None = None  # a 400 owed after the responses in flight
        self.deadline = 0.0
        self.head_bytes = 0
        # Bytes of reads wholly inside a request head (-1: none yet, the head began in this
        # read; None: not in a head): the parser holds a header line until it ends, so
        # `head_bytes`, counted per whole header, never sees one that does not.
        self.head_raw: int | None = None
        self.held = b""  # bytes after an upgrade request, until the backend answers it
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._chunked = False
        self._tunnel: UpstreamConnection | None = None
        self.lingering = False  # answered and half-closed: the rest of a body is dropped

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; the interface is the same
        self.transport = cast(asyncio.Transport, transport)
        plane = self.plane
        plane.connections.add(self)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = str(peer[0]).encode()
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        if len(plane.connections) > plane.limits.max_connections:
            plane.metrics.client_errors.labels("too_many_connections").inc()
            plane.access_log.event(event="connection_limit", limit=plane.limits.max_connections)
            self._reply_error(503, "overloaded", "too many client connections")
            return
        self.deadline = plane.loop.time() + plane.limits.header_timeout

    def data_received(self, data: bytes) -> None:
        tunnel = self._tunnel
        if tunnel is not None:
            tunnel.send(data)
            return
        if self.lingering:
            return
        self.feeding = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # The upgrade request was the last one parsed (its message may be complete).
            ex = self.reading or (self.queue[-1] if self.queue else self.current)
            if ex is not None:
                ex.request_complete = True
                ex.upgrade_req = True
                if ex.shadow is not None:
                    ex.shadow.drop("upgrade")
                    ex.shadow = None
                # What follows is the new protocol's if the backend switches (sent into
                # the tunnel), the next request's if it declines (parsed then): held.
                self.held = data[exc.args[0] :]
                self.reading = None
            self._stop_reading()
        except httptools.HttpParserError as exc:
            self.feeding = False
            cur = self.current
            if cur is not None and cur is not self.reading and cur.request_complete:
                cur.flush_up()  # an earlier request parsed whole and valid still goes
            self._bad_request(exc)
            return
        self.feeding = False
        ex = self.current
        if ex is not None and ex.up_buf and ex.upstream is not None:
            ex.flush_up()
        raw = self.head_raw
        if raw is not None:
            raw = self.head_raw = raw + len(data) if raw >= 0 else 0
            limits = self.plane.limits
            # twice the limits: a head within them has its separators and line ends too
            if raw > 2 * (limits.max_header_bytes + limits.max_url_bytes):
                self._bad_request(_TooLarge(431))

    def eof_received(self) -> bool | None:
        tunnel = self._tunnel
        if tunnel is not None:
            # The client's end of data goes on to the backend; its answer still comes back
            # (the tunnel closes when the backend closes).
            up = tunnel.transport
            if up is None or up.is_closing() or not up.can_write_eof():
                return False
            up.write_eof()
            return True
        # Half-close: finish the response in flight, then close.
        self.keep_alive = False
        cut = self.reading
        if cut is not None:  # a request whose body stopped short can never complete
            self.reading = None
            if cut is self.current:
                if cut.eof_body:  # an HTTP/1.0 body the close ends: a FIN would look whole
                    self.abort(reset=True)
                return False  # closed: connection_lost ends it as a client gone
            if cut in self.queue:
                self.queue.remove(cut)
                _discard(cut)
        return self.current is not None or bool(self.queue)

    def connection_lost(self, exc: Exception | None) -> None:
        self.plane.connections.discard(self)
        if self._tunnel is not None:
            self._tunnel.abort()
            self._tunnel = None
        ex = self.current
        self.current = None
        if ex is not None:
            ex.client_gone()
        for queued in self.queue:
            _discard(queued)
        self.queue.clear()
        self.transport = None

    def _feeding_us(self) -> asyncio.Transport | None:
        """The upstream transport whose bytes fill our write buffer (response or tunnel)."""
        ex = self.current
        up = ex.upstream if ex is not None else self._tunnel
        return up.transport if up is not None else None

    def pause_writing(self) -> None:
        self.write_paused = True
        source = self._feeding_us()
        if source is not None:
            source.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        current = self.current
        if current is not None:  # the stall was the client's: the backend's time starts again
            current.last_activity = self.plane.loop.time()
        source = self._feeding_us()
        if source is not None:
            source.resume_reading()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._chunked = False
        self.head_bytes = 0
        self.head_raw = -1
        plane = self.plane
        self.deadline = plane.loop.time() + plane.limits.header_timeout

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.plane.limits.max_url_bytes:
            raise _TooLarge(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        n = self.head_bytes + len(name) + len(value)
        if n > self.plane.limits.max_header_bytes:
            raise _TooLarge(431)
        self.head_bytes = n
        self._headers.append((name, value))  # past the head (a fresh list): trailer fields

    def on_headers_complete(self) -> None:
        self.head_raw = None
        plane = self.plane
        parser = self.parser
        raw_method = parser.get_method()
        method = _METHODS.get(raw_method) or raw_method.decode("ascii", "replace")
        if method == "CONNECT":
            raise _Refuse(405, "method_not_allowed", "CONNECT is not supported")
        version = parser.get_http_version()
        self.http11 = version == "1.1"
        if not self.http11 and version != "1.0":
            # forwarded as HTTP/1.1 it would change protocol on the way (0.9, 2.0, ...)
            raise _Refuse(505, "version_not_supported", f"HTTP/{version} is not supported")
        self.keep_alive = parser.should_keep_alive() and self.keep_alive
        url = self._url
        if url.find(b"#") >= 0:  # RFC 9112 3.2: never in a target; backends cut the path there
            raise _Refuse(400, "bad_request", "a request target cannot carry a fragment (#)")
        if url[:1] == b"/":
            path_b, _, query_b = url.partition(b"?")
            target = url
        elif url == b"*":
            path_b, query_b, target = url, b"", url
        else:
            # absolute-form: the authority is never used to pick an address (no SSRF);
            # only the path and query travel on.
            parsed = httptools.parse_url(url)
            path_b = parsed.path or b"/"
            query_b = parsed.query or b""
            target = path_b + (b"?" + query_b if query_b else b"")
        path = path_b.decode("latin-1")
        headers = self._headers
        self._headers = []  # what comes after the head: a chunked body's trailer fields
        state = plane.state
        query = query_b.decode("latin-1")
        route = state.table.match(method, path, query, headers)
        if is_suspicious(path):
            table = state.table
            if other_reading(path, route, lambda p: table.match(method, p, query, headers)):
                raise _Refuse(
                    400, "ambiguous_path", "the path reads as another route once normalised"
                )
        entry = state.default if route is None else state.entries[route.index]
        plan = entry.primary if entry.kind == KIND_PRIMARY else entry.choose(headers)

        parts: list[bytes] = [raw_method, b" ", target, b" HTTP/1.1\r\n"]
        host = b""
        xff: bytes | None = None
        # a proxy in front of us (a TLS-terminating load balancer) said these: passed on
        xfp = xfh = False
        rid: bytes | None = None
        conn_tokens: bytes | None = None
        upgrade: bytes | None = None
        te: bytes | None = None
        hosts = 0
        host_override = plan.host_header
        for name, value in headers:
            lname = name.lower()
            if lname in _REQ_DROP:
                if lname == b"transfer-encoding":
                    self._chunked = True
                    te = value if te is None else te + b"," + value
                elif lname == b"connection":
                    conn_tokens = value if conn_tokens is None else conn_tokens + b"," + value
                elif lname == b"x-forwarded-for":
                    xff = value if xff is None else xff + b", " + value
                elif lname == b"x-forwarded-proto":
                    xfp = True
                    parts += (name, b": ", value, b"\r\n")
                elif lname == b"x-forwarded-host":
                    xfh = True
                    parts += (name, b": ", value, b"\r\n")
                elif lname == b"upgrade":
                    upgrade = value
                continue
            if lname == b"host":
                host = value
                hosts += 1
                if host_override is not None:
                    continue
            elif lname == b"x-request-id":
                rid = value
            parts += (name, b": ", value, b"\r\n")
        br = plan.breaker
        probe = br if br is not None and br.state == HALF_OPEN else None  # admitted to probe
        try:
            if hosts > 1 or (hosts == 0 and self.http11):
                # RFC 9112 3.2: exactly one Host in HTTP/1.1, at most one before it
                raise _Refuse(400, "bad_request", "a request needs exactly one Host header")
            if te is not None:
                if not self.http11:
                    # RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 means faulty framing
                    raise _Refuse(400, "bad_request", "Transfer-Encoding in an HTTP/1.0 request")
                codings = [c.strip() for c in te.lower().split(b",")]
                if codings[-1] != b"chunked":
                    # RFC 9112 6.1: chunked not last -> the body length is unknown
                    raise _Refuse(400, "bad_request", "chunked must be the final transfer coding")
                if len(codings) > 1:
                    raise _Refuse(
                        501, "not_implemented", "only the chunked transfer coding is supported"
                    )
        except _Refuse:
            if probe is not None:  # refused: the probe's turn goes to the next request
                probe.abandon()
            raise
        if conn_tokens is not None and conn_tokens.lower() not in _PLAIN_CONNECTION:
            named = _drop_connection_named(parts, conn_tokens, start=4)
            # hop-by-hop by the client's word: gone, so ours are set
            xfp = xfp and b"x-forwarded-proto" not in named
            xfh = xfh and b"x-forwarded-host" not in named
        if host_override is not None:
            parts += (b"host: ", host_override, b"\r\n")
        elif hosts == 0:  # HTTP/1.0 without Host: forwarded as 1.1, it needs one
            parts += (b"host: ", plan.pool.authority, b"\r\n")
        if rid is None:
            request_id = plane.new_request_id()
            parts += (b"x-request-id: ", request_id.encode(), b"\r\n")
        else:
            request_id = rid.decode("latin-1")
        peer = self.peer
        parts += (
            b"x-forwarded-for: ",
            peer if xff is None else xff + b", " + peer,
            b"\r\n" if xfp else b"\r\nx-forwarded-proto: http\r\n",
        )
        if host and not xfh:
            parts += (b"x-forwarded-host: ", host, b"\r\n")
        if upgrade is not None and conn_tokens is not None and b"upgrade" in conn_tokens.lower():
            parts += (b"connection: upgrade\r\nupgrade: ", upgrade, b"\r\n")
        if self._chunked:
            parts.append(b"transfer-encoding: chunked\r\n")
        parts.append(_VIA + b"\r\n")

        head = b"".join(parts)
        ex = _Exchange(self, plan, method, path, head, request_id)
        if host_override is not None or hosts == 0:
            ex.client_host = host  # what a fallback without an override sends instead
        if probe is not None:
            ex.probe = True
        ex.chunked_req = self._chunked
        if plan.shadow is not None and plane.hub is not None:
            sh_head = head
            if hosts == 0 and host_override is None:
                # the Host made up above is the serving backend's: the copy has the client's
                # (none), and each leg sends its backend's (ShadowCall._send)
                sh_head = with_host(head, b"")
            sp = plan.shadow
            tap = ex.shadow = plane.hub.begin(sp, method, path, request_id, headers, sh_head)
            if tap is None and sp.safe_only and method not in SAFE_METHODS:
                # a write the candidate serves: no comparison, but stored as evidence when
                # sampled at the route's shadow.percent like the reads
                ex.write_sampled = plane.hub.sampled(sp, request_id, headers)
        cap = plane.capture
        if cap is not None and cap.wants(method, request_id):
            ex.cap = _Capture(query, headers)
        self.reading = ex
        self.deadline = plane.loop.time() + plane.limits.body_timeout
        if self.current is None:
            self.current = ex
            ex.start()
        else:
            self.queue.append(ex)

    def on_body(self, body: bytes) -> None:
        ex = self.reading
        if ex is None:
            return
        plane = self.plane
        now = plane.loop.time()
        self.deadline = now + plane.limits.body_timeout
        ex.last_activity = now
        if ex.chunked_req:
            ex.send_body(b"%x\r\n%s\r\n" % (len(body), body))
        else:
            ex.send_body(body)
        if ex.shadow is not None:
            ex.shadow.request_body(body)
        if ex.cap is not None:
            ex.cap.add(body)
        if ex.up_size > _PENDING_LIMIT and (ex.upstream is None or ex is not self.current):
            self.pause_reading(ex)

    def on_message_complete(self) -> None:
        ex = self.reading
        self.reading = None
        self._url = b""
        trailers = self._headers
        if trailers:
            self._headers = []
        if ex is not None:
            if ex.chunked_req:
                ex.send_body(_last_chunk(trailers, _REQ_TRAILER_DROP))
            ex.request_complete = True
            ex.last_activity = self.plane.loop.time()  # the backend's time starts now
            if ex.shadow is not None:
                ex.shadow.request_done()
            cap = ex.cap
            writer = self.plane.capture
            if cap is not None and writer is not None:
                ex.cap = None
                if cap.size > MAX_CAPTURE_BODY:
                    writer.stats.drop("body_too_large")
                else:
                    body = b"".join(cap.parts) if cap.parts else None
                    writer.maybe_capture(
                        ex.method, ex.path, cap.query, cap.headers, body, ex.request_id
                    )
        self.deadline = 0.0
        if not self.keep_alive:
            self._stop_reading()

    # flow control and output
    def pause_reading(self, ex: _Exchange) -> None:
        """Stop reading from the client until `ex` can take more bytes."""
        if self.reading_paused_for is None and self.transport is not None:
            self.transport.pause_reading()
        self.reading_paused_for = ex

    def resume_reading(self) -> None:
        """Read from the client again."""
        self.reading_paused_for = None
        # A closing client's reads stay stopped once its last request is in, never while
        # its body is still coming (an upload paused mid-body would hang until 408).
        if self.transport is not None and (self.keep_alive or self.reading is not None):
            self.transport.resume_reading()

    def _stop_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()
        self.reading_paused_for = None

    def flush(self) -> None:
        """Write gathered response bytes in one write."""
        out = self.out
        if out and self.transport is not None:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        self.out = []

    def last_answer(self) -> bool:
        """Whether the response being sent is the connection's last: no request after it
        is queued and none will be read (one asked to close, or the client sent EOF)."""
        return not self.keep_alive and not self.queue

    def exchange_done(self, ex: _Exchange) -> None:
        """A response ended: start the next pipelined request, owe an error, or close."""
        self.served += 1
        if self.current is ex:
            self.current = None
        if ex.close_after or self.plane.draining:
            self._close()
            return
        if self.queue:
            nxt = self.queue.popleft()
            self.current = nxt
            if nxt.plan.breaker is not None:
                nxt.recheck_breaker()
            nxt.start()
            if nxt.upstream is not None:
                nxt.flush_up()
        elif self.error_after is not None:
            self.out.append(self.error_after)
            self.error_after = None
            self.flush()
            self._close()
            return
        elif not self.keep_alive:
            self._close()
            return
        elif self.reading is None:
            plane = self.plane
            self.deadline = plane.loop.time() + plane.limits.keepalive_timeout
        if ex.upgrade_req:
            self._upgrade_declined()
        elif self.reading_paused_for is ex:
            self.resume_reading()

    def _upgrade_declined(self) -> None:
        """An upgrade answered without a switch: HTTP/1.1 again, from the bytes held."""
        self.parser = httptools.HttpRequestParser(self)  # the old one stopped at the upgrade
        held, self.held = self.held, b""
        if self.transport is not None:
            self.transport.resume_reading()  # data comes in a later callback: held first
        if held:
            self.data_received(held)

    def _close(self) -> None:
        transport = self.transport
        if transport is None:
            return
        if self.reading is not None and transport.can_write_eof():
            self._linger(transport)
            return
        transport.close()

    def _linger(self, transport: asyncio.Transport) -> None:
        """Close after an answer given while a request body is still coming: a close now
        would reset the connection under the upload, and a client that sends its whole body
        before reading would see the reset, never the answer. Our side ends (FIN); what the
        client still sends is read and dropped until it closes or the body timeout passes."""
        self.lingering = True
        self.keep_alive = False
        self.reading = None
        self._url = b""
        self._headers = []
        for queued in self.queue:
            _discard(queued)
        self.queue.clear()
        self.reading_paused_for = None
        plane = self.plane
        self.deadline = plane.loop.time() + plane.limits.body_timeout
        transport.write_eof()
        transport.resume_reading()

    def start_tunnel(self, conn: UpstreamConnection) -> None:
        """Switch to raw byte forwarding after a 101 response."""
        self._tunnel = conn
        self.current = None
        self.deadline = 0.0
        held, self.held = self.held, b""
        if self.transport is not None:
            # first: the held bytes may fill the backend's connection, which pauses us again
            self.transport.resume_reading()
        if held:  # sent with the upgrade request: the new protocol's first bytes
            conn.send(held)

    def abort(self, reset: bool = False) -> None:
        """Close the client connection abruptly (a truncated response must not look whole).

        `reset`: a reset instead of a FIN, for a response whose body the close delimits (it
        would look whole). Only then: a reset also throws away what the kernel still holds
        for the client, such as earlier pipelined answers that were complete. A response
        being sent whose body the close delimits is always reset (a stop, say).
        """
        cur = self.current
        if cur is not None and cur.eof_body:
            reset = True
        self.out = []
        transport = self.transport
        if transport is not None:
            sock = transport.get_extra_info("socket") if reset else None
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                except OSError:
                    pass
            transport.abort()

    def deadline_expired(self) -> None:
        """A header, body or idle deadline passed."""
        self.deadline = 0.0
        if self.reading is not None or self._url or self._headers:
            plane = self.plane
            plane.metrics.client_errors.labels("timeout").inc()
            if self.current is None or (self.current is self.reading and self.current.status == 0):
                head_request = False
                if self.current is not None:
                    head_request = self.current.head_request
                    self.current.client_gone("client_timeout", 408)
                    self.current = None
                self._reply_error(
                    408, "request_timeout", "request not received in time", head_request
                )
                return
            if self.reading_paused_for is not None:
                # The proxy stopped reading this client (a request queued behind the one
                # being answered read over 1 MiB ahead, or a backend is slow to take a
                # body): no stall of the client's own.
                self.deadline = plane.loop.time() + plane.limits.body_timeout
                return
            if self.current is not self.reading:
                # A request after the one being answered came too slowly: that answer still
                # goes out whole, then the 408, then the close (never the request upstream).
                self._owe_error(
                    408, "request_timeout", "request not received in time", "client_timeout"
                )
                return
        if self.current is None and self.transport is not None:
            self.transport.close()

    def _bad_request(self, exc: Exception) -> None:
        refusal = exc.__context__ if isinstance(exc, httptools.HttpParserCallbackError) else None
        if isinstance(exc, _Refuse):  # refused outside the parser (a head grown too large)
            refusal = exc
        if isinstance(refusal, _Refuse):
            status, code, message = refusal.status, refusal.code, refusal.message
        else:
            status, code, message = 400, "bad_request", f"malformed request: {exc}"
        self.plane.metrics.client_errors.labels(code).inc()
        bad = self.reading
        if bad is not None:
            head_request = bad.head_request
        else:  # refused from a callback, once the request line was parsed
            head_request = refusal is not None and self.parser.get_method() == b"HEAD"
        cur = self.current
        if cur is not None and cur is not bad:
            # An earlier, valid request is still being answered: drop only the malformed
            # one, answer everything before it in order, then the error, then close.
            self._owe_error(status, code, message, "bad_request", head_request)
            return
        self.reading = None
        if cur is not None:
            if cur.resp_started:
                self.abort()
                return
            cur.client_gone("bad_request", status)
            self.current = None
        self._reply_error(status, code, message, head_request)

    def _owe_error(
        self,
        status: int,
        code: str,
        message: str,
        why: str,
        head_request: bool | None = None,
    ) -> None:
        """Drop the request being read (`why`), behind the one being answered: the error
        follows the answers before it, then the connection closes."""
        bad = self.reading
        self.reading = None
        # nothing more is read: no deadline of the dropped request may answer it again
        self.deadline = 0.0
        self._url = b""
        self._headers = []
        if bad is not None:
            if head_request is None:
                head_request = bad.head_request
            if bad in self.queue:
                self.queue.remove(bad)
            _discard(bad, why)
        body = _error_body(status, code, message, "strangler", "")
        self.error_after = _simple_response(
            status, body, close=True, head_request=bool(head_request)
        )
        self._stop_reading()

    def _reply_error(
        self, status: int, code: str, message: str, head_request: bool = False
    ) -> None:
        body = _error_body(status, code, message, "strangler", "")
        self.out = [_simple_response(status, body, close=True, head_request=head_request)]
        self.flush()
        if self.transport is not None:
            self.transport.close()

    def close_if_idle(self, now: float) -> bool:
        """Close a keep-alive connection between requests; True if closed.

        A connection that has not sent its first request yet gets a moment to send it."""
        if (
            self.current is None
            and self.reading is None
            and self.transport is not None
            and (self.served > 0 or now - self.born > _FRESH_GRACE_S)
        ):
            self.transport.close()
            return True
        return False


class _Capture:
    """A request being captured for replay: its query, headers and (capped) body."""

    __slots__ = ("headers", "parts", "query", "size")

    def __init__(self, query: str, headers: list[tuple[bytes, bytes]]) -> None:
        self.query = query
        self.headers = headers
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, data: bytes) -> None:
        self.size += len(data)
        if self.size <= MAX_CAPTURE_BODY:
            self.parts.append(data)


class _Refuse(Exception):
    """Raised inside a parser callback to answer with a specific error status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class _TooLarge(_Refuse):
    def __init__(self, status: int) -> None:
        what = "request line" if status == 414 else "request headers"
        super().__init__(status, "too_large", f"{what} too large")
