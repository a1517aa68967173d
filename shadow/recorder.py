"""The recorder: a bounded buffer in front of the store, drained by one batching writer task.

`record()` is synchronous, O(1) and never raises, so the shadow path can call it freely
(from the event loop's thread: the recorder is not thread-safe, like asyncio itself).
Each route's counters keep `started = recorded + dropped + failed` once the writer is idle:
every started shadow ends as a stored row (recorded), a drop (counted by reason, before
or instead of a row) or a row the store never took (failed).

Drops are stored too, added up: about once a second (and when the recorder stops) the
writer adds one (route, reason, copies) row per reason with what was dropped since its
last such row, so reports can show them without a row per shed copy. Failed copies go
there as well, under the reason `store_failed`, so a report's `dropped` and `total` count
every started copy the store holds no comparison of (a store down for good when the
recorder stops takes no counts either: those are only in the metrics). But copies whose
write may still land when a stop runs out of time (`in_doubt`) are not: a write under way
(a COMMIT on its way), or one that timed out or lost its COMMIT's answer and waits for its
retry; a stored drop would count them twice if it lands. A batch whose last write failed
for sure (the store said it is not stored) is failed, and stored as a drop.

A stop cuts the writer's wait for a retry short: the batch is sent again at once (under
the same ids, stored at most once), so its grace goes to settling it, not to sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from shadow.record import ComparisonRecord
from shadow.store import StoreError

__all__ = ["RecordSink", "Recorder", "RouteCounters"]

_log = logging.getLogger(__name__)

BUFFER_FULL = "buffer_full"
STOPPED = "stopped"
# the drop-count reason under which failed copies (rows the store never took) are stored
STORE_FAILED = "store_failed"


class RecordSink(Protocol):
    """Where batches go: `shadow.store.Store`, or a fake in unit tests."""

    async def insert_batch(self, records: Sequence[ComparisonRecord]) -> int: ...

    async def insert_drops(
        self, writer: str, seq: int, drops: Sequence[tuple[str, str, int]]
    ) -> None: ...


@dataclass(slots=True)
class RouteCounters:
    """One route's shadow bookkeeping; `outcomes` counts records accepted into the buffer."""

    started: int = 0
    recorded: int = 0
    failed: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    # the part of `dropped` the recorder decided itself (a full buffer, a closed recorder),
    # which only it can publish as metrics
    refused: dict[str, int] = field(default_factory=dict)
    # the part of `failed` whose write may have landed when the recorder stopped (under
    # way, timed out, or its COMMIT's answer lost): left out of the stored drop counts
    in_doubt: int = 0

    @property
    def dropped_total(self) -> int:
        """Drops over every reason."""
        return sum(self.dropped.values())

    @property
    def balanced(self) -> bool:
        """Whether started = recorded + dropped + failed (true whenever the writer is idle)."""
        return self.started == self.recorded + self.dropped_total + self.failed

    def stored_drops(self) -> dict[str, int]:
        """What the store's drop counts say of this route: the drops by reason, and the
        failed copies under `store_failed` (but those `in_doubt`)."""
        counts = dict(self.dropped)
        failed = self.failed - self.in_doubt
        if failed:
            counts[STORE_FAILED] = counts.get(STORE_FAILED, 0) + failed
        return counts

    def copy(self) -> RouteCounters:
        """An independent snapshot."""
        return RouteCounters(
            self.started,
            self.recorded,
            self.failed,
            dict(self.dropped),
            dict(self.outcomes),
            dict(self.refused),
            self.in_doubt,
        )


