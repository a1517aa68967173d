"""The shadow helper's reloads (SIGHUP): overlapping ones apply in the order they came."""

from __future__ import annotations

import asyncio
from pathlib import Path

from proxy.settings import Settings, load
from proxy.shadow_worker import ShadowHelper

CONFIG = """\
backends:
  legacy:
    url: http://127.0.0.1:9
default_backend: legacy
"""


async def test_overlapping_reloads_end_on_the_newest_config(tmp_path: Path) -> None:
    """A rollback sends SIGHUPs in quick succession: the first reload (of the refused
    config) still building its backends when the second (of the config rolled back to)
    finished, the helper ended on the refused one."""
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(CONFIG + "# refused\n")
    helper = ShadowHelper(load(str(cfg)))
    applied: list[str] = []
    first_in, release = asyncio.Event(), asyncio.Event()

    async def build(settings: Settings) -> None:  # a first build that takes a while
        if not first_in.is_set():
            first_in.set()
            await release.wait()
        applied.append(settings.version)

    helper._build = build  # type: ignore[method-assign]
    refused = asyncio.create_task(helper.reload())
    await first_in.wait()
    cfg.write_text(CONFIG + "# rolled back to\n")
    newest = load(str(cfg)).version
    rolled_back = asyncio.create_task(helper.reload())
    for _ in range(5):  # the second reload runs as far as it can (no timer involved)
        await asyncio.sleep(0)
    release.set()
    await asyncio.wait_for(asyncio.gather(refused, rolled_back), 5)
    assert applied[-1] == newest
    await helper.proxy.close_backends()
