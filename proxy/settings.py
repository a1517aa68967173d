"""Settings: the routing YAML parsed once into frozen, validated dataclasses.

`load(path)` is the only way in. Every problem in a file is collected and raised as one
`ConfigError` whose `.errors` lists each `ConfigIssue` (path, line, column, message); the
first one is mirrored on the exception itself (`.path`, `.line`, `.column`, `.message`).

Parsing runs in three passes over the YAML node tree (so every value keeps its line and
column): structure against `routes.schema.json` (JSON Schema 2020-12), then the checks a
schema cannot express (backend references, unique names, path patterns, addresses), then
the dataclasses. Problems from every pass are reported together, sorted by position.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import math
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Final, Literal

import yaml

from proxy.listenclaim import WILDCARDS, Claim, canonical, conflict
from proxy.routes import parse_pattern
from shadow.compare import parse_path
from shadow.normalize import NORMALIZERS
from shadow.redact import mask_secrets

__all__ = [
    "MODES",
    "AdminSettings",
    "BackendSettings",
    "CanarySettings",
    "CaptureSettings",
    "CompareSettings",
    "ConfigError",
    "ConfigIssue",
    "LimitsSettings",
    "MatchSettings",
    "PromotionSettings",
    "RouteSettings",
    "Settings",
    "ShadowSettings",
    "StoreSettings",
    "load",
    "loads",
    "parse_address",
    "parse_duration",
    "schema",
]

Mode = Literal["legacy", "shadow", "canary", "extracted"]
MODES: tuple[Mode, ...] = ("legacy", "shadow", "canary", "extracted")
WriteMode = Literal["skip", "dry_run"]


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem found in a config file, with its position (1-based line and column)."""

    path: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.message}"


class ConfigError(Exception):
    """A config file that cannot be used; `.errors` holds every issue found in it."""

    def __init__(self, errors: list[ConfigIssue]) -> None:
        if not errors:
            raise ValueError("ConfigError needs at least one issue")
        self.errors = errors
        first = errors[0]
        self.path = first.path
        self.line = first.line
        self.column = first.column
        self.message = first.message
        super().__init__("\n".join(str(e) for e in errors))


@dataclass(frozen=True, slots=True)
class BackendSettings:
    """An upstream: a URL (`http://host:port`) or an in-process handler app (import path)."""

    name: str
    url: str | None = None
    handlers: str | None = None
    timeout: float = 5.0
    connect_timeout: float = 0.5
    max_connections: int = 200
    idle_timeout: float = 30.0
    host_header: str | None = None  # None: the client's Host is preserved
    db: str | None = None  # database URL passed to the handlers' create_app(db_url)

    @property
    def host(self) -> str:
        """Host part of `url` (only for URL backends)."""
        return _split_url(self.url)[0]

    @property
    def port(self) -> int:
        """Port part of `url` (only for URL backends)."""
        return _split_url(self.url)[1]


def _split_url(url: str | None) -> tuple[str, int]:
    if url is None:
        raise ValueError("backend has no url")
    rest = url.split("://", 1)[1].split("/", 1)[0]
    if rest.startswith("["):
        host, _, port = rest[1:].partition("]")
        return host, int(port.lstrip(":") or 80)
    host, _, port = rest.partition(":")
    return host, int(port or 80)


@dataclass(frozen=True, slots=True)
class MatchSettings:
    """What a route matches: a path pattern, methods, and optional header/query equalities."""

    path: str
    methods: tuple[str, ...] | None = None  # None: every method
    headers: tuple[tuple[str, str], ...] = ()  # lower-case name, exact value
    query: tuple[tuple[str, str], ...] = ()  # key, exact value


@dataclass(frozen=True, slots=True)
class ShadowSettings:
    """How a route's candidate is called in the background."""

    percent: float = 100.0
    timeout: float = 2.0
    max_concurrency: int = 64
    writes: WriteMode = "skip"
    max_body_bytes: int = 1 << 20
    sample_key: str | None = None  # header name to hash; None: the request id


@dataclass(frozen=True, slots=True)
class CompareSettings:
    """Rules for comparing the candidate's response with the monolith's."""

    ignore_headers: tuple[str, ...] = ("date", "server", "x-request-id")
    ignore_json_paths: tuple[str, ...] = ()
    unordered_arrays: tuple[tuple[str, str | None], ...] = ()  # (json path, key field or None)
    numeric_tolerance: float = 0.0
    noise_baseline: bool = False
    normalizers: tuple[tuple[str, str], ...] = ()  # (json path, normaliser name)


@dataclass(frozen=True, slots=True)
class CanarySettings:
    """The sticky share of keys served by the candidate."""

    percent: float = 0.0
    sticky_header: str | None = None
    sticky_cookie: str | None = None


@dataclass(frozen=True, slots=True)
class PromotionSettings:
    """The steps of a route's migration and the gates between them."""

    steps: tuple[float, ...] = (1.0, 5.0, 25.0, 50.0, 100.0)
    min_samples: int = 500
    max_mismatch_rate: float = 0.001
    max_error_rate: float = 0.01
    max_p99_ratio: float = 1.5
    interval: float | None = None
    auto: bool = False


