"""`strangler replay`: replay a traffic file, print the report of the replayed routes, gate.

Exit codes: 0 every replayed route passes its promotion thresholds, 1 one does not (or no
line matched a route with a candidate), 2 usage or config error, or comparisons the store
did not take, 130 interrupted (Ctrl-C: what was recorded is kept). The report goes to
stdout; progress and notes to stderr.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TextIO

from proxy.settings import ConfigError, Settings, load
from shadow.replay import HandlerAppError, ReplaySummary, TrafficError, replay
from shadow.report import Report, Thresholds, build_report
from shadow.report_format import FORMATS, render
from shadow.store import StoreError, mask_url

__all__ = ["INTERRUPTED", "Progress", "run_replay"]

INTERRUPTED = 130  # the shell's code for a process ended by SIGINT
_PROG = "strangler replay"


class Progress:
    """Progress on `stream`: one redrawn line on a terminal, else a plain line per 10 % or 5 s."""

    def __init__(
        self,
        stream: TextIO,
        *,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        every_s: float = 5.0,
    ) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.clock = clock
        self.every_s = every_s
        self.start = clock()
        self._last_draw = -1.0
        self._last_tenth = 0
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        """Note that `done` of `total` lines are finished."""
        now = self.clock()
        if self.tty:
            if done < total and now - self._last_draw < 0.1:
                return
            self.stream.write("\r" + self.line(done, total, now).ljust(72))
        else:
            tenth = done * 10 // total if total else 10
            if tenth == self._last_tenth and now - self._last_draw < self.every_s:
                return
            self._last_tenth = tenth
            self.stream.write(f"{_PROG}: {self.line(done, total, now)}\n")
        self._last_draw = now
        self._drawn = True
        self.stream.flush()

    def line(self, done: int, total: int, now: float) -> str:
        """`done/total  pct  rate  ETA`."""
        elapsed = max(now - self.start, 1e-9)
        rate = done / elapsed
        pct = 100.0 * done / total if total else 100.0
        eta = f"{(total - done) / rate:.0f}s" if rate > 0 and done < total else "-"
        return f"{done}/{total}  {pct:3.0f}%  {rate:,.0f} req/s  ETA {eta}"

    def close(self) -> None:
        """End the redrawn line (terminal only)."""
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()


def _error(message: str) -> int:
    print(f"{_PROG}: error: {message}", file=sys.stderr)
    return 2


def _summary_line(s: ReplaySummary) -> str:
    skipped = s.no_route + s.no_candidate
    parts = [
        f"replayed {s.done} of {s.total} requests in {s.elapsed_s:.1f}s ({s.rate:,.0f} req/s)",
        f"{s.compared} recorded as comparisons ({s.recorded} stored)",
        f"{skipped} skipped (no route {s.no_route}, no candidate {s.no_candidate})",
    ]
    if s.primary_failed:
        parts.append(f"{s.primary_failed} failed on the primary backend (not compared)")
    if s.errors or s.write_failed:
        parts.append(f"{s.errors} errors, {s.write_failed} not stored")
    return "; ".join(parts)


async def _run(
    traffic: str, settings: Settings, store_url: str, concurrency: int, progress: Progress
) -> tuple[ReplaySummary, Report | None]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGINT, stop.set)
        handled = True
    except (ValueError, RuntimeError, NotImplementedError):  # not the main thread
        handled = False
    since = datetime.now(UTC) - timedelta(milliseconds=1)
    try:
        summary = await replay(traffic, settings, store_url, concurrency, progress, stop=stop)
    finally:
        if handled:
            loop.remove_signal_handler(signal.SIGINT)
        progress.close()
    if summary.interrupted or not summary.routes:
        return summary, None
    thresholds = {r.name: Thresholds.from_promotion(r.promotion) for r in settings.routes}
    report = await build_report(
        store_url, since=since, routes=summary.routes, thresholds_by_route=thresholds
    )
    return summary, report


def run_replay(
    *,
    traffic: str,
    config_path: str,
    store_url: str | None,
    concurrency: int,
    fmt: str,
    progress_stream: TextIO | None = None,
) -> int:
    """Replay `traffic` per `config_path` into the store, print the report; the exit code."""
    if fmt not in FORMATS:
        return _error(f"--format {fmt!r}: choose from {', '.join(FORMATS)}")
    if concurrency < 1:
        return _error("--concurrency must be at least 1")
    if not os.path.isfile(traffic):
        return _error(f"{traffic}: no such traffic file")
    try:
        settings = load(config_path)
    except ConfigError as exc:
        for issue in exc.errors:
            print(issue, file=sys.stderr)
        return 2
    url = store_url or settings.store.url
    progress = Progress(progress_stream or sys.stderr)
    try:
        summary, report = asyncio.run(_run(traffic, settings, url, concurrency, progress))
    except (TrafficError, HandlerAppError) as exc:
        return _error(str(exc))
    except StoreError as exc:
        return _error(f"store {mask_url(url)}: {exc}")
    except KeyboardInterrupt:  # before the handler was installed
        print(f"{_PROG}: interrupted before any request was replayed", file=sys.stderr)
        return INTERRUPTED
    if summary.interrupted:
        print(
            f"{_PROG}: interrupted: replayed {summary.done} of {summary.total} requests;"
            f" {summary.recorded} recorded in {mask_url(url)}",
            file=sys.stderr,
        )
        return INTERRUPTED
    if summary.cut_short:
        print(
            f"{_PROG}: note: {traffic}:{summary.cut_short}: cut short (no newline, not JSON),"
            " as a capture stopped mid-write leaves it: skipped",
            file=sys.stderr,
        )
    print(f"{_PROG}: {_summary_line(summary)}", file=sys.stderr)
    lost = summary.compared - summary.recorded
    if lost > 0:  # a report of the rest could pass what the missing rows would fail
        return _error(
            f"{lost} of {summary.compared} comparisons were not stored in {mask_url(url)}"
            " (see the store's errors above): no report, it would judge the others alone"
        )
    if report is None:
        print(
            f"{_PROG}: no request matched a route with a candidate: nothing compared",
            file=sys.stderr,
        )
        return 1
    sys.stdout.write(render(report, fmt))
    sys.stdout.flush()
    return 0 if report.passed else 1
