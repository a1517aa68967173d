"""The pure diff engine: two decoded JSON values in, an ordered list of differences out.

`compare` walks both values with an explicit stack (no recursion, so any nesting depth is
fine), skips equal subtrees with a sound C-speed equality check, and never raises. Rules
(`CompareRules`) are compiled once into a path trie; nothing is parsed per call.

Paths are a JSONPath subset: `$`, `.name`, `["name"]`, `[3]`, and the wildcards `[*]` /
`.*`, which both match any array element or object member.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import chain, repeat, zip_longest
from math import ulp
from typing import TYPE_CHECKING, Any, Final, Literal

import orjson

from shadow.normalize import Normalizer, get_normalizer
from shadow.slots import slot_setters

if TYPE_CHECKING:
    from proxy.settings import CompareSettings

__all__ = [
    "WILDCARD",
    "CompareRules",
    "Comparison",
    "Difference",
    "DifferenceKind",
    "PathSyntaxError",
    "Segment",
    "compare",
    "format_path",
    "format_pattern",
    "parse_path",
]

DifferenceKind = Literal["changed", "added", "removed", "type"]
Segment = str | int | None  # None is the wildcard

WILDCARD: Final = None  # segment value standing for `[*]` / `.*` in parsed paths


class PathSyntaxError(ValueError):
    """A JSON path that is not in the supported subset."""

    def __init__(self, path: str, position: int, message: str) -> None:
        self.path = path
        self.position = position
        self.message = message
        super().__init__(f"bad JSON path {path!r} at {position}: {message}")


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
_NAME_FULL = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*\Z")
_INDEX = re.compile(r"\[(\d+)\]")
_QUOTED = re.compile(r"""\[\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)')\s*\]""")


def parse_path(path: str) -> tuple[Segment, ...]:
    """Segments of `path` (`str` key, `int` index, `None` wildcard); `PathSyntaxError` if bad."""
    text = path.strip()
    if not text.startswith("$"):
        raise PathSyntaxError(path, 0, "a path starts with '$'")
    segments: list[Segment] = []
    pos = 1
    while pos < len(text):
        char = text[pos]
        if char == ".":
            if text.startswith("*", pos + 1):
                segments.append(WILDCARD)
                pos += 2
                continue
            match = _NAME.match(text, pos + 1)
            if match is None:
                raise PathSyntaxError(path, pos + 1, "expected a member name or '*' after '.'")
            segments.append(match.group())
            pos = match.end()
        elif char == "[":
            if text.startswith("[*]", pos):
                segments.append(WILDCARD)
                pos += 3
                continue
            index = _INDEX.match(text, pos)
            if index is not None:
                segments.append(int(index.group(1)))
                pos = index.end()
                continue
            quoted = _QUOTED.match(text, pos)
            if quoted is None:
                raise PathSyntaxError(path, pos, "expected [N], [*] or a quoted member name")
            raw = quoted.group(1) if quoted.group(1) is not None else quoted.group(2)
            segments.append(re.sub(r"\\(.)", r"\1", raw))
            pos = quoted.end()
        else:
            raise PathSyntaxError(path, pos, f"unexpected {char!r}")
    return tuple(segments)


def _format_segment(segment: Segment) -> str:
    if segment is None:
        return "[*]"
    if type(segment) is int:
        return f"[{segment}]"
    if not isinstance(segment, str):  # not JSON, but compare must not fail on it
        segment = str(segment)
    if _NAME_FULL.match(segment):
        return "." + segment
    escaped = segment.replace("\\", "\\\\").replace('"', '\\"')
    return f'["{escaped}"]'


def format_path(segments: Iterable[Segment]) -> str:
    """The path string of `segments` (the inverse of `parse_path`)."""
    return "$" + "".join(_format_segment(s) for s in segments)


def format_pattern(segments: Iterable[Segment]) -> str:
    """The normalised path string of `segments`: every index shown as `[*]`."""
    return "$" + "".join("[*]" if type(s) is int else _format_segment(s) for s in segments)


