"""What the bench measures: the fast upstream and the proxies put in front of it.

Every target listens on its own free loopback port with generated config in the bench's
temp dir. A target that fails to start is reported as such, never fatal for the others.
"""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.procs import ProcessSet, Started, wait_ready

__all__ = [
    "BODY_SIZE",
    "PATH",
    "TARGETS",
    "BenchEnv",
    "Running",
    "Target",
    "TargetFailed",
    "free_port",
    "json_body",
    "nginx_proxy_conf",
    "nginx_upstream_conf",
    "probe_http",
    "start_nginx",
    "start_strangler",
    "strangler_config",
]

BODY_SIZE = 1024
PATH = "/bench/x"


class TargetFailed(Exception):
    """A target did not start or did not answer correctly; the message says why."""


@dataclass(frozen=True, slots=True)
class BenchEnv:
    """Shared by all targets: temp dir, process set, upstream URL and CPU assignment."""

    tmp: Path
    processes: ProcessSet
    upstream_url: str
    proxy_cpu: int | None
    load_cpu: int | None
    upstream: Started | None = None


@dataclass(frozen=True, slots=True)
class Running:
    """A started target: the URL wrk loads, the process tree whose CPU is charged, a wrk script."""

    url: str
    measured: Started
    script: Path | None = None  # a wrk Lua script for every slice (e.g. varying headers)


@dataclass(frozen=True, slots=True)
class Target:
    """A named thing to benchmark and how to start it."""

    name: str
    description: str
    start: Callable[[BenchEnv], Running]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on `host` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def json_body(size: int = BODY_SIZE) -> str:
    """A JSON document of exactly `size` bytes, safe inside a single-quoted nginx string."""
    doc: dict[str, object] = {
        "id": 42,
        "status": "shipped",
        "items": [{"sku": f"SKU-{i:04d}", "qty": i % 3 + 1, "price": "19.99"} for i in range(6)],
        "pad": "",
    }
    base = len(json.dumps(doc, separators=(",", ":")))
    doc["pad"] = "x" * max(0, size - base)
    text = json.dumps(doc, separators=(",", ":"))
    assert len(text) == size, "body larger than requested size"
    return text


def _nginx_common(tmp: Path, name: str, workers: int) -> str:
    """The main-context and http-context lines every bench nginx shares."""
    return (
        f"worker_processes {workers};\n"
        "daemon off;\n"
        "master_process on;\n"
        f"pid {tmp}/{name}.pid;\n"
        f"error_log {tmp}/{name}-error.log warn;\n"
        "events { worker_connections 4096; }\n"
        "http {\n"
        "    access_log off;\n"
        f"    client_body_temp_path {tmp}/{name}-client-body;\n"
        f"    proxy_temp_path {tmp}/{name}-proxy;\n"
        f"    fastcgi_temp_path {tmp}/{name}-fastcgi;\n"
        f"    uwsgi_temp_path {tmp}/{name}-uwsgi;\n"
        f"    scgi_temp_path {tmp}/{name}-scgi;\n"
        "    keepalive_requests 100000000;\n"
        "    keepalive_timeout 75s;\n"
    )


def nginx_upstream_conf(tmp: Path, name: str, port: int, body: str) -> str:
    """nginx serving `return 200` with `body` as application/json: the fast upstream."""
    return (
        _nginx_common(tmp, name, 1) + "    server {\n"
        f"        listen 127.0.0.1:{port};\n"
        "        default_type application/json;\n"
        f"        location / {{ return 200 '{body}'; }}\n"
        "    }\n"
        "}\n"
    )


def nginx_proxy_conf(tmp: Path, name: str, port: int, upstream_port: int, workers: int) -> str:
    """nginx as a reverse proxy to the upstream, with upstream keep-alive."""
    return (
        _nginx_common(tmp, name, workers) + "    upstream legacy {\n"
        f"        server 127.0.0.1:{upstream_port};\n"
        "        keepalive 256;\n"
        "        keepalive_requests 100000000;\n"
        "    }\n"
        "    server {\n"
        f"        listen 127.0.0.1:{port};\n"
        "        location / {\n"
        "            proxy_pass http://legacy;\n"
        "            proxy_http_version 1.1;\n"
        '            proxy_set_header Connection "";\n'
        "        }\n"
        "    }\n"
        "}\n"
    )


def strangler_config(tmp: Path, port: int, admin_port: int, upstream_url: str) -> str:
    """A strangler config with one legacy-mode route in front of the upstream."""
    return (
        f"listen: 127.0.0.1:{port}\n"
        f"admin: {{listen: 127.0.0.1:{admin_port}}}\n"
        "backends:\n"
        f'  legacy: {{url: "{upstream_url}", timeout: 5s, connect_timeout: 500ms,'
        " max_connections: 200}\n"
        "default_backend: legacy\n"
        f'store: {{url: "sqlite+aiosqlite:///{tmp}/bench.db"}}\n'
        "routes:\n"
        "  - {name: bench, match: {path: /bench/*}, mode: legacy}\n"
    )


def probe_http(port: int, path: str, expect_size: int | None = BODY_SIZE) -> str | None:
    """GET `path` on the loopback `port`: None when it answers 200 (of the size), else why not."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2.0)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
    except OSError as exc:
        return f"GET {path}: {exc.__class__.__name__}: {exc}"
    except http.client.HTTPException as exc:
        return f"GET {path}: bad HTTP: {exc!r}"
    finally:
        conn.close()
    if response.status != 200:
        return f"GET {path}: status {response.status}"
    if expect_size is not None and len(body) != expect_size:
        return f"GET {path}: body of {len(body)} bytes, expected {expect_size}"
    return None


def _ready_or_fail(started: Started, probe: Callable[[], str | None], timeout_s: float) -> None:
    """Wait for `probe` to pass or raise TargetFailed with the reason."""
    reason = wait_ready(started, probe, timeout_s)
    if reason is not None:
        raise TargetFailed(reason)


def _nginx_binary() -> str:
    """The nginx executable (often in /usr/sbin, which may not be on PATH)."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise TargetFailed("nginx is not installed (apt-get install -y nginx-light)")
    return found