class Recorder:
    """Buffers comparison records and writes them to a store in batches, retrying with backoff."""

    def __init__(
        self,
        store: RecordSink,
        buffer_size: int = 10_000,
        batch_size: int = 500,
        *,
        clock: Callable[[], float] = time.monotonic,
        backoff_initial: float = 0.05,
        backoff_max: float = 5.0,
        write_timeout: float = 30.0,
        linger: float = 0.1,
        drops_every: float = 1.0,
    ) -> None:
        if buffer_size < 1 or batch_size < 1:
            raise ValueError("buffer_size and batch_size must be positive")
        self._store = store
        self._buffer_size = buffer_size
        self._batch_size = batch_size
        self._clock = clock
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._write_timeout = write_timeout
        self._buf: deque[ComparisonRecord] = deque()
        self._inflight: list[ComparisonRecord] = []
        # the records of a store write that may still land: under way, or its last attempt
        # timed out or lost its COMMIT's answer (empty once the store said not stored)
        self._in_doubt: list[ComparisonRecord] = []
        # set by a stop: the retry wait under way, or else the next one, is cut short (once)
        self._cut = asyncio.Event()
        self._routes: dict[str, RouteCounters] = {}
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._linger = linger
        self._stopping = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._down_since: float | None = None
        self._last_error = ""
        self._batches = 0
        self._retries = 0
        self._drops_every = drops_every
        self._drops_at = -1e18  # clock time of the last attempt to store drop counts
        # Drop counts in the store: per (route, reason), how many a batch has claimed; the
        # batch not yet confirmed (sent again, under its number, until it is).
        self._drops_claimed: dict[tuple[str, str], int] = {}
        self._drops_pending: list[tuple[str, str, int]] = []
        self._drops_seq = 0
        self._writer_id = uuid.uuid4().hex
        # Called after each batch the store confirmed (a shadow helper publishes and
        # acknowledges at once, so a kill right after a commit counts nothing twice).
        self.on_stored: Callable[[], None] | None = None

    # -- the hot path ---------------------------------------------------------------------

    def note_started(self, route: str) -> None:
        """Count a shadow comparison that has begun; it must end in `record` or `note_dropped`."""
        self._counters(route).started += 1

    def note_dropped(self, route: str, reason: str, n: int = 1) -> None:
        """Count a started comparison (`n` of them) abandoned before it produced a record."""
        counters = self._counters(route)
        counters.dropped[reason] = counters.dropped.get(reason, 0) + n

    def note_shed(self, route: str, reason: str, n: int = 1) -> None:
        """`note_started` and `note_dropped` at once, `n` times: copies dropped before they
        began."""
        counters = self._counters(route)
        counters.started += n
        counters.dropped[reason] = counters.dropped.get(reason, 0) + n

    def record(self, rec: ComparisonRecord, *, started: bool = False) -> None:
        """Queue `rec` for writing, or drop and count it when the buffer is full; never raises.

        Pass `started=True` when no `note_started` was called for this comparison.
        """
        try:
            counters = self._routes.get(rec.route)  # self._counters, inline: once per record
            if counters is None:
                counters = self._counters(rec.route)
            if started:
                counters.started += 1
            if self._closed or len(self._buf) + len(self._inflight) >= self._buffer_size:
                reason = STOPPED if self._closed else BUFFER_FULL
                counters.dropped[reason] = counters.dropped.get(reason, 0) + 1
                counters.refused[reason] = counters.refused.get(reason, 0) + 1
                return
            counters.outcomes[rec.outcome] = counters.outcomes.get(rec.outcome, 0) + 1
            buf = self._buf
            if not buf:
                # The writer sets _idle and clears _wake only while the buffer is empty, so
                # with records queued already both are as they should be: no calls.
                self._idle.clear()
                self._wake.set()
            buf.append(rec)
            if len(buf) >= self._batch_size:
                self._full.set()
        except Exception:  # the shadow path must never see an error from here
            _log.exception("recorder: cannot queue a record")

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the writer task (idempotent)."""
        if self._task is None:
            self._closed = False
            self._stopping.clear()
            self._cut.clear()
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="strangler-recorder"
            )

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting records, flush what is buffered for up to `timeout` seconds.

        A batch waiting for its retry is retried at once. Whatever is still unwritten
        afterwards is counted as failed; the records of a write that may land yet are also
        counted `in_doubt`, and left out of the stored drop counts.
        """
        started = time.monotonic()
        self._closed = True
        self._stopping.set()
        self._wake.set()
        self._full.set()
        self._cut.set()
        task, self._task = self._task, None
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=timeout)
            while not done:
                # Cancel until it ends: Python 3.11's wait_for can swallow a cancellation
                # that lands as the store call completes, and the writer would retry on.
                task.cancel()
                done, _ = await asyncio.wait({task}, timeout=0.1)
            if not task.cancelled() and task.exception() is not None:
                _log.error("recorder: the writer failed", exc_info=task.exception())
        lost = list(self._inflight) + list(self._buf)
        doubtful = self._in_doubt  # a part of `lost`
        self._inflight = []
        self._in_doubt = []
        self._buf.clear()
        for rec in lost:
            self._counters(rec.route).failed += 1
        for rec in doubtful:
            self._counters(rec.route).in_doubt += 1
        if task is not None:  # the last drop counts, within what is left of the timeout
            await self._store_drops(max(0.1, timeout - (time.monotonic() - started)), all_=True)
        self._idle.set()

    async def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is written or given up; False on timeout."""
        self._full.set()  # no lingering: write what is there now
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # -- observation ----------------------------------------------------------------------

    def counters(self) -> dict[str, RouteCounters]:
        """A snapshot of every route's counters."""
        return {route: c.copy() for route, c in self._routes.items()}

    stats = counters  # the name the proxy's Prometheus collector calls at scrape time

    @property
    def buffered(self) -> int:
        """Records waiting in memory (queued plus the batch being written)."""
        return len(self._buf) + len(self._inflight)

    @property
    def drops_unstored(self) -> int:
        """Dropped (and failed) copies whose counts are not confirmed in the store yet."""
        unclaimed = sum(
            n - self._drops_claimed.get((route, reason), 0)
            for route, counters in self._routes.items()
            for reason, n in counters.stored_drops().items()
        )
        return unclaimed + sum(n for _, _, n in self._drops_pending)

    @property
    def in_flight(self) -> int:
        """Records in the batch being written right now (0 when the writer is idle)."""
        return len(self._inflight)

    @property
    def store_down_for(self) -> float | None:
        """Seconds since the store last failed without a success since, or None when healthy."""
        return None if self._down_since is None else self._clock() - self._down_since

    @property
    def last_error(self) -> str:
        """The last store error seen (empty when none)."""
        return self._last_error

    @property
    def retries(self) -> int:
        """Failed write attempts that were retried."""
        return self._retries

    # -- the writer -----------------------------------------------------------------------

    def _counters(self, route: str) -> RouteCounters:
        counters = self._routes.get(route)
        if counters is None:
            counters = self._routes[route] = RouteCounters()
        return counters

    async def _run(self) -> None:
        while True:
            if self._clock() - self._drops_at >= self._drops_every:
                await self._store_drops(self._write_timeout)
            if not self._buf:
                self._idle.set()
                if self._stopping.is_set():
                    return
                self._wake.clear()
                with contextlib.suppress(TimeoutError):  # wake up for the drop counts too
                    await asyncio.wait_for(self._wake.wait(), self._drops_every)
                continue
            if (
                len(self._buf) < self._batch_size
                and self._linger > 0
                and not self._stopping.is_set()
            ):
                # Linger a little so that a trickle of records becomes one transaction,
                # not one commit per record.
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self._linger)
            take = min(self._batch_size, len(self._buf))
            self._inflight = [self._buf.popleft() for _ in range(take)]
            try:
                await self._write(self._inflight)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in a sink must not kill the writer
                _log.exception("recorder: unexpected error writing a batch")
                for rec in self._inflight:
                    self._counters(rec.route).failed += 1
            self._inflight = []

    async def _write(self, batch: list[ComparisonRecord]) -> None:
        if await self._attempt(batch):
            for rec in batch:
                self._counters(rec.route).recorded += 1
            self._stored()
            return
        # A permanent error is about some record's data: isolate it instead of retrying
        # forever. Each single write is retried like a batch (the store may go down
        # meanwhile), and leaves `batch` once settled, so stop() fails only the unsettled.
        while batch:
            stored = await self._attempt(batch[:1])
            counters = self._counters(batch.pop(0).route)
            if stored:
                counters.recorded += 1
            else:
                counters.failed += 1
        self._stored()

    async def _attempt(self, records: list[ComparisonRecord]) -> bool:
        """Write `records`, retrying with backoff while the store is down or silent; False
        when the store refused them for good (or failed in a way retrying cannot mend)."""
        settled = await self._attempt_until_settled(records)  # if cancelled, stop() counts
        self._in_doubt = []
        return settled

    async def _attempt_until_settled(self, records: list[ComparisonRecord]) -> bool:
        delay = self._backoff_initial
        while True:
            self._in_doubt = records  # from the moment the write starts
            try:
                # A store that stops answering (a silent network) must not wedge the writer.
                await asyncio.wait_for(self._store.insert_batch(records), self._write_timeout)
            except (StoreError, OSError, TimeoutError) as e:
                # A timed-out write may still commit; the store says when one may have.
                maybe = isinstance(e, TimeoutError) or (
                    isinstance(e, StoreError) and e.maybe_stored
                )
                self._in_doubt = records if maybe else []
                if isinstance(e, StoreError) and not e.transient:
                    self._last_error = str(e) or type(e).__name__
                    return False
                self._note_failure(e)
                self._retries += 1
                await self._nap(delay)
                delay = min(delay * 2, self._backoff_max)
                continue
            except Exception as e:  # a bug, or a record the sink cannot write: isolate it
                _log.exception("recorder: unexpected error writing %d records", len(records))
                self._last_error = str(e) or type(e).__name__
                return False
            self._down_since = None
            self._batches += 1
            return True

    def _stored(self) -> None:
        if self.on_stored is not None:
            try:
                self.on_stored()
            except Exception:  # the writer goes on whatever a listener does
                _log.exception("recorder: on_stored failed")

    async def _store_drops(self, timeout: float, *, all_: bool = False) -> None:
        """Store what was dropped since the last batch of counts (one row per route and
        reason), or send the batch still unconfirmed again (same number: stored at most once).
        Never raises: a failed batch waits for the next attempt. `all_`: also what was
        dropped while an unconfirmed batch was resent (when stopping)."""
        self._drops_at = self._clock()
        while True:
            resent = bool(self._drops_pending)
            if not resent:
                rows = []
                for route, counters in self._routes.items():
                    for reason, n in counters.stored_drops().items():
                        key = (route, reason)
                        more = n - self._drops_claimed.get(key, 0)
                        if more > 0:
                            rows.append((route, reason, more))
                            self._drops_claimed[key] = n
                if not rows:
                    return
                self._drops_seq += 1
                self._drops_pending = rows
            try:
                await asyncio.wait_for(
                    self._store.insert_drops(self._writer_id, self._drops_seq, self._drops_pending),
                    timeout,
                )
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the store is down, slow or refusing: kept for next time
                self._note_failure(e)
                return
            self._down_since = None
            self._drops_pending = []
            if not (all_ and resent):
                return

    def _note_failure(self, e: BaseException) -> None:
        if self._down_since is None:
            self._down_since = self._clock()
            _log.warning("recorder: store unavailable, buffering: %s", e)
        self._last_error = str(e) or type(e).__name__

    async def _nap(self, delay: float) -> None:
        # A stop cuts the wait under way short, or the next one if the stop came during a
        # write (one retry at once, to settle the batch); after that, retries keep the same
        # pace, and stop()'s timeout bounds the wait.
        cut = self._cut
        try:
            if not cut.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(cut.wait(), delay)
        finally:
            cut.clear()
