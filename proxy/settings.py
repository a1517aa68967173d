"""Settings: the routing YAML parsed once into frozen, validated dataclasses.

`load(path)` is the only way in. Every problem in a file is collected and raised as one
`ConfigError` whose `.errors` lists each `ConfigIssue` (path, line, column, message); the
first one is mirrored on the exception itself (`.path`, `.line`, `.column`, `.message`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

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
    "parse_duration",
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


def parse_duration(text: str) -> float:
    """Seconds in a duration string such as `200ms`, `2s`, `1m`, `1h`; ValueError otherwise."""
    raise NotImplementedError


def loads(text: str, path: str = "<string>") -> Settings:
    """Parse config text; raise ConfigError listing every problem."""
    raise NotImplementedError


def load(path: str) -> Settings:
    """Read and parse a config file; raise ConfigError listing every problem."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError([ConfigIssue(path, 1, 1, f"cannot read config: {exc.strerror}")]) from exc
    return loads(text, path)
