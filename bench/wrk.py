"""Running wrk for one short slice and parsing what it prints."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["WrkError", "WrkResult", "parse_latency_ms", "parse_wrk_output", "run_wrk"]

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_LATENCY = re.compile(r"^\s*([0-9.]+)\s*(us|ms|s|m|h)\s*$")
_PERCENTILE = re.compile(r"^\s*(50|75|90|99)(?:\.0+)?%\s+(\S+)\s*$", re.M)
_REQUESTS = re.compile(r"^\s*(\d+) requests in ([0-9.]+)(us|ms|s|m|h)", re.M)
_RPS = re.compile(r"^Requests/sec:\s+([0-9.]+)", re.M)
_SOCKET_ERRORS = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", re.M
)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)", re.M)


class WrkError(Exception):
    """wrk could not run, or printed something we cannot read."""


@dataclass(frozen=True, slots=True)
class WrkResult:
    """One wrk slice: throughput, latency percentiles and error counts."""

    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p99_ms: float
    socket_errors: int
    non_2xx: int

    @property
    def errors(self) -> int:
        """Socket errors plus non-2xx/3xx responses."""
        return self.socket_errors + self.non_2xx


def parse_latency_ms(text: str) -> float:
    """A wrk latency such as `45.00us`, `1.20ms` or `2.00s`, in milliseconds."""
    match = _LATENCY.match(text)
    if match is None:
        raise WrkError(f"unreadable latency {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk_output(text: str) -> WrkResult:
    """Read the output of `wrk --latency` into a WrkResult."""
    percentiles = {int(p): parse_latency_ms(v) for p, v in _PERCENTILE.findall(text)}
    requests = _REQUESTS.search(text)
    rps = _RPS.search(text)
    if requests is None or rps is None or 50 not in percentiles or 99 not in percentiles:
        raise WrkError("wrk output without requests, Requests/sec or latency distribution")
    socket = _SOCKET_ERRORS.search(text)
    non_2xx = _NON_2XX.search(text)
    return WrkResult(
        requests=int(requests.group(1)),
        duration_s=parse_latency_ms(requests.group(2) + requests.group(3)) / 1000.0,
        rps=float(rps.group(1)),
        p50_ms=percentiles[50],
        p99_ms=percentiles[99],
        socket_errors=sum(int(n) for n in socket.groups()) if socket else 0,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


def run_wrk(
    url: str, connections: int, seconds: int, cpu: int | None = None, script: Path | None = None
) -> WrkResult:
    """Run wrk against `url` for `seconds` (1 thread for 1 connection, else 2), pinned to `cpu`.

    `script` is a wrk Lua script, e.g. one whose `delay()` paces each connection for a
    fixed request rate (rate ~= connections * 1000 / delay_ms).
    """
    wrk = shutil.which("wrk")
    if wrk is None:
        raise WrkError("wrk is not installed (apt-get install -y wrk)")
    threads = 1 if connections < 2 else 2
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if script is not None:
        argv[1:1] = ["-s", str(script)]
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=seconds + 15, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise WrkError(f"wrk did not finish within {seconds + 15}s") from exc
    if done.returncode != 0:
        raise WrkError(f"wrk exited {done.returncode}: {done.stderr.strip()[-300:]}")
    return parse_wrk_output(done.stdout)
