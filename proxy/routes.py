"""The route table: ordered first-match routes compiled once per config.

Path patterns are `/exact`, `/a/{param}/b` (a parameter is one whole, non-empty segment)
and `/prefix/*` (the prefix itself and anything below it). All patterns go into one
segment trie, so a lookup costs one dict probe per path segment however many routes there
are; the few routes whose path matches are then checked in file order for method, header
and query matchers. Nothing here parses or compiles per request.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

if TYPE_CHECKING:
    from proxy.settings import Mode, RouteSettings, Settings

__all__ = [
    "PathPattern",
    "Route",
    "RouteTable",
    "offload_wanted",
    "offloadable",
    "parse_pattern",
    "sticky_key",
]

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_BAD_CHARS = re.compile(r"[\s?#]")


@dataclass(frozen=True, slots=True)
class PathPattern:
    """A parsed path pattern: literal segments, None for a parameter, and the prefix flag."""

    text: str
    segments: tuple[str | None, ...]
    params: tuple[str, ...]
    prefix: bool


def parse_pattern(text: str) -> PathPattern:
    """Parse `/exact`, `/a/{param}/b` or `/prefix/*`; ValueError says what is wrong."""
    if not text.startswith("/"):
        raise ValueError(f"path {text!r} must start with /")
    if _BAD_CHARS.search(text):
        raise ValueError(f"path {text!r} must not contain whitespace, ? or #")
    parts = text[1:].split("/")
    prefix = parts[-1] == "*"
    if prefix:
        parts.pop()
    segments: list[str | None] = []
    params: list[str] = []
    for i, part in enumerate(parts):
        if "*" in part:
            raise ValueError(f"path {text!r}: * is only allowed as the last segment (/prefix/*)")
        if part == "" and i != len(parts) - 1:
            raise ValueError(f"path {text!r} has an empty segment (//)")
        if "{" in part or "}" in part:
            m = _PARAM.fullmatch(part)
            if m is None:
                raise ValueError(
                    f"path {text!r}: a parameter is a whole segment named like {{order_id}}"
                )
            if m[1] in params:
                raise ValueError(f"path {text!r} repeats the parameter {{{m[1]}}}")
            params.append(m[1])
            segments.append(None)
        else:
            segments.append(part)
    if prefix and segments and segments[-1] == "":
        raise ValueError(f"path {text!r} has an empty segment (//)")
    return PathPattern(text, tuple(segments), tuple(params), prefix)


class Route:
    """One compiled route: its settings, position, backends and request matchers."""

    __slots__ = (
        "_headers",
        "_methods",
        "_plain",
        "_query",
        "_regex",
        "candidate",
        "index",
        "mode",
        "name",
        "pattern",
        "primary",
        "settings",
    )

    def __init__(self, settings: RouteSettings, index: int, default_backend: str) -> None:
        self.settings = settings
        self.name = settings.name
        self.index = index
        self.mode: Mode = settings.mode
        self.primary: str = settings.backend or default_backend
        self.candidate: str | None = settings.candidate
        self.pattern = parse_pattern(settings.match.path)
        methods = settings.match.methods
        self._methods = None if methods is None else frozenset(methods)
        self._headers = tuple(
            (name.lower().encode("latin-1"), value.encode("utf-8"))
            for name, value in settings.match.headers
        )
        self._query = settings.match.query
        self._plain = not self._headers and not self._query
        self._regex = re.compile(_pattern_regex(self.pattern), re.DOTALL)

    def __repr__(self) -> str:
        return f"<Route #{self.index} {self.name} {self.pattern.text} {self.mode}>"

    def accepts(self, method: str, query: str, headers: Sequence[tuple[bytes, bytes]]) -> bool:
        """Whether method, headers and query satisfy this route (its path already matched)."""
        if self._methods is not None and method not in self._methods:
            return False
        for want_name, want_value in self._headers:
            if not any(n.lower() == want_name and v == want_value for n, v in headers):
                return False
        if self._query:
            pairs = parse_qsl(query, keep_blank_values=True)
            for key, value in self._query:
                if (key, value) not in pairs:
                    return False
        return True

    def params(self, path: str) -> dict[str, str]:
        """The `{param}` values of a path this route matches (raw, not percent-decoded)."""
        m = self._regex.fullmatch(path)
        return {} if m is None else {k: v for k, v in m.groupdict().items() if v is not None}


def _pattern_regex(pattern: PathPattern) -> str:
    out = ""
    names = iter(pattern.params)
    for seg in pattern.segments:
        out += "/" + (f"(?P<{next(names)}>[^/]+)" if seg is None else re.escape(seg))
    return out + ("(?:/.*)?" if pattern.prefix else "")


class _Node:
    """A trie node: children by literal segment, one parameter child, and routes."""

    __slots__ = ("children", "exact", "param", "prefix")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.param: _Node | None = None
        self.exact: list[Route] = []  # routes whose pattern ends here
        self.prefix: list[Route] = []  # `.../*` routes: match here and anywhere below


def _index(route: Route) -> int:
    return route.index


class RouteTable:
    """The ordered routes of one Settings, compiled for matching; immutable once built."""

    __slots__ = ("_root", "_static", "by_name", "default_backend", "routes", "settings")

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.default_backend = settings.default_backend
        self.routes: tuple[Route, ...] = tuple(
            Route(rs, i, settings.default_backend) for i, rs in enumerate(settings.routes)
        )
        self.by_name: dict[str, Route] = {r.name: r for r in self.routes}
        self._root = _Node()
        for route in self.routes:
            node = self._root
            for seg in route.pattern.segments:
                if seg is None:
                    if node.param is None:
                        node.param = _Node()
                    node = node.param
                else:
                    node = node.children.setdefault(seg, _Node())
            (node.prefix if route.pattern.prefix else node.exact).append(route)
        # Literal paths are the hot ones (and the cheapest to precompute): one dict probe.
        self._static: dict[str, tuple[Route, ...]] = {
            r.pattern.text: tuple(self._walk(r.pattern.text))
            for r in self.routes
            if not r.pattern.prefix and not r.pattern.params
        }

    def __len__(self) -> int:
        return len(self.routes)

    def _walk(self, path: str) -> list[Route]:
        if path[:1] != "/":
            return []
        segs = path[1:].split("/")
        n = len(segs)
        found: list[Route] = []
        branches: list[tuple[_Node, int]] = []  # parameter alternatives still to try
        node, i, merged = self._root, 0, 0
        while True:
            if node.prefix:
                found += node.prefix
                merged += 1
            if i == n:
                if node.exact:
                    found += node.exact
                    merged += 1
            else:
                seg = segs[i]
                child = node.children.get(seg)
                param = node.param if seg else None
                if child is not None:
                    if param is not None:
                        branches.append((param, i + 1))
                    node, i = child, i + 1
                    continue
                if param is not None:
                    node, i = param, i + 1
                    continue
            if not branches:
                break
            node, i = branches.pop()
        if merged > 1:
            found.sort(key=_index)
        return found

    def path_matches(self, path: str) -> list[Route]:
        """Every route whose path pattern matches `path`, in file order."""
        static = self._static.get(path)
        return list(static) if static is not None else self._walk(path)

    def match(
        self,
        method: str,
        path: str,
        query: str = "",
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> Route | None:
        """The first route (in file order) matching the request, or None: default backend."""
        candidates = self._static.get(path)
        for route in self._walk(path) if candidates is None else candidates:
            methods = route._methods
            if (methods is None or method in methods) and (
                route._plain or route.accepts(method, query, headers)
            ):
                return route
        return None


def sticky_key(
    headers: Sequence[tuple[bytes, bytes]], header: bytes | None, cookie: bytes | None
) -> bytes | None:
    """A canary's sticky key in a request: the value of `header` (a lower-case name), else of
    cookie `cookie`; None when absent or empty (an empty key is no key: legacy serves)."""
    if header is not None:
        for name, value in headers:
            if name.lower() == header:
                return value.strip() or None
        return None
    if cookie is not None:
        prefix = cookie + b"="
        for name, value in headers:
            if name.lower() == b"cookie":
                for part in value.split(b";"):
                    part = part.strip()
                    if part.startswith(prefix):
                        return part[len(prefix) :] or None
    return None


def offloadable(route: Route, settings: Settings) -> bool:
    """Whether a shadow helper may run this route's copies: shadow mode, and both backends
    are URLs (the helper reaches the candidate, and legacy for a noise baseline; in-process
    apps stay with the worker)."""
    return _url_shadow(route.mode, route.candidate, route.primary, settings)


def _url_shadow(mode: Mode, candidate: str | None, primary: str, settings: Settings) -> bool:
    if mode != "shadow" or candidate is None:
        return False
    backends = settings.backends
    return backends[candidate].handlers is None and backends[primary].handlers is None


def offload_wanted(settings: Settings) -> bool:
    """Whether `serve` runs a shadow helper per worker for `settings`: as
    `limits.shadow_offload` says, or when it is unset, whether a route's copies can run in
    one (shadow-mode copies in the worker's event loop wait for, and delay, its users'
    requests; a helper at idle priority only takes the CPU they leave)."""
    chosen = settings.limits.shadow_offload
    if chosen is not None:
        return chosen
    # from the settings as they are: a route table compiles every path (milliseconds for
    # hundreds of routes, and /-/config asks on the data plane's loop)
    default = settings.default_backend
    return any(
        _url_shadow(r.mode, r.candidate, r.backend or default, settings) for r in settings.routes
    )
