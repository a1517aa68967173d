"""Read-only commands pointed at a database that is not a strangler store write nothing to it:
`strangler report`, `strangler migrate status` and the dashboard say so and create nothing."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import aiohttp
import psycopg
import pytest
from click.testing import CliRunner, Result
from sqlalchemy.engine import make_url

from proxy.accesslog import AccessLog
from proxy.app import create_proxy
from proxy.cli import main
from proxy.settings import load
from shadow.store import Store, StoreError
from tests.integration.migrate.helpers import write_config
from tests.integration.proxy.conftest import proxy_config


def _foreign_sqlite(path: Path) -> None:
    """Another application's SQLite file: one table, the default (rollback) journal."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)")
        db.execute("INSERT INTO users (email) VALUES ('a@example.com')")
    db.close()


def _sqlite_state(path: Path) -> tuple[list[str], str]:
    """The file's tables and its journal mode."""
    db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master ORDER BY name")]
        return tables, str(db.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        db.close()


def _pg(url: str) -> tuple[str, str]:
    """A libpq DSN of the test database and the URL's private schema."""
    parsed = make_url(url)
    schema = str(parsed.query["options"]).rsplit("=", 1)[1]
    dsn = parsed.set(drivername="postgresql", query={}).render_as_string(hide_password=False)
    return dsn, schema


def _foreign_pg(url: str) -> str:
    """Fill the URL's schema with another application's table; the URL with a password."""
    dsn, schema = _pg(url)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE TABLE "{schema}".users (id BIGSERIAL PRIMARY KEY, email TEXT)')
    # trust authentication: the password is ignored, but it must never be printed
    return url.replace("postgres@", "postgres:hunter2@", 1)


def _pg_tables(url: str) -> list[str]:
    dsn, schema = _pg(url)
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1", (schema,)
        ).fetchall()
    return [r[0] for r in rows]


def _one_line_error(result: Result, prefix: str, *needles: str) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert lines[0].startswith(prefix), lines
    for needle in needles:
        assert needle in lines[0], lines
    return lines[0]


def _cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_report_on_another_apps_sqlite_file_exits_2_and_leaves_it_alone(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    _foreign_sqlite(path)
    before = _sqlite_state(path)
    result = _cli("report", "--store", f"sqlite:///{path}")
    _one_line_error(result, "strangler report: error: ", "not a strangler store", str(path))
    assert _sqlite_state(path) == before == (["users"], "delete")


def test_report_on_a_foreign_postgresql_database_exits_2_and_creates_nothing(
    pg_url: str,
) -> None:
    url = _foreign_pg(pg_url)
    result = _cli("report", "--store", url)
    line = _one_line_error(result, "strangler report: error: ", "not a strangler store", "***")
    assert "hunter2" not in line
    assert _pg_tables(pg_url) == ["users"]


def test_migrate_status_on_a_foreign_database_exits_2_and_creates_nothing(
    tmp_path: Path, pg_url: str
) -> None:
    config = write_config(tmp_path)
    path = tmp_path / "app.db"
    _foreign_sqlite(path)
    result = _cli("migrate", "status", "--config", config, "--store", f"sqlite:///{path}")
    _one_line_error(result, "strangler migrate: error: ", "not a strangler store", str(path))
    assert _sqlite_state(path) == (["users"], "delete")
    url = _foreign_pg(pg_url)
    for command in (("status",), ("advance", "order-show")):
        result = _cli("migrate", *command, "--config", config, "--store", url)
        line = _one_line_error(result, "strangler migrate: error: ", "not a strangler store")
        assert "hunter2" not in line
    assert _pg_tables(pg_url) == ["users"]


async def test_a_reader_never_creates_a_missing_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.db"
    with pytest.raises(StoreError, match="no such database file") as raised:
        await Store.open(f"sqlite:///{path}", create=False)
    assert not raised.value.transient
    assert not path.exists()


def test_one_rule_says_which_store_urls_name_a_local_sqlite_file(tmp_path: Path) -> None:
    """The store, the report, `migrate` and the dashboard all ask whether a URL names a
    SQLite file (which a reader must not create): one rule, `sqlite_file`."""
    from shadow.store import sqlite_file

    path = str(tmp_path / "s.db")
    assert sqlite_file(f"sqlite:///{path}") == path
    assert sqlite_file(f"sqlite+aiosqlite:///{path}") == path
    assert sqlite_file(make_url(f"sqlite:///{path}")) == path
    for url in (
        "sqlite://",
        "sqlite:///:memory:",
        f"sqlite:///file:{path}?mode=ro&uri=true",
        "postgresql://u@127.0.0.1/db",
        "::not a url::",
    ):
        assert sqlite_file(url) == "", url


def test_migrate_never_creates_a_missing_sqlite_file(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    path = tmp_path / "missing.db"
    result = _cli("migrate", "status", "--config", config, "--store", f"sqlite:///{path}")
    _one_line_error(result, "strangler migrate: error: ", "no such database file")
    assert not path.exists()


async def test_a_reader_opens_a_store_the_proxy_created(tmp_path: Path, pg_url: str) -> None:
    for url in (f"sqlite:///{tmp_path / 'store.db'}", pg_url):
        async with Store(url) as store:
            await store.record_route_change(route="r", to_mode="shadow")
        reader = await Store.open(url, create=False)
        try:
            assert [c.route for c in await reader.route_changes()] == ["r"]
        finally:
            await reader.close()


async def test_the_dashboard_of_a_supervisor_reads_a_foreign_file_without_touching_it(
    tmp_path: Path,
) -> None:
    """The admin-only process (the supervisor of `--workers`) opens the store itself."""
    path = tmp_path / "app.db"
    _foreign_sqlite(path)
    config = tmp_path / "routes.yaml"
    config.write_text(
        proxy_config("http://127.0.0.1:9", store_url=f"sqlite+aiosqlite:///{path}"),
        encoding="utf-8",
    )
    proxy = create_proxy(load(str(config)), access_log=AccessLog(enabled=False), data_plane=False)
    await proxy.start()
    try:
        host, port = proxy.admin_address
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"http://{host}:{port}/-/api/overview") as r,
        ):
            body = await r.json()
        assert r.status == 200
        assert body["store"]["ok"] is False
        assert "not a strangler store" in body["store"]["error"]
    finally:
        await proxy.stop(1.0)
    assert await asyncio.to_thread(_sqlite_state, path) == (["users"], "delete")
