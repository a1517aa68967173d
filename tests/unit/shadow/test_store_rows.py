"""Rows of the embedded store's fast insert: the same values SQLAlchemy would have stored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from shadow.record import ComparisonRecord
from shadow.store import _row_values, _sqlite_row, _sqlite_time


def _reference(value: datetime) -> str:
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(" ", "microseconds")


@given(
    st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5)), UTC]),
    )
)
def test_time_text_matches_the_datetime_types_text(value: datetime) -> None:
    assert _sqlite_time(value) == _reference(value)


def test_time_text_of_naive_and_consecutive_values() -> None:
    base = datetime(2026, 11, 26, 20, 0, 59, 999_999, tzinfo=UTC)
    assert _sqlite_time(base) == "2026-11-26 20:00:59.999999"
    assert _sqlite_time(base + timedelta(microseconds=1)) == "2026-11-26 20:01:00.000000"
    assert _sqlite_time(base - timedelta(days=1)) == "2026-11-25 20:00:59.999999"
    assert _sqlite_time(datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02 03:04:05.000000"


_texts = st.text(alphabet="ab\x00é/", max_size=6)


@given(
    _texts,
    _texts,
    st.text(alphabet="ab\x00", max_size=200),
    st.one_of(st.none(), st.binary(max_size=4), _texts),
    st.one_of(st.none(), st.binary(max_size=4), _texts),
    st.lists(_texts, max_size=3).map(tuple),
    st.lists(_texts, max_size=2).map(tuple),
)
def test_a_row_is_the_rows_values_with_the_time_as_text(
    request_path: str,
    detail: str,
    request_id: str,
    primary: bytes | str | None,
    candidate: bytes | str | None,
    diff_paths: tuple[str, ...],
    noise: tuple[str, ...],
) -> None:
    rec = ComparisonRecord(
        route="r",
        outcome="mismatch",
        request_path=request_path,
        status_primary=200,
        latency_candidate_ms=1.5,
        diff_paths=diff_paths,
        noise=noise,
        primary_body=primary,
        candidate_body=candidate,
        detail=detail,
        request_id=request_id,
        config_version="v",
    )
    values = _row_values(rec)
    assert _sqlite_row(rec) == (_sqlite_time(values[0]), *values[1:])