@dataclass(frozen=True, slots=True)
class RouteSettings:
    """One routing rule; routes are ordered and the first match wins."""

    name: str
    match: MatchSettings
    mode: Mode = "legacy"
    candidate: str | None = None
    backend: str | None = None  # primary backend; None: the default backend
    shadow: ShadowSettings = field(default_factory=ShadowSettings)
    compare: CompareSettings = field(default_factory=CompareSettings)
    canary: CanarySettings = field(default_factory=CanarySettings)
    promotion: PromotionSettings = field(default_factory=PromotionSettings)
    line: int = 0  # where the route starts in the file


@dataclass(frozen=True, slots=True)
class AdminSettings:
    """The admin listener."""

    host: str = "127.0.0.1"
    port: int = 9090
    token_env: str = "STRANGLER_ADMIN_TOKEN"


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """Where comparisons are stored, and what is redacted before they are."""

    url: str = "sqlite+aiosqlite:///strangler.db"
    redact_json_paths: tuple[str, ...] = ()
    buffer_size: int = 10_000
    batch_size: int = 500


@dataclass(frozen=True, slots=True)
class CaptureSettings:
    """Traffic capture to JSON lines for later replay."""

    path: str
    percent: float = 100.0
    methods: tuple[str, ...] = ("GET", "HEAD")
    max_bytes: int = 64 << 20
    headers: tuple[str, ...] = ("content-type", "accept")


@dataclass(frozen=True, slots=True)
class LimitsSettings:
    """Protective limits of the client-facing listener."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 75.0
    max_connections: int = 10_000
    max_header_bytes: int = 64 << 10
    max_url_bytes: int = 8 << 10
    shadow_cpu_budget: float = 0.85  # share of a core above which shadow work is shed
    # `serve`: shadow routes' copies run in a SCHED_IDLE helper; None (unset): when a route
    # of the config serve starts with can use one (proxy.app.offload_wanted)
    shadow_offload: bool | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    """A whole, validated config file."""

    path: str
    host: str
    port: int
    admin: AdminSettings
    backends: dict[str, BackendSettings]
    default_backend: str
    store: StoreSettings
    routes: tuple[RouteSettings, ...]
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    capture: CaptureSettings | None = None
    access_log: bool = True
    version: str = ""  # short hash of the file's bytes
    source: str = ""  # the file's text, for write-back and /-/config


# --- public helpers ----------------------------------------------------------------------

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_HINT = "use a number with a unit: 200ms, 2s, 1.5s, 1m, 1h"
_ADDRESS = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^:\[\]\s/]+):([0-9]{1,5})")


def parse_duration(text: str) -> float:
    """Seconds in a duration string such as `200ms`, `2s`, `1m`, `1h`; ValueError otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"duration {text!r} has no unit; {_DURATION_HINT}")
    m = _DURATION.fullmatch(text)
    if m is None:
        raise ValueError(f"invalid duration {text!r}; {_DURATION_HINT}")
    seconds = float(m[1]) * _UNITS[m[2]]
    if not math.isfinite(seconds):
        raise ValueError(f"duration {text!r} is too large")
    return seconds


def parse_address(text: str) -> tuple[str, int]:
    """Host and port of a listen address `host:port` (`[::1]:8080` for IPv6); ValueError."""
    m = _ADDRESS.fullmatch(text)
    if m is None:
        raise ValueError(f"invalid address {text!r}; expected host:port, e.g. 127.0.0.1:8080")
    host, port = m[1], int(m[2])
    if port > 65535:
        raise ValueError(f"port {port} is out of range 0..65535")
    return host.removeprefix("[").removesuffix("]"), port


def _same_socket(a: tuple[str, int], b: tuple[str, int]) -> bool:
    """Whether two listen addresses may not both be bound: the same port, and an address of
    one IP version that both may bind, or a wildcard of that version on either side. The
    event loop binds IPv6 listeners IPV6_V6ONLY: `[::]` leaves the IPv4 port alone."""
    return any(conflict(x, y) for x, y in _pairs(a, b))


def _pairs(a: tuple[str, int], b: tuple[str, int]) -> list[tuple[Claim, Claim]]:
    """The pairs of addresses `a` and `b` may bind (or reach), when both name one port
    (none otherwise)."""
    (host_a, port_a), (host_b, port_b) = a, b
    if port_a != port_b or port_a == 0:
        return []
    return [(x, y) for x in _may_bind(host_a) for y in _may_bind(host_b)]


