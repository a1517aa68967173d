"""Rows of the embedded store's fast insert: the same text SQLAlchemy would have stored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from shadow.store import _sqlite_time


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
