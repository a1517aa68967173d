"""Background legs of shadow, canary and extracted modes: sample, tee, call, compare, record.

The user's response never waits for any of this. A `ShadowCall` tees the served response
(capped) while it streams, sends the request copy to the other side on the same lean
upstream pools as the data plane, and when every leg is done the hub compares and hands
one record to the recorder. Every call is bounded (per-route concurrency, body cap,
timeout, adaptive shedding on event-loop lag) and every one that starts is counted:
started = recorded + dropped + failed.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from time import perf_counter
from typing import TYPE_CHECKING, ClassVar, Protocol

from prometheus_client import Counter

from proxy.breaker import Breaker
from proxy.holds import Hold, HoldBoard
from proxy.metrics import HistogramBatch, Metrics
from proxy.upstream import UpstreamConnection, UpstreamPool
from shadow.compare import CompareRules
from shadow.http_compare import COMPARED_HEADERS, HttpResponse
from shadow.record import SAFE_METHODS, Outcome, RecordMode
from shadow.recorder import Recorder
from shadow.redact import Redactor
from shadow.rollback import Breach, RollbackWindow
from shadow.verdict import Verdict, build_record, judge

if TYPE_CHECKING:
    from proxy.offload import OffloadFeed
    from proxy.settings import RouteSettings

__all__ = [
    "SAFE_METHODS",
    "RequestTee",
    "RouteState",
    "ShadowCall",
    "ShadowHub",
    "ShadowPlan",
    "ShadowTap",
    "bucket",
    "client_host",
    "has_framing",
    "with_host",
]

_log = logging.getLogger("strangler.shadow")

_STRIP_FRAMING = re.compile(rb"(?im)^(?:content-length|transfer-encoding):[^\r\n]*\r\n")
_TOP_PATHS = 20
_LAG_INTERVAL = 0.01
_LAG_SHED_S = 0.020
_GLOBAL_BUDGET = 1024
_STARVED_S = 0.1  # a helper's tick this late: its loop did not run, timeouts are not real
_MIN_ADMIT = 0.002  # a trickle of comparisons keeps flowing under sustained overload
_ADMIT_GAIN = 0.5  # admit share added per tick per unit of CPU headroom under the budget


def bucket(key: bytes) -> int:
    """A stable bucket 0..9999 for a key: same key, same bucket, in every process."""
    return zlib.crc32(key) % 10000


_MATCH = Verdict("match")
_SKIPPED = Verdict("skipped")  # a write served well, or kept from the candidate
# how the data plane names an end past the backend's timeout (before, and once the answer
# had started)
_TIMEOUTS = frozenset({"gateway_timeout", "timeout"})


def _header_values(
    headers: Sequence[tuple[bytes, bytes]], names: frozenset[bytes]
) -> list[tuple[bytes, bytes]]:
    """The (lower-cased name, stripped value) pairs of `headers` named in `names`, in order."""
    out = []
    for name, value in headers:
        low = _LOWERED.get(name) or _lower(name)
        if low in names:
            out.append((low, value.strip()))
    return out


def _lower(name: bytes) -> bytes:
    """`name` lower-cased, remembered for the next copy (`_LOWERED`, bounded)."""
    low = name.lower()
    if len(_LOWERED) >= _LOWERED_MAX:  # names that never repeat: start again
        _LOWERED.clear()
    _LOWERED[name] = low
    return low


def _status_only(status: int) -> HttpResponse:
    """A response with just `status` (immutable, so one per status serves every record)."""
    response = _STATUS_ONLY.get(status)
    if response is None:
        response = _STATUS_ONLY[status] = HttpResponse(status)
    return response


_STATUS_ONLY: dict[int, HttpResponse] = {}
_NO_BODY = b"content-length: 0\r\nx-strangler-shadow: 1\r\n"  # what a copy without a body adds
_LOWERED: dict[bytes, bytes] = {}
_LOWERED_MAX = 256


class _Holdable(Protocol):
    """The route entry a rollback holds on legacy (proxy.dataplane.RouteEntry)."""

    name: str
    held: bool


class ShadowTap(Protocol):
    """What the data plane feeds while it serves a sampled request: a `ShadowCall`, or the
    hand-off of that request to the worker's shadow helper process (which takes the served
    response's raw reads from the upstream connection instead: `tees_raw`)."""

    tees_raw: ClassVar[bool]

    def request_body(self, data: bytes) -> None: ...
    def request_done(self) -> None: ...
    def served_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None: ...
    def served_chunk(self, data: bytes) -> None: ...
    def served_end(self, ok: bool) -> None: ...
    def drop(self, reason: str) -> None: ...
    def raw_chunk(self, data: bytes) -> None: ...


