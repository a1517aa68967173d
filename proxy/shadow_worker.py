"""The shadow helper process of one `strangler serve` worker (see `proxy.offload`).

Started by the worker with one end of a socket pair; runs at SCHED_IDLE (the kernel gives
it a CPU only when nothing else wants one), reads the frames the worker hands off, and runs
each copy through the same `ShadowHub` as the in-process path: candidate call on the lean
upstream pool, comparison, redaction, record, counters and metrics (Prometheus
multiprocess mode, so the supervisor's `/-/metrics` adds them to the worker's).

Frames wait in a bounded queue while a route is at its `max_concurrency`; a full queue
stops reading, which fills the socket and makes the worker shed. A frame older than its
route's shadow timeout when its turn comes is dropped as `stale`. SIGHUP reloads the config
file; end of the socket (the worker stops) or SIGTERM: finish the copies in flight, flush
the records, exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Sequence
from time import perf_counter

from proxy.app import Proxy, helper_plans
from proxy.lifeline import tie_to_parent
from proxy.offload import READY, Frame, decode_frames, encode_ack, served_response
from proxy.serve import _install_uvloop, _settle_gc, load_config
from proxy.settings import ConfigError, Settings
from proxy.shadowing import ShadowHub, ShadowPlan

__all__ = ["ShadowHelper", "main"]

_log = logging.getLogger("strangler.shadow_worker")

# Frames waiting for a slot; past either bound, reading pauses (and the worker sheds).
_QUEUE_MAX = 4096
_QUEUE_MAX_BYTES = 64 << 20
_GRACE_S = 5.0
_SWEEP_S = 1.0
# No admission to steer here: the hub's tick only times copies out and publishes counters,
# and every wake-up of this process costs the worker's core a little.
_TICK_S = 0.05
# Counters are published (and acknowledged to the worker) this often: a helper that is
# killed leaves at most this much of its work unpublished, counted by the worker as lost.
_SYNC_S = 0.25
_GC_YOUNG = 20_000


class _Intake(asyncio.Protocol):
    def __init__(self, helper: ShadowHelper) -> None:
        self.helper = helper
        self.buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.helper.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.helper.enqueue(decode_frames(self.buf))

    def eof_received(self) -> bool:
        # The worker is stopping (it half-closed): finish, and keep telling it what ended.
        self.helper.ended.set()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.helper.ended.set()


class ShadowHelper:
    """Runs handed-off shadow copies: queue, per-route concurrency, the hub's legs."""

    def __init__(self, settings: Settings) -> None:
        self.proxy = Proxy(settings, admin=False, data_plane=False)
        self.plans: dict[str, ShadowPlan] = {}
        self.queues: dict[str, deque[Frame]] = {}  # per route: one slow route blocks no other
        self.queued = 0
        self.queued_bytes = 0
        self.transport: asyncio.Transport | None = None
        self.ended = asyncio.Event()
        self._paused = False
        self._pump_soon = False
        self._sweeper: asyncio.TimerHandle | None = None
        self._acked: dict[str, int] = {}  # what the worker was last told
        # one reload at a time, in the order the SIGHUPs came: two overlapping ones (a
        # supervisor's rollback right after a reload) could end on the older config
        self._reload_lock = asyncio.Lock()

    @property
    def hub(self) -> ShadowHub:
        hub = self.proxy.hub
        assert hub is not None
        return hub

    async def start(self, sock: socket.socket) -> None:
        """Open the store, build the routes' plans and start reading frames."""
        loop = asyncio.get_running_loop()
        await self.proxy.start_recording(self._configure)
        recorder = self.proxy.recorder
        if recorder is not None:
            # Acknowledge stored copies at once: if this process dies after a commit, the
            # worker must not count them as lost as well (rows and counters would differ).
            recorder.on_stored = self.hub.sync_counters
        if self.proxy.store is not None:
            # No user request here to yield to: a batch written in chunks, one per loop
            # turn, fell behind a helper at full speed (records dropped as buffer_full).
            self.proxy.store.write_whole_batches()
        await self._build(self.proxy.settings)
        await loop.connect_accepted_socket(lambda: _Intake(self), sock)
        self._sweeper = loop.call_later(_SWEEP_S, self._sweep)

    def _configure(self, hub: ShadowHub) -> None:
        hub.shed_on_lag = False  # the kernel puts user traffic first; the queue bounds us
        hub.defer_legs = False
        hub.tick_s = _TICK_S
        hub.sync_s = _SYNC_S
        hub.slot_freed = self._slot_freed
        hub.published = self._ack

    def say_ready(self) -> None:
        """Tell the worker this helper handles SIGHUP now (one line on the socket)."""
        if self.transport is not None:
            self.transport.write(READY)

    def _ack(self) -> None:
        """Tell the worker how many of its copies have ended, per route, as just published
        in the metrics: if this process dies, the worker counts the rest as lost (and
        nothing twice). Every copy here came from the worker, which counted it as started."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        ended = self.hub.published_ends()
        if ended != self._acked:
            self._acked = ended
            transport.write(encode_ack(ended))

    def _sweep(self) -> None:
        # idle candidate connections expire as in a worker (whose data plane sweeps them)
        loop = asyncio.get_running_loop()
        now = loop.time()
        for pool in self.proxy.pools():
            pool.expire_idle(now)
        self._sweeper = loop.call_later(_SWEEP_S, self._sweep)

    async def _build(self, settings: Settings) -> None:
        backends = await self.proxy.swap_backends(settings)
        self.plans = helper_plans(settings, self.hub, backends)

    async def reload(self) -> None:
        """Load the config file again; on any error keep the current one."""
        async with self._reload_lock:
            try:
                settings = load_config(self.proxy.settings.path)
            except ConfigError as e:
                _log.warning("shadow helper: reload rejected, keeping the old config: %s", e)
                return
            await self._build(settings)

    def _slot_freed(self) -> None:
        if not self._pump_soon and self.queued:
            self._pump_soon = True
            asyncio.get_running_loop().call_soon(self.pump)

    def enqueue(self, frames: list[Frame]) -> None:
        """Queue frames by route, then start what has a free slot."""
        queues = self.queues
        for frame in frames:
            queue = queues.get(frame.route)
            if queue is None:
                queue = queues[frame.route] = deque()
            queue.append(frame)
            self.queued_bytes += frame.size
        self.queued += len(frames)
        self.pump()

    def pump(self) -> None:
        """Start the queued copies that have a free slot, oldest first in each route."""
        self._pump_soon = False
        hub = self.proxy.hub  # self.hub, inline: a pump runs about once per copy
        assert hub is not None
        now = time.monotonic()
        for route, queue in self.queues.items():
            plan = self.plans.get(route)
            while queue:
                frame = queue[0]
                if plan is not None and plan.state.in_flight >= plan.max_concurrency:
                    break
                queue.popleft()
                self.queued -= 1
                self.queued_bytes -= frame.size
                if plan is None:  # the route changed mode or went away in a reload
                    hub.drop_started(hub.route_state(route), "reload")
                elif now - frame.handed_off > plan.timeout:
                    hub.drop_started(plan.state, "stale")
                else:
                    self._start(hub, plan, frame)
        transport = self.transport
        if transport is not None:
            full = self.queued >= _QUEUE_MAX or self.queued_bytes >= _QUEUE_MAX_BYTES
            if not self._paused and full:
                self._paused = True
                transport.pause_reading()
            elif self._paused and self.queued <= _QUEUE_MAX // 2 and not full:
                self._paused = False
                transport.resume_reading()

    def _start(self, hub: ShadowHub, plan: ShadowPlan, frame: Frame) -> None:
        method, path = frame.request_line()
        if frame.too_large:  # known before any candidate call here: none is made
            hub.drop_started(plan.state, "body_too_large")
            return
        try:  # the worker hands the response over as the backend sent it
            status, headers, served = served_response(frame.raw, method == "HEAD")
        except Exception as e:  # its parser took these bytes: not expected
            _log.warning("shadow helper: copy of %s dropped: %s", plan.route, e)
            hub.drop_started(plan.state, "unreadable")
            return
        if len(served) > plan.max_body:
            hub.drop_started(plan.state, "body_too_large")
            return
        call = hub.start_call(plan, method, path, frame.request_id, frame.head, counted=True)
        if frame.body:
            call.request_body(frame.body)
            if call.finished:
                return
        call.request_done()
        call.served_head(status, headers)
        if served:
            call.served_chunk(served)
        # served_ms as the worker measured it (not counting the legs just written)
        call.started_at = perf_counter() - frame.served_ms / 1000.0
        call.served_end(True)

    async def stop(self, grace_s: float) -> None:
        """Finish what is queued and in flight within `grace_s`, then flush and close."""
        deadline = time.monotonic() + grace_s
        hub = self.hub
        while (self.queued or hub.in_flight) and time.monotonic() < deadline:
            self.pump()
            await asyncio.sleep(0.02)
        for route, queue in self.queues.items():
            for _ in queue:
                hub.drop_started(hub.route_state(route), "stopped")
            queue.clear()
        self.queued = self.queued_bytes = 0
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()  # no new frames: the worker stopped sending
        if self._sweeper is not None:
            self._sweeper.cancel()
        hub.stop()
        proxy = self.proxy
        if proxy.recorder is not None:
            await proxy.recorder.stop(max(1.0, deadline - time.monotonic()))
            hub.sync_counters()  # the last ack: every copy ended and published
        if self.transport is not None:
            self.transport.close()
        await proxy.close_backends()
        if proxy.store is not None:
            await proxy.store.close()
        proxy.metrics.flush()


def _idle_priority() -> None:
    """SCHED_IDLE: run only when no normal task wants this CPU (nice 19 where refused)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (OSError, AttributeError):
        with contextlib.suppress(OSError):
            os.nice(19)


