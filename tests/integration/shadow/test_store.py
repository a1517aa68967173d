"""The comparison store on real SQLite and PostgreSQL: schema, migrations, writes, audit log."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from sqlalchemy import select, text

from shadow.migrations import migrations
from shadow.record import ComparisonRecord, DiffExample
from shadow.store import (
    SCHEMA_VERSION,
    Store,
    StoreError,
    comparison_paths,
    comparisons,
    metadata,
    normalize_url,
    shadow_drops,
)
from tests.support import free_port

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def _mismatch(i: int = 0, route: str = "order-show") -> ComparisonRecord:
    return ComparisonRecord(
        route=route,
        outcome="mismatch",
        time=T0 + timedelta(seconds=i),
        path="/api/v1/orders/{order_id}",
        request_path=f"/api/v1/orders/{i}",
        status_primary=200,
        status_candidate=200,
        latency_primary_ms=1.5,
        latency_candidate_ms=2.5,
        diff_paths=("$.items[*].price", "$.total", "$.items[*].price"),
        diff_examples=(DiffExample("$.items[*].price", "$.items[1].price", "1.00", 1.0),),
        noise=("$.meta.generated_at",),
        primary_body='{"total": "1.00"}',
        candidate_body=b'{"total": 1.0}',
        request_id=f"r{i}",
        config_version="abc123",
    )


async def test_init_is_idempotent_and_versioned(store_url: str) -> None:
    async with Store(store_url) as store:
        await store.init()
        assert await store.schema_version() == SCHEMA_VERSION
        assert await store.count() == 0
    async with Store(store_url) as again:  # a restart migrates nothing twice
        assert await again.schema_version() == SCHEMA_VERSION


async def test_pg_schema_lives_in_the_search_path_schema_and_matches_the_tables(
    pg_url: str,
) -> None:
    async with Store(pg_url) as store, store.engine.connect() as conn:
        schema = await conn.scalar(text("SELECT current_schema()"))
        assert schema is not None and schema.startswith("t_")
        found = await conn.execute(
            text(
                "SELECT table_name, column_name FROM information_schema.columns"
                " WHERE table_schema = :s"
            ),
            {"s": schema},
        )
        columns: dict[str, set[str]] = {}
        for table, column in found:
            columns.setdefault(table, set()).add(column)
        versions = (await conn.execute(text("SELECT version, name FROM schema_version"))).all()
        indexes = set(
            (
                await conn.scalars(
                    text("SELECT indexname FROM pg_indexes WHERE schemaname = :s"), {"s": schema}
                )
            ).all()
        )
    assert versions == [(1, "initial"), (2, "shadow_drops")]
    for table in metadata.sorted_tables:  # the migration SQL and the Core tables agree
        assert columns[table.name] == {c.name for c in table.columns}, table.name
        assert {i.name for i in table.indexes} <= indexes
    assert set(columns) == {t.name for t in metadata.sorted_tables} | {"schema_version"}


async def test_a_store_beside_another_on_the_search_path_gets_its_own_tables(
    pg_url: str,
) -> None:
    """With another deployment's current store later on the search_path (`public` under the
    default `"$user", public`), a new store created nothing in its own schema and wrote into
    the other one's tables: two proxies' comparisons mixed in one report."""
    import psycopg
    from sqlalchemy.engine import make_url

    async with Store(pg_url) as other:  # a current store in the test's schema
        await other.insert_batch([ComparisonRecord(route="theirs", outcome="match")])
    url = make_url(pg_url)
    theirs = str(url.query["options"]).rsplit("=", 1)[1]
    ours = f"{theirs}_2"
    admin = url.set(drivername="postgresql", query={}).render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{ours}"')
        try:
            both = url.update_query_dict({"options": f"-csearch_path={ours},{theirs}"})
            async with Store(both.render_as_string(hide_password=False)) as store:
                await store.insert_batch([ComparisonRecord(route="ours", outcome="match")])
            mine = conn.execute(f'SELECT route FROM "{ours}".comparisons').fetchall()
            other_rows = conn.execute(f'SELECT route FROM "{theirs}".comparisons').fetchall()
        finally:
            conn.execute(f'DROP SCHEMA "{ours}" CASCADE')
    assert (mine, other_rows) == ([("ours",)], [("theirs",)])


async def test_a_version_1_store_is_migrated_on_start_and_keeps_its_rows(pg_url: str) -> None:
    first = migrations()[0]
    old = Store(pg_url)  # not initialised: only the first step, as an older strangler left it
    try:
        async with old.engine.begin() as conn:
            await conn.execute(
                text(
                    "CREATE TABLE schema_version (version INTEGER PRIMARY KEY,"
                    " name VARCHAR(200) NOT NULL, applied_at TIMESTAMP WITH TIME ZONE"
                    " NOT NULL DEFAULT now())"
                )
            )
            for statement in first.statements:
                await conn.execute(text(statement))
            await conn.execute(text("INSERT INTO schema_version (version, name) VALUES (1, 'x')"))
        await old.insert_batch([_mismatch()])
    finally:
        await old.close()
    async with Store(pg_url) as store:
        await store.init()
        assert await store.schema_version() == SCHEMA_VERSION == 2
        await store.insert_drops("w", 1, [("order-show", "shed", 3)])
        assert await store.count() == 1
        async with store.engine.connect() as conn:
            assert (await conn.execute(select(shadow_drops.c.copies))).scalars().all() == [3]


async def test_concurrent_starts_migrate_once(pg_url: str) -> None:
    stores = await asyncio.gather(*(Store.open(pg_url) for _ in range(3)))
    try:
        async with stores[0].engine.connect() as conn:
            assert await conn.scalar(text("SELECT count(*) FROM schema_version")) == SCHEMA_VERSION
    finally:
        for s in stores:
            await s.close()


async def test_a_long_client_request_id_is_stored_cut_to_its_column(store_url: str) -> None:
    """On PostgreSQL a 200-character X-Request-Id made its comparison unstorable."""
    async with Store(store_url) as store:
        assert await store.insert_batch([replace(_mismatch(), request_id="r" * 200)]) == 1
        async with store.engine.connect() as conn:
            stored = await conn.scalar(select(comparisons.c.request_id))
    assert stored == "r" * 128


async def test_insert_batch_round_trips_rows_and_path_rows(store_url: str) -> None:
    async with Store(store_url) as store:
        n = await store.insert_batch([_mismatch(i) for i in range(3)] + [_ok()])
        assert n == 4 and await store.count() == 4 and await store.count("order-show") == 3
        async with store.engine.connect() as conn:
            rows = (await conn.execute(select(comparisons).order_by(comparisons.c.id))).all()
            paths = (
                await conn.execute(
                    select(comparison_paths).order_by(
                        comparison_paths.c.comparison_id,
                        comparison_paths.c.kind,
                        comparison_paths.c.pattern,
                    )
                )
            ).all()
    first = rows[0]
    assert first.time == T0 and first.time.tzinfo is not None
    assert (first.outcome, first.diff_count, first.noise_count) == ("mismatch", 3, 1)
    assert orjson.loads(first.diff_paths) == ["$.items[*].price", "$.total", "$.items[*].price"]
    assert first.primary_body == b'{"total": "1.00"}' and first.candidate_body == b'{"total": 1.0}'
    assert (first.latency_primary_ms, first.status_candidate) == (1.5, 200)
    assert rows[3].outcome == "match" and rows[3].primary_body is None
    # duplicates collapse: one row per (comparison, kind, pattern)
    mine = [(p.kind, p.pattern) for p in paths if p.comparison_id == first.id]
    assert mine == [
        ("diff", "$.items[*].price"),
        ("diff", "$.total"),
        ("noise", "$.meta.generated_at"),
    ]
    price = next(
        p for p in paths if p.comparison_id == first.id and p.pattern == "$.items[*].price"
    )
    assert orjson.loads(price.example) == {
        "pattern": "$.items[*].price",
        "path": "$.items[1].price",
        "primary": "1.00",
        "candidate": 1.0,
    }
    assert len(paths) == 9  # 3 per mismatch, none for the match


async def test_delete_before_removes_old_rows_and_their_paths(store_url: str) -> None:
    async with Store(store_url) as store:
        await store.insert_batch([_mismatch(i * 60) for i in range(5)])  # one per minute
        assert await store.delete_before(T0 + timedelta(minutes=2)) == 2
        assert await store.count() == 3
        async with store.engine.connect() as conn:
            paths = (await conn.execute(select(comparison_paths.c.time))).scalars().all()
    assert len(paths) == 9 and min(paths) == T0 + timedelta(minutes=2)


async def test_concurrent_writers_link_path_rows_to_their_own_comparisons(
    store_url: str,
) -> None:
    """Two stores on one database (two proxy workers) writing batches at the same time."""

    def batch(worker: int, n: int) -> list[ComparisonRecord]:
        return [
            ComparisonRecord(
                route=f"w{worker}",
                outcome="mismatch",
                request_id=f"w{worker}-{i}",
                diff_paths=(f"$.w{worker}-{i}",),
            )
            for i in range(n)
        ]

    await (await Store.open(store_url)).close()
    writers = [Store(store_url), Store(store_url)]
    try:
        await asyncio.gather(
            *(
                w.insert_batch(batch(k, 50) if j % 2 else batch(k, 50)[::-1])
                for j in range(6)
                for k, w in enumerate(writers)
            )
        )
        async with writers[0].engine.connect() as conn:
            pairs = (
                await conn.execute(
                    select(comparisons.c.request_id, comparison_paths.c.pattern).join(
                        comparison_paths, comparison_paths.c.comparison_id == comparisons.c.id
                    )
                )
            ).all()
    finally:
        for w in writers:
            await w.close()
    assert len(pairs) == 2 * 6 * 50
    assert all(pattern == f"$.{request_id}" for request_id, pattern in pairs)


def _ok() -> ComparisonRecord:
    return ComparisonRecord(route="order-list", outcome="match", time=T0)


async def test_route_changes_are_an_append_only_log(store_url: str) -> None:
    async with Store(store_url) as store:
        assert await store.last_route_change("order-show") is None
        first = await store.record_route_change(
            route="order-show", to_mode="shadow", from_mode="legacy", actor="ci", to_percent=100
        )
        second = await store.record_route_change(
            route="order-show",
            to_mode="legacy",
            from_mode="canary",
            from_percent=5.0,
            to_percent=0.0,
            kind="auto_rollback",
            evidence={"mismatch_rate": 0.02, "samples": 600},
        )
        await store.record_route_change(route="order-list", to_mode="canary")
        last = await store.last_route_change("order-show")
        history = await store.route_changes("order-show")
    assert first.id is not None and second.id is not None and second.id > first.id
    assert last == second
    assert last is not None and last.kind == "auto_rollback"
    assert last.evidence == {"mismatch_rate": 0.02, "samples": 600}
    assert (last.from_mode, last.from_percent, last.to_percent) == ("canary", 5.0, 0.0)
    assert [c.id for c in history] == [second.id, first.id]


def test_normalize_url_adds_async_drivers() -> None:
    assert normalize_url("sqlite:///x.db") == "sqlite+aiosqlite:///x.db"
    assert normalize_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("sqlite+aiosqlite:///x.db") == "sqlite+aiosqlite:///x.db"


@pytest.mark.parametrize("url", ["mysql://u@h/db", "::nope::", "oracle+cx://h/db"])
def test_unusable_urls_are_permanent_store_errors(url: str) -> None:
    with pytest.raises(StoreError) as info:
        Store(url)
    assert not info.value.transient


async def test_an_unreachable_store_is_a_transient_error() -> None:
    with pytest.raises(StoreError, match="cannot initialise") as info:
        await Store.open(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test")
    assert info.value.transient


async def test_bad_data_is_a_permanent_error(pg_url: str) -> None:
    async with Store(pg_url) as store:
        with pytest.raises(StoreError) as info:
            await store.insert_batch([_mismatch(route="r" * 300)])
        assert not info.value.transient
        assert await store.count() == 0  # the batch's transaction rolled back


def test_records_validate_their_fields() -> None:
    with pytest.raises(ValueError, match="outcome"):
        ComparisonRecord(route="r", outcome="weird")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mode"):
        ComparisonRecord(route="r", outcome="match", mode="live")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timezone"):
        ComparisonRecord(route="r", outcome="match", time=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="route"):
        ComparisonRecord(route="", outcome="match")


async def test_a_refused_batch_is_not_kept_for_a_retry(pg_url: str) -> None:
    """A batch PostgreSQL refuses for good is split by the recorder, never sent again whole:
    the store kept it (up to eight batches of bodies) waiting for a retry."""
    async with Store(pg_url) as store:
        for _ in range(3):
            with pytest.raises(StoreError):
                await store.insert_batch([_mismatch(), _mismatch(route="r" * 300)])
        assert not store._unconfirmed
