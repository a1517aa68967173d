"""Shadow offload: a data-plane worker hands its shadow copies to a helper process.

With `limits.shadow_offload: true`, `strangler serve` gives each worker one helper process
(`proxy.shadow_worker`) running at the kernel's idle CPU priority (SCHED_IDLE): it gets
the CPU only when the worker has nothing to do, so user requests always come first and
shadow work uses the headroom left, however much or little there is.

The worker keeps sampling (same decisions as in-process) and keeps references to what it
forwarded and was served: the request head and body, and the backend's response bytes as
they were read, unparsed (capped). When the response has ended it queues one frame (those
bytes, the request id and how long the primary took) for a socket pair; frames go out
every 10 ms, 128 frames or 256 KiB in one write, and the helper reads method and path back
from the head and status, headers and body from the response bytes. When the helper falls
behind, the socket and then
the worker's bounded write buffer fill, and further copies are shed and counted in the
worker (`reason="shed"`); a helper that is down (it is restarted) sheds as
`offload_down`. The helper calls the candidate, compares, records and counts exactly as the
in-process path does; under a supervisor both processes' counters add up, so
started = recorded + dropped + failed holds per route across them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import struct
import subprocess
import sys
import time
from time import perf_counter
from typing import ClassVar, NamedTuple

import httptools
import orjson

from proxy.metrics import forget_process
from proxy.shadowing import RequestTee, RouteState, ShadowHub, ShadowPlan, has_framing

__all__ = [
    "READY",
    "Frame",
    "OffloadCall",
    "OffloadFeed",
    "decode_ack",
    "decode_frames",
    "encode_ack",
    "encode_frame",
    "frame_parts",
    "served_response",
]

_log = logging.getLogger("strangler.offload")


# total length, too-large flag, primary ms, handed-off (monotonic), 5 field lengths
_HEAD = struct.Struct("<IBdd5I")
_SIZE = struct.Struct("<I")
_WRITE_HIGH = 1 << 20  # the worker's buffer toward the helper: past it, copies are shed
_RESPAWN_S = 1.0
_RESPAWN_MAX_S = 30.0
# Frames go out every 10 ms or 128 at a time: each write wakes the helper, and every switch
# to it and back costs the worker's core more than the frames themselves.
_BATCH_S = 0.01
_BATCH_FRAMES = 128
_BATCH_BYTES = 256 << 10
_RAW_ROOM = 64 << 10  # a response head and chunk framing, over twice the body limit


class Frame(NamedTuple):
    """One shadow copy handed to the helper (a tuple: cheap to build, one per copy).

    The worker sends what it already holds as bytes: the request head it forwarded (method
    and path are read back from its request line) and the served response as it came from
    the backend, unparsed (`served_response` reads status, headers and body from it).
    """

    route: str
    request_id: str
    head: bytes
    body: bytes
    raw: bytes  # the served response's bytes from the backend: head, then body as framed
    served_ms: float
    handed_off: float  # time.monotonic() in the worker (the same clock in every process)
    too_large: bool
    size: int = 0  # bytes on the wire (what the helper's queue bound counts)

    def request_line(self) -> tuple[str, str]:
        """(method, path) from the forwarded head's request line, as the worker had them."""
        head = self.head
        line = head[: head.find(b"\r\n")]
        raw_method, _, rest = line.partition(b" ")
        target = rest.rpartition(b" ")[0]
        method = _METHODS.get(raw_method) or raw_method.decode("ascii", "replace")
        return method, target.partition(b"?")[0].decode("latin-1")


def encode_frame(
    route: bytes,
    request_id: str,
    head: bytes,
    body: bytes,
    raw: bytes,
    served_ms: float,
    too_large: bool,
) -> bytes:
    """One frame (tests and benches; a worker batches `frame_parts`)."""
    return b"".join(
        frame_parts(route, request_id, head, body, raw, served_ms, time.monotonic(), too_large)
    )


def frame_parts(
    route: bytes,
    request_id: str,
    head: bytes,
    body: bytes,
    raw: bytes,
    served_ms: float,
    handed_off: float,
    too_large: bool,
) -> tuple[bytes, ...]:
    """The pieces of one frame, in wire order (a worker joins a whole batch of them once).

    A worker builds one per shadowed request on the user's CPU: no parsing, no copies.
    """
    rid = request_id.encode("utf-8", "surrogatepass")
    lr, lq, lh, lb, lx = len(route), len(rid), len(head), len(body), len(raw)
    size = _HEAD.size + lr + lq + lh + lb + lx
    return (
        _HEAD.pack(size, too_large, served_ms, handed_off, lr, lq, lh, lb, lx),
        route, rid, head, body, raw,
    )  # fmt: skip


