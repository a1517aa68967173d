"""Unit tests of Diffy-style noise cancellation."""

from __future__ import annotations

import orjson

from shadow.compare import CompareRules, compare
from shadow.http_compare import HttpResponse, compare_responses
from shadow.noise import cancel_noise, noise_patterns, response_noise_patterns


def _order(token: str, at: str, total: float) -> dict[str, object]:
    return {
        "id": 1,
        "request_token": token,
        "events": [{"type": "created", "at": at}, {"type": "paid", "at": at}],
        "total": total,
    }


def test_a_field_random_per_call_is_noise_not_mismatch() -> None:
    first, second = _order("r1", "10:00:01", 10.0), _order("r2", "10:00:02", 10.0)
    noise = noise_patterns(first, second)
    assert noise == {"$.request_token", "$.events[*].at"}

    candidate = _order("c9", "10:00:03", 10.0)
    raw = compare(first, candidate)
    assert not raw.equal
    cleaned, hits = cancel_noise(raw, noise)
    assert cleaned.equal
    assert hits == noise


def test_real_mismatches_survive_noise_cancellation() -> None:
    first, second = _order("r1", "t1", 10.0), _order("r2", "t1", 10.0)
    candidate = _order("c9", "t1", 11.0)
    cleaned, hits = cancel_noise(compare(first, candidate), noise_patterns(first, second))
    assert [d.path for d in cleaned.differences] == ["$.total"]
    assert not cleaned.equal
    assert hits == {"$.request_token"}


def test_rules_apply_to_the_baseline_too() -> None:
    rules = CompareRules(ignore_json_paths=["$.request_token"])
    assert noise_patterns(_order("a", "t", 1.0), _order("b", "t", 1.0), rules) == frozenset()


def test_noise_over_whole_responses() -> None:
    def legacy(token: str, date: str) -> HttpResponse:
        body = orjson.dumps({"token": token, "v": 1})
        return HttpResponse(200, [("content-type", "application/json"), ("etag", date)], body)

    noise = response_noise_patterns(legacy("a", "1"), legacy("b", "2"))
    assert noise == {"$.token"}
    candidate = HttpResponse(
        200, [("content-type", "application/json")], orjson.dumps({"token": "z", "v": 2})
    )
    cleaned, hits = cancel_noise(compare_responses(legacy("a", "1"), candidate), noise)
    assert [d.path for d in cleaned.differences] == ["$.v"]
    assert hits == {"$.token"}
