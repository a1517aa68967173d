"""Offline replay: captured requests sent to each route's legacy and candidate backends,
compared with the route's rules and stored like shadow comparisons (mode `replay`).

The traffic file (see `shadow.capture` for the line format) is checked whole first, so a
bad line stops the run before any request is sent (a last line cut short, as a proxy killed
mid-write leaves it, is skipped and noted in `ReplaySummary.cut_short`); it is then streamed
through a bounded queue to `concurrency` workers. Per line:

- no matching route, or a route without a candidate: skipped and counted, nothing sent;
- safe methods (GET, HEAD, OPTIONS): sent to the primary and the candidate at once
  (twice to the primary with `compare.noise_baseline`), then compared and recorded;
  connection failures (refused, dropped keep-alive) are retried with aiohttp-retry;
- writes never reach the monolith, whose Order API ignores `X-Strangler-Dry-Run` and
  would really write. With `shadow.writes: dry_run` the candidate alone gets the request
  with `X-Strangler-Dry-Run: 1` (its 5xx, errors and timeouts are recorded as such,
  anything else as `skipped`: there is nothing to compare it with); with `skip` (the
  default) the write is recorded as `skipped` without being sent anywhere.

A primary that fails (unreachable, timeout) leaves nothing to compare against: the
request is counted in `ReplaySummary.primary_failed` and not stored. Setting the `stop`
event (the CLI does on Ctrl-C) stops taking new lines; requests in flight get `grace`
seconds to finish and are then cancelled; the recorder is flushed either way.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final

import aiohttp
import orjson
from aiohttp import web
from aiohttp_retry import ExponentialRetry, RetryClient
from yarl import URL

from proxy.handlers import start_handler_app
from proxy.routes import Route, RouteTable
from proxy.settings import Settings
from shadow.compare import CompareRules
from shadow.http_compare import HttpResponse
from shadow.record import SAFE_METHODS, Outcome
from shadow.recorder import Recorder
from shadow.redact import Redactor
from shadow.store import Store
from shadow.verdict import Verdict, build_record, judge

__all__ = [
    "DRY_RUN_HEADER",
    "SAFE_METHODS",
    "Captured",
    "HandlerAppError",
    "ReplaySummary",
    "TrafficError",
    "iter_traffic",
    "parse_line",
    "replay",
    "scan",
    "scan_traffic",
]

_log = logging.getLogger("strangler.replay")

DRY_RUN_HEADER: Final = "X-Strangler-Dry-Run"
_REPLAY_HEADER: Final = "X-Strangler-Replay"
_HOP_BY_HOP: Final = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
        "expect",
    }
)
_FIELDS: Final = ("method", "path")


class TrafficError(Exception):
    """A traffic file that cannot be replayed; `.line` is 1-based (0: the file itself)."""

    def __init__(self, path: str, line: int, message: str) -> None:
        self.path = path
        self.line = line
        self.message = message
        super().__init__(f"{path}:{line}: {message}" if line else f"{path}: {message}")


class HandlerAppError(Exception):
    """A `handlers:` backend whose app cannot be imported, built or served."""

    def __init__(self, backend: str, handlers: str, cause: BaseException) -> None:
        self.backend = backend
        self.handlers = handlers
        detail = (str(cause).strip().splitlines() or [""])[0]
        kind = type(cause).__name__
        super().__init__(
            f"backend {backend!r}: cannot start handlers app {handlers!r}: "
            + (f"{kind}: {detail}" if detail else kind)
        )


@dataclass(frozen=True, slots=True)
class Captured:
    """One captured request, decoded from its JSON line."""

    line: int
    method: str
    path: str
    query: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    request_id: str = ""


def parse_line(raw: bytes, line: int, source: str = "<traffic>") -> Captured:
    """The request on one traffic line; `TrafficError` says what is wrong with it."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise TrafficError(source, line, f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise TrafficError(source, line, "expected a JSON object")
    for name in _FIELDS:
        if not isinstance(data.get(name), str) or not data[name]:
            raise TrafficError(source, line, f"{name!r} must be a non-empty string")
    method, path = data["method"].upper(), data["path"]
    if not path.startswith("/"):
        raise TrafficError(source, line, f"'path' must start with /, got {path!r}")
    query = data.get("query") or ""
    if not isinstance(query, str):
        raise TrafficError(source, line, "'query' must be a string")
    headers = data.get("headers") or []
    if not isinstance(headers, list) or not all(
        isinstance(h, list) and len(h) == 2 and all(isinstance(x, str) for x in h) for h in headers
    ):
        raise TrafficError(source, line, "'headers' must be a list of [name, value] strings")
    body_text = data.get("body")
    encoding = data.get("body_encoding")
    body = b""
    if body_text is not None:
        if not isinstance(body_text, str):
            raise TrafficError(source, line, "'body' must be a string or null")
        if encoding == "base64":
            try:
                body = base64.b64decode(body_text, validate=True)
            except ValueError:
                raise TrafficError(source, line, "'body' is not valid base64") from None
        elif encoding in (None, "utf-8"):
            body = body_text.encode("utf-8", "surrogatepass")
        else:
            raise TrafficError(source, line, f"unknown body_encoding {encoding!r}")
    request_id = data.get("request_id") or ""
    return Captured(
        line=line,
        method=method,
        path=path,
        query=query.removeprefix("?"),
        headers=tuple((k.lower(), v) for k, v in headers),
        body=body,
        request_id=str(request_id),
    )


