"""Shared test fixtures: loopback ports and an isolated PostgreSQL schema per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from tests.demo_run import DemoRun, run_demo_once
from tests.support import free_port

PG_URL_ENV = "STRANGLER_TEST_PG_URL"
PG_URL_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def pg_base_url() -> str:
    """The PostgreSQL URL tests use (SQLAlchemy form)."""
    return os.environ.get(PG_URL_ENV, PG_URL_DEFAULT)


def _libpq_dsn(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A SQLAlchemy URL whose connections live in a fresh, private schema (dropped after)."""
    import psycopg

    base = pg_base_url()
    try:
        conn = psycopg.connect(_libpq_dsn(base), autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL unreachable at {base} ({exc}). Start it, or point {PG_URL_ENV} at one:"
            " pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
            pytrace=False,
        )
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        sep = "&" if "?" in base else "?"
        try:
            yield f"{base}{sep}options=-csearch_path%3D{schema}"
        finally:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def sqlite_url(tmp_path: os.PathLike[str]) -> str:
    """A SQLAlchemy URL of a fresh SQLite file."""
    return f"sqlite+aiosqlite:///{os.path.join(tmp_path, 'test.db')}"


@pytest.fixture
def port() -> int:
    """A free loopback TCP port."""
    return free_port()


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """One `strangler demo` (what `make demo` runs) for the session; see tests/demo_run.py."""
    return run_demo_once(tmp_path_factory.mktemp("demo-run"))
