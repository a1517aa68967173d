"""The outcome rules shared by shadow mode and replay."""

from __future__ import annotations

import gc
import json
import math
import tracemalloc
from datetime import UTC

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shadow.compare import CompareRules
from shadow.http_compare import HttpResponse
from shadow.record import ComparisonRecord
from shadow.redact import Redactor
from shadow.verdict import Verdict, _ms, build_record, judge

JSON = [("content-type", "application/json")]


def _resp(status: int, body: bytes) -> HttpResponse:
    return HttpResponse(status, JSON, body)


def _record(
    redactor: Redactor,
    legacy: HttpResponse,
    candidate: HttpResponse,
    request_path: str,
    ms: tuple[float, float],
) -> ComparisonRecord:
    """The record of one comparison of `legacy` with `candidate` (default rules)."""
    return build_record(
        redactor,
        judge(legacy, candidate, None, CompareRules(), ()),
        route="r",
        method="GET",
        path_template="/o/{id}",
        request_path=request_path,
        legacy=legacy,
        candidate=candidate,
        legacy_ms=ms[0],
        candidate_ms=ms[1],
        request_id="rid",
        mode="shadow",
        config_version="v",
    )


def test_outcomes() -> None:
    rules = CompareRules()
    legacy = _resp(200, b'{"a": 1, "t": "x"}')
    assert judge(legacy, _resp(200, b'{"a": 1, "t": "x"}'), None, rules, ()).outcome == "match"
    assert judge(legacy, _resp(200, b'{"a": 2, "t": "x"}'), None, rules, ()).outcome == "mismatch"
    assert judge(legacy, _resp(503, b"{}"), None, rules, ()).outcome == "candidate_error"
    assert judge(_resp(503, b"{}"), _resp(503, b"{}"), None, rules, ()).outcome == "match"
    assert judge(legacy, None, "timeout", rules, ()).outcome == "candidate_timeout"
    assert judge(legacy, None, "connection reset", rules, ()).outcome == "candidate_error"


def test_noise_baseline_cancels_paths_that_differ_between_legacy_answers() -> None:
    rules = CompareRules()
    legacy = _resp(200, b'{"a": 1, "t": "x"}')
    again = _resp(200, b'{"a": 1, "t": "y"}')
    verdict = judge(legacy, _resp(200, b'{"a": 1, "t": "z"}'), None, rules, (), baseline=again)
    assert verdict.outcome == "match"
    assert verdict.noise == frozenset({"$.t"})


@pytest.mark.parametrize(
    "again",
    [
        HttpResponse(503, [("content-type", "text/html")], b"<h1>busy</h1>"),
        _resp(200, b"[1, 2]"),  # another type at the root
    ],
)
def test_a_baseline_unlike_the_first_answer_cancels_nothing(again: HttpResponse) -> None:
    """A legacy hiccup on the second call cancelled every difference ($ and status): a
    candidate answering 404 to a 200 was recorded as a match."""
    legacy = _resp(200, b'{"a": 1}')
    verdict = judge(legacy, _resp(404, b'{"error": "x"}'), None, CompareRules(), (), baseline=again)
    assert verdict.outcome == "mismatch" and verdict.noise == frozenset()
    verdict = judge(legacy, _resp(200, b"[5]"), None, CompareRules(), (), baseline=again)
    assert verdict.outcome == "mismatch" and verdict.noise == frozenset()


def test_a_noisy_array_length_cancels_presence_only_not_the_fields_of_elements() -> None:
    """A list that grew between the two legacy calls made `$.items[*]` noise, which
    cancelled every difference inside every element: a wrong price was a match."""
    legacy = _resp(200, b'{"items": [{"id": 1, "price": 5}]}')
    again = _resp(200, b'{"items": [{"id": 1, "price": 5}, {"id": 2, "price": 6}]}')
    wrong = _resp(200, b'{"items": [{"id": 1, "price": 7}]}')
    verdict = judge(legacy, wrong, None, CompareRules(), (), baseline=again)
    assert verdict.outcome == "mismatch"
    assert verdict.comparison is not None
    assert [d.path for d in verdict.comparison.differences] == ["$.items[0].price"]
    # an element more or fewer is what the baseline showed to be noise
    longer = _resp(200, b'{"items": [{"id": 1, "price": 5}, {"id": 3, "price": 1}]}')
    verdict = judge(legacy, longer, None, CompareRules(), (), baseline=again)
    assert verdict.outcome == "match" and verdict.noise == frozenset({"$.items[*]"})
    # a member present in one legacy answer only: its presence is noise, not its content
    legacy = _resp(200, b'{"a": 1, "debug": {"host": "a"}}')
    again = _resp(200, b'{"a": 1}')
    other = _resp(200, b'{"a": 1, "debug": {"host": "b"}}')
    verdict = judge(legacy, other, None, CompareRules(), (), baseline=again)
    assert verdict.outcome == "mismatch"
    assert judge(legacy, again, None, CompareRules(), (), baseline=again).outcome == "match"