async def _run(settings: Settings, fd: int) -> int:
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    helper = ShadowHelper(settings)
    await helper.start(sock)
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[None]] = set()

    def on_hup() -> None:
        task = loop.create_task(helper.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    _settle_gc()  # as in a worker: full collections skip what start-up built
    # The copies in flight keep a few thousand young objects alive, and the default
    # threshold (700) walks them every few copies: about 4 % of a copy's instructions
    # (callgrind). Cycles wait longer for collection here; nothing in a helper is latency.
    gc.set_threshold(_GC_YOUNG, *gc.get_threshold()[1:])
    helper.say_ready()  # the worker passes reloads on from now
    await helper.ended.wait()
    await helper.stop(_GRACE_S)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m proxy.shadow_worker --config PATH --fd N` (started by a worker)."""
    parser = argparse.ArgumentParser(prog="strangler-shadow-helper")
    parser.add_argument("--config", required=True)
    parser.add_argument("--fd", type=int, required=True)
    args = parser.parse_args(argv)
    # Only the end of the socket stops a helper (its worker closed it, or died): a Ctrl-C or
    # a service manager's SIGTERM to the whole group must not cut it off mid-drain.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    tie_to_parent()
    _idle_priority()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        settings = load_config(args.config)
    except ConfigError as e:
        print(f"strangler shadow helper: {e}", file=sys.stderr)
        return 2
    _install_uvloop()
    return asyncio.run(_run(settings, args.fd))


if __name__ == "__main__":
    sys.exit(main())
