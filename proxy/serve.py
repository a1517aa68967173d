"""`strangler serve`: one process, or a supervisor with N SO_REUSEPORT workers.

Signals: SIGHUP reloads (validated whole; a bad file keeps the old config; one that comes
while starting is held, `proxy.earlyhup`, and reloads once up), SIGTERM and SIGINT stop
accepting, drain in-flight requests within the grace period, then exit.
With `--workers N` the supervisor runs the admin listener, aggregates the workers'
metrics (Prometheus multiprocess mode), fans reloads out (one a worker up cannot apply
fails as a whole: everyone, the supervisor too, goes back to the old config) and restarts
dead workers (with a per-worker backoff); it is ready while every worker is. Each
worker's event loop beats into a pipe every 0.5 s; one silent for 2 s counts as not ready
and one silent for 10 s is hung (a CPU-bound bug, a deadlock, SIGSTOP): it is killed and
restarted, since the kernel would go on handing it its share of new connections.
Workers (and their shadow helpers) load the config the supervisor last loaded, from a
snapshot it keeps, not the file on disk: one restarted after a crash runs what the others
run, even if the file was edited since (or broken) and not reloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path

from proxy.earlyhup import hold_early_hup, take_early_hup
from proxy.holds import STATE_DIR_ENV
from proxy.lifeline import HEARTBEAT_ENV, Pulse, start_heartbeat, take_heartbeat_fd
from proxy.listenclaim import claim_listen
from proxy.routes import offload_wanted
from proxy.settings import ConfigError, Settings, load, loads
from shadow.redact import warn_if_unkeyed

__all__ = ["SNAPSHOT_ENV", "load_config", "run", "run_worker"]

SNAPSHOT_ENV = "STRANGLER_CONFIG_SNAPSHOT"  # set for workers: the supervisor's loaded config
_GRACE_ENV = "STRANGLER_GRACE_S"
_READY_PREFIX = "ready-"
# The snapshot's first line: its generation, which the supervisor counts up with every write
# and a worker names when it answers a reload (a late answer is not taken for a later one).
_SNAPSHOT_HEAD = "#strangler-snapshot "
# the generation of the snapshot the last load_config of this task read (None: none read)
_snapshot_read: ContextVar[int | None] = ContextVar("strangler_snapshot_read", default=None)
# why the last load_config of this task could not read the snapshot ("": it could, or none)
_snapshot_unread: ContextVar[str] = ContextVar("strangler_snapshot_unread", default="")


def _grace() -> float:
    try:
        return float(os.environ.get(_GRACE_ENV, "10"))
    except ValueError:
        return 10.0


_EXIT_MARGIN_S = 2.0  # past a worker's stop: killing a stuck helper, the interpreter's exit


def _worker_stop_s() -> float:
    """How long the supervisor waits for SIGTERMed workers before it SIGKILLs them: their
    `Proxy.stop(grace)` returns within grace + STOP_OVERRUN_S."""
    from proxy.app import STOP_OVERRUN_S

    return _grace() + STOP_OVERRUN_S + _EXIT_MARGIN_S


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def load_config(path: str) -> Settings:
    """`load(path)`; under a supervisor, the config it last loaded (same path and version),
    whatever the file on disk says now."""
    snapshot = os.environ.get(SNAPSHOT_ENV)
    if not snapshot:
        return load(path)
    _snapshot_read.set(None)
    _snapshot_unread.set("")
    try:
        text = Path(snapshot).read_bytes().decode("utf-8")  # CRLF kept: the same version
    except (OSError, UnicodeDecodeError) as exc:
        # the supervisor counts a reload that read no snapshot as refused: say why, here
        # and in the answer to the supervisor
        detail = (exc.strerror or str(exc)) if isinstance(exc, OSError) else f"not UTF-8: {exc}"
        why = f"cannot read the config snapshot {snapshot}: {detail}"
        _snapshot_unread.set(why)
        print(
            f"strangler serve: worker {os.getpid()}: {why}; loading the config file {path} instead",
            file=sys.stderr,
            flush=True,
        )
        return load(path)
    if text.startswith(_SNAPSHOT_HEAD):
        head, _, text = text.partition("\n")
        number = head[len(_SNAPSHOT_HEAD) :]
        _snapshot_read.set(int(number) if number.isdigit() else None)
    return loads(text, path)


def _write_snapshot(path: Path, settings: Settings, generation: int) -> None:
    """Keep `settings` as the config the workers load (replaced whole, never half-written),
    headed by its `generation`."""
    tmp = path.with_suffix(".tmp")
    head = f"{_SNAPSHOT_HEAD}{generation}\n".encode()
    tmp.write_bytes(head + settings.source.encode("utf-8"))  # no newline translation
    tmp.replace(path)


def _load_or_report(path: str) -> Settings | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        for issue in exc.errors:
            print(issue, file=sys.stderr)
        return None


def _hup_handler(loop: asyncio.AbstractEventLoop, on_hup: Callable[[], None]) -> None:
    """Reload on SIGHUP from now on, and now if one came during start-up."""
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    if take_early_hup():
        on_hup()


def run(config_path: str, *, workers: int = 1, watch: bool = False) -> int:
    """Run until SIGTERM/SIGINT; exit code 0, or 2 on a config error or a failed start."""
    hold_early_hup()  # again for callers other than the CLI (which held it first)
    settings = _load_or_report(config_path)
    if settings is None:
        return 2
    if workers > 1 and settings.port == 0:
        print(
            f"strangler serve: cannot start: listen {settings.host}:0 would give each of the"
            f" {workers} workers its own random port; set a port for --workers",
            file=sys.stderr,
        )
        return 2
    try:
        claims = claim_listen(settings.host, settings.port)
    except OSError as exc:
        _cannot_start(exc)
        return 2
    try:
        _install_uvloop()
        if workers > 1 or offload_wanted(settings):  # workers, each with a shadow helper
            return asyncio.run(_supervise(settings, workers, watch))
        return asyncio.run(_serve_one(settings, watch=watch, worker=False))
    finally:
        for claim in claims:
            claim.close()


def _cannot_start(exc: BaseException) -> None:
    """Say why the proxy did not start, on one line of stderr (no traceback). An error of
    the system (an address in use) or of the store is said as it is; any other one (an
    in-process handler app's) is named by its type, so a bug there is told from a setting."""
    detail = str(exc).strip().splitlines()
    text = detail[0] if detail else ""
    if not isinstance(exc, OSError) and type(exc).__name__ != "StoreError":
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    print(f"strangler serve: cannot start: {text}", file=sys.stderr)


def _settle_gc() -> None:
    """Move everything built at start-up out of the collector's sight (gc.freeze).

    Modules, the route table, the metrics registry and the store engine live for the whole
    process; without this every full collection walks them again, a pause of several ms
    that lands on whichever requests are in flight.
    """
    gc.collect()
    gc.freeze()


def run_worker(config_path: str, slot: int | None = None) -> int:
    """Entry point of one worker process started by the supervisor (`proxy.worker`, which
    ties it to the supervisor first); `slot`: its number (1..N) under `--workers N`, N > 1,
    which its capture file is named after (`capture.path` + `.w<slot>`)."""
    hold_early_hup()
    heartbeat = take_heartbeat_fd()  # first: no child of this worker is to inherit it
    settings = _load_or_report(config_path)
    if settings is None:
        return 2
    _install_uvloop()
    return asyncio.run(
        _serve_one(settings, watch=False, worker=True, slot=slot, heartbeat=heartbeat)
    )


def _stop_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


async def _watch_file(path: str, on_change: object, stop: asyncio.Event) -> None:
    """Poll the config file's mtime and size once a second; call `on_change` when it moves."""

    def stamp() -> tuple[float, int]:
        try:
            st = os.stat(path)
        except OSError:
            return (0.0, -1)
        return (st.st_mtime, st.st_size)

    last = stamp()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
        now = stamp()
        if now != last and now[1] >= 0:
            last = now
            await on_change()  # type: ignore[operator]


async def _serve_one(
    settings: Settings,
    *,
    watch: bool,
    worker: bool,
    slot: int | None = None,
    heartbeat: int | None = None,
) -> int:
    """Run one proxy; `heartbeat`: a worker's pipe to its supervisor (`take_heartbeat_fd`)."""
    from proxy.app import create_proxy

    proxy = create_proxy(
        settings, reuse_port=worker, admin=not worker, offload=worker, worker_slot=slot
    )
    try:
        await proxy.start()
    except Exception as exc:  # an address in use, a store URL or handler app that fails
        _cannot_start(exc)
        return 2
    _settle_gc()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    _stop_signals(loop, stop)
    reloads: set[asyncio.Task[tuple[bool, list[str]]]] = set()
    # before the ready file: up is beating
    heart = start_heartbeat(heartbeat, loop) if heartbeat is not None else None

    async def reload_and_answer() -> tuple[bool, list[str]]:
        _snapshot_read.set(None)  # this task's own: set by the load_config of this reload
        _snapshot_unread.set("")
        ok = False
        try:
            result = await proxy.reload_from_file()
            ok = result[0]
            return result
        finally:  # the supervisor fails the reload everywhere if one failed here
            if heart is not None:
                heart.reloaded(ok, _snapshot_read.get(), _snapshot_unread.get())

    def on_hup() -> None:
        task = loop.create_task(reload_and_answer())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    _hup_handler(loop, on_hup)
    if worker:
        ready_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if ready_dir:
            Path(ready_dir, f"{_READY_PREFIX}{os.getpid()}").touch()
    else:
        host, port = proxy.address
        ahost, aport = proxy.admin_address
        proxy.access_log.event(
            event="started",
            listen=f"{host}:{port}",
            admin=f"{ahost}:{aport}",
            config_version=settings.version,
        )
        warn_if_unkeyed()  # once, from the process users started, after a good start
    watcher = None
    if watch:
        watcher = loop.create_task(_watch_file(settings.path, proxy.reload_from_file, stop))
    await stop.wait()
    if watcher is not None:
        await watcher
    await proxy.stop(_grace())
    return 0


_BACKOFF_MIN_S = 1.0  # a dead worker's first restart; doubled per quick death
_BACKOFF_MAX_S = 30.0
_HEALTHY_S = 60.0  # a worker that lived this long died of something new: back to the minimum
_SILENT_S = 2.0  # a worker whose loop beat no more for this long is not ready (4 beats missed)
_HUNG_S = 10.0  # ... and for this long is hung: killed and restarted (no loop stalls so long)
_RELOAD_WAIT_S = _HUNG_S  # for the workers to say how a reload went


class _Workers:
    """The supervisor's worker processes, one per slot."""

    def __init__(self, config_path: str, count: int, env: dict[str, str], ready_dir: str) -> None:
        self.config_path = config_path
        self.count = count
        self.env = env
        self.ready_dir = Path(ready_dir)  # a worker that is up leaves `ready-PID` there
        self.procs: list[subprocess.Popen[bytes]] = []
        self.stopping = False
        self.restarts = 0
        self.on_restart: Callable[[], None] | None = None  # counts into the admin's metrics
        self._started: list[float] = []  # per slot: when its process was started
        self._quick_deaths: list[int] = []  # per slot: deaths in a row before _HEALTHY_S
        self._due: list[float | None] = []  # per slot: when a dead one is started again
        self._pulses: list[Pulse | None] = []  # per slot: its worker's heartbeat
        self.generation = 0  # of the config snapshot last written, which a reload asks for

    def spawn(self, slot: int) -> subprocess.Popen[bytes]:
        """Start the worker of `slot` (0-based) with SIGHUP blocked (the mask is inherited):
        a reload fanned out while it imports stays pending until its handler is in
        (`hold_early_hup`). With more than one slot, the worker is told its number (1..N):
        its capture file is `capture.path` + `.w<N>`, the same file across its restarts."""
        args = [sys.executable, "-m", "proxy.worker", self.config_path, str(os.getpid())]
        if self.count > 1:
            args.append(str(slot + 1))
        old = self._pulses[slot]
        if old is not None:
            old.close()
        pulse = self._pulses[slot] = Pulse()
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            return subprocess.Popen(
                args,
                env={**self.env, HEARTBEAT_ENV: str(pulse.fd)},
                stdin=subprocess.DEVNULL,
                pass_fds=(pulse.fd,),
            )
        finally:
            pulse.handed()
            signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def start(self) -> None:
        self._pulses = [None] * self.count
        self.procs = [self.spawn(i) for i in range(self.count)]
        self._started = [time.monotonic()] * self.count
        self._quick_deaths = [0] * self.count
        self._due = [None] * self.count

    def _silent_s(self, slot: int, now: float) -> float | None:
        """Seconds the worker of `slot` has not beaten; None before its first beat."""
        pulse = self._pulses[slot]
        return None if pulse is None else pulse.silent_s(now)

    def _kill_if_hung(self, slot: int, proc: subprocess.Popen[bytes], now: float) -> None:
        """SIGKILL a worker silent for _HUNG_S (SIGTERM would wait on the stuck loop); the
        next `reap` restarts it like any dead worker."""
        silent = self._silent_s(slot, now)
        pulse = self._pulses[slot]
        if pulse is None or silent is None or silent < _HUNG_S:
            return
        pulse.last = None  # killed once: said once
        line = {"event": "worker_hung", "pid": proc.pid, "silent_s": round(silent, 1)}
        print(json.dumps(line), flush=True)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()

    def reap(self) -> None:
        """Restart workers that died (unless we are stopping), after a per-slot backoff:
        a worker that cannot start (a bad file on disk, a handler that does not import)
        is retried after 1 s, 2 s, 4 s ... at most 30 s, not in a tight loop."""
        from proxy.metrics import forget_process  # after the supervisor set the metrics dir

        now = time.monotonic()
        for i, proc in enumerate(self.procs):
            if self.stopping:
                continue
            if proc.poll() is None:
                self._kill_if_hung(i, proc, now)
                continue
            due = self._due[i]
            if due is None:  # just died
                forget_process(proc.pid)
                self._ready_file(proc).unlink(missing_ok=True)
                self.restarts += 1
                if self.on_restart is not None:
                    self.on_restart()
                if now - self._started[i] >= _HEALTHY_S:
                    self._quick_deaths[i] = 0
                delay = min(_BACKOFF_MAX_S, _BACKOFF_MIN_S * 2 ** self._quick_deaths[i])
                self._quick_deaths[i] += 1
                due = self._due[i] = now + delay
                line = {
                    "event": "worker_restarted",
                    "pid": proc.pid,
                    "code": proc.returncode,
                    "restart_in_s": delay,
                }
                print(json.dumps(line), flush=True)
            if now >= due:
                self.procs[i] = self.spawn(i)
                self._started[i] = now
                self._due[i] = None

    def _ready_file(self, proc: subprocess.Popen[bytes]) -> Path:
        return self.ready_dir / f"{_READY_PREFIX}{proc.pid}"

    def unready(self) -> str | None:
        """None when every slot's worker runs and is up, else why not (for /-/ready)."""
        now = time.monotonic()
        down = sum(
            1
            for i, p in enumerate(self.procs)
            if p.poll() is not None
            or not self._ready_file(p).exists()
            or (self._silent_s(i, now) or 0.0) >= _SILENT_S
        )
        return f"{down} of {self.count} workers not ready" if down else None

    async def reload_all(self) -> str | None:
        """SIGHUP every worker and wait for those that are up to say how their reload of
        the snapshot of `generation` went (one that dies meanwhile is left out: its
        successor loads the snapshot); None when all run the new config, else why not.
        An answer naming an earlier generation (a reload the worker was still finishing) is
        not this one's; one naming none (no snapshot read) counts as a refusal."""
        generation = self.generation
        now = time.monotonic()
        asked: dict[int, subprocess.Popen[bytes]] = {}
        for i, proc in enumerate(self.procs):
            pulse = self._pulses[i]
            if pulse is None or proc.poll() is not None:
                continue
            beating = pulse.silent_s(now) is not None  # reads what came before this reload
            pulse.reloads.clear()  # ... which is not its answer
            if beating:  # one still starting reloads when it is up
                asked[i] = proc
        self.signal_all(signal.SIGHUP)
        deadline = now + _RELOAD_WAIT_S
        failed: list[int] = []
        reasons: dict[int, str] = {}  # what a refusing worker said of it
        while asked:
            now = time.monotonic()
            for i, proc in list(asked.items()):
                pulse = self._pulses[i]
                if self.procs[i] is not proc or proc.poll() is not None or pulse is None:
                    del asked[i]
                    continue
                pulse.silent_s(now)
                answers = [
                    a for a in pulse.reloads if a.generation is None or a.generation >= generation
                ]
                if answers:
                    if not all(a.ok and a.generation is not None for a in answers):
                        failed.append(proc.pid)
                        said = "; ".join(dict.fromkeys(a.reason for a in answers if a.reason))
                        if said:
                            reasons[proc.pid] = said
                    del asked[i]
            if not asked:
                break
            if now >= deadline:
                pids = ", ".join(str(p.pid) for p in asked.values())
                return f"the workers with pid {pids} did not apply it within {_RELOAD_WAIT_S:g} s"
            await asyncio.sleep(0.01)
        if failed:
            pids = ", ".join(map(str, failed))
            why = "".join(f"; pid {pid}: {reasons[pid]}" for pid in failed if pid in reasons)
            hint = "" if len(reasons) == len(failed) else " (see their reload_failed lines)"
            return f"the workers with pid {pids} could not apply it{hint}{why}"
        return None

    def signal_all(self, sig: int) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    async def wait_all(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in self.procs) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _probe_listen(host: str, port: int) -> None:
    """Raise OSError if anything holds `host:port`. The workers bind it with SO_REUSEPORT,
    which would share the port with another running instance; this bind does not."""
    if port == 0:
        return
    for family, kind, proto, _, addr in socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    ):
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no user
            if family == socket.AF_INET6:  # as the event loop binds the workers' listeners
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(addr)
            except OSError as exc:
                reason = (exc.strerror or str(exc)).lower()
                raise OSError(
                    exc.errno, f"error while attempting to bind on address {addr!r}: {reason}"
                ) from None