def _may_bind(host: str) -> set[Claim]:
    """The (family, address) a listener on `host` may bind, without resolving it: an IP as
    one spelling (IPv4-mapped as IPv4); localhost as both loopbacks (many /etc/hosts map
    `::1` to it too); another name as itself in each family."""
    name = host.lower()
    if name == "localhost":
        return {(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")}
    try:
        return {canonical(socket.AF_INET6 if ":" in name else socket.AF_INET, name)}
    except ValueError:
        return {(socket.AF_INET, name), (socket.AF_INET6, name)}


_LOOPBACK: Final = frozenset({"127.0.0.1", "::1"})


def _loops_back(listen: tuple[str, int], backend: tuple[str, int]) -> bool:
    """Whether a backend at `backend` is certainly the proxy listening at `listen`: the same
    port on the same host, or on a loopback address of the IP version the proxy listens on
    every address of (a host name of another machine on the same port is not)."""
    return any(
        bound[0] == reached[0]
        and (bound[1] == reached[1] or (bound[1] in WILDCARDS and reached[1] in _LOOPBACK))
        for bound, reached in _pairs(listen, backend)
    )


def _show_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@functools.cache
def schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the config file, as shipped with the package."""
    text = resources.files("proxy").joinpath("routes.schema.json").read_text(encoding="utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def loads(text: str, path: str = "<string>") -> Settings:
    """Parse config text; raise ConfigError listing every problem."""
    version = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return _Parser(path).parse(text, version)


def load(path: str) -> Settings:
    """Read and parse a config file; raise ConfigError listing every problem."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError([ConfigIssue(path, 1, 1, f"cannot read config: {reason}")]) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        issue = ConfigIssue(path, line, column, "config is not valid UTF-8")
        raise ConfigError([issue]) from exc
    return _Parser(path).parse(text, hashlib.sha256(raw).hexdigest()[:12])


# --- parsing -----------------------------------------------------------------------------

Key = str | int
JsonPath = tuple[Key, ...]

_MAX_DEPTH = 64  # far beyond any real config; stops recursive aliases
_MAX_NODES = 200_000  # stops alias bombs
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_URL = re.compile(r"http://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~-]+)(?::([0-9]{1,5}))?/?")
# a Host field value this proxy may send: reg-name or IP literal, optional port (no spaces,
# no control characters, ASCII only: it goes on the wire as it is)
_HOST_VALUE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~-]+)(:[0-9]{1,5})?")
# what shadow.store.Store opens (the plain forms are given the async driver there)
_STORE_SCHEMES = (
    "sqlite://",  # also in memory (no path)
    "sqlite+aiosqlite://",
    "postgresql://",
    "postgresql+psycopg://",
    "postgresql+psycopg_async://",
    "postgres://",
)


_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_SCALAR_TAGS = {
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
}
_KEY_TAGS = {_STR_TAG, *_SCALAR_TAGS}
_TYPE_NAMES = {
    "string": "a string",
    "number": "a number",
    "integer": "an integer",
    "boolean": "true or false",
    "object": "a mapping",
    "array": "a list",
    "null": "null",
}


_UNREADABLE = object()  # the YAML could not be composed at all


class _TooBig(Exception):
    """The document expands to more nodes than any config needs."""


