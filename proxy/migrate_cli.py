"""Click wrappers for `strangler migrate`: status, advance, promote, rollback, watch."""

from __future__ import annotations

import click

__all__ = ["register"]


def register(group: click.Group) -> None:
    """Attach the migrate subcommands to the `migrate` group."""