class RouteState:
    """Mutable per-route shadow state shared by the plans of one route."""

    __slots__ = (
        "_metrics",
        "by_outcome",
        "dropped",
        "entry",
        "hold_version",
        "in_flight",
        "latency",
        "mode",
        "paths",
        "pending_drops",
        "pending_outcomes",
        "pending_shed",
        "published_drops",
        "route",
        "window",
    )

    def __init__(self, route: str, metrics: Metrics) -> None:
        self.route = route
        self.mode = "shadow"
        self.window: RollbackWindow | None = None  # canary and extracted routes only
        self.entry: _Holdable | None = None
        self.hold_version = ""  # the route's config version (proxy.holds.route_version)
        self.in_flight = 0
        self.by_outcome: dict[str, Counter] = {}
        self.dropped: dict[str, Counter] = {}
        self.paths: dict[str, Counter] = {}
        self.latency = HistogramBatch(metrics.candidate_latency.labels(route))
        self.pending_outcomes: dict[str, int] = {}  # not yet in the Prometheus counters
        self.pending_drops: dict[str, int] = {}  # counted, not yet in the Prometheus counters
        self.pending_shed: dict[str, int] = {}  # copies never started, not yet counted at all
        self.published_drops = 0  # drops of every reason in the Prometheus counters so far
        self._metrics = metrics

    def flush(self, recorder: Recorder) -> None:
        """Publish what was counted since the last flush: outcomes, candidate latencies and
        drops in the Prometheus metrics; shed copies also with the recorder (started and
        dropped together, so its balance holds)."""
        self.latency.flush()
        outcomes, self.pending_outcomes = self.pending_outcomes, {}
        for outcome, n in outcomes.items():
            c = self.by_outcome.get(outcome)
            if c is None:
                c = self.by_outcome[outcome] = self._metrics.shadow_comparisons.labels(
                    self.route, outcome
                )
            c.inc(n)
        pending, self.pending_drops = self.pending_drops, {}
        shed, self.pending_shed = self.pending_shed, {}
        for reason, n in shed.items():
            recorder.note_shed(self.route, reason, n)
            pending[reason] = pending.get(reason, 0) + n
        for reason, n in pending.items():
            c = self.dropped.get(reason)
            if c is None:
                c = self.dropped[reason] = self._metrics.shadow_dropped.labels(self.route, reason)
            c.inc(n)
            self.published_drops += n


