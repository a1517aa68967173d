"""A synthetic comparison data set with exactly known counts, paths and latencies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shadow.record import ComparisonRecord, DiffExample, Outcome

__all__ = ["BASE", "LIST", "SHOW", "synthetic"]

BASE = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
SHOW = "order-show"
LIST = "order-list"

MISMATCH = frozenset(range(0, 990, 27))  # 37 indexes: 0, 27, ..., 972
ERROR = frozenset(range(13, 960, 80))  # 12 indexes: 13, 93, ..., 893
TIMEOUT = frozenset({41, 541, 941})
SKIPPED = frozenset({3, 303, 603, 703, 803})
DROPPED = frozenset({7, 707})


def _outcome(i: int) -> Outcome:
    for indexes, outcome in (
        (MISMATCH, "mismatch"),
        (ERROR, "candidate_error"),
        (TIMEOUT, "candidate_timeout"),
        (SKIPPED, "skipped"),
        (DROPPED, "dropped"),
    ):
        if i in indexes:
            return outcome  # type: ignore[return-value]
    return "match"


def _show(i: int) -> ComparisonRecord:
    outcome = _outcome(i)
    primary = float(i % 100 + 1)
    paths: tuple[str, ...] = ()
    examples: tuple[DiffExample, ...] = ()
    if outcome == "mismatch":
        paths = ("$.items[*].price",)
        examples = (DiffExample("$.items[*].price", f"$.items[{i % 3}].price", str(i), i),)
        if i < 270:  # the first ten mismatches also differ in the total
            paths += ("$.total",)
            examples += (DiffExample("$.total", "$.total", i, None),)
    candidate: float | None = primary * 1.2
    if outcome in ("skipped", "dropped"):
        primary_ms: float | None = None if outcome == "dropped" else primary
        candidate = None
    else:
        primary_ms = primary
    if outcome == "candidate_timeout":
        candidate = 2000.0
    return ComparisonRecord(
        route=SHOW,
        outcome=outcome,
        time=BASE + timedelta(seconds=7.2 * i),
        method="GET",
        path="/api/v1/orders/{order_id}",
        request_path=f"/api/v1/orders/{i}",
        status_primary=200,
        # a skipped (or dropped) copy was not sent: no candidate answer
        status_candidate=(
            500 if outcome == "candidate_error" else None if candidate is None else 200
        ),
        latency_primary_ms=primary_ms,
        latency_candidate_ms=candidate,
        diff_paths=paths,
        diff_examples=examples,
        noise=("$.meta.generated_at",) if i % 50 == 0 else (),
        primary_body=b'{"total": 1}' if outcome == "mismatch" else None,
        candidate_body=b'{"total": null}' if outcome == "mismatch" else None,
        request_id=f"req-{i}",
        mode="shadow",
        config_version="v1",
    )


def _list(j: int) -> ComparisonRecord:
    return ComparisonRecord(
        route=LIST,
        outcome="match",
        time=BASE + timedelta(seconds=36 * j),
        method="GET",
        path="/api/v1/orders",
        request_path="/api/v1/orders",
        status_primary=200,
        status_candidate=200,
        latency_primary_ms=5.0 + j % 10,
        latency_candidate_ms=5.0 + j % 10,
        request_id=f"list-{j}",
    )


def synthetic() -> list[ComparisonRecord]:
    """1,000 order-show records (941 match, 37 mismatch, 12 error, 3 timeout, 5 skipped,
    2 dropped) and 200 order-list matches, spread over two hours from BASE."""
    sets = [MISMATCH, ERROR, TIMEOUT, SKIPPED, DROPPED]
    assert sum(len(s) for s in sets) == len(frozenset().union(*sets)), "index sets overlap"
    return [_show(i) for i in range(1000)] + [_list(j) for j in range(200)]