def _lines(path: str) -> Iterator[tuple[int, bytes]]:
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise TrafficError(path, 0, f"cannot read traffic file: {exc.strerror or exc}") from None
    with fh:
        for number, raw in enumerate(fh, 1):
            if raw.strip():
                yield number, raw


def _parsed(path: str) -> Iterator[tuple[int, Captured | None]]:
    """Each line's request by line number; None for a last line cut short.

    A capture whose proxy was killed (or whose disk filled) mid-write ends in part of a
    line: no newline, not JSON. That line is skipped; any other bad line is an error.
    """
    for number, raw in _lines(path):
        try:
            yield number, parse_line(raw, number, path)
        except TrafficError:
            if raw.endswith(b"\n") or _is_json(raw):
                raise
            yield number, None


def _is_json(raw: bytes) -> bool:
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return True


def scan(path: str) -> tuple[int, int]:
    """Check every line of a traffic file: the number of requests in it, and the number of
    its last line when that line is cut short (skipped), else 0."""
    count = cut = 0
    for number, item in _parsed(path):
        if item is None:
            cut = number
        else:
            count += 1
    return count, cut


def scan_traffic(path: str) -> int:
    """Check every line of a traffic file; the number of requests in it."""
    return scan(path)[0]


def iter_traffic(path: str) -> Iterator[Captured]:
    """The requests of a traffic file, read one line at a time (a last line cut short is
    skipped)."""
    for _, item in _parsed(path):
        if item is not None:
            yield item


@dataclass(slots=True)
class ReplaySummary:
    """What one replay did; `outcomes` counts records handed to the recorder by outcome."""

    total: int = 0
    done: int = 0
    recorded: int = 0
    write_failed: int = 0
    no_route: int = 0
    no_candidate: int = 0
    primary_failed: int = 0
    errors: int = 0
    cancelled: int = 0
    cut_short: int = 0  # the number of the file's last line when it was cut short (skipped)
    interrupted: bool = False
    elapsed_s: float = 0.0
    routes: tuple[str, ...] = ()
    outcomes: dict[str, int] = field(default_factory=dict)

    @property
    def compared(self) -> int:
        """Records produced (whatever their outcome)."""
        return sum(self.outcomes.values())

    @property
    def rate(self) -> float:
        """Lines processed per second."""
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass(frozen=True, slots=True)
class _Side:
    """One backend's answer, or why there is none."""

    response: HttpResponse | None
    ms: float
    error: str | None = None


