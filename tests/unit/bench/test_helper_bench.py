"""The helper bench section end to end: a real shadow helper, a loopback upstream, SQLite."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bench.helper_bench import helper_config, run_section
from bench.procs import ProcessSet
from bench.sections import SectionContext
from bench.targets import BenchEnv
from proxy.routes import offload_wanted
from proxy.settings import loads

_BODY = b'{"order": "x"}'


class _Answer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the helper's pool expects

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(_BODY)))
        self.end_headers()
        self.wfile.write(_BODY)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the helper opens up to 64 connections at once (default: 5)


@pytest.fixture
def upstream() -> Iterator[str]:
    server = _Server(("127.0.0.1", 0), _Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_helper_config_is_a_valid_offload_config(tmp_path: Path) -> None:
    settings = loads(helper_config("http://127.0.0.1:4321", tmp_path / "h.db"))
    (route,) = settings.routes
    assert offload_wanted(settings)  # by default: a shadow route with URL backends
    assert route.mode == "shadow" and route.candidate == "candidate"
    assert route.shadow.percent == 100.0
    assert settings.store.url.endswith("/h.db")


def test_every_copy_handed_over_is_compared_and_stored(tmp_path: Path, upstream: str) -> None:
    with ProcessSet() as processes:
        env = BenchEnv(tmp_path, processes, upstream, proxy_cpu=None, load_cpu=None)
        result = run_section(SectionContext(env=env, rounds=1, slice_s=1, quick=True))
    (row,) = result.rows
    assert row["copies"] == 3_000 and row["rounds"] == 1
    assert row["stored"] == row["match"] == 3_000
    assert isinstance(row["cpu_us_per_copy"], float) and row["cpu_us_per_copy"] > 0
