"""docs/operations.md: the Kubernetes example parses and its embedded config is valid."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from proxy.settings import load

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "operations.md"


def _manifests() -> list[dict[str, Any]]:
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"^```yaml\n(.*?)^```", text, re.M | re.S)
    docs: list[dict[str, Any]] = []
    for block in blocks:
        docs += [d for d in yaml.safe_load_all(block) if d is not None]
    return docs


def test_kubernetes_example_has_the_three_objects() -> None:
    kinds = sorted(d["kind"] for d in _manifests())
    assert kinds == ["ConfigMap", "Deployment", "Service"]


def test_the_configmap_holds_a_valid_config(tmp_path: Path) -> None:
    (cm,) = [d for d in _manifests() if d["kind"] == "ConfigMap"]
    path = tmp_path / "routes.yaml"
    path.write_text(cm["data"]["routes.yaml"], encoding="utf-8")
    settings = load(str(path))
    assert settings.store.url.startswith("postgresql+psycopg://")
    assert "@" in settings.store.url and ":" not in settings.store.url.split("//")[1].split("@")[0]


def test_the_deployment_mounts_the_configmap_and_probes_the_admin_port() -> None:
    (dep,) = [d for d in _manifests() if d["kind"] == "Deployment"]
    spec = dep["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["args"][:4] == ["strangler", "serve", "--config", "/etc/strangler/routes.yaml"]
    assert "--watch" in container["args"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    assert spec["volumes"][0]["configMap"]["name"] == "strangler-config"
    assert "subPath" not in container["volumeMounts"][0]
