"""`strangler migrate watch --once`: one step per auto route per interval, single controller."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from proxy.migrate import single_controller
from proxy.settings import load
from shadow.store import Store
from tests.integration.migrate.helpers import CONFIG, changes, evidence, migrate, write_config

AUTO = "order-list"


@pytest.fixture
def store(sqlite_url: str) -> str:
    """An initialised, empty SQLite store."""

    async def init() -> None:
        async with Store(sqlite_url):
            pass

    asyncio.run(init())
    return sqlite_url


def _stage(config: str, name: str) -> tuple[str, float]:
    route = next(r for r in load(config).routes if r.name == name)
    return route.mode, route.canary.percent


def test_once_advances_exactly_one_step(tmp_path: Path, store: str) -> None:
    config = write_config(tmp_path)
    evidence(store, AUTO, matches=300)
    evidence(store, "order-show", matches=300)  # passing, but not an auto route
    result = migrate("watch", "--config", config, "--store", store, "--once", "--actor", "bot")
    assert result.exit_code == 0, result.output
    assert "order-list: advanced: canary 25% -> canary 50%" in result.stdout
    assert _stage(config, AUTO) == ("canary", 50.0)
    assert _stage(config, "order-show") == ("shadow", 5.0)
    [change] = changes(store)
    assert (change.route, change.kind, change.actor) == (AUTO, "auto_advance", "bot")

    # Fresh passing evidence, but the interval (1h) has not passed: no second step.
    evidence(store, AUTO, matches=300)
    again = migrate("watch", "--config", config, "--store", store, "--once")
    assert again.exit_code == 0 and "order-list: waiting: next step not before" in again.stdout
    assert _stage(config, AUTO) == ("canary", 50.0) and len(changes(store)) == 1


def test_without_interval_one_step_per_pass_and_only_on_fresh_evidence(
    tmp_path: Path, store: str
) -> None:
    config = write_config(tmp_path, CONFIG.replace(", interval: 1h", ""))
    evidence(store, AUTO, matches=300)
    migrate("watch", "--config", config, "--store", store, "--once")
    assert _stage(config, AUTO) == ("canary", 50.0)
    refused = migrate("watch", "--config", config, "--store", store, "--once")
    assert "order-list: refused: canary 50% -> extracted: samples short: 0" in refused.stdout
    evidence(store, AUTO, matches=300)
    migrate("watch", "--config", config, "--store", store, "--once")
    assert _stage(config, AUTO) == ("extracted", 50.0)
    done = migrate("watch", "--config", config, "--store", store, "--once")
    assert "order-list: skipped: extracted: fully extracted" in done.stdout
    assert [c.to_percent for c in changes(store, AUTO)] == [100.0, 50.0]


def test_failing_gate_and_auto_rollback_hold(tmp_path: Path, store: str) -> None:
    config = write_config(tmp_path, CONFIG.replace(", interval: 1h", ""))
    evidence(store, AUTO, matches=300, errors=30)
    refused = migrate("watch", "--config", config, "--store", store, "--once")
    assert "order-list: refused: canary 25% -> canary 50%: error rate over: 9.09%" in refused.stdout
    assert _stage(config, AUTO) == ("canary", 25.0)

    async def hold() -> None:
        async with Store(store) as s:
            await s.record_route_change(
                route=AUTO, to_mode="legacy", kind="auto_rollback", actor="proxy"
            )

    asyncio.run(hold())
    evidence(store, AUTO, matches=300)
    held = migrate("watch", "--config", config, "--store", store, "--once")
    assert "order-list: held: held after an automatic rollback" in held.stdout
    status = migrate("status", AUTO, "--config", config, "--store", store)
    assert "  HELD: automatic rollback at 20" in status.stdout
    assert _stage(config, AUTO) == ("canary", 25.0)


def test_a_second_controller_is_refused(tmp_path: Path, store: str) -> None:
    config = write_config(tmp_path)
    with single_controller(config):
        result = migrate("watch", "--config", config, "--store", store, "--once")
    assert result.exit_code == 2
    assert "another `strangler migrate watch` already controls" in result.stderr
    after = migrate("watch", "--config", config, "--store", store, "--once")
    assert after.exit_code == 0, after.output


def test_min_samples_0_still_needs_some_evidence(tmp_path: Path, store: str) -> None:
    """`min_samples: 0` relaxes the count, not the need for evidence: with no comparison at
    all neither watch nor advance moves the route (both did, up to extracted)."""
    config = write_config(
        tmp_path,
        CONFIG.replace(", interval: 1h", "").replace("min_samples: 100, ", "min_samples: 0, "),
    )
    result = migrate("watch", "--config", config, "--store", store, "--once")
    assert result.exit_code == 0, result.output
    assert "order-list: refused: canary 25% -> canary 50%: no evidence" in result.stdout
    advance = migrate("advance", AUTO, "--config", config, "--store", store, "--apply")
    assert advance.exit_code == 1, advance.output
    assert _stage(config, AUTO) == ("canary", 25.0) and changes(store) == []
    evidence(store, AUTO, matches=1)
    migrate("watch", "--config", config, "--store", store, "--once")
    assert _stage(config, AUTO) == ("canary", 50.0)


def test_once_with_a_failing_reload_says_the_step_was_taken(tmp_path: Path, store: str) -> None:
    from tests.support import free_port

    config = write_config(tmp_path)
    evidence(store, AUTO, matches=300)
    result = migrate(
        *("watch", "--config", config, "--store", store, "--once"),
        *("--reload-url", f"http://127.0.0.1:{free_port()}"),
        env={"STRANGLER_TEST_ADMIN_TOKEN": "t"},
    )
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert f"order-list: advanced and written to {config}, but the reload failed" in line
    assert _stage(config, AUTO) == ("canary", 50.0) and len(changes(store)) == 1


def test_a_step_whose_audit_cannot_be_written_is_not_taken(tmp_path: Path, store: str) -> None:
    """The YAML was written before the audit record: when the store refused the record,
    the step stood unrecorded, so the next pass judged the same old evidence again (since
    the previous change) and stepped on, canary 25% -> 50% -> extracted in two passes."""
    import sqlite3

    config = write_config(tmp_path, CONFIG.replace(", interval: 1h", ""))
    evidence(store, AUTO, matches=300)
    db = store.split("///", 1)[1]
    with sqlite3.connect(db) as conn:  # the store takes reads but no audit record
        conn.execute(
            "CREATE TRIGGER no_audit BEFORE INSERT ON route_changes"
            " BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
        )
    for _ in range(2):
        result = migrate("watch", "--config", config, "--store", store, "--once")
        assert result.exit_code == 2, result.output
        assert "database or disk is full" in result.stderr
        assert _stage(config, AUTO) == ("canary", 25.0)
    manual = migrate("advance", AUTO, "--config", config, "--store", store, "--apply")
    assert manual.exit_code == 2 and "database or disk is full" in manual.stderr
    assert _stage(config, AUTO) == ("canary", 25.0)