class _Parser:
    """One parse of one file: positions of every key and value, and the issues found."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.issues: list[ConfigIssue] = []
        self.values: dict[JsonPath, tuple[int, int]] = {}
        self.keys: dict[JsonPath, tuple[int, int]] = {}
        self.bad: set[JsonPath] = set()  # values the schema already reported
        self._nodes = 0

    # -- positions and issues

    def position(self, path: JsonPath, *, key: bool = False) -> tuple[int, int]:
        """Line and column of the value (or its key) at `path`, else of its nearest parent."""
        if key and path in self.keys:
            return self.keys[path]
        while path:
            if path in self.values:
                return self.values[path]
            path = path[:-1]
        return self.values.get((), (1, 1))

    def report(self, path: JsonPath, message: str, *, key: bool = False) -> None:
        """Record one issue at the value (or key) at `path`."""
        line, column = self.position(path, key=key)
        self.issues.append(ConfigIssue(self.path, line, column, message))

    def _report_at(self, mark: Any, message: str) -> None:
        line = getattr(mark, "line", 0) + 1
        column = getattr(mark, "column", 0) + 1
        self.issues.append(ConfigIssue(self.path, line, column, message))

    # -- the three passes

    def parse(self, text: str, version: str) -> Settings:
        data = self._compose(text)
        if data is None and not self.issues:
            self.report((), "config is empty")
        elif data is not _UNREADABLE:
            self._validate_schema(data)
            settings = _Builder(self).build(data, text, version)
            if not self.issues:
                return settings
        unique = dict.fromkeys(self.issues)
        raise ConfigError(sorted(unique, key=lambda i: (i.line, i.column)))

    def _compose(self, text: str) -> object:
        loader: yaml.SafeLoader | None = None
        try:
            loader = yaml.SafeLoader(text)
            node = loader.get_single_node()
            return None if node is None else self._convert(loader, node, (), 0)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            detail = exc.problem or exc.context or "malformed"
            if exc.context and exc.problem:
                if exc.problem.startswith("but "):
                    detail = f"{exc.context}, {exc.problem}"
                else:
                    detail = f"{exc.problem} ({exc.context})"
            self._report_at(mark, f"invalid YAML: {detail}")
        except yaml.reader.ReaderError as exc:
            before = text[: exc.position]
            line = before.count("\n")
            column = exc.position - (before.rfind("\n") + 1)
            char = exc.character
            code = f" #x{char:04x}" if isinstance(char, int) else ""
            message = f"invalid YAML: unacceptable character{code}"
            self.issues.append(ConfigIssue(self.path, line + 1, column + 1, message))
        except yaml.YAMLError as exc:
            self.report((), f"invalid YAML: {exc}")
        except RecursionError:
            self.report((), "invalid YAML: nesting too deep")
        except _TooBig:
            self.report((), "config too large: aliases expand to too many values")
        finally:
            if loader is not None:
                loader.dispose()
        return _UNREADABLE

    def _convert(
        self, loader: yaml.SafeLoader, node: yaml.Node, path: JsonPath, depth: int
    ) -> object:
        self._nodes += 1
        if self._nodes > _MAX_NODES:
            raise _TooBig
        mark = node.start_mark
        self.values[path] = (mark.line + 1, mark.column + 1)
        if depth > _MAX_DEPTH:
            self._report_at(mark, "nesting too deep (a recursive alias?)")
            self.bad.add(path)
            return None
        if isinstance(node, yaml.MappingNode):
            return self._convert_mapping(loader, node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != "tag:yaml.org,2002:seq":
                self._report_at(mark, f"unsupported YAML tag {node.tag}")
            return [
                self._convert(loader, item, (*path, i), depth + 1)
                for i, item in enumerate(node.value)
            ]
        if node.tag in _SCALAR_TAGS:
            try:
                return loader.construct_object(node)
            except (yaml.YAMLError, ValueError, OverflowError):
                self._report_at(mark, f"invalid value {node.value!r}")
                self.bad.add(path)
                return None
        if node.tag not in (_STR_TAG, "tag:yaml.org,2002:timestamp"):
            self._report_at(mark, f"unsupported YAML tag {node.tag}")
            self.bad.add(path)
            return None
        return str(node.value)  # timestamps stay text: no field here is a date

    def _convert_mapping(
        self, loader: yaml.SafeLoader, node: yaml.MappingNode, path: JsonPath, depth: int
    ) -> dict[str, object]:
        mark = node.start_mark
        if node.tag != "tag:yaml.org,2002:map":
            self._report_at(mark, f"unsupported YAML tag {node.tag}")
        result: dict[str, object] = {}
        # `<<: *anchor` first, so the keys written here override (and locate) merged ones.
        for knode, vnode in node.value:
            if knode.tag != _MERGE_TAG:
                continue
            sources = vnode.value if isinstance(vnode, yaml.SequenceNode) else [vnode]
            for source in sources:
                if not isinstance(source, yaml.MappingNode):
                    self._report_at(source.start_mark, "<< merges a mapping or a list of them")
                    continue
                merged = self._convert(loader, source, path, depth + 1)
                for key, value in merged.items() if isinstance(merged, dict) else ():
                    result.setdefault(key, value)
        self.values[path] = (mark.line + 1, mark.column + 1)
        written: set[str] = set()
        for knode, vnode in node.value:
            if knode.tag == _MERGE_TAG:
                continue
            if not isinstance(knode, yaml.ScalarNode) or knode.tag not in _KEY_TAGS:
                self._report_at(knode.start_mark, "mapping keys must be plain strings")
                continue
            key = str(knode.value)
            kmark = knode.start_mark
            if key in written:
                first = self.keys[(*path, key)][0]
                self._report_at(kmark, f"duplicate key '{key}' (first at line {first})")
                continue
            written.add(key)
            self.keys[(*path, key)] = (kmark.line + 1, kmark.column + 1)
            result[key] = self._convert(loader, vnode, (*path, key), depth + 1)
        return result

    def _validate_schema(self, data: object) -> None:
        broken = set(self.bad)  # values the YAML pass already reported
        for error in _validator().iter_errors(data):
            path: JsonPath = tuple(error.absolute_path)
            if path in broken:
                continue
            sub = error.schema if isinstance(error.schema, dict) else {}
            kind = error.validator
            if (kind, sub.get("title")) in _SAID_BY_THE_BUILDER:
                continue
            where = _where(path)
            value = error.instance
            if kind == "additionalProperties" and isinstance(value, dict):
                known = list(sub.get("properties", {}))
                for extra in value:
                    if extra not in known:
                        self.report(
                            (*path, extra),
                            f"unknown key '{extra}'{f' in {where}' if path else ''}"
                            f"{_suggest(extra, known)}",
                            key=True,
                        )
                continue
            if kind == "required" and isinstance(value, dict):
                for name in error.validator_value:
                    if name not in value:
                        self.report(path, f"{where}: missing required key '{name}'")
                continue
            if kind not in ("minProperties", "maxProperties"):
                self.bad.add(path)
            self.report(path, f"{where}: {_schema_message(kind, sub, value, error.message)}")


# Schema rules (for editors) that the builder checks again in better words (the port out of
# range, "must be greater than 0", a masked store URL): the schema's generic message is
# left out so each problem is said once, by the builder.
_SAID_BY_THE_BUILDER = frozenset(
    {
        ("pattern", "duration"),
        ("pattern", "address (host:port)"),
        ("pattern", "path pattern"),
        ("pattern", "store URL"),
        ("oneOf", "backend"),
    }
)


@functools.cache
def _validator() -> Any:
    from jsonschema import Draft202012Validator  # type: ignore[import-untyped,unused-ignore]

    return Draft202012Validator(schema())


def _where(path: JsonPath) -> str:
    """A path in the file as a reader would write it: `routes[1].shadow.timeout`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out or "the top level"


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _schema_message(kind: str, sub: dict[str, Any], value: object, fallback: str) -> str:
    title = sub.get("title")
    if kind == "type":
        if title == "duration" and isinstance(value, int | float) and not isinstance(value, bool):
            return f"duration {value} has no unit; write '{value}s' or '{value}ms'"
        types = sub["type"] if isinstance(sub["type"], list) else [sub["type"]]
        expected = " or ".join(_TYPE_NAMES.get(str(t), str(t)) for t in types)
        if title:
            expected = f"{expected} ({title})"
        hint = ""
        if "string" in types and (value is None or isinstance(value, bool | int | float)):
            hint = " (quote it if you meant text)"
        return f"expected {expected}, got {_describe(value)}{hint}"
    if kind == "pattern":
        if title == "duration":
            return f"invalid duration {value!r}; {_DURATION_HINT}"
        return f"{value!r} is not a valid {title or 'value'}"
    if kind == "enum":
        options = ", ".join(str(o) for o in sub["enum"])
        return f"{_describe(value)} is not one of: {options}"
    if kind in ("minimum", "maximum") and "minimum" in sub and "maximum" in sub:
        return f"{value} is out of range {sub['minimum']}..{sub['maximum']}"
    if kind == "minimum":
        return f"{value} is below the minimum of {sub['minimum']}"
    if kind == "maximum":
        return f"{value} is above the maximum of {sub['maximum']}"
    if kind == "exclusiveMinimum":
        return f"{value} must be greater than {sub['exclusiveMinimum']}"
    if kind == "maxLength" and isinstance(value, str):
        return f"{len(value)} characters, more than the {sub['maxLength']} allowed"
    if kind in ("minItems", "minLength") and sub.get(kind) == 1:
        return "must not be empty"
    if kind in ("minProperties", "maxProperties"):
        names = ", ".join(sub.get("properties", {}))
        if sub.get("minProperties") == sub.get("maxProperties") == 1:
            return f"set exactly one of: {names}"
        return "must not be empty" if kind == "minProperties" else fallback
    return fallback