async def _supervise(settings: Settings, count: int, watch: bool) -> int:
    stop = asyncio.Event()  # from the start: a SIGTERM while workers start stops them too
    _stop_signals(asyncio.get_running_loop(), stop)
    try:
        _probe_listen(settings.host, settings.port)
    except OSError as exc:
        _cannot_start(exc)
        return 2
    mp_dir = tempfile.mkdtemp(prefix="strangler-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = mp_dir
    os.environ[STATE_DIR_ENV] = mp_dir  # rollback holds shared by the workers
    try:
        return await _supervise_in(settings, count, watch, mp_dir, stop)
    finally:
        shutil.rmtree(mp_dir, ignore_errors=True)


async def _supervise_in(
    settings: Settings, count: int, watch: bool, mp_dir: str, stop: asyncio.Event
) -> int:
    from proxy.app import create_proxy
    from proxy.metrics import scrape_registry

    snapshot = Path(mp_dir, "config.yaml")
    env = dict(os.environ)
    env[SNAPSHOT_ENV] = str(snapshot)
    workers = _Workers(settings.path, count, env, mp_dir)
    _write_snapshot(snapshot, settings, workers.generation)
    workers.start()
    deadline = time.monotonic() + 30
    while workers.unready():
        if stop.is_set():  # stopped before the workers were up: a stop, not a failure
            workers.stopping = True
            workers.signal_all(signal.SIGTERM)
            await workers.wait_all(_worker_stop_s())
            return 0
        if time.monotonic() > deadline or any(p.poll() is not None for p in workers.procs):
            workers.stopping = True
            workers.signal_all(signal.SIGTERM)
            await workers.wait_all(5)
            print("strangler serve: workers failed to start", file=sys.stderr)
            return 2  # a failed start, whatever the workers exited with (1 is a failed gate)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)

    admin = create_proxy(settings, data_plane=False)
    admin.scrape_registry = scrape_registry(mp_dir)

    # what workers load, now and when restarted; a snapshot that cannot be written (a full
    # disk) fails the reload, so nobody is told a config runs that the workers do not have
    def prepare(new: Settings) -> None:
        workers.generation += 1  # the answers to this reload name it
        _write_snapshot(snapshot, new, workers.generation)

    admin.reload_prepare = prepare
    admin.reload_hook = workers.reload_all
    workers.on_restart = admin.metrics.worker_restarts.inc
    admin.unready = workers.unready
    try:
        await admin.start()
    except Exception as exc:  # the admin address in use
        _cannot_start(exc)
        workers.stopping = True
        workers.signal_all(signal.SIGTERM)
        await workers.wait_all(_worker_stop_s())
        return 2
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[tuple[bool, list[str]]]] = set()

    def on_hup() -> None:
        task = loop.create_task(admin.reload_from_file())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    _hup_handler(loop, on_hup)
    host, port = settings.host, settings.port
    ahost, aport = admin.admin_address
    admin.access_log.event(
        event="started",
        listen=f"{host}:{port}",
        admin=f"{ahost}:{aport}",
        workers=count,
        config_version=settings.version,
    )
    warn_if_unkeyed()  # once for every worker and helper, after a good start
    watcher = None
    if watch:
        watcher = loop.create_task(_watch_file(settings.path, admin.reload_from_file, stop))
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)
        workers.reap()
    workers.stopping = True
    admin.ready = False
    if watcher is not None:
        await watcher
    workers.signal_all(signal.SIGTERM)
    await workers.wait_all(_worker_stop_s())
    await admin.stop(1.0)
    return 0
