"""Prometheus metrics of the proxy, with labelled children resolved once per route table."""

from __future__ import annotations

import os
import re
from bisect import bisect_left
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = [
    "STATUS_CLASSES",
    "HistogramBatch",
    "Metrics",
    "RouteMetrics",
    "forget_process",
    "scrape_registry",
]

STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class HistogramBatch:
    """Observations of one Prometheus histogram child kept as plain ints, added in `flush`."""

    __slots__ = ("_histogram", "bounds", "buckets", "dirty", "total")

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram
        self.bounds: list[float] = list(histogram._upper_bounds)
        self.buckets = [0] * len(self.bounds)
        self.total = 0.0
        self.dirty = False

    def observe(self, seconds: float) -> None:
        """Count one observation."""
        self.buckets[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds
        self.dirty = True

    def flush(self) -> None:
        """Move what was observed since the last flush into the histogram."""
        if not self.dirty:
            return
        self.dirty = False
        buckets, self.buckets = self.buckets, [0] * len(self.buckets)
        total, self.total = self.total, 0.0
        hist_buckets = self._histogram._buckets
        for i, n in enumerate(buckets):
            if n:
                hist_buckets[i].inc(n)
        self._histogram._sum.inc(total)


class RouteMetrics:
    """Counts of one (route, backend, mode), kept as plain ints on the request path and
    added to the pre-resolved Prometheus children in batches by `flush` (no lock, no
    `.labels()` per request)."""

    __slots__ = ("_by_class", "classes", "dirty", "latency")

    def __init__(self, by_class: tuple[Counter, ...], latency: Histogram) -> None:
        self._by_class = by_class  # index = status // 100 - 1
        self.latency = HistogramBatch(latency)
        self.classes = [0] * len(STATUS_CLASSES)
        self.dirty = False

    def observe(self, status: int, seconds: float) -> None:
        """Count one finished request."""
        idx = status // 100 - 1
        if 0 <= idx < 5:
            self.classes[idx] += 1
        lat = self.latency  # HistogramBatch.observe, inlined: this runs for every request
        lat.buckets[bisect_left(lat.bounds, seconds)] += 1
        lat.total += seconds
        lat.dirty = True
        self.dirty = True

    def flush(self) -> None:
        """Move what was counted since the last flush into the Prometheus children."""
        if not self.dirty:
            return
        self.dirty = False
        classes, self.classes = self.classes, [0] * len(self.classes)
        for counter, n in zip(self._by_class, classes, strict=True):
            if n:
                counter.inc(n)
        self.latency.flush()


class Metrics:
    """All proxy metrics, registered in one registry (one per proxy, so tests can run many)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "strangler_requests",
            "Requests answered, by route, backend, mode and status class.",
            ["route", "backend", "mode", "status_class"],
            registry=r,
        )
        self.latency = Histogram(
            "strangler_request_duration_seconds",
            "Time from request head to the end of the response, by route and backend.",
            ["route", "backend"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "strangler_upstream_errors",
            "Upstream failures by backend and kind (connect, timeout, reset, protocol).",
            ["backend", "kind"],
            registry=r,
        )
        self.in_flight = Gauge(
            "strangler_in_flight_requests",
            "Requests being proxied right now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.client_errors = Counter(
            "strangler_client_errors",
            "Client requests refused before routing (bad request, too large, timeouts).",
            ["kind"],
            registry=r,
        )
        self.reloads = Counter(
            "strangler_config_reloads",
            "Config reloads by result (ok, error).",
            ["result"],
            registry=r,
        )
        self.worker_restarts = Counter(
            "strangler_worker_restarts",
            "Workers that died and were restarted by the supervisor (serve --workers).",
            registry=r,
        )
        self.config_info = Gauge(
            "strangler_config_info",
            "1 for the config version in force (0 for earlier ones under --workers).",
            ["version"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self.shadow_comparisons = Counter(
            "strangler_shadow_comparisons",
            "Shadow comparisons by route and outcome (match, mismatch, candidate_error, ...).",
            ["route", "outcome"],
            registry=r,
        )
        self.shadow_dropped = Counter(
            "strangler_shadow_dropped",
            "Shadow copies dropped by route and reason (concurrency, shed, body_too_large, ...).",
            ["route", "reason"],
            registry=r,
        )
        self.shadow_started = Counter(
            "strangler_shadow_started",
            "Shadow comparisons started, by route (= recorded + dropped + failed).",
            ["route"],
            registry=r,
        )
        self.shadow_recorded = Counter(
            "strangler_shadow_recorded",
            "Comparisons written to the store, by route.",
            ["route"],
            registry=r,
        )
        self.shadow_failed = Counter(
            "strangler_shadow_failed",
            "Comparisons lost after being queued (store down past the buffer), by route.",
            ["route"],
            registry=r,
        )
        self.shadow_diff_paths = Counter(
            "strangler_shadow_diff_paths",
            "Differing field paths by route (top paths per route; the rest as _other).",
            ["route", "path"],
            registry=r,
        )
        self.shadow_noise = Counter(
            "strangler_shadow_noise",
            "Paths found to be noise (legacy differs from itself), by route.",
            ["route", "path"],
            registry=r,
        )
        self.candidate_latency = Histogram(
            "strangler_candidate_duration_seconds",
            "Latency of the candidate's answer in a comparison (the background leg in shadow"
            " mode, the served answer in canary and extracted), by route.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.breaker_state = Gauge(
            "strangler_breaker_state",
            "Circuit breaker state per candidate backend (0 closed, 1 open, 2 half-open).",
            ["backend"],
            registry=r,
            multiprocess_mode="livemax",  # a dead process's value leaves the scrape
        )
        self.auto_rollback = Gauge(
            "strangler_auto_rollback",
            "1 while a route is held on legacy by an automatic rollback.",
            ["route"],
            registry=r,
            multiprocess_mode="livemax",  # a dead process's value leaves the scrape
        )
        self._config_version: str | None = None
        self._routes: dict[tuple[str, str, str], RouteMetrics] = {}
        self.in_flight_source: Callable[[], int] | None = None

    def route(self, route: str, backend: str, mode: str) -> RouteMetrics:
        """The counts of one route on one backend (shared across reloads)."""
        key = (route, backend, mode)
        rm = self._routes.get(key)
        if rm is None:
            by_class = tuple(
                self.requests.labels(route, backend, mode, cls) for cls in STATUS_CLASSES
            )
            rm = self._routes[key] = RouteMetrics(by_class, self.latency.labels(route, backend))
        return rm

    def flush(self) -> None:
        """Publish batched request counts and the in-flight gauge (before a scrape too)."""
        for rm in self._routes.values():
            rm.flush()
        if self.in_flight_source is not None:
            self.in_flight.set(self.in_flight_source())

    def set_config_version(self, version: str) -> None:
        """Point the info metric at the config version now in force."""
        old = self._config_version
        if old is not None and old != version:
            if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
                # Under --workers a sample lives in a file that `remove` cannot touch (it
                # only warns): mark the old version as no longer in force instead.
                self.config_info.labels(old).set(0)
            else:
                self.config_info.remove(old)
        self._config_version = version
        self.config_info.labels(version).set(1)


def scrape_registry(mp_dir: str) -> CollectorRegistry:
    """A registry adding up every process's metrics files in `mp_dir` (multiprocess mode).

    A file a process has just created is empty until it sizes it, and stays empty if the
    process is killed in between; prometheus-client's collector fails the whole scrape on
    such a file (struct.error: a 500 from /-/metrics). Files shorter than their 8-byte
    header hold no sample yet and are left out. The live gauges (breaker states) of a
    process that is gone are removed: whoever should have marked it dead may have died
    first (the shadow helper of a SIGKILLed worker).
    """
    import glob

    from prometheus_client.multiprocess import MultiProcessCollector

    class _Collector(MultiProcessCollector):
        def collect(self) -> object:
            files = []
            for f in glob.glob(os.path.join(mp_dir, "*.db")):
                live = _LIVE_GAUGE.fullmatch(os.path.basename(f))
                if live is not None and not _alive(int(live[1])):
                    forget_process(int(live[1]), mp_dir)
                    continue
                try:
                    if os.path.getsize(f) >= 8:
                        files.append(f)
                except OSError:  # removed since the glob (a dead process's live gauge)
                    continue
            return self.merge(files, accumulate=True)  # type: ignore[no-untyped-call]

    registry = CollectorRegistry()
    _Collector(registry, path=mp_dir)  # type: ignore[no-untyped-call]
    return registry


_LIVE_GAUGE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def forget_process(pid: int, mp_dir: str | None = None) -> None:
    """Drop the live gauges of a process that is gone (its breaker states) from the
    multiprocess scrape; its counters stay counted. No-op outside multiprocess mode."""
    path = mp_dir or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
