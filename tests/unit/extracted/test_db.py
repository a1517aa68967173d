"""Which database failures the Order apps answer with 503."""

from __future__ import annotations

from sqlalchemy import exc as sa_exc

from extracted.db import is_unavailable


def test_outages_are_unavailable_but_bugs_are_not() -> None:
    lost = sa_exc.OperationalError("SELECT 1", {}, Exception("server closed the connection"))
    invalidated = sa_exc.DBAPIError("SELECT 1", {}, Exception("gone"), connection_invalidated=True)
    assert is_unavailable(lost)
    assert is_unavailable(invalidated)
    assert is_unavailable(sa_exc.TimeoutError("pool exhausted"))
    assert not is_unavailable(sa_exc.IntegrityError("INSERT", {}, Exception("duplicate")))
    assert not is_unavailable(ValueError("bug"))