_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}


def decode_frames(buf: bytearray) -> list[Frame]:
    """The complete frames at the start of `buf`, removed from it."""
    end = len(buf)
    if end < _HEAD.size or end < _SIZE.unpack_from(buf)[0]:
        return []  # not even one whole frame yet: no copy of a big frame's first pieces
    data = bytes(buf)
    pos = 0
    out: list[Frame] = []
    unpack = _HEAD.unpack_from
    new = tuple.__new__  # what Frame(...) calls, without its Python-level __new__
    while end - pos >= _HEAD.size:
        size, too_large, ms, handed, l0, l1, l2, l3, l4 = unpack(data, pos)
        if end - pos < size:
            break
        a = pos + _HEAD.size
        b = a + l0
        c = b + l1
        d = c + l2
        e = d + l3
        out.append(
            new(
                Frame,
                (
                    data[a:b].decode(),
                    data[b:c].decode("utf-8", "surrogatepass"),
                    data[c:d],
                    data[d:e],
                    data[e : e + l4],
                    ms,
                    handed,
                    too_large != 0,  # bool(too_large) without a type call
                    size,
                ),
            )
        )
        pos += size
    del buf[:pos]
    return out


class _Stop(Exception):
    """Ends the parse of a served response (the head of a HEAD answer is all there is)."""


class _Served:
    """httptools callbacks collecting one final response (interim 1xx ones skipped)."""

    __slots__ = ("body", "complete", "head_only", "headers", "parser", "status")

    def __init__(self, head_only: bool) -> None:
        self.head_only = head_only
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.complete = False
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.status:  # after the final head: trailer fields, not headers
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.complete:  # bytes after the answer are not part of it
            return
        status = self.parser.get_status_code()
        if status < 200:
            self.headers = []  # 100 Continue, 103 Early Hints: the final answer follows
            return
        self.status = status
        if self.head_only:
            self.complete = True
            raise _Stop  # the parser would read a body (its length) that never came

    def on_body(self, data: bytes) -> None:
        if self.status and not self.complete:
            self.body.append(data)

    def on_message_complete(self) -> None:
        # No exception to stop the parser: one raised through it cost more than the rest of
        # the parse. What may follow the answer is ignored (or an error once it is complete).
        if self.status:
            self.complete = True


def served_response(raw: bytes, head_only: bool) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers and (de-chunked) body of the served response a worker handed over.

    The worker's own parser accepted these bytes and the response ended, so a body that
    reads as unfinished here ended with the connection, which only a response without a
    length and without chunks may. ValueError when there is no final response head in
    them, or a body is cut short of its framing.
    """
    served = _Served(head_only)
    try:
        served.parser.feed_data(raw)
    except httptools.HttpParserError as e:
        if not served.complete:
            raise ValueError(f"unreadable served response: {e}") from None
    except httptools.HttpParserUpgrade:
        if not served.complete:
            raise
    if not served.status:
        raise ValueError("no final response head in the served response")
    if not served.complete and has_framing(served.headers):
        raise ValueError("the served response is cut short of its framing")
    return served.status, served.headers, b"".join(served.body)


class OffloadCall(RequestTee):
    """A sampled request in a worker with a shadow helper: the request body and the served
    response's raw bytes (capped) while it is served, then one frame handed off.

    Every shadowed request of a worker pays for this on the user's CPU, so it keeps
    references only: the upstream connection passes it each read (`raw_chunk`) before
    parsing, and the helper parses the response again at idle priority.
    """

    tees_raw: ClassVar[bool] = True

    __slots__ = ("feed", "raw", "raw_size", "started_at", "too_large")

    def __init__(self, feed: OffloadFeed, plan: ShadowPlan, request_id: str, head: bytes) -> None:
        self.feed = feed
        self.plan = plan
        self.request_id = request_id
        self.head = head
        self.req_body = []
        self.req_size = 0
        self.raw: list[bytes] = []
        self.raw_size = 0
        self.too_large = False
        self.finished = False
        self.sent = False
        self.started_at = perf_counter()

    def served_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        pass  # in `raw`; the helper reads it

    def served_chunk(self, data: bytes) -> None:
        pass  # in `raw`, framing included; the helper de-chunks

    def raw_chunk(self, data: bytes) -> None:
        """A read from the upstream connection serving this request (head and body)."""
        if self.too_large or self.finished:
            return
        self.raw_size += len(data)
        # The body limit is checked exactly on the parsed body in the helper; here the raw
        # bytes (head, chunk framing) only need a bound on what the worker holds.
        if self.raw_size > _RAW_ROOM + 2 * self.plan.max_body:
            self.too_large = True
            self.raw = []
            return
        self.raw.append(data)

    def served_end(self, ok: bool) -> None:
        if self.finished:
            return
        if not ok:
            self.drop("primary_failed")
        elif not self.sent:
            self.drop("incomplete_request")
        else:
            self.finished = True
            self.feed.send(self)

    def drop(self, reason: str) -> None:
        if self.finished:
            return
        self.finished = True
        self.req_body, self.raw = [], []
        self.feed.hub.count_shed(self.plan.state, reason)


READY = b"R\n"  # the helper to its worker: it handles SIGHUP now
_ACK = b"A"  # then JSON {route: copies ended so far}, one line
_LINE_MAX = 1 << 20


def encode_ack(ended: dict[str, int]) -> bytes:
    """The helper's line saying how many copies ended per route (as published)."""
    return _ACK + orjson.dumps(ended) + b"\n"