@dataclass(frozen=True, slots=True)
class Difference:
    """One difference: where (concrete `path`, aggregatable `pattern`), what kind, both values.

    `primary` is None for `added`, `candidate` is None for `removed`.
    """

    path: str
    kind: DifferenceKind
    primary: Any
    candidate: Any
    pattern: str


@dataclass(frozen=True, slots=True)
class Comparison:
    """The verdict of one comparison and its differences in document order (capped)."""

    equal: bool
    differences: list[Difference] = field(default_factory=list)
    truncated: bool = False  # the walk stopped at `max_differences`; more may exist

    @property
    def patterns(self) -> tuple[str, ...]:
        """Distinct normalised paths of the differences, in first-seen order."""
        return tuple(dict.fromkeys(d.pattern for d in self.differences))

    @property
    def examples(self) -> tuple[Difference, ...]:
        """The first difference (in document order) for each distinct pattern."""
        first: dict[str, Difference] = {}
        for diff in self.differences:
            first.setdefault(diff.pattern, diff)
        return tuple(first.values())

    def without(
        self, patterns: Iterable[str], presence: Iterable[str] = ()
    ) -> tuple[Comparison, frozenset[str]]:
        """This comparison minus differences at (or under) `patterns`, and minus those
        exactly at `presence` (where a value's presence or shape varies, not what is inside
        it), and the patterns dropped."""
        drop = frozenset(patterns)
        there = frozenset(presence) - drop
        if not (drop or there) or not self.differences:
            return self, frozenset()
        kept: list[Difference] = []
        removed: set[str] = set()
        for diff in self.differences:
            hit = _covering_pattern(diff.pattern, drop) if drop else None
            if hit is None and diff.pattern in there:
                hit = diff.pattern
            if hit is None:
                kept.append(diff)
            else:
                removed.add(hit)
        if not removed:
            return self, frozenset()
        equal = not kept and not self.truncated
        return Comparison(equal, kept, self.truncated), frozenset(removed)


_set_fields = slot_setters(Difference, ("path", "kind", "primary", "candidate", "pattern"))


def _difference(path: str, kind: DifferenceKind, a: Any, b: Any, pattern: str) -> Difference:
    """`Difference(...)` without the frozen-dataclass `__init__` cost (hot when many differ)."""
    diff: Difference = object.__new__(Difference)
    set_path, set_kind, set_primary, set_candidate, set_pattern = _set_fields
    set_path(diff, path)
    set_kind(diff, kind)
    set_primary(diff, a)
    set_candidate(diff, b)
    set_pattern(diff, pattern)
    return diff


def _covering_pattern(pattern: str, drop: frozenset[str]) -> str | None:
    if pattern in drop:
        return pattern
    for cut in range(len(pattern) - 1, 0, -1):
        if pattern[cut] in ".[" and pattern[:cut] in drop:
            return pattern[:cut]
    return None


class _Node:
    """A node of the compiled rule trie: what applies at one path pattern."""

    __slots__ = ("children", "ignore", "normalizers", "unordered", "unordered_key", "wild")

    def __init__(self) -> None:
        self.children: dict[str | int, _Node] = {}
        self.wild: _Node | None = None
        self.ignore = False
        self.unordered = False
        self.unordered_key: str | None = None
        self.normalizers: tuple[Normalizer, ...] = ()

    def at(self, segments: Sequence[Segment]) -> _Node:
        """The node for `segments` below this one, created on demand."""
        node = self
        for segment in segments:
            if segment is None:
                if node.wild is None:
                    node.wild = _Node()
                node = node.wild
            else:
                child = node.children.get(segment)
                if child is None:
                    child = node.children[segment] = _Node()
                node = child
        return node


def _step(nodes: tuple[_Node, ...], segment: str | int) -> tuple[_Node, ...]:
    found: list[_Node] = []
    for node in nodes:
        child = node.children.get(segment)
        if child is not None:
            found.append(child)
        if node.wild is not None:
            found.append(node.wild)
    return tuple(found)


