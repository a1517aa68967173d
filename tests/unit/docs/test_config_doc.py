"""docs/config.md documents every key of the config's JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
SCHEMA = ROOT / "proxy" / "routes.schema.json"
DOC = ROOT / "docs" / "config.md"


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """`node` with its `$ref` chain merged in (local keys win)."""
    while "$ref" in node:
        target = dict(defs[node["$ref"].rsplit("/", 1)[-1]])
        target.update({k: v for k, v in node.items() if k != "$ref"})
        node = target
    return node


def schema_keys(node: dict[str, Any], defs: dict[str, Any], prefix: str = "") -> list[str]:
    """Every key as a dotted path: `routes[].shadow.percent`, `backends.<name>.url`."""
    node = _resolve(node, defs)
    keys: list[str] = []
    types = node.get("type")
    if types == "array" or (isinstance(types, list) and "array" in types):
        items = _resolve(node.get("items", {}), defs)
        for name, sub in items.get("properties", {}).items():
            keys.append(f"{prefix}[].{name}")
            keys += schema_keys(sub, defs, f"{prefix}[].{name}")
    for name, sub in node.get("properties", {}).items():
        path = f"{prefix}.{name}" if prefix else name
        keys.append(path)
        keys += schema_keys(sub, defs, path)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        for name, sub in _resolve(extra, defs).get("properties", {}).items():
            path = f"{prefix}.<name>.{name}"
            keys.append(path)
            keys += schema_keys(sub, defs, path)
    return keys


def _schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA.read_text(encoding="utf-8"))
    return loaded


def test_the_walk_reaches_nested_keys() -> None:
    schema = _schema()
    keys = set(schema_keys(schema, schema["$defs"]))
    for key in (
        "listen",
        "backends.<name>.connect_timeout",
        "routes[].shadow.max_concurrency",
        "routes[].canary.sticky.cookie",
        "limits.max_url_bytes",
    ):
        assert key in keys
    assert len(keys) >= 60


def test_every_schema_key_is_documented() -> None:
    schema = _schema()
    doc = DOC.read_text(encoding="utf-8")
    missing = [k for k in schema_keys(schema, schema["$defs"]) if f"`{k}`" not in doc]
    assert not missing, f"docs/config.md lacks these config keys: {', '.join(missing)}"


def test_config_schema_copy_is_identical() -> None:
    copy = ROOT / "config" / "routes.schema.json"
    assert json.loads(copy.read_text(encoding="utf-8")) == _schema()
