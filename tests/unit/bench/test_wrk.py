"""Parsing wrk's --latency output."""

from __future__ import annotations

import pytest

from bench.wrk import WrkError, parse_latency_ms, parse_wrk_output

_SAMPLE = """\
Running 1s test @ http://127.0.0.1:40001/bench/x
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   740.12us  312.50us   8.79ms   93.10%
    Req/Sec    25.60k     1.20k   27.00k    80.00%
  Latency Distribution
     50%  698.00us
     75%  801.00us
     90%    1.02ms
     99%    1.50ms
  50845 requests in 1.00s, 58.30MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 7
Requests/sec:  50845.12
Transfer/sec:     58.30MB
"""


def test_parses_throughput_percentiles_and_errors() -> None:
    result = parse_wrk_output(_SAMPLE)
    assert result.requests == 50845
    assert result.duration_s == pytest.approx(1.0)
    assert result.rps == pytest.approx(50845.12)
    assert result.p50_ms == pytest.approx(0.698)
    assert result.p99_ms == pytest.approx(1.5)
    assert result.socket_errors == 5
    assert result.non_2xx == 7
    assert result.errors == 12


def test_clean_run_has_no_errors() -> None:
    text = _SAMPLE.replace("  Socket errors: connect 0, read 3, write 0, timeout 2\n", "")
    text = text.replace("  Non-2xx or 3xx responses: 7\n", "")
    assert parse_wrk_output(text).errors == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [("45.00us", 0.045), ("1.20ms", 1.2), ("2.00s", 2000.0), ("1.50m", 90_000.0)],
)
def test_latency_units(text: str, expected: float) -> None:
    assert parse_latency_ms(text) == pytest.approx(expected)


def test_unreadable_latency_is_an_error() -> None:
    with pytest.raises(WrkError):
        parse_latency_ms("fast")


def test_output_without_latency_distribution_is_an_error() -> None:
    with pytest.raises(WrkError):
        parse_wrk_output(_SAMPLE.split("  Latency Distribution")[0])
