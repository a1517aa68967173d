"""Locust CSV stats to the per-endpoint summary."""

from __future__ import annotations

from loadtests.summary import format_summary, parse_stats

_CSV = (
    "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,"
    "Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,"
    "50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%\n"
    "GET,/api/v1/orders/[id],264,0,10,17.1,2.0,351.2,900,13.9,0.0,10,14,19,23,44,66,95,120,"
    "350,350,350\n"
    "POST,/api/v1/orders,63,2,16,26.0,5.4,93.9,780,3.3,0.1,16,22,35,46,66,81,92,94,94,94,94\n"
    ",Aggregated,327,2,12,20.0,2.0,351.2,880,17.2,0.1,12,15,20,25,59,83,110,140,350,350,350\n"
)


def test_rows_are_parsed_with_the_total_last() -> None:
    rows = parse_stats(_CSV)
    assert [r.name for r in rows] == ["/api/v1/orders", "/api/v1/orders/[id]", "Aggregated"]
    total = rows[-1]
    assert total.aggregated and total.requests == 327 and total.failures == 2
    show = rows[1]
    assert (show.method, show.p50, show.p95, show.p99) == ("GET", 10.0, 66.0, 120.0)
    assert round(show.rps, 1) == 13.9


def test_na_percentiles_of_an_endpoint_without_answers_read_as_zero() -> None:
    header = _CSV.splitlines()[0]
    rows = parse_stats(
        header + "\nGET,/x,0,0,0,0,0,0,0,0,0,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A\n"
    )
    assert rows[0].p99 == 0.0 and rows[0].requests == 0


def test_summary_table_has_one_aligned_line_per_endpoint() -> None:
    text = format_summary(parse_stats(_CSV))
    lines = text.splitlines()
    assert lines[0].split() == ["endpoint", "reqs", "fails", "rps", "p50", "p95", "p99", "max"]
    assert lines[2].startswith("POST /api/v1/orders ")
    assert lines[-1].split() == ["Aggregated", "327", "2", "17.2", "12", "83", "140", "351"]
    assert len({len(line) for line in lines}) == 1
