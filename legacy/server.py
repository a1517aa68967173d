"""Run the reference legacy monolith (`strangler legacy`)."""

from __future__ import annotations

from aiohttp import web

from extracted.schema import create_schema
from extracted.server import run_app
from legacy.app import create_app
from legacy.seed import seed_orders

__all__ = ["run"]


def run(listen: str, db_url: str, *, seed: int = 0) -> int:
    """Serve until SIGINT/SIGTERM (seeding `seed` orders into an empty DB first); 0 when stopped."""

    async def prepare() -> web.Application:
        await create_schema(db_url)
        if seed > 0:
            added = await seed_orders(db_url, seed)
            note = f"seeded {added} orders" if added else "database not empty: seed skipped"
            print(f"legacy: {note}", flush=True)
        return create_app(db_url)

    return run_app("legacy", "legacy monolith", listen, prepare)
