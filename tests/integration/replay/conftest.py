"""Fixtures for the replay integration tests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(params=["sqlite", "pg"])
def store_url(request: pytest.FixtureRequest, tmp_path: os.PathLike[str]) -> str:
    """A fresh store URL, once on SQLite and once on PostgreSQL (private schema)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{os.path.join(tmp_path, 'store.db')}"
    url: str = request.getfixturevalue("pg_url")
    return url