class _Builder:
    """The checks a schema cannot express, and the dataclasses, from schema-checked data.

    Tolerant by design: it runs even when the schema pass found problems (so one run
    reports everything), skips values the schema already reported, and never raises.
    """

    def __init__(self, parser: _Parser) -> None:
        self.p = parser
        self.backend_names: list[str] = []

    # -- typed access

    def _value(self, m: object, path: JsonPath, key: str) -> tuple[bool, object]:
        if not isinstance(m, dict) or key not in m or (*path, key) in self.p.bad:
            return False, None
        return True, m[key]

    def _typed(
        self, m: object, path: JsonPath, key: str, check: Callable[[object], bool], what: str
    ) -> object:
        present, value = self._value(m, path, key)
        if not present:
            return None
        if not check(value):
            self.p.report((*path, key), f"{_where((*path, key))}: expected {what}")
            return None
        return value

    def str_(self, m: object, path: JsonPath, key: str) -> str | None:
        v = self._typed(m, path, key, lambda v: isinstance(v, str), "a string")
        return v if isinstance(v, str) else None

    def num(self, m: object, path: JsonPath, key: str) -> float | None:
        v = self._typed(m, path, key, _is_number, "a finite number")
        return float(v) if isinstance(v, int | float) else None

    def int_(self, m: object, path: JsonPath, key: str) -> int | None:
        v = self._typed(m, path, key, _is_integral, "an integer")
        return int(v) if isinstance(v, int | float) else None

    def bool_(self, m: object, path: JsonPath, key: str) -> bool | None:
        v = self._typed(m, path, key, lambda v: isinstance(v, bool), "true or false")
        return v if isinstance(v, bool) else None

    def duration(self, m: object, path: JsonPath, key: str) -> float | None:
        text = self.str_(m, path, key)
        if text is None:
            return None
        where = _where((*path, key))
        try:
            seconds = parse_duration(text)
        except ValueError as exc:
            self.p.report((*path, key), f"{where}: {exc}")
            return None
        if seconds <= 0:
            self.p.report((*path, key), f"{where}: must be greater than 0")
            return None
        return seconds

    def strs(self, m: object, path: JsonPath, key: str) -> tuple[str, ...] | None:
        v = self._typed(m, path, key, _is_str_list, "a list of strings")
        return tuple(v) if isinstance(v, list) else None

    def mapping(self, m: object, path: JsonPath, key: str) -> dict[str, object] | None:
        v = self._typed(m, path, key, lambda v: isinstance(v, dict), "a mapping")
        return v if isinstance(v, dict) else None

    def section(self, m: object, path: JsonPath, key: str) -> dict[str, object]:
        """A nested mapping, or an empty one when absent or null."""
        present, value = self._value(m, path, key)
        if present and value is None:
            return {}
        return self.mapping(m, path, key) or {}

    @staticmethod
    def _set(kw: dict[str, Any], name: str, value: object) -> None:
        if value is not None:
            kw[name] = value

    # -- sections

    def build(self, data: object, text: str, version: str) -> Settings:
        root: JsonPath = ()
        raw_backends = self.section(data, root, "backends")
        self.backend_names = [k for k in raw_backends if isinstance(k, str)]
        host, port = self.address(data, root, "listen", ("127.0.0.1", 8080))
        backends = {
            name: self.backend(name, raw, ("backends", name)) for name, raw in raw_backends.items()
        }
        default_backend = self.backend_ref(data, root, "default_backend") or ""
        for name, bs in backends.items():
            try:
                address = (bs.host, bs.port) if bs.url is not None else None
            except ValueError:  # a URL reported as invalid already (user info, a bad port)
                address = None
            if address is not None and _loops_back((host, port), address):
                self.p.report(
                    ("backends", name, "url"),
                    f"backends.{name}.url: {bs.url} is the proxy's own listen address"
                    f" ({_show_address(host, port)}): every request would loop back into it",
                )
        routes = self.routes(data)
        admin_section = self.section(data, root, "admin")
        admin = self.admin(admin_section)
        if _same_socket((host, port), (admin.host, admin.port)):
            written = self._value(admin_section, ("admin",), "listen")[0]
            self.p.report(
                ("admin", "listen") if written else ("listen",),
                f"admin.listen: {_show_address(admin.host, admin.port)} is also the proxy's"
                f" listen address ({_show_address(host, port)}); they need different ports",
            )
        return Settings(
            path=self.p.path,
            host=host,
            port=port,
            admin=admin,
            backends=backends,
            default_backend=default_backend,
            store=self.store(self.section(data, root, "store")),
            routes=routes,
            limits=self.limits(self.section(data, root, "limits")),
            capture=self.capture(data),
            access_log=self.bool_(data, root, "access_log") is not False,
            version=version,
            source=text,
        )

    def address(
        self, m: object, path: JsonPath, key: str, default: tuple[str, int]
    ) -> tuple[str, int]:
        text = self.str_(m, path, key)
        if text is None:
            return default
        try:
            return parse_address(text)
        except ValueError as exc:
            self.p.report((*path, key), f"{_where((*path, key))}: {exc}")
            return default

    def admin(self, m: dict[str, object]) -> AdminSettings:
        path: JsonPath = ("admin",)
        host, port = self.address(m, path, "listen", ("127.0.0.1", 9090))
        kw: dict[str, Any] = {"host": host, "port": port}
        self._set(kw, "token_env", self.str_(m, path, "token_env"))
        return AdminSettings(**kw)

    def backend(self, name: str, raw: object, path: JsonPath) -> BackendSettings:
        if not _NAME.fullmatch(name):
            self.p.report(
                path, f"backend name {name!r}: use letters, digits, '-', '_' or '.'", key=True
            )
        m = raw if isinstance(raw, dict) else {}
        kw: dict[str, Any] = {"name": name}
        url = self.str_(m, path, "url")
        handlers = self.str_(m, path, "handlers")
        has_url, has_handlers = "url" in m, "handlers" in m
        if has_url and has_handlers:
            self.p.report(path, f"{_where(path)}: set either url or handlers, not both", key=True)
        elif not has_url and not has_handlers and isinstance(raw, dict):
            self.p.report(path, f"{_where(path)}: needs url or handlers", key=True)
        if url is not None:
            self.check_url(url, (*path, "url"))
        if "db" in m and has_url and not has_handlers:
            self.p.report((*path, "db"), f"{_where(path)}: db applies to handlers backends only")
        self._set(kw, "url", url)
        self._set(kw, "handlers", handlers)
        for key in ("timeout", "connect_timeout", "idle_timeout"):
            self._set(kw, key, self.duration(m, path, key))
        self._set(kw, "max_connections", self.int_(m, path, "max_connections"))
        host_header = self.str_(m, path, "host_header")
        if host_header is not None and not _HOST_VALUE.fullmatch(host_header):
            self.p.report(
                (*path, "host_header"),
                f"{_where((*path, 'host_header'))}: {host_header!r} is not a host name"
                " (letters, digits, '.', '-', '_' and an optional :port, in ASCII)",
            )
        self._set(kw, "host_header", host_header)
        self._set(kw, "db", self.str_(m, path, "db"))
        return BackendSettings(**kw)

    def check_url(self, url: str, path: JsonPath) -> None:
        where = _where(path)
        if url.startswith("https://"):
            self.p.report(path, f"{where}: https upstreams are not supported; use http://host:port")
            return
        m = _URL.fullmatch(url)
        if m is None:
            self.p.report(path, f"{where}: expected http://host:port, got {url!r}")
        elif m[2] is not None and not 0 < int(m[2]) <= 65535:
            self.p.report(path, f"{where}: port {int(m[2])} is out of range 1..65535")

    def backend_ref(self, m: object, path: JsonPath, key: str) -> str | None:
        name = self.str_(m, path, key)
        if name is not None and name not in self.backend_names:
            known = ", ".join(self.backend_names) or "none defined"
            self.p.report(
                (*path, key),
                f"{_where((*path, key))}: unknown backend '{name}' (known: {known})"
                f"{_suggest(name, self.backend_names)}",
            )
        return name

    def store(self, m: dict[str, object]) -> StoreSettings:
        path: JsonPath = ("store",)
        kw: dict[str, Any] = {}
        url = self.str_(m, path, "url")
        if url is not None and not url.startswith(_STORE_SCHEMES):
            self.p.report(
                (*path, "url"),
                f"store.url: unsupported store URL {mask_secrets(url)!r}; use"
                " sqlite+aiosqlite:///FILE or postgresql+psycopg://USER@HOST/DB",
            )
        self._set(kw, "url", url)
        redacted = self.strs(m, path, "redact_json_paths")
        self._set(kw, "redact_json_paths", redacted)
        for i, text in enumerate(redacted or ()):  # checked as start-up would (exit 2 there)
            self.json_path(text, (*path, "redact_json_paths", i), key=False)
        self._set(kw, "buffer_size", self.int_(m, path, "buffer_size"))
        self._set(kw, "batch_size", self.int_(m, path, "batch_size"))
        return StoreSettings(**kw)

    def limits(self, m: dict[str, object]) -> LimitsSettings:
        path: JsonPath = ("limits",)
        kw: dict[str, Any] = {}
        for key in ("header_timeout", "body_timeout", "keepalive_timeout"):
            self._set(kw, key, self.duration(m, path, key))
        for key in ("max_connections", "max_header_bytes", "max_url_bytes"):
            self._set(kw, key, self.int_(m, path, key))
        self._set(kw, "shadow_cpu_budget", self.num(m, path, "shadow_cpu_budget"))
        self._set(kw, "shadow_offload", self.bool_(m, path, "shadow_offload"))
        return LimitsSettings(**kw)

    def capture(self, data: object) -> CaptureSettings | None:
        present, raw = self._value(data, (), "capture")
        if not present or not isinstance(raw, dict):
            return None
        path: JsonPath = ("capture",)
        kw: dict[str, Any] = {"path": self.str_(raw, path, "path") or ""}
        self._set(kw, "percent", self.num(raw, path, "percent"))
        self._set(kw, "methods", _upper(self.strs(raw, path, "methods")))
        self._set(kw, "max_bytes", self.int_(raw, path, "max_bytes"))
        self._set(kw, "headers", _lower(self.strs(raw, path, "headers")))
        return CaptureSettings(**kw)

    # -- routes

    def routes(self, data: object) -> tuple[RouteSettings, ...]:
        present, raw = self._value(data, (), "routes")
        if not present or not isinstance(raw, list):
            return ()
        seen: dict[str, int] = {}
        out = []
        for i, item in enumerate(raw):
            path: JsonPath = ("routes", i)
            route = self.route(item if isinstance(item, dict) else {}, path)
            name = route.name
            if name in seen:
                self.p.report(
                    (*path, "name"),
                    f"{_where((*path, 'name'))}: duplicate route name '{name}'"
                    f" (first at line {seen[name]})",
                )
            elif name:
                seen[name] = route.line
            out.append(route)
        return tuple(out)

    def route(self, m: dict[str, object], path: JsonPath) -> RouteSettings:
        line = self.p.position(path)[0]
        mode_raw = self.str_(m, path, "mode") or "legacy"
        mode: Mode = next((md for md in MODES if md == mode_raw), "legacy")
        candidate = self.backend_ref(m, path, "candidate")
        backend = self.backend_ref(m, path, "backend")
        if mode != "legacy" and "candidate" not in m:
            self.p.report((*path, "mode"), f"{_where(path)}: mode {mode} needs a candidate")
        canary_raw = self.section(m, path, "canary")
        if mode == "canary" and "percent" not in canary_raw:
            self.p.report((*path, "mode"), f"{_where(path)}: mode canary needs canary.percent")
        return RouteSettings(
            name=self.str_(m, path, "name") or "",
            match=self.match(self.section(m, path, "match"), (*path, "match")),
            mode=mode,
            candidate=candidate,
            backend=backend,
            shadow=self.shadow(self.section(m, path, "shadow"), (*path, "shadow")),
            compare=self.compare(self.section(m, path, "compare"), (*path, "compare")),
            canary=self.canary(canary_raw, (*path, "canary")),
            promotion=self.promotion(self.section(m, path, "promotion"), (*path, "promotion")),
            line=line,
        )

    def match(self, m: dict[str, object], path: JsonPath) -> MatchSettings:
        pattern = self.str_(m, path, "path") or "/"
        if "path" in m and (*path, "path") not in self.p.bad:
            try:
                parse_pattern(pattern)
            except ValueError as exc:
                self.p.report((*path, "path"), f"{_where((*path, 'path'))}: {exc}")
        kw: dict[str, Any] = {"path": pattern}
        self._set(kw, "methods", _upper(self.strs(m, path, "methods")))
        headers = self.string_map(m, path, "headers")
        if headers is not None:
            kw["headers"] = tuple((k.lower(), v) for k, v in headers)
            for k, _ in headers:
                if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", k):
                    self.p.report(
                        (*path, "headers", k),
                        f"{_where((*path, 'headers'))}: invalid header name {k!r}",
                        key=True,
                    )
        self._set(kw, "query", self.string_map(m, path, "query"))
        return MatchSettings(**kw)

    def string_map(self, m: object, path: JsonPath, key: str) -> tuple[tuple[str, str], ...] | None:
        raw = self.mapping(m, path, key)
        if raw is None:
            return None
        pairs: list[tuple[str, str]] = []
        for k, v in raw.items():
            if isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)):
                pairs.append((k, str(v)))
            elif (*path, key, k) not in self.p.bad:  # 1.0 passes the schema as an integer
                where = _where((*path, key, k))
                self.p.report(
                    (*path, key, k),
                    f"{where}: expected a string or an integer, got {_describe(v)}"
                    " (quote it if you meant text)",
                )
        return tuple(pairs)

    def shadow(self, m: dict[str, object], path: JsonPath) -> ShadowSettings:
        kw: dict[str, Any] = {}
        self._set(kw, "percent", self.num(m, path, "percent"))
        self._set(kw, "timeout", self.duration(m, path, "timeout"))
        self._set(kw, "max_concurrency", self.int_(m, path, "max_concurrency"))
        writes = self.str_(m, path, "writes")
        self._set(kw, "writes", writes if writes in ("skip", "dry_run") else None)
        self._set(kw, "max_body_bytes", self.int_(m, path, "max_body_bytes"))
        sample_key = self.str_(m, path, "sample_key")
        self._set(kw, "sample_key", sample_key.lower() if sample_key else None)
        return ShadowSettings(**kw)

    def compare(self, m: dict[str, object], path: JsonPath) -> CompareSettings:
        kw: dict[str, Any] = {}
        self._set(kw, "ignore_headers", _lower(self.strs(m, path, "ignore_headers")))
        ignored = self.strs(m, path, "ignore_json_paths")
        self._set(kw, "ignore_json_paths", ignored)
        for i, text in enumerate(ignored or ()):
            self.json_path(text, (*path, "ignore_json_paths", i), key=False)
        unordered = self.mapping(m, path, "unordered_arrays")
        if unordered is not None:
            kw["unordered_arrays"] = tuple(
                (k, v) for k, v in unordered.items() if v is None or isinstance(v, str)
            )
            self.json_path_keys(unordered, (*path, "unordered_arrays"))
        self._set(kw, "numeric_tolerance", self.num(m, path, "numeric_tolerance"))
        self._set(kw, "noise_baseline", self.bool_(m, path, "noise_baseline"))
        normalizers = self.mapping(m, path, "normalizers")
        if normalizers is not None:
            kw["normalizers"] = tuple((k, v) for k, v in normalizers.items() if isinstance(v, str))
            self.json_path_keys(normalizers, (*path, "normalizers"))
            npath = (*path, "normalizers")
            for k, v in normalizers.items():
                if isinstance(v, str) and v not in NORMALIZERS:
                    self.p.report(
                        (*npath, k),
                        f"{_where((*npath, k))}: unknown normalizer {v!r}"
                        f" (known: {', '.join(sorted(NORMALIZERS))}){_suggest(v, NORMALIZERS)}",
                    )
        return CompareSettings(**kw)

    def json_path_keys(self, m: dict[str, object], path: JsonPath) -> None:
        for k in m:
            self.json_path(k, (*path, k), key=True)

    def json_path(self, text: str, path: JsonPath, *, key: bool) -> None:
        """Report `text` (at `path`) unless it is a JSON path the comparator can follow."""
        if not text.startswith("$"):
            where = _where(path[:-1]) if key else _where(path)
            self.p.report(path, f"{where}: {text!r} is not a JSON path (start with $)", key=key)
            return
        try:
            parse_path(text)
        except ValueError as exc:
            where = _where(path[:-1]) if key else _where(path)
            self.p.report(path, f"{where}: {text!r} is not a JSON path: {exc}", key=key)

    def canary(self, m: dict[str, object], path: JsonPath) -> CanarySettings:
        kw: dict[str, Any] = {}
        self._set(kw, "percent", self.num(m, path, "percent"))
        sticky = self.section(m, path, "sticky")
        spath = (*path, "sticky")
        header = self.str_(sticky, spath, "header")
        self._set(kw, "sticky_header", header.lower() if header else None)
        self._set(kw, "sticky_cookie", self.str_(sticky, spath, "cookie"))
        return CanarySettings(**kw)

    def promotion(self, m: dict[str, object], path: JsonPath) -> PromotionSettings:
        kw: dict[str, Any] = {}
        steps = self._typed(m, path, "steps", _is_number_list, "a list of percents")
        if isinstance(steps, list):
            values = tuple(float(s) for s in steps)
            for i in range(1, len(values)):
                if values[i] <= values[i - 1]:
                    self.p.report(
                        (*path, "steps", i),
                        f"{_where((*path, 'steps'))}: steps must ascend"
                        f" ({values[i]:g} after {values[i - 1]:g})",
                    )
                    break
            kw["steps"] = values
        self._set(kw, "min_samples", self.int_(m, path, "min_samples"))
        for key in ("max_mismatch_rate", "max_error_rate", "max_p99_ratio"):
            self._set(kw, key, self.num(m, path, key))
        self._set(kw, "interval", self.duration(m, path, "interval"))
        self._set(kw, "auto", self.bool_(m, path, "auto"))
        return PromotionSettings(**kw)


def _is_number(v: object) -> bool:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int beyond float range
        return False


def _is_integral(v: object) -> bool:
    return isinstance(v, int | float) and _is_number(v) and float(v).is_integer()


def _is_str_list(v: object) -> bool:
    return isinstance(v, list) and all(isinstance(s, str) for s in v)


def _is_number_list(v: object) -> bool:
    return isinstance(v, list) and all(_is_number(s) for s in v)


def _upper(values: tuple[str, ...] | None) -> tuple[str, ...] | None:
    return None if values is None else tuple(dict.fromkeys(v.upper() for v in values))


def _lower(values: tuple[str, ...] | None) -> tuple[str, ...] | None:
    return None if values is None else tuple(dict.fromkeys(v.lower() for v in values))
