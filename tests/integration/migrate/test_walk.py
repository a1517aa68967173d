"""A route walked through every step to extracted, each step gated by fresh evidence."""

from __future__ import annotations

import asyncio
from pathlib import Path

from proxy.migrate import path_of
from proxy.settings import load
from shadow.store import Store
from tests.integration.migrate.helpers import CONFIG, changes, evidence, migrate, write_config

ROUTE = "order-show"


def _stage(config: str) -> str:
    route = next(r for r in load(config).routes if r.name == ROUTE)
    return f"canary {route.canary.percent:g}%" if route.mode == "canary" else route.mode


def test_walk_every_step_with_fresh_evidence(tmp_path: Path, sqlite_url: str) -> None:
    text = CONFIG.replace("    mode: shadow              #", "    mode: legacy              #")
    config = write_config(tmp_path, text)

    async def init() -> None:
        async with Store(sqlite_url):
            pass

    asyncio.run(init())
    route = next(r for r in load(config).routes if r.name == ROUTE)
    walked = [str(s) for s in path_of(route)]
    assert walked == ["legacy", "shadow", "canary 1%", "canary 25%", "extracted"]
    assert _stage(config) == "legacy"

    # legacy -> shadow serves no candidate response: no gate.
    result = migrate("advance", ROUTE, "--config", config, "--store", sqlite_url, "--apply")
    assert result.exit_code == 0, result.output
    for target in walked[2:]:
        stale = migrate("advance", ROUTE, "--config", config, "--store", sqlite_url, "--apply")
        assert stale.exit_code == 1, stale.output  # nothing recorded since the last change
        assert "no evidence: 0 comparisons since" in stale.stdout
        evidence(sqlite_url, ROUTE, matches=120, mismatches=1, errors=1)
        result = migrate("advance", ROUTE, "--config", config, "--store", sqlite_url, "--apply")
        assert result.exit_code == 0, result.output
        assert "gate: pass" in result.stdout
        assert _stage(config) == target
    done = migrate("advance", ROUTE, "--config", config, "--store", sqlite_url, "--apply")
    assert done.exit_code == 0 and "already fully extracted" in done.stdout

    log = list(reversed(changes(sqlite_url, ROUTE)))
    assert [(c.from_mode, c.to_mode, c.to_percent) for c in log] == [
        ("legacy", "shadow", 0.0),
        ("shadow", "canary", 1.0),
        ("canary", "canary", 25.0),
        ("canary", "extracted", 100.0),
    ]
    assert [c.evidence["evidence"]["samples"] for c in log[1:]] == [121, 121, 121]
    assert all(c.evidence["passed"] for c in log)


def test_rounding_bug_is_refused_with_reason_and_numbers(tmp_path: Path, sqlite_url: str) -> None:
    config = write_config(tmp_path)
    evidence(sqlite_url, ROUTE, matches=456, mismatches=44)  # 8.8 % of totals rounded wrongly
    result = migrate("advance", ROUTE, "--config", config, "--store", sqlite_url, "--apply")
    assert result.exit_code == 1
    assert "samples 500, mismatches 44 (8.800%)" in result.stdout
    assert "mismatch rate over: 8.8% above the maximum 1%" in result.stdout
    assert _stage(config) == "shadow" and changes(sqlite_url) == []
