"""Which routes a shadow helper may run (shadow mode with both backends reachable by URL),
and whether `serve` runs helpers for a config (by default: when such a route is in it)."""

from __future__ import annotations

import pytest

from proxy.routes import RouteTable, offload_wanted, offloadable
from proxy.settings import loads

CONFIG = """
listen: 127.0.0.1:1
backends:
  legacy: {{{legacy}}}
  orders: {{{orders}}}
default_backend: legacy
limits: {{shadow_offload: true}}
routes:
  - name: r
    match: {{path: /api/*}}
    mode: {mode}
    candidate: orders
    canary: {{percent: 5}}
"""
URL = 'url: "http://127.0.0.1:2"'
APP = "handlers: extracted.app"


@pytest.mark.parametrize(
    ("mode", "legacy", "orders", "want"),
    [
        ("shadow", URL, URL, True),
        ("shadow", APP, URL, False),  # the helper never starts in-process apps
        ("shadow", URL, APP, False),
        ("canary", URL, URL, False),  # its rollback window and breaker live in the worker
        ("extracted", URL, URL, False),
    ],
)
def test_offloadable(mode: str, legacy: str, orders: str, want: bool) -> None:
    settings = loads(CONFIG.format(mode=mode, legacy=legacy, orders=orders))
    [route] = RouteTable(settings).routes
    assert offloadable(route, settings) is want


@pytest.mark.parametrize(
    ("limits", "mode", "orders", "want"),
    [
        ("", "shadow", URL, True),  # unset: a route that can use a helper gets one
        ("", "shadow", APP, False),
        ("", "canary", URL, False),
        ("", "legacy", URL, False),
        ("limits: {shadow_offload: false}", "shadow", URL, False),
        ("limits: {shadow_offload: true}", "legacy", URL, True),  # ready for a reload's
    ],
)
def test_offload_wanted(limits: str, mode: str, orders: str, want: bool) -> None:
    text = CONFIG.format(mode=mode, legacy=URL, orders=orders)
    text = text.replace("limits: {shadow_offload: true}", limits)
    if mode == "legacy":
        text = text.replace("    candidate: orders\n    canary: {percent: 5}\n", "")
    assert offload_wanted(loads(text)) is want