def decode_ack(line: bytes) -> dict[str, int] | None:
    """The counts of an ack line (without its newline), or None if it is not one."""
    if not line.startswith(_ACK):
        return None
    try:
        data = orjson.loads(line[1:])
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    return {str(k): v for k, v in data.items() if isinstance(v, int) and not isinstance(v, bool)}


class _FeedProtocol(asyncio.Protocol):
    def __init__(self, feed: OffloadFeed) -> None:
        self.feed = feed
        self.buf = b""

    def pause_writing(self) -> None:
        self.feed.paused = True

    def resume_writing(self) -> None:
        self.feed.paused = False

    def data_received(self, data: bytes) -> None:  # lines: READY, then acks
        *lines, self.buf = (self.buf + data).split(b"\n")
        if len(self.buf) > _LINE_MAX:  # not a line of ours: never let it grow
            self.buf = b""
        for line in lines:
            if line + b"\n" == READY:
                self.feed.helper_ready()
            else:
                ended = decode_ack(line)
                if ended is not None:
                    self.feed.acked = ended

    def connection_lost(self, exc: Exception | None) -> None:
        self.feed.lost(exc)


class OffloadFeed:
    """The worker's end: starts (and restarts) the helper and writes frames to it."""

    def __init__(self, hub: ShadowHub, config_path: str, loop: asyncio.AbstractEventLoop) -> None:
        self.hub = hub
        self.config_path = config_path
        self.loop = loop
        self.proc: asyncio.subprocess.Process | None = None
        self.transport: asyncio.Transport | None = None
        self.paused = False
        self.closing = False
        self.ready = False  # the helper said it handles SIGHUP (a reload before: pending)
        self.reload_pending = False
        self._out: list[bytes] = []
        self._out_states: list[RouteState] = []
        self._out_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._respawn: asyncio.TimerHandle | None = None
        self._starting: asyncio.Task[None] | None = None
        self._backoff = _RESPAWN_S
        # Per route: frames written to the current helper, and how many of them it says
        # ended (published); the difference is lost if the helper dies.
        self.handed: dict[str, int] = {}
        self.acked: dict[str, int] = {}
        self._gone = asyncio.Event()  # the current helper's socket closed
        self._eof_sent = False  # we half-closed it: nothing more may be written

    async def start(self) -> None:
        """Start the helper process and connect to it."""
        if self.proc is not None:  # the helper before this one is gone
            forget_process(self.proc.pid)
            self.proc = None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "proxy.shadow_worker",
                "--config",
                self.config_path,
                "--fd",
                str(theirs.fileno()),
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
            ours.setblocking(False)
            transport, _ = await self.loop.connect_accepted_socket(
                lambda: _FeedProtocol(self), ours
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        transport.set_write_buffer_limits(high=_WRITE_HIGH)
        self.transport = transport
        self._gone = asyncio.Event()
        self._eof_sent = False
        self.paused = False
        self.ready = False

    def helper_ready(self) -> None:
        """The helper is up and handles SIGHUP: pass on a reload that came meanwhile."""
        self.ready = True
        self._backoff = _RESPAWN_S
        if self.reload_pending:
            self.reload_pending = False
            self.reload()

    def call(self, plan: ShadowPlan, request_id: str, head: bytes) -> OffloadCall | None:
        """A tap for a sampled request, or None (counted as shed) when the helper cannot
        take more now."""
        if self.transport is None or self.closing or self.paused:
            down = self.transport is None or self.closing
            self.hub.count_shed(plan.state, "offload_down" if down else "shed")
            return None
        return OffloadCall(self, plan, request_id, head)

    def send(self, call: OffloadCall) -> None:
        """Queue the frame of a finished tap (written in batches, see `_BATCH_S`)."""
        plan = call.plan
        if self.transport is None or self.closing:  # a tap of before the stop ends here
            self.hub.count_shed(plan.state, "offload_down")
            return
        try:
            parts = frame_parts(
                plan.route_b,
                call.request_id,
                call.head,
                b"".join(call.req_body),
                b"".join(call.raw),  # one read (the usual case): no copy
                (perf_counter() - call.started_at) * 1000.0,
                time.monotonic(),
                call.too_large,
            )
        except (ValueError, struct.error) as e:  # never into the data plane: count it
            _log.warning("shadow: cannot hand a copy of %s over: %s", plan.route, e)
            self.hub.count_shed(plan.state, "unencodable")
            return
        self.hub.recorder.note_started(plan.route)  # the helper counts how it ends
        self._out += parts
        self._out_states.append(plan.state)
        self._out_bytes += len(call.head) + call.req_size + call.raw_size  # about the frame
        if len(self._out_states) >= _BATCH_FRAMES or self._out_bytes >= _BATCH_BYTES:
            self._flush()
        elif self._timer is None:
            self._timer = self.loop.call_later(_BATCH_S, self._flush)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        out, states = self._out, self._out_states
        self._out, self._out_states, self._out_bytes = [], [], 0
        transport = self.transport
        if not states:
            return
        if transport is None or transport.is_closing() or self._eof_sent:  # helper gone
            for state in states:
                self.hub.drop_started(state, "offload_down")
            return
        transport.write(b"".join(out))
        handed = self.handed
        for state in states:
            handed[state.route] = handed.get(state.route, 0) + 1

    def lost(self, exc: Exception | None) -> None:
        """The helper's socket closed: count the frames not yet written, shed until a new
        helper is up (restarted after 1 s, doubling up to 30 s while it keeps failing).
        Copies written to a helper that died and not acknowledged as ended are counted as
        `offload_lost` (when this worker is stopping, `close` settles them)."""
        self.transport = None
        self.ready = False
        self._gone.set()
        hub = self.hub
        for state in self._out_states:
            hub.drop_started(state, "offload_down")
        self._out, self._out_states, self._out_bytes = [], [], 0
        if self.closing:
            return
        self._count_lost()
        _log.warning("shadow helper gone (%s); restarting it in %.0f s", exc, self._backoff)
        self._respawn = self.loop.call_later(self._backoff, self._restart)
        self._backoff = min(self._backoff * 2, _RESPAWN_MAX_S)

    def _count_lost(self) -> None:
        """Count the copies handed to the helper that is gone and never acknowledged."""
        handed, self.handed = self.handed, {}
        acked, self.acked = self.acked, {}
        for route, n in handed.items():
            gone = n - acked.get(route, 0)
            if gone > 0:
                self.hub.drop_started(self.hub.route_state(route), "offload_lost", gone)

    def _restart(self) -> None:
        self._respawn = None
        if self.closing:
            return
        self._starting = self.loop.create_task(self.start())
        self._starting.add_done_callback(self._started)

    def _started(self, task: asyncio.Task[None]) -> None:
        self._starting = None
        if not task.cancelled() and task.exception() is not None:
            self.lost(task.exception())  # type: ignore[arg-type]

    def reload(self) -> None:
        """Ask the helper to load the config file again (after the worker did)."""
        if not self.ready:  # still starting: it reads the file itself, or gets it when ready
            self.reload_pending = True
            return
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGHUP)

    async def close(self, timeout: float) -> None:
        """Send what is queued, half-close the socket (the helper finishes its copies,
        flushes its records, says so and exits), and wait up to `timeout` for it to exit
        (then kill it); what it never acknowledged as ended counts as `offload_lost`."""
        self.closing = True
        if self._respawn is not None:
            self._respawn.cancel()
        if self._starting is not None:
            with contextlib.suppress(BaseException):
                await self._starting
        self._flush()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            self._eof_sent = True
            try:
                transport.write_eof()  # its acks still come back until it exits
            except (RuntimeError, OSError):
                transport.close()
        try:
            await self._wait_exit(timeout)
        finally:
            self._count_lost()

    async def _wait_exit(self, timeout: float) -> None:
        proc = self.proc
        if proc is None:
            return
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            _log.warning("shadow helper still busy after %.1f s: killing it", timeout)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        forget_process(proc.pid)
        self.proc = None
        if self.transport is not None:  # read its last acks before settling
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._gone.wait(), 1.0)
            if self.transport is not None:
                self.transport.close()
