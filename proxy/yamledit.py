"""Minimal edits of the routing YAML: a route's mode and canary share, nothing else touched.

ruamel.yaml's round-trip parser locates the values (line and column of every key and
scalar); the change is spliced into the original text, so comments, blank lines, key
order, quoting, flow and block styles all stay byte for byte. Each edit is checked by
parsing the result again: the documents must differ only in the values that were set.
"""

from __future__ import annotations

import difflib
import io
import os
import re
import tempfile
from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

__all__ = ["YamlEditError", "format_percent", "set_route_stage", "unified_diff", "write_atomic"]


class YamlEditError(Exception):
    """The file cannot be edited safely (route missing, unusual layout, unparsable YAML)."""


@dataclass(frozen=True, slots=True)
class _Splice:
    start: int
    end: int
    text: str


def format_percent(value: float) -> str:
    """A percentage as YAML writes it best: `5`, `2.5`."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def set_route_stage(text: str, route: str, *, mode: str, percent: float | None = None) -> str:
    """`text` with `route`'s `mode` (and `canary.percent`, when given) set; all else identical."""
    doc = _load_rt(text)
    node = _find_route(doc, route)
    lines = _LineIndex(text)
    splices: list[_Splice] = []
    if node.fa.flow_style():
        raise YamlEditError(f"route {route!r} is written in flow style; edit it by hand")
    if "mode" in node:
        if node.get("mode") != mode:
            splices.append(_replace_scalar(text, lines, node, "mode", mode, flow=False))
        anchor_line = _position(node, "mode")[0]
    else:
        anchor_line = node.lc.value("name")[0]
        at = lines.after(anchor_line)
        splices.append(_Splice(at, at, f"{_indent(node)}mode: {mode}\n"))
    if percent is not None:
        splices.extend(_set_percent(text, lines, node, percent, anchor_line))
    at_end = [i for i, s in enumerate(splices) if s.start == len(text)]
    if at_end and text and not text.endswith("\n"):  # what is inserted at the end starts a line
        first = splices[at_end[0]]
        splices[at_end[0]] = _Splice(first.start, first.end, "\n" + first.text)
    if "\r\n" in text:  # inserted lines follow the file's line endings
        splices = [_Splice(s.start, s.end, s.text.replace("\n", "\r\n")) for s in splices]
    new = text
    # From the end, so offsets stay valid; at one offset the first-listed ends up first.
    for _, s in sorted(enumerate(splices), key=lambda p: (p[1].start, p[0]), reverse=True):
        new = new[: s.start] + s.text + new[s.end :]
    _verify(text, new, route, mode, percent)
    return new


def unified_diff(old: str, new: str, path: str) -> str:
    """The change as a unified diff (empty when nothing changed), headed like git's:
    `a/PATH` and `b/PATH`, with an absolute path's leading slash dropped as git does."""
    name = path.lstrip("/")
    return "".join(
        difflib.unified_diff(
            old.splitlines(keepends=True),
            new.splitlines(keepends=True),
            fromfile=f"a/{name}",
            tofile=f"b/{name}",
        )
    )