def test_a_value_null_in_one_legacy_answer_cancels_only_its_shape() -> None:
    """`{"data": null}` from one legacy call made `$.data` noise, which cancelled every
    difference inside the candidate's `data` object: a wrong total was a match."""
    legacy = _resp(200, b'{"data": {"total": 5, "n": 1}}')
    again = _resp(200, b'{"data": null}')
    wrong = _resp(200, b'{"data": {"total": 7, "n": 1}}')
    verdict = judge(legacy, wrong, None, CompareRules(), (), baseline=again)
    assert verdict.outcome == "mismatch"
    assert verdict.comparison is not None
    assert [d.path for d in verdict.comparison.differences] == ["$.data.total"]
    # null, or any other shape, at `$.data` is what the baseline showed to vary
    for other in (b'{"data": null}', b'{"data": []}', b"{}"):
        verdict = judge(legacy, _resp(200, other), None, CompareRules(), (), baseline=again)
        assert verdict.outcome == "match" and verdict.noise == frozenset({"$.data"})
    # a scalar whose type varies is a noisy value like any other
    legacy, again = _resp(200, b'{"v": 1}'), _resp(200, b'{"v": "1"}')
    assert (
        judge(legacy, _resp(200, b'{"v": 2}'), None, CompareRules(), (), baseline=again).outcome
        == "match"
    )


def test_secrets_in_a_stored_request_path_or_location_are_masked() -> None:
    """A reset token or password in the query was stored as sent: the detectors look for
    personal data only, so the store (and the reports) showed a working credential."""
    red = Redactor(key=b"k")
    legacy = HttpResponse(302, [("Location", "/login?token=s3cr3t-legacy")])
    candidate = HttpResponse(302, [("Location", "/login?token=s3cr3t-candidate")])
    rec = _record(red, legacy, candidate, "/reset?token=s3cr3t-path&password=hunter2", (1, 1))
    stored = repr(rec)
    for secret in ("s3cr3t-legacy", "s3cr3t-candidate", "s3cr3t-path", "hunter2"):
        assert secret not in stored
    assert rec.request_path == "/reset?token=***&password=***"
    assert [e.path for e in rec.diff_examples] == ["headers.location"]


def test_record_is_redacted_and_keeps_bodies_only_for_mismatches() -> None:
    red = Redactor(key=b"k")
    legacy = _resp(200, b'{"email": "ann@example.com", "total": "1.00"}')
    cand = _resp(200, b'{"email": "ann@example.com", "total": "1.01"}')
    rec = _record(red, legacy, cand, "/o/1?email=ann@example.com", (1.23449, 2.0006))
    assert rec.outcome == "mismatch" and rec.diff_paths == ("$.total",)
    assert (rec.latency_primary_ms, rec.latency_candidate_ms) == (1.234, 2.001)  # to the us
    assert rec.detail == ""
    assert b"ann@example.com" not in (rec.primary_body or b"")
    assert "ann@example.com" not in rec.request_path
    same = judge(legacy, legacy, None, CompareRules(), ())
    kept = build_record(
        red,
        same,
        route="r",
        method="GET",
        path_template="/o",
        request_path="/o",
        legacy=legacy,
        candidate=legacy,
        legacy_ms=None,
        candidate_ms=None,
        request_id="",
        mode="replay",
        config_version="v",
    )
    assert kept.primary_body is None and kept.candidate_body is None
    assert kept.latency_primary_ms is None and kept.latency_candidate_ms is None


def test_stored_latencies_are_rounded_to_the_microsecond_like_round() -> None:
    # the fast rounding path must store what round(x, 3) would, apart from exact halves
    for ms in (0.0, 0.0004, 0.0006, 1.23449, 2.0006, 999.9996, 12345.6789):
        assert _ms(ms) == round(ms, 3), ms
    for odd in (-1.2345, 1e12 + 0.5):
        assert _ms(odd) == round(odd, 3)
    assert math.isnan(_ms(math.nan) or 0.0) and _ms(math.inf) == math.inf
    assert _ms(None) is None


