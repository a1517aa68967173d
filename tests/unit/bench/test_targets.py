"""Generated configs for the bench targets."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from bench.profile import summarise_collapsed
from bench.table import PROXY_COLUMNS, format_table
from bench.targets import json_body, nginx_proxy_conf, nginx_upstream_conf, strangler_config


def test_body_is_exactly_one_kilobyte_of_json_safe_for_nginx() -> None:
    body = json_body()
    assert len(body.encode()) == 1024
    assert json.loads(body)["id"] == 42
    assert not set("'$\\") & set(body)


def test_upstream_conf_keeps_everything_in_the_temp_dir(tmp_path: Path) -> None:
    conf = nginx_upstream_conf(tmp_path, "up", 4321, json_body())
    assert "daemon off;" in conf
    assert "worker_processes 1;" in conf
    assert "access_log off;" in conf
    assert "listen 127.0.0.1:4321;" in conf
    assert f"pid {tmp_path}/up.pid;" in conf
    assert conf.count("{") == conf.count("}")


def test_proxy_conf_uses_upstream_keepalive(tmp_path: Path) -> None:
    conf = nginx_proxy_conf(tmp_path, "px", 5000, 4321, workers=2)
    assert "worker_processes 2;" in conf
    assert "server 127.0.0.1:4321;" in conf
    assert "keepalive 256;" in conf
    assert 'proxy_set_header Connection "";' in conf


def test_strangler_config_is_valid_yaml_in_legacy_mode(tmp_path: Path) -> None:
    doc = yaml.safe_load(strangler_config(tmp_path, 7000, 7001, "http://127.0.0.1:4321"))
    assert doc["listen"] == "127.0.0.1:7000"
    assert doc["admin"] == {"listen": "127.0.0.1:7001"}
    assert doc["backends"]["legacy"]["url"] == "http://127.0.0.1:4321"
    assert doc["routes"] == [{"name": "bench", "match": {"path": "/bench/*"}, "mode": "legacy"}]
    assert doc["store"]["url"].endswith("/bench.db")


def test_table_aligns_rows_and_prints_notes() -> None:
    rows: list[dict[str, object]] = [
        {"target": "direct", "connections": 1, "rps": 12345.6, "p50_ms": 0.01},
        {"target": "strangler-1w", "connections": 64, "note": "n/a (failed to start: boom)"},
    ]
    lines = format_table(rows, PROXY_COLUMNS).splitlines()
    assert lines[0].startswith("target")
    assert "12,346" in lines[2]
    assert lines[3].endswith("n/a (failed to start: boom)")
    assert len({len(line) for line in lines[:3]}) == 1


def test_collapsed_stacks_summary() -> None:
    text = summarise_collapsed(["main;loop;parse 3", "main;loop;write 1", "garbage"])
    assert text.startswith("4 samples")
    assert "75.0  parse" in text
    assert "100.0  main" in text