def _pairs(
    value: Mapping[str, Any] | Iterable[tuple[str, Any]],
) -> tuple[tuple[str, Any], ...]:
    items = value.items() if isinstance(value, Mapping) else value
    return tuple((str(path), item) for path, item in items)


@dataclass(frozen=True, slots=True)
class CompareRules:
    """How two values are compared; build once per route config (paths compile here)."""

    ignore_json_paths: Sequence[str] = ()
    unordered_arrays: Mapping[str, str | None] | Sequence[tuple[str, str | None]] = ()
    numeric_tolerance: float = 0.0
    normalizers: Mapping[str, str] | Sequence[tuple[str, str]] = ()
    ignore_headers: Sequence[str] = ("date", "server", "x-request-id")
    max_differences: int = 1000
    _root: tuple[_Node, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tolerance = float(self.numeric_tolerance)
        if not tolerance >= 0 or math.isinf(tolerance):
            raise ValueError(f"numeric_tolerance must be finite and >= 0, got {tolerance!r}")
        if self.max_differences < 1:
            raise ValueError("max_differences must be >= 1")
        ignore = tuple(self.ignore_json_paths)
        unordered = _pairs(self.unordered_arrays)
        normalizers = _pairs(self.normalizers)
        headers = tuple(h.strip().lower() for h in self.ignore_headers)
        root = _Node()
        for path in ignore:
            root.at(parse_path(path)).ignore = True
        for path, key in unordered:
            node = root.at(parse_path(path))
            node.unordered, node.unordered_key = True, key
        for path, name in normalizers:
            node = root.at(parse_path(path))
            node.normalizers = (*node.normalizers, get_normalizer(name))
        setattr_ = object.__setattr__
        setattr_(self, "ignore_json_paths", ignore)
        setattr_(self, "unordered_arrays", unordered)
        setattr_(self, "normalizers", normalizers)
        setattr_(self, "numeric_tolerance", tolerance)
        setattr_(self, "ignore_headers", headers)
        has_rules = root.children or root.wild is not None or ignore or unordered or normalizers
        setattr_(self, "_root", (root,) if has_rules else ())

    @classmethod
    def from_settings(cls, settings: CompareSettings) -> CompareRules:
        """Rules from a route's `proxy.settings.CompareSettings`."""
        return cls(
            ignore_json_paths=settings.ignore_json_paths,
            unordered_arrays=settings.unordered_arrays,
            numeric_tolerance=settings.numeric_tolerance,
            normalizers=settings.normalizers,
            ignore_headers=settings.ignore_headers,
        )


_DEFAULT_RULES: Final = CompareRules()
_MISSING: Final[Any] = object()
_FAST_DEPTH: Final = 64  # deeper subtrees are walked; C equality would hit the recursion limit
_SORT_KEYS: Final = orjson.OPT_SORT_KEYS

_OBJ, _ARR, _STR, _NUM, _BOOL, _NULL, _OTHER = range(7)
_SCALARS: Final = frozenset({str, int, float, bool, type(None)})
_NUMBERS: Final = frozenset({int, float})
_CLASSES: Final[dict[type, int]] = {
    dict: _OBJ,
    list: _ARR,
    str: _STR,
    int: _NUM,
    float: _NUM,
    bool: _BOOL,
    type(None): _NULL,
    Decimal: _NUM,
}


def _class_of(value: Any) -> int:
    found = _CLASSES.get(type(value))
    if found is not None:
        return found
    if isinstance(value, bool):
        return _BOOL
    if isinstance(value, int | float | Decimal):
        return _NUM
    if isinstance(value, str):
        return _STR
    if isinstance(value, Mapping):
        return _OBJ
    if isinstance(value, list | tuple):
        return _ARR
    return _OTHER


_Path = tuple[Any, str | int] | None  # (parent path, segment), linked from the leaf up
# primary, candidate, path, rules, depth, whether the equal-subtree shortcut may apply
_Frame = tuple[Any, Any, _Path, tuple[_Node, ...], int, bool]


def _same_tree(a: Any, b: Any) -> bool:
    """True only if `a` and `b` are equal JSON trees (bools never equal to numbers)."""
    try:
        if a != b:
            return False
        return _same_text(a, b)
    except Exception:  # recursion limit, 64-bit overflow, exotic types: walk instead
        return False


def _same_text(a: Any, b: Any) -> bool:
    """For `a == b`: whether their serialisations agree too, which rules out bool vs number.

    `==` holds, so the structure matches and leaves are pairwise `==`; identical
    serialisations rule out the one unsound case, True/False against 1/0 (and 1 vs 1.0,
    which the walk then accepts). Key order only matters for the cheaper first try.
    """
    dumps = orjson.dumps
    if dumps(a) == dumps(b):
        return True
    return dumps(a, option=_SORT_KEYS) == dumps(b, option=_SORT_KEYS)


def _bulk_same(held: list[tuple[int, _Frame]]) -> bool:
    """True only if every held frame holds two equal JSON trees (see `_same_tree`)."""
    return _same_text_safe([frame[0] for _, frame in held], [frame[1] for _, frame in held])


def _same_text_safe(a: list[Any], b: list[Any]) -> bool:
    """`_same_text` for lists of `==`-equal subtrees; False when they cannot be serialised."""
    try:
        return _same_text(a, b)
    except Exception:
        return False


def _numbers_equal(a: Any, b: Any, tolerance: float) -> bool:
    try:
        if a == b:
            return True
        if a != a and b != b:  # both NaN
            return True
        if tolerance:
            # In decimal, as the numbers are written: in binary 100.01 - 100 is
            # 0.010000000000005116, and a slack relative to the size of the numbers let
            # large ids and timestamps that differ by units pass as equal.
            if type(a) is float and type(b) is float:
                # Binary is off from decimal by under this: decide in binary when clear.
                gap = abs(a - b)
                margin = ulp(a) + ulp(b) + ulp(gap) + ulp(tolerance)
                if gap > tolerance + margin:
                    return False
                if gap < tolerance - margin:
                    return True
            return bool(abs(_exact(a) - _exact(b)) <= _exact(tolerance))
    except Exception:  # infinities, Decimal NaN: exact equality already failed
        return False
    return False


def _exact(number: Any) -> Decimal:
    """`number` as a Decimal: a float by its shortest repr (the digits JSON carried)."""
    return Decimal(repr(number)) if type(number) is float else Decimal(number)


def _leaf_equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return a is b


def _canonical(value: Any) -> Any:
    kind = _CLASSES.get(type(value))
    if kind == _STR:
        return ("s", value)
    if kind == _NUM:
        return ("n", value) if value == value else ("nan",)
    if kind == _BOOL:
        return ("b", value)
    if kind == _NULL:
        return ("z",)
    try:
        return ("j", orjson.dumps(value, option=_SORT_KEYS))
    except Exception:
        return ("id", id(value))


def _match_unordered(
    a: list[Any], b: list[Any], key: str | None
) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Pairs (primary index, candidate index), unmatched primary and candidate indexes."""
    if key is None:
        return _match_groups(list(range(len(a))), list(range(len(b))), a, b)
    groups_a: dict[Any, list[int]] = {}
    groups_b: dict[Any, list[int]] = {}
    for items, groups in ((a, groups_a), (b, groups_b)):
        for index, x in enumerate(items):
            k = _canonical(x[key]) if type(x) is dict and key in x else _MISSING
            groups.setdefault(k, []).append(index)
    pairs: list[tuple[int, int]] = []
    only_a: list[int] = []
    for k, left in groups_a.items():
        right = groups_b.pop(k, [])
        if len(left) == 1 and len(right) == 1:
            pairs.append((left[0], right[0]))
            continue
        # A key shared by several elements, or none: equal elements pair first, then the
        # rest in order, so that near-equal elements still show field-level differences.
        paired, rest_a, rest_b = _match_groups(left, right, a, b)
        pairs += paired
        only_a += rest_a
        groups_b[k] = rest_b
    only_b = [j for right in groups_b.values() for j in right]
    pairs.sort()
    only_a.sort()
    only_b.sort()
    return pairs, only_a, only_b


def _match_groups(
    left: list[int], right: list[int], a: list[Any], b: list[Any]
) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Elements `left` of `a` paired with elements `right` of `b`: equal values first, then
    the leftovers in order; and the unpaired ones of each side."""
    slots: dict[Any, deque[int]] = {}
    for j in right:
        slots.setdefault(_canonical(b[j]), deque()).append(j)
    pairs: list[tuple[int, int]] = []
    rest_a: list[int] = []
    used: set[int] = set()
    for i in left:
        queue = slots.get(_canonical(a[i]))
        if queue:
            j = queue.popleft()
            used.add(j)
            pairs.append((i, j))
        else:
            rest_a.append(i)
    rest_b = [j for j in right if j not in used]
    paired = min(len(rest_a), len(rest_b))
    pairs += zip(rest_a[:paired], rest_b[:paired], strict=True)
    return pairs, rest_a[paired:], rest_b[paired:]


def _unordered_entries(a: Any, b: Any, key: str | None) -> list[tuple[str | int, Any, Any]]:
    """Entries (index, primary, candidate) of two arrays compared as a (keyed) multiset."""
    pairs, only_a, only_b = _match_unordered(list(a), list(b), key)
    entries: list[tuple[str | int, Any, Any]] = [(i, a[i], b[j]) for i, j in pairs]
    entries += [(i, a[i], _MISSING) for i in only_a]
    entries.sort(key=lambda entry: entry[0])
    entries += [(j, _MISSING, b[j]) for j in only_b]
    return entries


_KEY_TEXT: dict[str, str] = {}  # member name -> its path text; bounded below


def _render(path: _Path) -> tuple[str, str]:
    """The concrete path and the normalised pattern of a linked path."""
    concrete: list[str] = []
    pattern: list[str] = []
    cache = _KEY_TEXT
    while path is not None:
        path, segment = path
        if type(segment) is int:
            concrete.append(f"[{segment}]")
            pattern.append("[*]")
        else:
            text = cache.get(segment)  # type: ignore[arg-type]
            if text is None:
                text = _format_segment(segment)
                if len(cache) >= 4096:
                    cache.clear()
                cache[segment] = text  # type: ignore[index]
            concrete.append(text)
            pattern.append(text)
    concrete.append("$")
    pattern.append("$")
    concrete.reverse()
    pattern.reverse()
    return "".join(concrete), "".join(pattern)


def _merge(nodes: tuple[_Node, ...]) -> tuple[bool, tuple[Normalizer, ...], _Node | None]:
    ignore = False
    normalizers: tuple[Normalizer, ...] = ()
    unordered: _Node | None = None
    for node in nodes:
        ignore = ignore or node.ignore
        normalizers += node.normalizers
        if unordered is None and node.unordered:
            unordered = node
    return ignore, normalizers, unordered


def compare(primary: Any, candidate: Any, rules: CompareRules = _DEFAULT_RULES) -> Comparison:
    """Compare two decoded JSON values under `rules`; never raises."""
    result = _walk(primary, candidate, rules, True)
    if result is None:  # a subtree taken as equal was not (True against 1): walk it all
        result = _walk(primary, candidate, rules, False)
        assert result is not None  # nothing is deferred without `defer`
    return result


def _walk(primary: Any, candidate: Any, rules: CompareRules, defer: bool) -> Comparison | None:
    """The walk. With `defer`, `==`-equal subtrees are skipped at once and checked together
    at the end (None if that check fails); otherwise they are checked per container."""
    deferred_a: list[Any] = []
    deferred_b: list[Any] = []
    limit = rules.max_differences
    tolerance = rules.numeric_tolerance
    diffs: list[Difference] = []
    truncated = False

    def emit(path: _Path, kind: DifferenceKind, a: Any, b: Any) -> None:
        concrete, pattern = _render(path)
        diffs.append(_difference(concrete, kind, a, b, pattern))

    stack: list[_Frame] = [(primary, candidate, None, rules._root, 0, True)]
    pop = stack.pop
    classes = _CLASSES
    scalars = _SCALARS
    numbers = _NUMBERS
    while stack:
        if len(diffs) >= limit:
            truncated = True
            break
        a, b, path, nodes, depth, check = pop()
        shown_a, shown_b = a, b  # differences show the values as they were, not normalised
        unordered: _Node | None = None
        if nodes:
            ignore, normalizers, unordered = _merge(nodes)
            if ignore:
                continue
            if normalizers and a is not _MISSING and b is not _MISSING:
                for normalize in normalizers:
                    try:
                        a, b = normalize(a), normalize(b)
                    except Exception:  # a normaliser bug must not break the comparison
                        a, b = shown_a, shown_b
                        break
        if a is _MISSING:
            emit(path, "added", None, b)
            continue
        if b is _MISSING:
            emit(path, "removed", a, None)
            continue
        ca = classes.get(type(a))
        if ca is None:
            ca = _class_of(a)
        cb = classes.get(type(b))
        if cb is None:
            cb = _class_of(b)
        if ca != cb:
            emit(path, "type", shown_a, shown_b)
            continue
        if ca in (_OBJ, _ARR):
            if a is b or (check and depth < _FAST_DEPTH and _same_tree(a, b)):
                continue
            deeper = depth + 1
            fast = deeper < _FAST_DEPTH
            entries: Iterable[tuple[str | int, Any, Any]]
            if ca == _OBJ:
                entries = zip(a, a.values(), map(b.get, a, repeat(_MISSING)), strict=True)
                if a.keys() != b.keys():
                    extra = [(key, _MISSING, y) for key, y in b.items() if key not in a]
                    entries = chain(entries, extra)
            elif unordered is not None:
                entries = _unordered_entries(a, b, unordered.unordered_key)
            elif len(a) == len(b):
                entries = zip(range(len(a)), a, b, strict=True)
            else:
                entries = zip_longest(range(max(len(a), len(b))), a, b, fillvalue=_MISSING)
            frames: list[_Frame] = []
            held: list[tuple[int, _Frame]] = []  # `==`-equal containers, verified in bulk
            for segment, x, y in entries:
                if x is y:
                    continue
                kind = type(x)
                other = type(y)
                # Equal scalars are equal under any rules (rules only loosen), and ints
                # equal to floats are the same number.
                if (kind is other and kind in scalars) or (kind in numbers and other in numbers):
                    if x == y:
                        continue
                    if not frames and not held and not nodes:
                        # Nothing earlier in document order is pending: report it right away.
                        if kind in numbers and _numbers_equal(x, y, tolerance):
                            continue
                        emit((path, segment), "changed", x, y)
                        if len(diffs) >= limit:
                            break
                        continue
                elif fast and kind is other and (kind is dict or kind is list):
                    try:
                        same = x == y
                    except RecursionError:
                        same = False
                    if same:
                        if defer:
                            deferred_a.append(x)
                            deferred_b.append(y)
                            continue
                        step = _step(nodes, segment) if nodes else ()
                        held.append((len(frames), (x, y, (path, segment), step, deeper, True)))
                        continue
                step = _step(nodes, segment) if nodes else ()
                # A subtree that failed `==` above cannot take the shortcut below.
                frames.append((x, y, (path, segment), step, deeper, not fast))
            if held and not _bulk_same(held):
                for offset, (position, frame) in enumerate(held):
                    frames.insert(position + offset, frame)
            if len(diffs) >= limit:
                truncated = True
                break
            frames.reverse()
            stack.extend(frames)
        elif ca == _NUM:
            if not _numbers_equal(a, b, tolerance):
                emit(path, "changed", shown_a, shown_b)
        elif not _leaf_equal(a, b):
            emit(path, "changed", shown_a, shown_b)
    if deferred_a and not _same_text_safe(deferred_a, deferred_b):
        return None
    return Comparison(not diffs and not truncated, diffs, truncated)