def write_atomic(path: str, text: str) -> None:
    """Replace the file at `path` with `text` in one rename, keeping its permission bits."""
    target = os.path.realpath(path)  # a symlinked config is written where it points
    directory = os.path.dirname(target)
    try:
        mode = os.stat(target).st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(prefix=".strangler-", suffix=".yaml.tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


# --- locating ----------------------------------------------------------------------------


class _LineIndex:
    """Offsets of line starts, to turn ruamel's (line, column) into string offsets."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.starts = [0] + [m.end() for m in re.finditer(r"\n", text)]

    def offset(self, line: int, column: int) -> int:
        return self.starts[line] + column

    def after(self, line: int) -> int:
        """Offset of the start of the line after `line` (end of text if none)."""
        return self.starts[line + 1] if line + 1 < len(self.starts) else len(self.text)


def _load_rt(text: str) -> Any:
    try:
        return YAML(typ="rt").load(text)
    except YAMLError as e:
        raise YamlEditError(f"cannot parse the YAML: {str(e).splitlines()[0]}") from None


def _find_route(doc: Any, route: str) -> CommentedMap:
    routes = doc.get("routes") if isinstance(doc, CommentedMap) else None
    if not isinstance(routes, CommentedSeq):
        raise YamlEditError("the config has no routes list")
    for item in routes:
        if isinstance(item, CommentedMap) and item.get("name") == route:
            return item
    raise YamlEditError(f"no route named {route!r} in the file")


def _indent(node: CommentedMap) -> str:
    return " " * int(node.lc.col)


def _step(node: CommentedMap) -> int:
    """The indentation step of the file, from a nested block mapping of the route."""
    for key, value in node.items():
        if isinstance(value, CommentedMap) and not value.fa.flow_style() and value:
            return max(1, int(value.lc.col) - int(node.lc.key(key)[1]))
    return 2


def _scalar_end(text: str, start: int, *, flow: bool) -> int:
    quote = text[start] if start < len(text) else ""
    if quote == '"':
        i = start + 1
        while i < len(text) and text[i] != '"':
            i += 2 if text[i] == "\\" else 1
        return i + 1
    if quote == "'":
        i = start + 1
        while i < len(text):
            if text[i] == "'":
                if text[i + 1 : i + 2] == "'":
                    i += 2
                    continue
                return i + 1
            i += 1
        return i
    stop = re.compile(r"[ \t]#|\r|\n|$" + (r"|[,}\]]" if flow else ""))
    m = stop.search(text, start)
    end = m.start() if m else len(text)
    while end > start and text[end - 1] in " \t":
        end -= 1
    return end


def _position(node: CommentedMap, key: str) -> tuple[int, int]:
    """Where `key`'s value is written in this mapping itself (line, column)."""
    try:
        line, column = node.lc.value(key)
    except KeyError:  # inherited through a merge key: written somewhere shared
        raise YamlEditError(
            f"{key} of route {node.get('name')!r} comes from a merge key (<<); edit it by hand"
        ) from None
    return int(line), int(column)


def _replace_scalar(
    text: str, lines: _LineIndex, node: CommentedMap, key: str, value: str, *, flow: bool
) -> _Splice:
    line, column = _position(node, key)
    start = lines.offset(line, column)
    end = _scalar_end(text, start, flow=flow)
    old = text[start:end]
    new = f"{old[0]}{value}{old[0]}" if old[:1] in ("'", '"') else value
    # Keep a trailing comment in its column when the padding allows it.
    pad = re.match(r"[ \t]*", text[end:])
    padding = pad.group(0) if pad else ""
    if padding and text[end + len(padding) : end + len(padding) + 1] == "#" and "\t" not in padding:
        width = max(1, len(padding) - (len(new) - len(old)))
        return _Splice(start, end + len(padding), new + " " * width)
    return _Splice(start, end, new)


def _set_percent(
    text: str, lines: _LineIndex, node: CommentedMap, percent: float, anchor_line: int
) -> list[_Splice]:
    value = format_percent(percent)
    canary = node.get("canary")
    if "canary" not in node:
        indent = _indent(node)
        block = f"{indent}canary:\n{indent}{' ' * _step(node)}percent: {value}\n"
        at = lines.after(anchor_line)
        return [_Splice(at, at, block)]
    if not isinstance(canary, CommentedMap):
        raise YamlEditError(f"route {node.get('name')!r}: canary is not a mapping")
    flow = canary.fa.flow_style()
    if "percent" in canary:
        if _same_number(canary.get("percent"), percent):
            return []
        return [_replace_scalar(text, lines, canary, "percent", value, flow=flow)]
    if flow:
        brace = lines.offset(canary.lc.line, canary.lc.col)
        if text[brace : brace + 1] != "{":
            raise YamlEditError(f"route {node.get('name')!r}: cannot locate the canary mapping")
        sep = ", " if canary else ""
        return [_Splice(brace + 1, brace + 1, f"percent: {value}{sep}")]
    first_line, first_col = canary.lc.key(next(iter(canary)))
    at = lines.offset(first_line, 0)
    return [_Splice(at, at, f"{' ' * first_col}percent: {value}\n")]


def _same_number(old: Any, new: float) -> bool:
    return isinstance(old, int | float) and not isinstance(old, bool) and float(old) == new


# --- checking ----------------------------------------------------------------------------


def _plain(text: str) -> Any:
    return YAML(typ="safe", pure=True).load(io.StringIO(text))


def _verify(old: str, new: str, route: str, mode: str, percent: float | None) -> None:
    try:
        before, after = _plain(old), _plain(new)
    except YAMLError as e:  # pragma: no cover - a bug in the splicing
        raise YamlEditError(f"the edit would break the YAML: {str(e).splitlines()[0]}") from None
    for item in before.get("routes") or []:
        if isinstance(item, dict) and item.get("name") == route:
            item["mode"] = mode
            canary = item.setdefault("canary", {}) if percent is not None else {}
            if percent is not None and not _same_number(canary.get("percent"), percent):
                canary["percent"] = percent
    if before != after:  # pragma: no cover - a bug in the splicing
        raise YamlEditError(f"refusing an edit of route {route!r} that changes more than asked")