def has_framing(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Whether a response head says where its body ends (a length, or chunks); without,
    the body ends with the connection."""
    return any(name.lower() in _FRAMING for name, _ in headers)


_FRAMING = (b"content-length", b"transfer-encoding")


def client_host(headers: Sequence[tuple[bytes, bytes]]) -> bytes:
    """The Host the client sent (empty without one)."""
    for name, value in headers:
        if name.lower() == b"host":
            return value
    return b""


def with_host(head: bytes, host: bytes) -> bytes:
    """A request head (or a whole request) with its Host field set to `host` (removed when
    `host` is empty: a request that came without one)."""
    end = head.find(b"\r\n\r\n")
    lines = head[: end if end >= 0 else len(head)].split(b"\r\n")
    for i in range(1, len(lines)):
        name, sep, _ = lines[i].partition(b":")
        if sep and name.strip().lower() == b"host":
            del lines[i]
            break
    if host:
        lines.insert(1, b"host: " + host)
    return b"\r\n".join(lines) + (head[end:] if end >= 0 else b"")


class ShadowPlan:
    """How one route's requests are shadowed in one direction; built once per config."""

    __slots__ = (
        "baseline_pool",
        "breaker",
        "compared_headers",
        "ignore_headers",
        "max_body",
        "max_concurrency",
        "offload",
        "path_template",
        "record_mode",
        "rehost",
        "route",
        "route_b",
        "rules",
        "safe_only",
        "sample_key",
        "served_host",
        "state",
        "swapped",
        "target_host",
        "target_pool",
        "threshold",
        "timeout",
        "writes",
    )

    def __init__(
        self,
        route: RouteSettings,
        state: RouteState,
        *,
        target_pool: UpstreamPool,
        baseline_pool: UpstreamPool | None,
        swapped: bool,
        record_mode: RecordMode,
        percent: float,
        rules: CompareRules,
        breaker: Breaker | None,
        served_host: str | None = None,
        target_host: str | None = None,
    ) -> None:
        sh = route.shadow
        self.route = route.name
        self.route_b = route.name.encode()
        self.state = state
        self.target_pool = target_pool
        self.baseline_pool = baseline_pool
        self.swapped = swapped
        self.record_mode = record_mode
        self.threshold = round(percent * 100)
        self.timeout = sh.timeout
        self.max_concurrency = sh.max_concurrency
        self.max_body = sh.max_body_bytes
        self.writes = sh.writes
        self.safe_only = swapped
        self.sample_key = sh.sample_key.encode() if sh.sample_key else None
        self.rules = rules
        self.ignore_headers = tuple(route.compare.ignore_headers)
        ignored = {h.lower() for h in self.ignore_headers}
        # content-encoding too, ignored or not: the same bytes under other codings are
        # other bodies
        self.compared_headers = frozenset(
            h.encode("latin-1") for h in COMPARED_HEADERS if h not in ignored
        ) | {b"content-encoding"}
        self.path_template = route.match.path
        self.breaker = breaker
        self.offload = False  # set when a shadow helper process runs this plan's copies
        # The forwarded head carries the serving backend's `host_header` (or the client's
        # Host); a copy carries the target backend's (or the client's Host, as the spec
        # asks), a noise baseline the served one: rewritten only when the backends differ.
        self.rehost = served_host != target_host
        self.target_host = target_host.encode() if target_host else None
        self.served_host = served_host.encode() if served_host and self.rehost else None


class _Leg:
    """One background request (to the candidate, or legacy for a baseline/reverse shadow)."""

    __slots__ = (
        "body",
        "call",
        "conn",
        "done",
        "error",
        "head_only",
        "headers",
        "interim",
        "max_body",
        "ms",
        "pool",
        "reason",
        "request",
        "size",
        "status",
        "t0",
        "too_large",
    )

    def __init__(self, call: ShadowCall, pool: UpstreamPool) -> None:
        # None once the call has ended: no reference cycle is left for the collector
        self.call: ShadowCall | None = call
        self.max_body = call.plan.max_body
        self.pool = pool
        self.request = b""
        self.conn: UpstreamConnection | None = None
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.size = 0
        self.done = False
        self.error: str | None = None
        self.too_large = False
        self.interim = False
        self.head_only = False
        self.ms = 0.0
        self.t0 = 0.0

    def start(self, request: bytes, head_only: bool) -> None:
        self.request = request
        self.head_only = head_only
        self.t0 = perf_counter()
        self.pool.acquire(self)

    # the Exchange protocol of proxy.upstream
    def attach(self, conn: UpstreamConnection) -> None:
        if self.done:
            self.pool.release(conn)
            return
        self.conn = conn
        conn.head_only = self.head_only
        conn.send(self.request)

    def connect_failed(self, exc: BaseException, pool: UpstreamPool | None = None) -> None:
        self._end(f"connect failed: {str(exc) or type(exc).__name__}")

    def on_upstream_headers_complete(
        self,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        conn: UpstreamConnection,
    ) -> None:
        if status < 200:
            self.interim = True
            return
        self.status = status
        self.reason = reason
        self.headers = headers

    def on_upstream_body(self, data: bytes) -> None:
        if self.too_large:
            return
        self.size += len(data)
        if self.size > self.max_body:
            self.too_large = True
            self.body = []
            if self.conn is not None:
                conn, self.conn = self.conn, None
                conn.exchange = None
                conn.abort()
            self._end("body_too_large")
            return
        self.body.append(data)

    def on_upstream_message_complete(self, conn: UpstreamConnection) -> None:
        if self.interim:
            self.interim = False
            return
        self.conn = None
        self.pool.release(conn)
        self._end(None)

    def on_upstream_flush(self) -> None:
        pass

    def on_upstream_lost(self, conn: UpstreamConnection, exc: BaseException | None) -> None:
        self.conn = None
        if exc is None and self._delimited_by_close():
            self._end(None)  # the body ends with the connection (RFC 9112 6.3 rule 8)
            return
        self._end(f"connection lost: {exc}" if exc else "connection closed")

    def _delimited_by_close(self) -> bool:
        """Whether the final answer came without a length or chunks, so a clean close of
        the connection is its end and not a cut."""
        if self.status < 200 or self.head_only or self.status in (204, 304):
            return False
        return not has_framing(self.headers)

    def on_upstream_upgrade(self, conn: UpstreamConnection, rest: bytes) -> None:
        self.conn = None
        conn.abort()
        self._end("unexpected upgrade")

    def pause_client_reading(self) -> None:
        pass

    def resume_client_reading(self) -> None:
        pass

    def abort(self, why: str) -> None:
        """Give up on this leg (timeout or shutdown)."""
        if self.done:
            return
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.exchange = None
            self.pool.discard(conn)
        else:
            self.pool.cancel_wait(self)
        self._end(why)

    def _end(self, error: str | None) -> None:
        if self.done:
            return
        self.done = True
        self.error = error
        self.ms = (perf_counter() - self.t0) * 1000.0
        if self.call is not None:
            self.call.leg_done()

    def response(self) -> HttpResponse:
        return HttpResponse(
            self.status,
            [(n.decode("latin-1"), v.decode("latin-1")) for n, v in self.headers],
            b"".join(self.body),
        )


class RequestTee:
    """The request side every tap keeps while a sampled request is served: its head and its
    body, capped at the plan's body limit. Subclasses set these fields in their own
    `__init__` (no `super()` call on the per-request path)."""

    __slots__ = ("finished", "head", "plan", "req_body", "req_size", "request_id", "sent")

    plan: ShadowPlan
    head: bytes
    request_id: str
    req_body: list[bytes]
    req_size: int
    finished: bool
    sent: bool

    def drop(self, reason: str) -> None:
        """Abandon this copy and count it."""
        raise NotImplementedError

    # fed by the data plane (request direction)
    def request_body(self, data: bytes) -> None:
        """A piece of the (unframed) request body."""
        self.req_size += len(data)
        if self.req_size > self.plan.max_body:
            self.drop("request_too_large")
            return
        self.req_body.append(data)

    def request_done(self) -> None:
        """The request was read whole (and forwarded)."""
        self.sent = True


class ShadowCall(RequestTee):
    """One sampled request: tees the served status, headers and body (capped at the plan's
    body limit) as they are served, and runs the background legs."""

    tees_raw: ClassVar[bool] = False  # parsed pieces (served_head, served_chunk) suffice

    __slots__ = (
        "baseline",
        "hub",
        "leg",
        "method",
        "path",
        "served_body",
        "served_done",
        "served_failed",
        "served_headers",
        "served_ms",
        "served_size",
        "served_status",
        "served_too_large",
        "started_at",
    )

    def __init__(
        self, hub: ShadowHub, plan: ShadowPlan, method: str, path: str, request_id: str, head: bytes
    ) -> None:
        self.plan = plan
        self.method = method
        self.path = path
        self.request_id = request_id
        self.head = head
        self.req_body = []
        self.req_size = 0
        self.served_status = 0
        self.served_headers: list[tuple[bytes, bytes]] = []
        self.served_body: list[bytes] = []
        self.served_size = 0
        self.served_too_large = False
        self.finished = False
        self.sent = False
        self.started_at = perf_counter()
        self.hub = hub
        self.served_done = False
        self.served_failed = False
        self.served_ms = 0.0
        self.leg = _Leg(self, plan.target_pool)
        self.baseline: _Leg | None = None

    # fed by the data plane (served response direction)
    def served_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.served_status = status
        self.served_headers = headers

    def raw_chunk(self, data: bytes) -> None:
        """Not used: the data plane passes raw reads only to taps that `tees_raw`."""

    def served_chunk(self, data: bytes) -> None:
        if self.served_too_large or self.finished:
            return
        self.served_size += len(data)
        if self.served_size > self.plan.max_body:
            self.served_too_large = True
            self.served_body = []
            return
        self.served_body.append(data)

    def request_done(self) -> None:
        """The whole request arrived: send the copies."""
        if self.finished:
            return
        self.sent = True
        body = b""
        if self.req_body:  # most copies have none: no join, no new list
            body = b"".join(self.req_body)
            self.req_body = []
        head = self.head
        lowered = head.lower()
        # find(), not `in`: `bytes in bytes` first tries the needle as an int and raises
        # (and clears) a TypeError, three times the cost of the search itself
        if lowered.find(b"\ncontent-length:") >= 0 or lowered.find(b"\ntransfer-encoding:") >= 0:
            head = _STRIP_FRAMING.sub(b"", head)
        extra = b"content-length: %d\r\nx-strangler-shadow: 1\r\n" % len(body) if body else _NO_BODY
        if self.method not in SAFE_METHODS:
            extra += b"x-strangler-dry-run: 1\r\n"
        request = head[:-2] + extra + b"\r\n" + body
        hostless = lowered.find(b"\nhost:") < 0  # an HTTP/1.0 client's request without one
        hub = self.hub
        hub.watch(self)
        if hub.defer_legs:
            # Primary first: the legs start once the loop has handled the I/O already
            # waiting, so the user's request reaches its backend before its copy is written.
            hub.loop.call_soon(self._send, request, hostless)
        else:
            self._send(request, hostless)

    def _send(self, request: bytes, hostless: bool = False) -> None:
        if self.finished or self.leg.done:  # dropped, or timed out, before this turn came
            return
        head_only = self.method == "HEAD"
        plan = self.plan
        if plan.baseline_pool is not None and self.method in SAFE_METHODS:
            # legacy again (never a write): the Host the user's request had
            self.baseline = _Leg(self, plan.baseline_pool)
            served = request
            if plan.served_host:
                served = with_host(request, plan.served_host)
            elif hostless:  # HTTP/1.0 without Host: the one the served request was given
                served = with_host(request, plan.baseline_pool.authority)
            self.baseline.start(served, head_only)
        if plan.target_host is not None and plan.rehost:
            request = with_host(request, plan.target_host)
        elif hostless:  # HTTP/1.0 without Host: the target backend's own
            request = with_host(request, plan.target_pool.authority)
        self.leg.start(request, head_only)

    def served_end(self, ok: bool) -> None:
        """The served response ended (ok) or broke (not ok)."""
        if self.finished:
            return
        self.served_done = True
        self.served_failed = not ok
        self.served_ms = (perf_counter() - self.started_at) * 1000.0
        if not ok:
            self.drop("primary_failed")
            return
        if not self.sent:
            self.drop("incomplete_request")
            return
        if self.leg.done:  # else the leg's end completes the call (a helper's copies)
            self._maybe_complete()

    def leg_done(self) -> None:
        self._maybe_complete()

    def on_timeout(self) -> None:
        """The plan's timeout passed (the hub's sweep calls this): abort the legs."""
        if self.finished:
            return
        if not self.leg.done:
            self.leg.abort("timeout")
        if self.baseline is not None and not self.baseline.done:
            self.baseline.abort("timeout")

    def _maybe_complete(self) -> None:
        if self.finished or not self.served_done or not self.leg.done:
            return
        if self.baseline is not None and not self.baseline.done:
            return
        self._close()
        try:
            self.hub.complete(self)
        except Exception:  # one bad comparison must never break the data plane
            _log.exception("shadow: comparison failed for %s", self.plan.route)
            self.hub.recorder.note_dropped(self.plan.route, "compare_error")
            self.hub.count_drop(self.plan.state, "compare_error")
        self._release_bodies()

    def drop(self, reason: str) -> None:
        """Abandon this call and count it."""
        if self.finished:
            return
        self._close()
        self.leg.abort(reason) if not self.leg.done else None
        if self.baseline is not None and not self.baseline.done:
            self.baseline.abort(reason)
        self.hub.recorder.note_dropped(self.plan.route, reason)
        self.hub.count_drop(self.plan.state, reason)
        self._release_bodies()

    def _release_bodies(self) -> None:
        # The hub's timeout queue may hold this call a little longer: keep it small. The
        # legs let go of the call, so reference counting frees both (no cycle for the
        # collector to find: at thousands of copies a second that is its whole work).
        # The header lists go too: their pairs would stay young objects for the collector
        # to walk until the timeout queue lets the call go.
        self.served_body = []
        self.served_headers = []
        if self.req_body:  # a GET's is empty already
            self.req_body = []
        self.head = b""
        leg = self.leg
        leg.body = []
        leg.headers = []
        leg.request = b""
        leg.call = None
        if self.baseline is not None:
            self.baseline.body = []
            self.baseline.headers = []
            self.baseline.request = b""
            self.baseline.call = None

    def _close(self) -> None:
        self.finished = True
        self.plan.state.in_flight -= 1
        hub = self.hub
        hub.in_flight -= 1
        if hub.slot_freed is not None:
            hub.slot_freed()


class ShadowHub:
    """Decides which requests are shadowed, and compares and records the results."""

    def __init__(
        self,
        recorder: Recorder,
        redactor: Redactor,
        metrics: Metrics,
        loop: asyncio.AbstractEventLoop,
        *,
        config_version: Callable[[], str],
        board: HoldBoard | None = None,
        on_rollback: Callable[[str, str, Breach], None] | None = None,
    ) -> None:
        self.board = board if board is not None else HoldBoard()
        self.on_rollback = on_rollback
        self.recorder = recorder
        self.redactor = redactor
        self.metrics = metrics
        self.loop = loop
        self.config_version = config_version
        self.in_flight = 0
        self.shedding = False
        self.lag = 0.0
        self.cpu_budget = 0.85  # set from limits.shadow_cpu_budget
        self.cpu = 0.0  # smoothed share of a core this process used lately
        self.cpu_jump = 0.0  # the last tick's share while load jumps from idle, else 0
        self.admit = 1.0  # share of sampled copies admitted (AIMD on CPU and lag)
        self._admit_acc = 0.0
        self._cpu_mark = (0.0, 0.0)
        self._states: dict[str, RouteState] = {}
        self.breakers: dict[str, Breaker] = {}
        self._lag_timer: asyncio.TimerHandle | None = None
        self._lag_expected = 0.0
        self._sync_timer: asyncio.TimerHandle | None = None
        # Calls waiting for their legs, one FIFO per timeout value (so deadlines ascend),
        # swept by the lag tick: no timer handle per shadowed request.
        self._deadlines: dict[float, deque[tuple[float, ShadowCall]]] = {}
        self._synced: dict[str, tuple[int, int, int, dict[str, int]]] = {}
        self.feed: OffloadFeed | None = None  # the data plane's link to its shadow helper
        self.shed_on_lag = True  # off in a shadow helper, which runs at idle CPU priority
        self.defer_legs = True  # a helper has no user request to put before its copies
        self.starved_at = -1e9  # loop time of the last tick that ran late (a helper only)
        self.tick_s = _LAG_INTERVAL  # admission, timeouts, counters; a helper ticks slower
        self.slot_freed: Callable[[], None] | None = None  # a copy ended (the helper's pump)
        self.sync_s = 1.0  # how often counters are published (a helper publishes more often)
        self.published: Callable[[], None] | None = None  # after each publish (a helper acks)

    # lifecycle
    def start(self) -> None:
        """Start the event-loop lag monitor and the counter sync."""
        self._cpu_mark = (self.loop.time(), time.process_time())
        self._lag_expected = self.loop.time() + self.tick_s
        self._lag_timer = self.loop.call_later(self.tick_s, self._lag_tick)
        self._sync_timer = self.loop.call_later(self.sync_s, self._sync_tick)

    def stop(self) -> None:
        """Stop the timers, drop the copies still waiting for a leg (counted as `stopped`,
        so every started copy stays accounted for), and publish the final counters."""
        for queue in self._deadlines.values():
            while queue:
                _, call = queue.popleft()
                if not call.finished:
                    call.drop("stopped")
        for t in (self._lag_timer, self._sync_timer):
            if t is not None:
                t.cancel()
        self._lag_timer = self._sync_timer = None
        self.sync_counters()

    def _lag_tick(self) -> None:
        # Primary first: shadow copies share the CPU with user traffic. Every 10 ms: when
        # this process is over its CPU budget (or the loop lags), admit half as many copies
        # (a quarter when the core is saturated); under it, admit more in proportion to the
        # headroom left.
        now = self.loop.time()
        lag = max(0.0, now - self._lag_expected)
        self.lag = 0.7 * self.lag + 0.3 * lag
        if lag > _STARVED_S and not self.shed_on_lag:
            self.starved_at = now
        cpu_now = time.process_time()
        wall0, cpu0 = self._cpu_mark
        if now > wall0:
            tick = (cpu_now - cpu0) / (now - wall0)
            # Load that jumps from idle would find every copy admitted for the three ticks
            # the smoothed share takes to rise: after an idle spell, and for as long as the
            # ticks since stay busy, each tick is judged on its own share.
            budget = self.cpu_budget
            jumping = self.cpu < 0.5 * budget or (self.cpu_jump > 0.0 and tick > budget)
            self.cpu_jump = tick if jumping else 0.0
            self.cpu = 0.5 * self.cpu + 0.5 * tick
        self._cpu_mark = (now, cpu_now)
        self._adjust_admission()
        self.shedding = self.shed_on_lag and self.lag > _LAG_SHED_S
        self.expire(now)
        self._flush_states()
        if self.published is not None:
            self.published()
        self._lag_expected = now + self.tick_s
        self._lag_timer = self.loop.call_later(self.tick_s, self._lag_tick)

    def _adjust_admission(self) -> None:
        """The admit share after one tick, from the smoothed CPU share (or a jump) and loop lag."""
        budget = self.cpu_budget
        if not self.shed_on_lag:
            return
        cpu = max(self.cpu, self.cpu_jump)  # steady load: judged on the smoothed share only
        over = self.lag > _LAG_SHED_S or (budget < 1.0 and cpu > budget)
        if over:  # cut at once: a burst must not find every copy admitted for long
            saturated = budget < 1.0 and cpu > 0.95
            self.admit = max(_MIN_ADMIT, self.admit * (0.25 if saturated else 0.5))
        elif budget < 1.0:  # grow in step with the headroom left: fast when idle, fine near it
            self.admit = min(1.0, self.admit + _ADMIT_GAIN * (budget - self.cpu))
        else:  # lag only: back to full within 100 ms of a loop that keeps time
            self.admit = min(1.0, self.admit + 0.1)

    def _flush_states(self) -> None:
        for state in self._states.values():
            state.flush(self.recorder)

    def watch(self, call: ShadowCall) -> None:
        """Time `call` out after its plan's timeout unless it finishes first."""
        timeout = call.plan.timeout
        queue = self._deadlines.get(timeout)
        if queue is None:
            queue = self._deadlines[timeout] = deque()
        queue.append((self.loop.time() + timeout, call))

    def expire(self, now: float) -> None:
        """Time out the calls whose deadline has passed; forget the finished ones."""
        for queue in self._deadlines.values():
            while queue:
                deadline, call = queue[0]
                if not call.finished and deadline > now:
                    break
                queue.popleft()
                if call.finished:
                    continue
                if now - self.starved_at < call.plan.timeout:
                    # A helper kept off the CPU by user traffic: the answer may be sitting
                    # unread, so this is no evidence against the candidate.
                    call.drop("starved")
                else:
                    call.on_timeout()

    def _sync_tick(self) -> None:
        self.sync_counters()
        self._sync_timer = self.loop.call_later(self.sync_s, self._sync_tick)

    def sync_counters(self) -> None:
        """Publish the recorder's counters as Prometheus counters (works across workers)."""
        self._flush_states()
        m = self.metrics
        for route, c in self.recorder.counters().items():
            prev = self._synced.get(route, (0, 0, 0, {}))
            if c.started > prev[0]:
                m.shadow_started.labels(route).inc(c.started - prev[0])
            if c.recorded > prev[1]:
                m.shadow_recorded.labels(route).inc(c.recorded - prev[1])
            if c.failed > prev[2]:
                m.shadow_failed.labels(route).inc(c.failed - prev[2])
            for reason, n in c.refused.items():  # the other drops are counted where they happen
                if n > prev[3].get(reason, 0):
                    m.shadow_dropped.labels(route, reason).inc(n - prev[3].get(reason, 0))
            self._synced[route] = (c.started, c.recorded, c.failed, c.refused)
        if self.published is not None:
            self.published()

    def published_ends(self) -> dict[str, int]:
        """Per route, the copies whose end the Prometheus counters show so far: recorded,
        failed, and dropped for any reason (as published, not as merely counted)."""
        ends = {
            route: recorded + failed + sum(refused.values())
            for route, (_, recorded, failed, refused) in self._synced.items()
        }
        for route, state in self._states.items():
            ends[route] = ends.get(route, 0) + state.published_drops
        return ends

    # building plans
    def route_state(self, route: str) -> RouteState:
        """The shared state of one route (kept across reloads so counters stay whole)."""
        st = self._states.get(route)
        if st is None:
            st = self._states[route] = RouteState(route, self.metrics)
        return st

    def breaker(self, backend: str) -> Breaker:
        """The circuit breaker of a candidate backend."""
        br = self.breakers.get(backend)
        if br is None:
            gauge = self.metrics.breaker_state

            def changed(name: str, state: int) -> None:
                gauge.labels(name).set(state)
                _log.warning("breaker %s -> %s", name, ("closed", "open", "half-open")[state])

            br = self.breakers[backend] = Breaker(backend, on_change=changed)
            gauge.labels(backend).set(0)
        return br

    # the request path
    def begin(
        self,
        plan: ShadowPlan,
        method: str,
        path: str,
        request_id: str,
        headers: Sequence[tuple[bytes, bytes]],
        head: bytes,
    ) -> ShadowTap | None:
        """Decide whether this request gets a background leg; cheap when it does not."""
        if plan.threshold < 10000 and not self.sampled(plan, request_id, headers):
            return None
        if method not in SAFE_METHODS:
            if plan.safe_only:
                return None
            if plan.writes == "skip":
                self.write_row(plan, method, path, request_id, None, None, None, verdict=False)
                return None
        if plan.rehost and plan.target_host is None:
            # the client's Host for the copy (the served head has the serving backend's);
            # a leg sets its backend's `host_header` itself (`ShadowCall._send`)
            head = with_host(head, client_host(headers))
        feed = self.feed
        if plan.offload and feed is not None:  # the helper process runs it (or it is shed)
            return feed.call(plan, request_id, head)
        state = plan.state
        reason = None
        if state.in_flight >= plan.max_concurrency:
            reason = "concurrency"
        elif self.shedding or self.in_flight >= _GLOBAL_BUDGET:
            reason = "shed"
        elif self.admit < 1.0:  # spread admissions evenly at the admit share (no RNG)
            acc = self._admit_acc + self.admit
            if acc >= 1.0:
                self._admit_acc = acc - 1.0
            else:
                self._admit_acc = acc
                reason = "shed"
        if reason is not None:  # counted in bulk by the next tick (RouteState.flush)
            self.count_shed(state, reason)
            return None
        return self.start_call(plan, method, path, request_id, head)

    @staticmethod
    def sampled(plan: ShadowPlan, request_id: str, headers: Sequence[tuple[bytes, bytes]]) -> bool:
        """Whether the request falls in the route's `shadow.percent` (by the hash of its
        sampling key, so every worker and replica decides alike)."""
        if plan.threshold >= 10000:
            return True
        key = request_id.encode()
        if plan.sample_key is not None:
            for name, value in headers:
                if name.lower() == plan.sample_key:
                    key = value
                    break
        return bucket(key) < plan.threshold

    def start_call(
        self,
        plan: ShadowPlan,
        method: str,
        path: str,
        request_id: str,
        head: bytes,
        *,
        counted: bool = False,
    ) -> ShadowCall:
        """Start a copy that was sampled and admitted (by `begin`, or by the data plane's
        worker when this hub runs in a shadow helper: then it was `counted` as started
        there, at hand-off)."""
        if not counted:
            self.recorder.note_started(plan.route)
        plan.state.in_flight += 1
        self.in_flight += 1
        return ShadowCall(self, plan, method, path, request_id, head)

    # completion
    def complete(self, call: ShadowCall) -> None:
        """Compare the two sides and record the outcome."""
        plan = call.plan
        if call.served_too_large:
            call.hub.recorder.note_dropped(plan.route, "body_too_large")
            self.count_drop(plan.state, "body_too_large")
            return
        leg = call.leg
        if leg.error is not None and self.loop.time() - self.starved_at < leg.ms / 1000.0 + 0.05:
            # a helper kept off the CPU while this leg waited: its connect or read may have
            # timed out on our side only, which says nothing about the candidate
            self.recorder.note_dropped(plan.route, "starved")
            self.count_drop(plan.state, "starved")
            return
        if plan.swapped:  # the candidate served; the background leg went to legacy
            legacy_ms, cand_ms = leg.ms, call.served_ms
        else:
            legacy_ms, cand_ms = call.served_ms, leg.ms
        plan.state.latency.observe(cand_ms / 1000.0)
        legacy: HttpResponse
        candidate: HttpResponse | None
        if leg.error is None and leg.status == call.served_status and self._complete_equal(call):
            # Equal bytes: a match under any rules; only the status is needed for the record.
            legacy = candidate = _status_only(call.served_status)
            verdict = _MATCH
        else:
            served = HttpResponse(
                call.served_status,
                [(n.decode("latin-1"), v.decode("latin-1")) for n, v in call.served_headers],
                b"".join(call.served_body),
            )
            other = leg.response() if leg.error is None else None
            if plan.swapped:
                if other is None:  # the legacy leg failed: nothing to compare against
                    self.recorder.note_dropped(plan.route, "legacy_failed")
                    self.count_drop(plan.state, "legacy_failed")
                    return
                legacy, candidate = other, served
            else:
                legacy, candidate = served, other
            base = call.baseline
            baseline = base.response() if base is not None and base.error is None else None
            verdict = judge(
                legacy, candidate, leg.error, plan.rules, plan.ignore_headers, baseline=baseline
            )
        if not plan.swapped and plan.breaker is not None:
            if verdict.outcome in ("candidate_error", "candidate_timeout"):
                plan.breaker.failure()
            else:
                plan.breaker.success()
        self._count_paths(plan, verdict)
        self.recorder.record(
            build_record(
                self.redactor,
                verdict,
                route=plan.route,
                method=call.method,
                path_template=plan.path_template,
                request_path=call.path,
                legacy=legacy,
                candidate=candidate,
                legacy_ms=legacy_ms,
                candidate_ms=cand_ms,
                request_id=call.request_id,
                mode=plan.record_mode,
                config_version=self.config_version(),
            )
        )
        state = plan.state
        self._count(state, verdict.outcome)
        if state.window is None:  # no rollback window to feed (shadow routes)
            return
        try:  # recorded: a failure from here on must not count this copy again as a drop
            self.observe(state, verdict.outcome, legacy_ms, cand_ms, served=plan.swapped)
        except Exception:
            _log.exception("shadow: the rollback check failed for %s", plan.route)

    def write_row(
        self,
        plan: ShadowPlan,
        method: str,
        path: str,
        request_id: str,
        status: int | None,
        ms: float | None,
        error: str | None,
        *,
        verdict: bool = True,
    ) -> None:
        """Store a write that gets no comparison, as started and ended: one that `writes:
        skip` kept from the candidate (shadow mode: no status, no latency), or one the
        candidate served (canary, extracted), which its background leg does not compare
        (safe methods only), so this row is the store's only evidence of it. A 5xx or a
        failure is `candidate_error` (`candidate_timeout` when it timed out), anything else,
        or an end that says nothing of the candidate (not `verdict`: the client's fault),
        `skipped`. `status` is the candidate's (None when it sent no answer); there is no
        legacy side and no body."""
        try:
            detail = error or ""
            outcome: Outcome = "skipped"
            if verdict and error is not None:
                outcome = "candidate_timeout" if error in _TIMEOUTS else "candidate_error"
            elif verdict and status is not None and status >= 500:
                outcome, detail = "candidate_error", f"candidate answered {status}"
            judged = _SKIPPED if outcome == "skipped" and not detail else None
            self.recorder.record(
                build_record(
                    self.redactor,
                    judged or Verdict(outcome, detail=detail),
                    route=plan.route,
                    method=method,
                    path_template=plan.path_template,
                    request_path=path,
                    legacy=None,
                    candidate=None if status is None else _status_only(status),
                    legacy_ms=None,
                    candidate_ms=ms,
                    request_id=request_id,
                    mode=plan.record_mode,
                    config_version=self.config_version(),
                ),
                started=True,
            )
            self._count(plan.state, outcome)
        except Exception:  # never in the served request's way
            _log.exception("shadow: cannot record a served write of %s", plan.route)

    def _complete_equal(self, call: ShadowCall) -> bool:
        """Whether the fast path applies: same compared header bytes and same body bytes
        (the caller checked the status), so the pair matches without being decoded."""
        leg = call.leg
        served = call.served_body
        body = leg.body
        if len(served) == 1 and len(body) == 1:
            if served[0] != body[0]:
                return False
        elif b"".join(served) != b"".join(body):
            return False
        ours = call.served_headers
        theirs = leg.headers
        if ours == theirs:  # one server software answering within the same second: no loop
            return True
        names = call.plan.compared_headers
        if len(ours) == len(theirs):
            # The same field names in the same order (two servers of one kind): only the
            # values that differ need a look; as _header_values would compare them.
            for (name, value), (other, other_value) in zip(ours, theirs, strict=True):
                if name != other:
                    break
                if value != other_value:
                    low = _LOWERED.get(name) or _lower(name)
                    if low in names and value.strip() != other_value.strip():
                        return False
            else:
                return True
        return _header_values(ours, names) == _header_values(theirs, names)

    def _count_paths(self, plan: ShadowPlan, verdict: Verdict) -> None:
        """Differing and noise paths as metrics (top paths per route, the rest as _other)."""
        comparison = verdict.comparison
        if comparison is not None and not comparison.equal:
            state = plan.state
            for pattern in comparison.patterns:
                counter = state.paths.get(pattern)
                if counter is None:
                    # labels are public (/-/metrics has no token): no personal data in keys
                    shown = self.redactor.redact_text(pattern)
                    label = shown if len(state.paths) < _TOP_PATHS else "_other"
                    counter = self.metrics.shadow_diff_paths.labels(plan.route, label)
                    if label != "_other":
                        state.paths[pattern] = counter
                counter.inc()
        for pattern in verdict.noise:
            self.metrics.shadow_noise.labels(plan.route, self.redactor.redact_text(pattern)).inc()

    # automatic rollback
    def observe(
        self,
        state: RouteState,
        outcome: str,
        legacy_ms: float | None,
        cand_ms: float | None,
        *,
        served: bool = False,
    ) -> None:
        """Feed a route's rollback window (`served`: the comparison of an answer the
        candidate served, counted already); hold the route on legacy when a gate breaks."""
        window = state.window
        if window is None or state.entry is None or state.entry.held:
            return
        breach = window.observe(outcome, legacy_ms, cand_ms, served=served)
        if breach is not None:
            self.trip(state, breach)

    def trip(self, state: RouteState, breach: Breach) -> None:
        """Hold a route on legacy in every worker, and say so (metric, log, audit)."""
        entry = state.entry
        if entry is None or entry.held:
            return
        entry.held = True
        try:
            self.board.put(Hold(state.route, state.hold_version, time.time(), breach.message))
        except OSError as e:  # never in the request's way: this worker holds it regardless
            _log.error(
                "auto-rollback of route %s: cannot share the hold with the other workers: %s",
                state.route,
                e,
            )
        self.metrics.auto_rollback.labels(state.route).set(1)
        _log.warning("auto-rollback of route %s: %s", state.route, breach.message)
        if self.on_rollback is not None:
            self.on_rollback(state.route, state.mode, breach)

    def poll_holds(self, entries: Sequence[_Holdable]) -> None:
        """Apply the holds in force (set by any worker, cleared by an operator) to `entries`,
        each for the version of its route's config (`RouteState.hold_version`)."""
        holds = self.board.read()
        for entry in entries:
            state = self._states.get(entry.name)
            if state is None or state.window is None:
                continue
            hold = holds.get(entry.name)
            want = hold is not None and hold.version == state.hold_version
            if want != entry.held:
                entry.held = want
                self.metrics.auto_rollback.labels(entry.name).set(1 if want else 0)
                if not want:
                    state.window.reset()

    def _count(self, state: RouteState, outcome: str) -> None:
        pending = state.pending_outcomes
        pending[outcome] = pending.get(outcome, 0) + 1

    def count_shed(self, state: RouteState, reason: str) -> None:
        """Count a copy dropped before (or instead of) its legs: started and dropped at once,
        published by the next tick."""
        shed = state.pending_shed
        shed[reason] = shed.get(reason, 0) + 1

    def drop_started(self, state: RouteState, reason: str, n: int = 1) -> None:
        """A copy (`n` copies) counted as started ends without a record."""
        self.recorder.note_dropped(state.route, reason, n)
        self.count_drop(state, reason, n)

    def count_drop(self, state: RouteState, reason: str, n: int = 1) -> None:
        """Count a dropped shadow copy (`n` of them) in the metrics (published by the next
        tick, or stop)."""
        pending = state.pending_drops
        pending[reason] = pending.get(reason, 0) + n