@dataclass(frozen=True, slots=True)
class _Plan:
    """How one route's lines are replayed; built once per run."""

    name: str
    template: str
    primary: str
    candidate: str
    primary_timeout: float
    candidate_timeout: float
    rules: CompareRules
    ignore_headers: tuple[str, ...]
    noise_baseline: bool
    dry_run_writes: bool


class _Replayer:
    """One replay run: backends, HTTP client, recorder and the worker pool."""

    def __init__(
        self,
        settings: Settings,
        recorder: Recorder,
        redactor: Redactor,
        client: RetryClient,
        bases: dict[str, URL],
        summary: ReplaySummary,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        self.settings = settings
        self.table = RouteTable(settings)
        self.recorder = recorder
        self.redactor = redactor
        self.client = client
        self.bases: dict[str, str] = {name: str(base).rstrip("/") for name, base in bases.items()}
        # Each backend's `host_header`, as the proxy sends it (a Host-routed ingress, a
        # virtual host): without it the backend is reached under another name.
        self.hosts: dict[str, str | None] = {
            name: settings.backends[name].host_header for name in bases
        }
        self.summary = summary
        self.progress = progress
        self.plans: dict[str, _Plan] = {}
        self.routes_seen: dict[str, None] = {}
        self.high_water = max(1, settings.store.buffer_size // 2)

    def plan(self, route: Route) -> _Plan:
        plan = self.plans.get(route.name)
        if plan is None:
            assert route.candidate is not None
            rs = route.settings
            plan = self.plans[route.name] = _Plan(
                name=route.name,
                template=rs.match.path,
                primary=route.primary,
                candidate=route.candidate,
                primary_timeout=self.settings.backends[route.primary].timeout,
                candidate_timeout=rs.shadow.timeout,
                rules=CompareRules.from_settings(rs.compare),
                ignore_headers=tuple(rs.compare.ignore_headers),
                noise_baseline=rs.compare.noise_baseline,
                dry_run_writes=rs.shadow.writes == "dry_run",
            )
        return plan

    # -- one line -------------------------------------------------------------------------

    async def one(self, item: Captured) -> None:
        raw_headers = [(k.encode("latin-1", "replace"), v.encode()) for k, v in item.headers]
        route = self.table.match(item.method, item.path, item.query, raw_headers)
        if route is None:
            self.summary.no_route += 1
            return
        if route.candidate is None:
            self.summary.no_candidate += 1
            return
        plan = self.plan(route)
        self.routes_seen[plan.name] = None
        if item.method in SAFE_METHODS:
            await self._compare(plan, item)
        else:
            await self._write(plan, item)

    async def _compare(self, plan: _Plan, item: Captured) -> None:
        calls = [
            self._send(plan.primary, item, plan.primary_timeout),
            self._send(plan.candidate, item, plan.candidate_timeout),
        ]
        if plan.noise_baseline:
            calls.append(self._send(plan.primary, item, plan.primary_timeout))
        sides = await asyncio.gather(*calls)
        primary, candidate = sides[0], sides[1]
        if primary.response is None:
            self.summary.primary_failed += 1
            self.recorder.note_started(plan.name)
            self.recorder.note_dropped(plan.name, "primary_failed")
            return
        base = sides[2].response if len(sides) > 2 else None
        verdict = judge(
            primary.response,
            candidate.response,
            candidate.error,
            plan.rules,
            plan.ignore_headers,
            baseline=base,
        )
        await self._record(plan, item, verdict, primary, candidate)

    async def _write(self, plan: _Plan, item: Captured) -> None:
        if not plan.dry_run_writes:
            none = _Side(None, 0.0)
            skipped = Verdict("skipped", detail="write not replayed (shadow.writes: skip)")
            await self._record(plan, item, skipped, none, none)
            return
        candidate = await self._send(
            plan.candidate, item, plan.candidate_timeout, extra=((DRY_RUN_HEADER, "1"),)
        )
        outcome: Outcome = "skipped"
        detail = "dry run on the candidate only; writes are never sent to the monolith"
        if candidate.response is None:
            outcome = "candidate_timeout" if candidate.error == "timeout" else "candidate_error"
            detail = candidate.error or ""
        elif candidate.response.status >= 500:
            outcome = "candidate_error"
            detail = f"candidate answered {candidate.response.status} to a dry run"
        none = _Side(None, 0.0)
        await self._record(plan, item, Verdict(outcome, detail=detail), none, candidate)

    async def _send(
        self,
        backend: str,
        item: Captured,
        timeout: float,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> _Side:
        headers = [(k, v) for k, v in item.headers if k not in _HOP_BY_HOP]
        # The backend's `host_header`, else the client's captured Host (the proxy keeps it),
        # else the backend URL's own (set by the client).
        host = self.hosts[backend] or next((v for k, v in item.headers if k == "host"), None)
        if host:
            headers.append(("Host", host))
        headers.append((_REPLAY_HEADER, "1"))
        if item.request_id and not any(k == "x-request-id" for k, _ in headers):
            headers.append(("X-Request-Id", item.request_id))
        headers.extend(extra)
        target = item.path + ("?" + item.query if item.query else "")
        # Concatenated, never joined: a captured `//host/x` must not change the host.
        url = URL(self.bases[backend] + target, encoded=True)
        t0 = time.perf_counter()
        try:
            async with self.client.request(
                item.method,
                url,
                headers=headers,
                data=item.body or None,
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as resp:
                body = await resp.read()
                response = HttpResponse(
                    resp.status,
                    [(k.decode("latin-1"), v.decode("latin-1")) for k, v in resp.raw_headers],
                    body,
                )
        except TimeoutError:
            return _Side(None, _ms(t0), "timeout")
        except aiohttp.ClientError as exc:
            return _Side(None, _ms(t0), f"{type(exc).__name__}: {exc}"[:300])
        return _Side(response, _ms(t0))

    async def _record(
        self, plan: _Plan, item: Captured, verdict: Verdict, primary: _Side, candidate: _Side
    ) -> None:
        if self.recorder.buffered >= self.high_water:
            await self.recorder.flush(timeout=30.0)  # backpressure instead of dropping
        self.recorder.record(
            build_record(
                self.redactor,
                verdict,
                route=plan.name,
                method=item.method,
                path_template=plan.template,
                request_path=item.path,
                legacy=primary.response,
                candidate=candidate.response,
                legacy_ms=primary.ms if primary.response else None,
                candidate_ms=candidate.ms if candidate.ms else None,
                request_id=item.request_id,
                mode="replay",
                config_version=self.settings.version,
            ),
            started=True,
        )
        outcome = verdict.outcome
        self.summary.outcomes[outcome] = self.summary.outcomes.get(outcome, 0) + 1

    # -- the worker pool ------------------------------------------------------------------

    async def run(self, traffic: str, concurrency: int, stop: asyncio.Event, grace: float) -> None:
        queue: asyncio.Queue[Captured | None] = asyncio.Queue(maxsize=concurrency * 2)
        busy: set[asyncio.Task[None]] = set()

        async def feed() -> None:
            for item in iter_traffic(traffic):
                await queue.put(item)
            for _ in range(concurrency):
                await queue.put(None)

        async def work() -> None:
            me = asyncio.current_task()
            assert me is not None
            while not stop.is_set():
                item = await queue.get()
                if item is None or stop.is_set():
                    return
                busy.add(me)
                try:
                    await self.one(item)
                except asyncio.CancelledError:
                    self.summary.cancelled += 1
                    raise
                except Exception:  # one bad line must not end the run
                    _log.exception("replay: line %d failed", item.line)
                    self.summary.errors += 1
                finally:
                    busy.discard(me)
                self.summary.done += 1
                if self.progress is not None:
                    self.progress(self.summary.done, self.summary.total)

        feeder = asyncio.create_task(feed(), name="replay-feed")
        workers = [asyncio.create_task(work(), name=f"replay-{i}") for i in range(concurrency)]
        tasks = [feeder, *workers]
        stopped = asyncio.create_task(stop.wait())
        try:
            while True:
                pending = [t for t in tasks if not t.done()]
                if not pending or (feeder.done() and _failed(feeder)):
                    break
                if stop.is_set():
                    self.summary.interrupted = True
                    feeder.cancel()
                    for task in workers:
                        if task not in busy:
                            task.cancel()
                    in_flight = [t for t in workers if not t.done()]
                    if in_flight:
                        await asyncio.wait(in_flight, timeout=grace)
                    break
                await asyncio.wait({*pending, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, stopped, return_exceptions=True)
        if _failed(feeder):
            exc = feeder.exception()
            assert exc is not None
            raise exc


def _failed(task: asyncio.Task[None]) -> bool:
    return not task.cancelled() and task.done() and task.exception() is not None


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def _needed_backends(settings: Settings) -> list[str]:
    table = RouteTable(settings)
    names: dict[str, None] = {}
    for route in table.routes:
        if route.candidate is not None:
            names[route.primary] = None
            names[route.candidate] = None
    return list(names)


async def replay(
    traffic_path: str,
    settings: Settings,
    store_url: str | None,
    concurrency: int = 16,
    progress: Callable[[int, int], None] | None = None,
    *,
    stop: asyncio.Event | None = None,
    grace: float = 5.0,
    redactor: Redactor | None = None,
) -> ReplaySummary:
    """Replay a traffic file through the compare pipeline into the store (mode `replay`).

    `store_url` None: the config's `store.url`. `progress(done, total)` is called after each
    line. Raises `TrafficError` (before sending anything), `HandlerAppError` and
    `shadow.store.StoreError`.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    started = time.perf_counter()
    total, cut_short = scan(traffic_path)
    summary = ReplaySummary(total=total, cut_short=cut_short)
    stop = stop if stop is not None else asyncio.Event()
    redactor = redactor or Redactor.from_env(settings.store.redact_json_paths, warn=True)
    store = await Store.open(store_url or settings.store.url)
    recorder = Recorder(store, settings.store.buffer_size, settings.store.batch_size)
    runners: list[web.AppRunner] = []
    try:
        await recorder.start()
        bases: dict[str, URL] = {}
        for name in _needed_backends(settings):
            bs = settings.backends[name]
            if bs.handlers is not None:
                try:
                    runner, host, port = await start_handler_app(bs)
                except Exception as exc:  # the app's own code: import, factory, bind
                    raise HandlerAppError(name, bs.handlers, exc) from exc
                bases[name] = URL(f"http://{host}:{port}")
                runners.append(runner)
            else:
                assert bs.url is not None
                bases[name] = URL(bs.url)
        connector = aiohttp.TCPConnector(limit=concurrency * 3, limit_per_host=0)
        session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        retry = ExponentialRetry(
            attempts=3,
            start_timeout=0.05,
            max_timeout=1.0,
            exceptions={aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError},
            methods=set(SAFE_METHODS),
            retry_all_server_errors=False,
            statuses=set(),
        )
        client = RetryClient(client_session=session, retry_options=retry)
        try:
            replayer = _Replayer(settings, recorder, redactor, client, bases, summary, progress)
            await replayer.run(traffic_path, concurrency, stop, grace)
            summary.routes = tuple(replayer.routes_seen)
        finally:
            await client.close()
    finally:
        await recorder.stop(timeout=60.0)
        counters = recorder.counters().values()
        summary.recorded = sum(c.recorded for c in counters)
        summary.write_failed = sum(c.failed for c in counters)
        for runner in runners:
            await runner.cleanup()
        await store.close()
        summary.elapsed_s = time.perf_counter() - started
    return summary
