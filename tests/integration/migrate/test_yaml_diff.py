"""After five applied changes the demo config differs from the original only in the values."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from proxy.settings import load
from shadow.store import Store
from tests.integration.migrate.helpers import changes, evidence, migrate

ROUTE = "order-show"
DEMO = Path(__file__).parents[3] / "config" / "routes.yaml"


async def _init(url: str) -> None:
    async with Store(url):
        pass


def test_five_changes_touch_only_the_changed_values(tmp_path: Path, sqlite_url: str) -> None:
    config = str(tmp_path / "routes.yaml")
    shutil.copyfile(DEMO, config)
    original = Path(config).read_text(encoding="utf-8").splitlines()
    asyncio.run(_init(sqlite_url))
    min_samples = next(r for r in load(config).routes if r.name == ROUTE).promotion.min_samples
    steps = [
        (("advance",), ("canary", 25.0)),
        (("advance",), ("canary", 50.0)),
        (("advance",), ("extracted", 50.0)),
        (("rollback",), ("shadow", 50.0)),
        (("promote",), ("extracted", 50.0)),
    ]
    for command, expected in steps:
        evidence(sqlite_url, ROUTE, matches=min_samples)  # fresh, after the last change
        result = migrate(*command, ROUTE, "--config", config, "--store", sqlite_url, "--apply")
        assert result.exit_code == 0, result.output
        route = next(r for r in load(config).routes if r.name == ROUTE)
        assert (route.mode, route.canary.percent) == expected
        now = Path(config).read_text(encoding="utf-8").splitlines()
        assert len(now) == len(original)  # nothing inserted, nothing removed
    assert len(changes(sqlite_url, ROUTE)) == 5

    final = Path(config).read_text(encoding="utf-8").splitlines()
    differing = [(a, b) for a, b in zip(original, final, strict=True) if a != b]
    assert differing == [
        ("    mode: canary", "    mode: extracted"),
        ("      percent: 5                      # share of keys served by the candidate",
         "      percent: 50                     # share of keys served by the candidate"),
    ]  # fmt: skip
