"""Minimal YAML edits: only the changed values differ, every other byte is kept."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from proxy.settings import loads
from proxy.yamledit import (
    YamlEditError,
    format_percent,
    set_route_stage,
    unified_diff,
    write_atomic,
)

CONFIG = """\
# header comment

listen: 127.0.0.1:8080
backends:
  legacy: {url: "http://127.0.0.1:8081"}   # flow style
  orders:
    handlers: extracted.app
default_backend: legacy

routes:
  # a comment before the first route
  - name: quoted
    match: {path: /a, methods: [GET]}
    candidate: orders
    mode: "shadow"          # quoted, with a comment
    canary: {percent: 5, sticky: {header: X-User-Id}}

  - name: block
    match:
      path: /b
    candidate: orders


    mode: shadow   # two blank lines above

    canary:
      sticky: {cookie: session_id}   # no percent yet
    promotion: {steps: [1, 5, 100]}

  - name: bare
    match:
        path: /c            # four-space indent
    candidate: orders
"""


def _changed_lines(old: str, new: str) -> list[tuple[str, str]]:
    a, b = old.splitlines(), new.splitlines()
    assert len(a) == len(b)
    return [(x, y) for x, y in zip(a, b, strict=True) if x != y]


def test_flow_mapping_and_quotes_kept() -> None:
    new = set_route_stage(CONFIG, "quoted", mode="canary", percent=25)
    assert _changed_lines(CONFIG, new) == [
        ('    mode: "shadow"          # quoted, with a comment',
         '    mode: "canary"          # quoted, with a comment'),
        ("    canary: {percent: 5, sticky: {header: X-User-Id}}",
         "    canary: {percent: 25, sticky: {header: X-User-Id}}"),
    ]  # fmt: skip
    route = loads(new).routes[0]
    assert (route.mode, route.canary.percent) == ("canary", 25.0)


def test_comment_column_kept_when_value_grows() -> None:
    new = set_route_stage(CONFIG, "block", mode="extracted")
    assert _changed_lines(CONFIG, new) == [
        (
            "    mode: shadow   # two blank lines above",
            "    mode: extracted # two blank lines above",
        )
    ]


def test_missing_percent_inserted_into_block_mapping() -> None:
    new = set_route_stage(CONFIG, "block", mode="canary", percent=1)
    diff = unified_diff(CONFIG, new, "routes.yaml")
    assert "-    mode: shadow   # two blank lines above" in diff
    assert "+    mode: canary   # two blank lines above" in diff
    assert "+      percent: 1\n" in diff
    changes = [line for line in diff.splitlines()[2:] if line[:1] in "+-"]
    assert len(changes) == 3
    assert loads(new).routes[1].canary.percent == 1.0
    assert loads(new).routes[1].canary.sticky_cookie == "session_id"


def test_missing_mode_and_canary_inserted_with_the_files_indent() -> None:
    new = set_route_stage(CONFIG, "bare", mode="canary", percent=2.5)
    diff = unified_diff(CONFIG, new, "routes.yaml").splitlines()[2:]
    assert not [line for line in diff if line.startswith("-")]
    added = [line[1:] for line in diff if line.startswith("+")]
    assert added == ["    mode: canary", "    canary:", "        percent: 2.5"]
    route = loads(new).routes[2]
    assert (route.mode, route.canary.percent) == ("canary", 2.5)


def test_diff_headers_name_the_file_like_git() -> None:
    new = set_route_stage(CONFIG, "bare", mode="canary", percent=2.5)
    for path, name in (
        ("routes.yaml", "routes.yaml"),
        ("/etc/strangler/routes.yaml", "etc/strangler/routes.yaml"),
    ):
        head = unified_diff(CONFIG, new, path).splitlines()[:2]
        assert head == [f"--- a/{name}", f"+++ b/{name}"]


def test_no_change_is_identity() -> None:
    assert set_route_stage(CONFIG, "quoted", mode="shadow", percent=5.0) == CONFIG
    assert unified_diff(CONFIG, CONFIG, "x") == ""


def test_unknown_route_and_bad_yaml() -> None:
    with pytest.raises(YamlEditError, match="no route named 'nope'"):
        set_route_stage(CONFIG, "nope", mode="shadow")
    with pytest.raises(YamlEditError, match="cannot parse"):
        set_route_stage("routes: [\n", "x", mode="shadow")


def test_repository_config_round_trip() -> None:
    path = Path(__file__).parents[3] / "config" / "routes.yaml"
    text = path.read_text(encoding="utf-8")
    new = set_route_stage(text, "order-show", mode="canary", percent=50)
    assert _changed_lines(text, new) == [
        ("      percent: 5                      # share of keys served by the candidate",
         "      percent: 50                     # share of keys served by the candidate"),
    ]  # fmt: skip


def test_format_percent() -> None:
    assert [format_percent(v) for v in (1, 5.0, 2.5, 0.1)] == ["1", "5", "2.5", "0.1"]


def test_write_atomic_keeps_mode(tmp_path: Path) -> None:
    target = tmp_path / "routes.yaml"
    target.write_text("a: 1\n")
    os.chmod(target, 0o600)
    write_atomic(str(target), "a: 2\n")
    assert target.read_text() == "a: 2\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["routes.yaml"]


def test_crlf_line_endings_kept() -> None:
    text = CONFIG.replace("\n", "\r\n")
    new = set_route_stage(text, "block", mode="extracted")
    assert new == text.replace(
        "    mode: shadow   # two blank lines above", "    mode: extracted # two blank lines above"
    )
    plain = text.replace("    mode: shadow   # two blank lines above", "    mode: shadow")
    assert set_route_stage(plain, "block", mode="legacy").count("\r\n") == text.count("\r\n")
    assert "    mode: legacy\r\n" in set_route_stage(plain, "block", mode="legacy")
    inserted = set_route_stage(text, "bare", mode="canary", percent=1)
    assert inserted.count("\n") == inserted.count("\r\n") == text.count("\r\n") + 3


def test_write_atomic_writes_through_a_symlink(tmp_path: Path) -> None:
    """A deployment links its live config to a checkout: the checkout's file changes and the
    link stays (it was replaced by a regular file, the checkout left behind)."""
    real = tmp_path / "repo" / "routes.yaml"
    real.parent.mkdir()
    real.write_text("a: 1\n")
    link = tmp_path / "live.yaml"
    link.symlink_to(real)
    write_atomic(str(link), "a: 2\n")
    assert link.is_symlink() and real.read_text() == "a: 2\n"


def test_a_mode_from_a_merge_key_is_refused_with_a_reason() -> None:
    text = """\
base: &base
  mode: shadow
routes:
  - <<: *base
    name: r
    match: {path: /x}
"""
    with pytest.raises(YamlEditError, match="mode of route 'r' comes from a merge key"):
        set_route_stage(text, "r", mode="legacy")


@pytest.mark.parametrize("eol", ["\n", "\r\n"])
def test_a_last_route_without_a_final_newline_can_be_stepped(eol: str) -> None:
    """A file ending without a newline on the last route's mode (or name): the inserted
    lines were glued to it (`mode: canary    canary:`) and every such step was refused."""
    lines = ["routes:", "  - name: a", "    candidate: orders", "    mode: shadow"]
    text = eol.join(lines)
    canary = set_route_stage(text, "a", mode="canary", percent=1)
    assert canary == eol.join(
        [*lines[:3], "    mode: canary", "    canary:", "      percent: 1", ""]
    )
    bare = eol.join([*lines, "  - name: b"])
    started = set_route_stage(bare, "b", mode="shadow")
    assert started == bare + eol + "    mode: shadow" + eol
    both = set_route_stage(bare, "b", mode="canary", percent=5)
    assert both == eol.join([bare, "    mode: canary", "    canary:", "      percent: 5", ""])
