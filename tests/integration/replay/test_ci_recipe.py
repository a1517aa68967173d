"""docs/ci.md works: its replay config, against the real monolith and extracted service,
replays config/examples/traffic.jsonl: every route passes, and a careless port fails."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import yaml
from aiohttp import web

from extracted.app import create_app as extracted_app
from extracted.schema import create_schema
from legacy.app import create_app as legacy_app
from legacy.seed import seed_orders
from proxy.settings import Settings, loads
from shadow.replay import ReplaySummary, replay, scan_traffic
from shadow.report import Thresholds, build_report

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "ci.md"
TRAFFIC = ROOT / "config" / "examples" / "traffic.jsonl"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)


@asynccontextmanager
async def _serve(app: web.Application) -> AsyncIterator[int]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        yield int(server.sockets[0].getsockname()[1])
    finally:
        await runner.cleanup()


def test_the_workflow_runs_replay_and_gates_on_the_junit_report() -> None:
    (workflow,) = [b for b in _blocks("yaml") if "jobs:" in b]
    steps = yaml.safe_load(workflow)["jobs"]["replay"]["steps"]
    script = "\n".join(str(s.get("run", "")) for s in steps)
    for needle in ("strangler legacy", "strangler extracted", "strangler replay", "--format junit"):
        assert needle in script
    assert "config/examples/traffic.jsonl" in script and TRAFFIC.exists()


async def _replay_recipe(tmp_path: Path, fee_rounding: str) -> tuple[Settings, ReplaySummary]:
    (config,) = [b for b in _blocks("yaml") if b.startswith("# ci/replay.yaml")]
    db = f"sqlite+aiosqlite:///{tmp_path / 'orders.db'}"
    await create_schema(db)
    await seed_orders(db, 40)
    candidate = extracted_app(db, fee_rounding=fee_rounding)
    async with _serve(legacy_app(db)) as legacy_port, _serve(candidate) as orders_port:
        text = config.replace("127.0.0.1:8081", f"127.0.0.1:{legacy_port}")
        text = text.replace("127.0.0.1:8082", f"127.0.0.1:{orders_port}")
        text = text.replace("sqlite+aiosqlite:///replay.db", f"sqlite:///{tmp_path / 'r.db'}")
        settings = loads(text, "ci/replay.yaml")
        return settings, await replay(str(TRAFFIC), settings, None, concurrency=4)


async def test_the_documented_config_passes_on_the_example_traffic(tmp_path: Path) -> None:
    settings, summary = await _replay_recipe(tmp_path, "legacy")
    assert summary.done == scan_traffic(str(TRAFFIC)) == 13
    assert summary.outcomes == {"match": 12, "skipped": 1}, summary
    assert (summary.no_route, summary.no_candidate, summary.primary_failed) == (0, 0, 0)
    thresholds = {r.name: Thresholds.from_promotion(r.promotion) for r in settings.routes}
    report = await build_report(
        settings.store.url, routes=summary.routes, thresholds_by_route=thresholds
    )
    assert report.passed, [(r.route, r.reasons) for r in report.routes]
    assert {r.route for r in report.routes} == {
        "order-create",
        "order-list",
        "order-show",
        "order-events",
    }


async def test_a_port_that_rounds_the_fee_differently_fails_the_gate(tmp_path: Path) -> None:
    settings, summary = await _replay_recipe(tmp_path, "half_even")
    thresholds = {r.name: Thresholds.from_promotion(r.promotion) for r in settings.routes}
    report = await build_report(
        settings.store.url, routes=summary.routes, thresholds_by_route=thresholds
    )
    assert not report.passed
    failed = {r.route: r for r in report.routes if not r.passed}
    assert "order-show" in failed
    assert failed["order-show"].top_paths[0].pattern == "$.amounts.buyer_protection_fee"