def start_nginx(
    processes: ProcessSet, tmp: Path, name: str, conf: str, port: int, cpu: int | None
) -> Started:
    """Start an nginx with `conf` (already holding `port`), wait until it serves PATH."""
    conf_path = tmp / f"{name}.conf"
    conf_path.write_text(conf)
    argv = [_nginx_binary(), "-p", str(tmp), "-e", str(tmp / f"{name}-error.log")]
    started = processes.start(name, [*argv, "-c", str(conf_path)], tmp / f"{name}.out", cpu=cpu)
    _ready_or_fail(started, lambda: probe_http(port, PATH), 10.0)
    return started


def _strangler_binary() -> Path:
    """The `strangler` console script next to the running interpreter."""
    return Path(sys.executable).parent / "strangler"


def _start_strangler(env: BenchEnv, name: str, workers: int) -> Running:
    """Start strangler in legacy mode with `workers` workers."""
    port, admin_port = free_port(), free_port()
    config = strangler_config(env.tmp, port, admin_port, env.upstream_url)
    started = start_strangler(env, name, config, workers, admin_port)
    _ready_or_fail(started, lambda: probe_http(port, PATH), 10.0)
    return Running(f"http://127.0.0.1:{port}{PATH}", started)


def start_strangler(
    env: BenchEnv, name: str, config: str, workers: int, admin_port: int
) -> Started:
    """Run `strangler serve` on the proxy CPU and wait for `GET /-/ready` on the admin port."""
    binary = _strangler_binary()
    if not binary.exists():
        raise TargetFailed(f"no strangler console script at {binary.name}")
    config_path = env.tmp / f"{name}.yaml"
    config_path.write_text(config)
    argv = [str(binary), "serve", "--config", str(config_path)]
    if workers > 1:
        argv += ["--workers", str(workers)]
    started = env.processes.start(
        name, argv, env.tmp / f"{name}.err", cpu=env.proxy_cpu, cwd=env.tmp, discard_stdout=True
    )
    _ready_or_fail(started, lambda: probe_http(admin_port, "/-/ready", None), 20.0)
    return started


def _start_minimal(env: BenchEnv) -> Running:
    """Start bench/minimal_proxy.py in front of the upstream."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.minimal_proxy", "--listen", f"127.0.0.1:{port}"]
    argv += ["--upstream", env.upstream_url]
    repo = Path(__file__).resolve().parent.parent
    started = env.processes.start(
        "minimal-aiohttp", argv, env.tmp / "minimal.out", cpu=env.proxy_cpu, cwd=repo
    )
    _ready_or_fail(started, lambda: probe_http(port, PATH), 15.0)
    return Running(f"http://127.0.0.1:{port}{PATH}", started)


def _start_nginx_proxy(env: BenchEnv, workers: int) -> Running:
    """Start nginx as a reverse proxy with `workers` workers."""
    port = free_port()
    upstream_port = int(env.upstream_url.rsplit(":", 1)[1])
    name = f"nginx-{workers}w"
    conf = nginx_proxy_conf(env.tmp, name, port, upstream_port, workers)
    started = start_nginx(env.processes, env.tmp, name, conf, port, env.proxy_cpu)
    return Running(f"http://127.0.0.1:{port}{PATH}", started)


def _direct(env: BenchEnv) -> Running:
    """wrk straight to the upstream; the upstream's own CPU is charged."""
    if env.upstream is None:
        raise TargetFailed("upstream not running")
    return Running(env.upstream_url + PATH, env.upstream)


def _start_mode(env: BenchEnv, name: str, mode: str) -> Running:
    """strangler in shadow or canary mode (bench/shadow_bench.py, imported when needed)."""
    from bench.shadow_bench import start_mode_target

    return start_mode_target(env, name, mode)


TARGETS: list[Target] = [
    Target("direct", "wrk straight to the nginx upstream", _direct),
    Target(
        "strangler-1w",
        "strangler serve, legacy mode, 1 worker",
        lambda e: _start_strangler(e, "strangler-1w", 1),
    ),
    Target(
        "strangler-2w",
        "strangler serve, legacy mode, 2 workers",
        lambda e: _start_strangler(e, "strangler-2w", 2),
    ),
    Target(
        "strangler-shadow",
        "strangler serve, shadow mode at 100 %, candidate = the same nginx, 1 worker",
        lambda e: _start_mode(e, "strangler-shadow", "shadow"),
    ),
    Target(
        "strangler-canary",
        "strangler serve, canary 50 % sticky on X-User-Id (varying per request), 1 worker",
        lambda e: _start_mode(e, "strangler-canary", "canary"),
    ),
    Target(
        "minimal-aiohttp", "bench/minimal_proxy.py (aiohttp server + ClientSession)", _start_minimal
    ),
    Target(
        "nginx-1w",
        "nginx proxy_pass with upstream keepalive, 1 worker",
        lambda e: _start_nginx_proxy(e, 1),
    ),
    Target(
        "nginx-2w",
        "nginx proxy_pass with upstream keepalive, 2 workers",
        lambda e: _start_nginx_proxy(e, 2),
    ),
]
