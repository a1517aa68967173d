"""`strangler migrate status|advance|promote|rollback` against a real store (SQLite, PG)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import Result

from proxy.settings import load
from shadow.store import Store
from tests.integration.migrate.helpers import CONFIG, changes, evidence, migrate, write_config

SHOW = "order-show"


@pytest.fixture
def store(sqlite_url: str) -> str:
    """An initialised, empty SQLite store."""
    asyncio.run(_init(sqlite_url))
    return sqlite_url


async def _init(url: str) -> None:
    async with Store(url):
        pass


def _route(config: str, name: str = SHOW) -> tuple[str, float]:
    route = next(r for r in load(config).routes if r.name == name)
    return route.mode, route.canary.percent


def _one_line_error(result: Result, needle: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert lines[0].startswith("strangler migrate: error: ") and needle in lines[0], lines


def test_no_evidence_says_so_and_exits_1(tmp_path: Path, store: str) -> None:
    config = write_config(tmp_path)
    result = migrate("status", SHOW, "--config", config, "--store", store)
    assert result.exit_code == 1, result.output
    assert "no evidence: 0 comparisons since the beginning" in result.stdout
    result = migrate("advance", SHOW, "--config", config, "--store", store, "--apply")
    assert result.exit_code == 1
    assert "no evidence: 0 comparisons since" in result.stdout
    assert _route(config) == ("shadow", 5.0) and changes(store) == []


def test_bad_route_name_exits_2_listing_known_routes(tmp_path: Path, store: str) -> None:
    config = write_config(tmp_path)
    for command in ("status", "advance", "promote", "rollback"):
        result = migrate(command, "order-shwo", "--config", config, "--store", store)
        _one_line_error(result, "unknown route 'order-shwo'")
        assert "known routes: order-show, order-list, order-create" in result.stderr


def test_a_change_without_a_route_exits_2_naming_the_routes(tmp_path: Path, store: str) -> None:
    config = write_config(tmp_path)
    for command in ("advance", "promote", "rollback"):
        result = migrate(command, "--config", config, "--store", store, "--apply")
        _one_line_error(result, f"{command} changes one route: name it")
        assert "order-show, order-list, order-create" in result.stderr
    assert changes(store) == []


def test_usage_errors_exit_2_in_one_line(tmp_path: Path, store: str) -> None:
    config = write_config(tmp_path)
    _one_line_error(
        migrate("status", "--config", str(tmp_path / "nope.yaml"), "--store", store),
        "cannot read config",
    )
    broken = write_config(tmp_path / "..", "routes: [\n")
    _one_line_error(migrate("status", "--config", broken, "--store", store), "routes.yaml:")
    missing = f"sqlite:///{tmp_path / 'missing.db'}"
    _one_line_error(migrate("status", "--config", config, "--store", missing), "no such database")
    _one_line_error(
        migrate("status", "--config", config, "--store", "mysql://x/y"), "unsupported store URL"
    )


def test_status_shows_mode_share_next_verdict_and_numbers(tmp_path: Path, store: str) -> None:
    config = write_config(tmp_path)
    evidence(store, SHOW, matches=80, mismatches=2, errors=4, primary_ms=10.0, candidate_ms=20.0)
    result = migrate("status", "--config", config, "--store", store)
    assert result.exit_code == 1, result.output
    out = result.stdout
    assert "order-show\n  mode shadow, share 0%, next canary 1%" in out
    assert "samples 82, mismatches 2 (2.439%), errors 4 (4.651%)" in out
    assert "p99 legacy 10.0 ms / candidate 20.0 ms (ratio 2.00x)" in out
    assert "samples short: 82 compared samples, below the minimum of 100" in out
    assert "mismatch rate over: 2.44% above the maximum 1%" in out
    assert "error rate over: 4.65% above the maximum 2%" in out
    assert "p99 ratio over: candidate p99 is 2.00x legacy, above 1.5x" in out
    assert "order-list\n  mode canary, share 25%, next canary 50%; auto every 3600s" in out
    assert "order-create\n  mode legacy, share 0%, next shadow" in out
    assert "gate: none" in out


def test_gate_refuses_with_reason_and_numbers(tmp_path: Path, store: str) -> None:
    config = write_config(tmp_path)
    evidence(store, SHOW, matches=190, mismatches=10)  # 5 % mismatches: the rounding bug
    before = Path(config).read_text()
    result = migrate("advance", SHOW, "--config", config, "--store", store, "--apply")
    assert result.exit_code == 1, result.output
    assert "mismatch rate over: 5% above the maximum 1%" in result.stdout
    assert "refused: order-show stays at shadow" in result.stderr
    assert Path(config).read_text() == before and changes(store) == []
    result = migrate("promote", SHOW, "--config", config, "--store", store, "--apply")
    assert result.exit_code == 1 and Path(config).read_text() == before


def test_advance_dry_run_shows_diff_and_apply_writes_and_audits(
    tmp_path: Path, store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path)
    evidence(store, SHOW, matches=150, primary_ms=10.0, candidate_ms=11.0)
    before = Path(config).read_text()
    dry = migrate("advance", SHOW, "--config", config, "--store", store)
    assert dry.exit_code == 0, dry.output
    assert "order-show: shadow -> canary 1% (advance)" in dry.stdout
    assert "gate: pass" in dry.stdout
    assert "-    mode: shadow              # legacy | shadow | canary | extracted" in dry.stdout
    assert "+    mode: canary              # legacy | shadow | canary | extracted" in dry.stdout
    assert "+      percent: 1              # share of keys served by the candidate" in dry.stdout
    assert "dry run: nothing written" in dry.stdout
    assert Path(config).read_text() == before

    monkeypatch.setenv("USER", "alice")
    applied = migrate("advance", SHOW, "--config", config, "--store", store, "--apply")
    assert applied.exit_code == 0, applied.output
    assert _route(config) == ("canary", 1.0)
    [change] = changes(store, SHOW)
    assert (change.actor, change.kind, change.from_mode, change.to_mode) == (
        "alice",
        "advance",
        "shadow",
        "canary",
    )
    assert (change.from_percent, change.to_percent) == (0.0, 1.0)
    ev = change.evidence
    assert ev["passed"] is True and ev["evidence"]["samples"] == 150
    assert ev["evidence"]["p99_ratio"] == pytest.approx(1.1)
    assert (ev["from"], ev["to"]) == ("shadow", "canary 1%")

    # Evidence is counted from the change on: the old comparisons do not count again.
    again = migrate("advance", SHOW, "--config", config, "--store", store, "--apply")
    assert again.exit_code == 1
    assert "no evidence: 0 comparisons since" in again.stdout


def test_promote_needs_force_when_a_gate_fails(tmp_path: Path, store: str) -> None:
    config = write_config(tmp_path)
    evidence(store, SHOW, matches=20)
    refused = migrate("promote", SHOW, "--config", config, "--store", store, "--apply")
    assert refused.exit_code == 1
    assert "samples short: 20 compared samples, below the minimum of 100" in refused.stdout
    forced = migrate(
        "promote",
        SHOW,
        "--config",
        config,
        "--store",
        store,
        "--apply",
        "--force",
        "--actor",
        "ops",
    )
    assert forced.exit_code == 0, forced.output
    assert _route(config)[0] == "extracted"
    [change] = changes(store, SHOW)
    assert change.actor == "ops" and change.kind == "promote"
    assert change.evidence["forced"] is True and change.evidence["passed"] is False
    again = migrate("promote", SHOW, "--config", config, "--store", store)
    assert again.exit_code == 0 and "already fully extracted" in again.stdout


def test_rollback_is_immediate_and_ungated(tmp_path: Path, store: str) -> None:
    config = write_config(tmp_path)
    evidence(store, "order-list", matches=10, errors=10)  # failing badly
    result = migrate("rollback", "order-list", "--config", config, "--store", store, "--apply")
    assert result.exit_code == 0, result.output
    assert "order-list: canary 25% -> shadow (rollback)" in result.stdout
    assert _route(config, "order-list") == ("shadow", 25.0)
    result = migrate(
        "rollback", "order-list", "--to", "legacy", "--config", config, "--store", store, "--apply"
    )
    assert result.exit_code == 0, result.output
    assert _route(config, "order-list")[0] == "legacy"
    kinds = [(c.kind, c.from_mode, c.to_mode) for c in changes(store, "order-list")]
    assert kinds == [("rollback", "shadow", "legacy"), ("rollback", "canary", "shadow")]
    noop = migrate("rollback", "order-list", "--to", "legacy", "--config", config, "--store", store)
    assert noop.exit_code == 0 and "nothing to rollback" in noop.stdout


def test_evidence_before_the_last_change_is_ignored(tmp_path: Path, store: str) -> None:
    config = write_config(tmp_path)
    old = datetime.now(UTC) - timedelta(hours=1)
    evidence(store, SHOW, matches=500, start=old)
    rolled = migrate("rollback", SHOW, "--to", "legacy", "--config", config, "--store", store)
    assert rolled.exit_code == 0  # dry run: no audit row, the old evidence still counts
    result = migrate("status", SHOW, "--config", config, "--store", store)
    assert "samples 500" in result.stdout and result.exit_code == 0
    migrate("rollback", SHOW, "--config", config, "--store", store, "--apply", "--to", "legacy")
    migrate("advance", SHOW, "--config", config, "--store", store, "--apply")  # ungated
    assert _route(config)[0] == "shadow"
    result = migrate("status", SHOW, "--config", config, "--store", store)
    assert result.exit_code == 1 and "no evidence: 0 comparisons since 20" in result.stdout


def test_postgresql_store(tmp_path: Path, pg_url: str) -> None:
    config = write_config(tmp_path)
    asyncio.run(_init(pg_url))
    evidence(pg_url, SHOW, matches=120, mismatches=1, primary_ms=8.0, candidate_ms=9.0)
    status = migrate("status", SHOW, "--config", config, "--store", pg_url)
    assert status.exit_code == 0, status.output
    assert "samples 121, mismatches 1 (0.826%), errors 0 (0.000%)" in status.stdout
    assert "p99 legacy 8.0 ms / candidate 9.0 ms (ratio 1.12x)" in status.stdout
    result = migrate("advance", SHOW, "--config", config, "--store", pg_url, "--apply")
    assert result.exit_code == 0, result.output
    assert _route(config) == ("canary", 1.0)
    [change] = changes(pg_url, SHOW)
    assert change.to_mode == "canary" and change.evidence["evidence"]["mismatches"] == 1


def test_a_canary_step_without_a_sticky_key_is_flagged(tmp_path: Path, store: str) -> None:
    """Without a key every request stays on legacy: the steps look live and serve nobody."""
    config = write_config(tmp_path)
    evidence(store, "order-list", matches=300)
    keyless = migrate("advance", "order-list", "--config", config, "--store", store)
    assert "warning: order-list has no canary.sticky key" in keyless.stderr
    evidence(store, SHOW, matches=300)
    keyed = migrate("advance", SHOW, "--config", config, "--store", store)
    assert "warning" not in keyed.stderr, keyed.stderr


def test_advance_and_promote_refuse_a_route_held_by_an_automatic_rollback(
    tmp_path: Path, store: str
) -> None:
    """After the proxy rolled a canary back by itself, `advance` (and `promote`) passed on
    the comparisons since, made while legacy served (the answers that tripped it are not
    comparisons), and the step lifted the hold: users were back on the failing candidate
    at a larger share. `watch` already held such a route."""
    keyed = CONFIG.replace("canary: {percent: 25}", "canary: {percent: 25, sticky: {cookie: sid}}")
    config = write_config(tmp_path, keyed)
    route = "order-list"  # canary 25%

    async def trip() -> None:
        async with Store(store) as s:
            await s.record_route_change(
                route=route,
                to_mode="legacy",
                kind="auto_rollback",
                actor="strangler",
                from_mode="canary",
                evidence={"message": "error rate 20.00% above 2.00% over the last 50"},
            )

    asyncio.run(trip())
    evidence(store, route, matches=300)  # comparisons since the hold: all fine
    advance = migrate("advance", route, "--config", config, "--store", store, "--apply")
    assert advance.exit_code == 1, advance.output
    assert "held after an automatic rollback at 20" in advance.stdout
    assert "error rate 20.00% above 2.00%" in advance.stdout
    assert "refused: order-list stays at canary 25%" in advance.stderr
    assert _route(config, route) == ("canary", 25.0)
    promote = migrate("promote", route, "--config", config, "--store", store, "--apply")
    assert promote.exit_code == 1, promote.output
    assert _route(config, route) == ("canary", 25.0)
    assert [c.kind for c in changes(store, route)] == ["auto_rollback"]
    status = migrate("status", route, "--config", config, "--store", store)
    assert status.exit_code == 1, status.output

    # The operator's way back: a rollback (or clearing the hold), then fresh evidence.
    back = migrate("rollback", route, "--config", config, "--store", store, "--apply")
    assert back.exit_code == 0, back.output
    evidence(store, route, matches=300)
    again = migrate("advance", route, "--config", config, "--store", store, "--apply")
    assert again.exit_code == 0, again.output
    assert _route(config, route) == ("canary", 1.0)
