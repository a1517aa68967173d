"""`strangler report --format html` opens in headless Chromium with no errors and a chart."""

from __future__ import annotations

import asyncio
from pathlib import Path

from click.testing import CliRunner

from proxy.cli import main
from shadow.store import Store
from tests.e2e.test_ui import ARTIFACTS, chromium
from tests.integration.shadow.synthetic import LIST, SHOW, synthetic


async def test_html_report_renders_its_chart_without_errors(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    async with Store(url) as store:
        await store.insert_batch(synthetic())
    out = tmp_path / "report.html"
    result = await asyncio.to_thread(
        CliRunner().invoke,
        main,
        ["report", "--store", url, "--format", "html", "--output", str(out), "--since", "3650d"],
    )
    assert result.exit_code in (0, 1), result.output
    errors: list[str] = []
    requests: list[str] = []
    async with chromium() as browser:
        page = await browser.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("request", lambda req: requests.append(req.url))
        await page.goto(out.as_uri())
        chart = page.locator("svg#chart")
        assert await chart.count() == 1
        series = page.locator("svg#chart polyline.series")
        routes = {
            await series.nth(i).get_attribute("data-route") for i in range(await series.count())
        }
        box = await chart.bounding_box()
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "report-html.png"), full_page=True)
    assert errors == []
    assert requests == [out.as_uri()]  # self-contained: nothing else is fetched
    assert routes == {SHOW, LIST}
    assert box is not None and box["width"] > 100 and box["height"] > 50