def test_build_record_makes_the_record_the_dataclass_would() -> None:
    red = Redactor(key=b"k")
    legacy = _resp(200, b'{"a": 1}')
    args = {
        "route": "r",
        "method": "GET",
        "path_template": "/o",
        "request_path": "/o",
        "legacy": legacy,
        "candidate": legacy,
        "legacy_ms": 1.5,
        "candidate_ms": 2.5,
        "request_id": "rid",
        "mode": "shadow",
        "config_version": "v",
    }
    rec = build_record(red, judge(legacy, legacy, None, CompareRules(), ()), **args)  # type: ignore[arg-type]
    assert rec == ComparisonRecord(
        route="r",
        outcome="match",
        time=rec.time,
        path="/o",
        request_path="/o",
        status_primary=200,
        status_candidate=200,
        latency_primary_ms=1.5,
        latency_candidate_ms=2.5,
        request_id="rid",
        config_version="v",
    )
    assert rec.time.tzinfo is UTC
    with pytest.raises(ValueError, match="unknown outcome"):  # still validated
        build_record(red, Verdict("bogus"), **args)  # type: ignore[arg-type]


def test_personal_data_in_object_keys_is_redacted_in_paths() -> None:
    """Balances keyed by e-mail: the stored bodies had the keys redacted, the differing paths
    (stored, reported and used as metric labels) did not."""
    redactor = Redactor(key=b"k")
    legacy = _resp(200, b'{"balances": {"ann.buyer@example.com": 10}}')
    candidate = _resp(200, b'{"balances": {"ann.buyer@example.com": 11}}')
    record = _record(redactor, legacy, candidate, "/x", (1.0, 1.0))
    shown = [*record.diff_paths, *(e.pattern for e in record.diff_examples)]
    shown += [e.path for e in record.diff_examples]
    assert shown and all("ann.buyer" not in p and "REDACTED:" in p for p in shown)


def test_a_large_differing_value_keeps_a_short_example_not_the_whole_value() -> None:
    """A candidate adding a large array (750 KB) kept the whole decoded array in its record (about
    6 MB of objects while buffered: 10,000 buffered mismatches through a store outage were
    60 GB) and stored it whole in the example, past the 64 KiB cap of the bodies."""
    items = [{"id": i, "name": f"item {i}", "tags": ["a", "b"]} for i in range(3_000)]
    legacy = _resp(200, b'{"order": 1, "note": "short"}')
    body = orjson.dumps({"order": 1, "items": items, "note": "x" * 10_000})
    candidate = _resp(200, body[:-1] + b',"n":' + str(10**30).encode() + b"}")
    redactor = Redactor(key=b"k" * 32)
    tracemalloc.start()
    try:
        records = [_record(redactor, legacy, candidate, "/o/1", (1.0, 2.0)) for _ in range(3)]
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held / len(records) < 250_000  # the capped bodies and examples, not the array
    examples = {e.pattern: e for e in records[0].diff_examples}
    added, note = examples["$.items"], examples["$.note"]
    assert added.primary is None and isinstance(added.candidate, str)
    assert added.candidate.startswith('[{"id":0,"name":"item 0"') and added.candidate.endswith("…")
    assert len(note.candidate) == 2049 and note.candidate.endswith("…")
    assert note.primary == "short"  # small values stay as they are
    assert examples["$.n"].candidate == 10**30  # an integer still: the store writes it exactly
    for example in records[0].diff_examples:
        assert len(json.dumps(example.to_json())) < 4 * 2048


def test_an_integer_past_64_bits_and_its_digits_as_a_string_have_different_examples() -> None:
    # Wide integers were turned into their digits in the example, so a type change from
    # 2**70 to "1180591620717411303424" showed the same text on both sides.
    legacy = _resp(200, b'{"id": 1180591620717411303424}')
    candidate = _resp(200, b'{"id": "1180591620717411303424"}')
    record = _record(Redactor(key=b"k" * 32), legacy, candidate, "/o/1", (1.0, 2.0))
    (example,) = record.diff_examples
    assert (example.primary, example.candidate) == (2**70, "1180591620717411303424")


@given(
    st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
    st.one_of(st.none(), st.floats(min_value=-1.0, max_value=2e9)),
)
def test_stored_latencies_are_rounded_as_ms_rounds_them(
    legacy_ms: float | None, candidate_ms: float | None
) -> None:
    rec = build_record(
        Redactor(key=b"k"),
        Verdict("match"),
        route="r",
        method="GET",
        path_template="/p",
        request_path="/p",
        legacy=None,
        candidate=None,
        legacy_ms=legacy_ms,
        candidate_ms=candidate_ms,
        request_id="",
        mode="shadow",
        config_version="",
    )
    for got, want in (
        (rec.latency_primary_ms, _ms(legacy_ms)),
        (rec.latency_candidate_ms, _ms(candidate_ms)),
    ):
        assert got == want or (got != got and want != want)  # nan stays nan
