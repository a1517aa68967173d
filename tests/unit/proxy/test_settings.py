"""Settings: YAML to frozen dataclasses, and every problem reported with its position."""

from __future__ import annotations

import asyncio
import copy
import errno
import hashlib
import json
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.settings import (
    ConfigError,
    ConfigIssue,
    Settings,
    load,
    loads,
    parse_address,
    parse_duration,
    schema,
)

ROOT = Path(__file__).resolve().parents[3]
DEMO = ROOT / "config" / "routes.yaml"
EXAMPLES = sorted((ROOT / "config" / "examples").glob("*.yaml"))

BASE = """\
backends:
  legacy:
    url: http://127.0.0.1:8081
  orders:
    handlers: extracted.app
default_backend: legacy
"""

FIVE_MISTAKES = """\
listen: 127.0.0.1:8080
backends:
  legacy:
    url: http://127.0.0.1:8081
    timeout: 5 parsecs
  orders:
    handlers: extracted.app
default_backend: legacy
routes:
  - name: order-show
    match:
      path: /api/v1/orders/{order_id}
      methods: [GET]
    candidate: orders
    mode: shadow
    shadw:
      percent: 10
  - name: order-list
    match:
      path: /api/v1/orders
    candidate: ordrs
    mode: shadow
  - name: order-show
    match:
      path: /api/v1/x
    candidate: orders
    mode: canary
    canary:
      percent: 150
"""


def errors_of(text: str) -> list[ConfigIssue]:
    """The issues a config text raises (fails when it loads)."""
    with pytest.raises(ConfigError) as info:
        loads(text, "f.yaml")
    return info.value.errors


def one_error(text: str) -> ConfigIssue:
    """The single issue a config text raises."""
    errors = errors_of(text)
    assert len(errors) == 1, [str(e) for e in errors]
    return errors[0]


@pytest.mark.parametrize(
    ("value", "described"),
    [("1.0", "the number 1.0"), ("2.5", "the number 2.5"), ("true", "true"), ("null", "null")],
)
@pytest.mark.parametrize("key", ["query", "headers"])
def test_a_match_value_other_than_a_string_or_an_integer_is_an_error(
    key: str, value: str, described: str
) -> None:
    """`query: {page: 1.0}` passed the schema (1.0 is an integer there) and the loader
    dropped it, so the route matched without the constraint."""
    text = BASE + f"routes:\n  - name: r\n    match: {{path: /a, {key}: {{X-Page: {value}}}}}\n"
    issue = one_error(text)
    column = text.splitlines()[8].index(value) + 1
    assert (issue.line, issue.column) == (9, column), str(issue)
    assert f"routes[0].match.{key}.X-Page: expected a string or an integer, got {described}" in (
        issue.message
    )


# --- durations and addresses ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("200ms", 0.2), ("2s", 2.0), ("1.5s", 1.5), ("1m", 60.0), ("1h", 3600.0), ("0ms", 0.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5 parsecs", "5", "", "1.s", "-1s", "2 s", "1d", "s", "1e3s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_parse_duration_plain_number_asks_for_a_unit() -> None:
    with pytest.raises(ValueError, match="unit"):
        parse_duration(5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("[::1]:9090", ("::1", 9090)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["8080", "host", "::1:80", "h:70000", "h:", "a b:1"])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


# (proxy listen host, admin listen host, whether both bind one port): the listeners are bound
# by the event loop, which makes IPv6 sockets IPV6_V6ONLY, so `[::]` leaves IPv4 alone
LISTEN_PAIRS = [
    ("127.0.0.1", "127.0.0.1", False),
    ("0.0.0.0", "127.0.0.1", False),
    ("127.0.0.1", "0.0.0.0", False),
    ("::", "::1", False),
    ("::1", "::", False),
    ("::", "::", False),
    ("::1", "0:0::1", False),
    ("0.0.0.0", "::", True),
    ("::", "0.0.0.0", True),
    ("127.0.0.1", "::", True),
    ("::", "127.0.0.1", True),
    ("0.0.0.0", "::1", True),
    ("::1", "127.0.0.1", True),
    ("127.0.0.1", "127.0.0.2", True),
]


def _listen_config(proxy_host: str, admin_host: str, port: int) -> str:
    def address(host: str) -> str:
        return f"'[{host}]:{port}'" if ":" in host else f"{host}:{port}"

    return BASE + f"listen: {address(proxy_host)}\nadmin: {{listen: {address(admin_host)}}}\n"


def _refused(text: str) -> bool:
    try:
        loads(text, "f.yaml")
    except ConfigError as exc:
        assert [e.message for e in exc.errors if "admin.listen" in e.message] == [
            e.message for e in exc.errors
        ]
        return True
    return False


@pytest.mark.parametrize(
    ("proxy_host", "admin_host", "coexist"),
    [
        *LISTEN_PAIRS,
        ("localhost", "127.0.0.1", False),
        ("LocalHost", "0.0.0.0", False),
        # localhost is `::1` too on many hosts (/etc/hosts): a wildcard or `::1` beside it
        # may not bind, whatever this machine resolves it to
        ("::", "localhost", False),
        ("localhost", "::1", False),
        ("db.internal", "db.internal", False),
        ("db.internal", "::", False),  # a name of either family: each wildcard covers it
        ("db.internal", "10.0.0.1", True),
    ],
)
def test_admin_listen_is_refused_only_where_it_cannot_bind_beside_the_proxy(
    proxy_host: str, admin_host: str, coexist: bool
) -> None:
    """`[::]:8080` beside `0.0.0.0:8080` (or `127.0.0.1:8080`) was refused as the same
    listen address, though the two binds coexist."""
    assert _refused(_listen_config(proxy_host, admin_host, 8080)) is not coexist


async def _both_bind(first: str, second: str) -> tuple[bool, int]:
    """Whether the event loop binds listeners on `first` then `second`, one port; the port."""
    loop = asyncio.get_running_loop()
    one = await loop.create_server(asyncio.Protocol, first, 0)
    try:
        port = int(one.sockets[0].getsockname()[1])
        try:
            two = await loop.create_server(asyncio.Protocol, second, port)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            return False, port
        two.close()
        await two.wait_closed()
        return True, port
    finally:
        one.close()
        await one.wait_closed()


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 here")
@pytest.mark.parametrize(("proxy_host", "admin_host", "coexist"), LISTEN_PAIRS)
async def test_the_admin_listen_check_agrees_with_the_binds(
    proxy_host: str, admin_host: str, coexist: bool
) -> None:
    both, port = await _both_bind(proxy_host, admin_host)
    assert both is coexist
    assert _refused(_listen_config(proxy_host, admin_host, port)) is not both


# --- valid files ---------------------------------------------------------------------------


def test_demo_config_loads_into_settings() -> None:
    s = load(str(DEMO))
    assert s.path == str(DEMO)
    assert (s.host, s.port) == ("127.0.0.1", 8080)
    assert (s.admin.host, s.admin.port) == ("127.0.0.1", 9090)
    assert s.default_backend == "legacy"
    legacy, orders = s.backends["legacy"], s.backends["orders"]
    assert (legacy.url, legacy.host, legacy.port) == ("http://127.0.0.1:8081", "127.0.0.1", 8081)
    assert (legacy.timeout, legacy.connect_timeout) == (5.0, 0.5)
    assert (orders.handlers, orders.url) == ("extracted.app", None)
    assert orders.db is not None and orders.db.startswith("sqlite+aiosqlite:")
    names = [r.name for r in s.routes]
    assert names == ["order-create", "order-list", "order-show", "order-events", "order-actions"]
    assert {r.mode for r in s.routes} == {"legacy", "shadow", "canary", "extracted"}
    show = s.routes[2]
    assert show.match.path == "/api/v1/orders/{order_id}"
    assert show.match.methods == ("GET",)
    assert show.canary.percent == 5.0
    assert show.canary.sticky_header == "x-user-id"
    assert show.compare.unordered_arrays == (("$.items", "id"),)
    assert show.promotion.steps == (1.0, 5.0, 25.0, 50.0, 100.0)


def test_route_lines_point_at_each_route_item() -> None:
    text = DEMO.read_text(encoding="utf-8")
    lines = [i + 1 for i, line in enumerate(text.splitlines()) if line.startswith("  - name:")]
    assert [r.line for r in load(str(DEMO)).routes] == lines


def test_version_is_the_hash_of_the_file_bytes_and_source_is_kept(tmp_path: Path) -> None:
    raw = (BASE.replace("\n", "\r\n")).encode()
    f = tmp_path / "crlf.yaml"
    f.write_bytes(raw)
    s = load(str(f))
    assert s.version == hashlib.sha256(raw).hexdigest()[:12]
    assert s.source.encode() == raw
    assert loads(BASE).version == hashlib.sha256(BASE.encode()).hexdigest()[:12]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_load(path: Path) -> None:
    assert isinstance(load(str(path)), Settings)


def test_examples_exist() -> None:
    assert {p.name for p in EXAMPLES} >= {"minimal.yaml", "shadow.yaml", "canary.yaml"}


def test_defaults_for_a_minimal_file() -> None:
    s = loads(BASE)
    assert (s.host, s.port) == ("127.0.0.1", 8080)
    assert s.routes == ()
    assert s.store.url.startswith("sqlite+aiosqlite:")
    assert s.capture is None
    assert s.access_log is True
    assert s.limits.header_timeout == 10.0


def test_normalisation_of_methods_headers_and_optional_sections() -> None:
    s = loads(
        BASE
        + """\
listen: "[::1]:8443"
access_log: false
capture: {path: traffic.jsonl, percent: 10, methods: [get], headers: [Content-Type]}
limits: {header_timeout: 3s, max_connections: 50}
routes:
  - name: r
    match:
      path: /a/{id}
      methods: [get, Post]
      headers: {X-Tenant: acme}
      query: {page: 2}
    candidate: orders
    backend: legacy
    mode: extracted
    shadow: {percent: 12.5, timeout: 250ms, writes: dry_run, sample_key: X-User}
    compare: {ignore_headers: [ETag], unordered_arrays: {"$.tags": null},
      normalizers: {"$.t": trim}}
    promotion: {steps: [10, 50], interval: 1m, auto: true}
"""
    )
    assert (s.host, s.port, s.access_log) == ("::1", 8443, False)
    assert s.capture is not None and s.capture.methods == ("GET",)
    assert s.capture.headers == ("content-type",)
    assert (s.limits.header_timeout, s.limits.max_connections) == (3.0, 50)
    r = s.routes[0]
    assert r.match.methods == ("GET", "POST")
    assert r.match.headers == (("x-tenant", "acme"),)
    assert r.match.query == (("page", "2"),)
    assert (r.backend, r.candidate, r.mode) == ("legacy", "orders", "extracted")
    assert (r.shadow.percent, r.shadow.timeout, r.shadow.writes) == (12.5, 0.25, "dry_run")
    assert r.shadow.sample_key == "x-user"
    assert r.compare.ignore_headers == ("etag",)
    assert r.compare.unordered_arrays == (("$.tags", None),)
    assert r.compare.normalizers == (("$.t", "trim"),)
    assert (r.promotion.steps, r.promotion.interval, r.promotion.auto) == ((10.0, 50.0), 60.0, True)


# --- errors --------------------------------------------------------------------------------


def test_five_mistakes_are_all_reported_with_their_positions() -> None:
    errors = errors_of(FIVE_MISTAKES)
    assert [(e.line, e.column) for e in errors] == [(5, 14), (16, 5), (21, 16), (23, 11), (29, 16)]
    messages = [e.message for e in errors]
    assert "invalid duration '5 parsecs'" in messages[0]
    assert "unknown key 'shadw'" in messages[1] and "did you mean 'shadow'" in messages[1]
    assert "unknown backend 'ordrs'" in messages[2]
    assert "duplicate route name 'order-show'" in messages[3] and "line 10" in messages[3]
    assert "150 is out of range 0..100" in messages[4]
    assert all(str(e).startswith(f"f.yaml:{e.line}:{e.column}: ") for e in errors)


def test_config_error_mirrors_its_first_issue() -> None:
    with pytest.raises(ConfigError) as info:
        loads(FIVE_MISTAKES, "f.yaml")
    exc = info.value
    assert (exc.path, exc.line, exc.column) == ("f.yaml", 5, 14)
    assert exc.message == exc.errors[0].message
    assert str(exc).splitlines() == [str(e) for e in exc.errors]


def test_malformed_yaml_gives_the_position_of_the_problem() -> None:
    e = one_error("a: 1\n b: 2\n")
    assert (e.line, e.column) == (2, 3)
    assert e.message.startswith("invalid YAML:")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config") as info:
        load(str(tmp_path / "missing.yaml"))
    assert info.value.path.endswith("missing.yaml")


def test_non_utf8_file(tmp_path: Path) -> None:
    f = tmp_path / "latin1.yaml"
    f.write_bytes(b"a: 1\nb: \xff\n")
    with pytest.raises(ConfigError, match="UTF-8") as info:
        load(str(f))
    assert (info.value.line, info.value.column) == (2, 4)


ROUTE = """\
routes:
  - name: r
    match:
      path: /a
"""


def at(text: str, anchor: str) -> tuple[int, int]:
    """Line and column (1-based) of the last occurrence of `anchor` in `text`."""
    offset = text.rindex(anchor)
    return text.count("\n", 0, offset) + 1, offset - (text.rfind("\n", 0, offset) + 1) + 1


def route(extra: str = "", path: str = "/a") -> str:
    """BASE plus one route, with `extra` lines appended to it."""
    return BASE + ROUTE.replace("/a", path) + extra


@pytest.mark.parametrize(
    ("text", "anchor", "needle"),
    [
        ("", "", "config is empty"),
        ("- a\n", "- a", "expected a mapping"),
        (BASE + "extra: 1\n", "extra", "unknown key 'extra'"),
        (BASE + "default_backend: x\n", "default_backend", "duplicate key 'default_backend'"),
        (BASE.replace("backend: legacy", "backend: nope"), "nope", "unknown backend"),
        (BASE.replace("handlers: extracted.app", "url: https://h:1"), "https", "backend URL"),
        (BASE.replace("handlers: extracted.app", "url: http://h:1/x"), "http://h", "host:port"),
        (BASE.replace("handlers: extracted.app", "url: http://h:0"), "http://h", "out of range"),
        (BASE.replace("    handlers: extracted.app\n", "    timeout: 1s\n"), "orders", "url or"),
        (BASE.replace("app", "app\n    url: http://h:1"), "orders", "not both"),
        (BASE.replace("app", "app\n    timeout: 0s"), "0s", "greater than 0"),
        (BASE.replace("app", "app\n    timeout: 5"), "5", "write '5s'"),
        (BASE.replace("app", "app\n    max_connections: 0"), "0", "minimum"),
        (BASE.replace("8081", "8081\n    db: sqlite:///x"), "sqlite", "handlers backends only"),
        (BASE + "listen: 1.2.3.4\n", "1.2.3.4", "address"),
        (BASE + "listen: '[::1]:70000'\n", "'[::1]", "out of range"),
        (BASE + "admin: {token_env: 'a b'}\n", "'a b'", "environment variable"),
        (BASE + "store: {redact_json_paths: [email]}\n", "email", "JSON path"),
        (BASE + "store: {redact_json_paths: [$..email]}\n", "$..email", "is not a JSON path"),
        (BASE + "store: {url: 'mysql://u@h/db'}\n", "'mysql", "unsupported store URL"),
        (BASE.replace("app", "app\n    host_header: 'a b'"), "'a b'", "not a valid host name"),
        (BASE.replace("app", 'app\n    host_header: "a\\r\\nx: y"'), '"a', "not a valid host name"),
        (BASE + "store: {url: strangler.db}\n", "strangler.db", "postgresql+psycopg://"),
        (
            BASE + f"routes:\n  - name: {'r' * 201}\n    match: {{path: /x}}\n",
            "r" * 201,
            "201 characters, more than the 200 allowed",
        ),
        (BASE + "access_log: 'yes'\n", "'yes'", "true or false"),
        (route("    mode: shadow\n"), "shadow", "needs a candidate"),
        (route("    candidate: orders\n    mode: canary\n"), "canary", "needs canary.percent"),
        (route("    mode: fast\n"), "fast", "not one of"),
        (route("    backend: nope\n"), "nope", "unknown backend 'nope'"),
        (route(path="a"), "a\n", "must start with /"),
        (route(path="/*/a"), "/*/a", "last segment"),
        (route(path="/a{x}"), "/a{x}", "whole segment"),
        (route(path="/{x}/{x}"), "/{x}/{x}", "repeats"),
        (route(path="/a//b"), "/a//b", "empty segment"),
        (route(path="/a?x=1"), "/a?x=1", "?"),
        (route("      methods: []\n"), "[]", "must not be empty"),
        (route("      methods: GET\n"), "GET", "expected a list"),
        (route("      headers: {'x y': a}\n"), "'x y'", "header name"),
        (route("      bogus: 1\n"), "bogus", "unknown key 'bogus' in routes[0].match"),
        (route().replace("name: r", "name: 'r r'"), "'r r'", "route name"),
        (route().replace("  - name: r\n    match", "  - match"), "match", "key 'name'"),
        (route("    shadow: {percent: -1}\n"), "-1", "out of range 0..100"),
        (route("    shadow: {percent: .nan}\n"), ".nan", "finite number"),
        (route("    shadow: {writes: all}\n"), "all", "skip, dry_run"),
        (route("    canary: {sticky: {header: a, cookie: b}}\n"), "{header", "exactly one"),
        (route("    canary: {sticky: {}}\n"), "{}", "exactly one"),
        (route("    compare: {unordered_arrays: {items: id}}\n"), "items", "JSON path"),
        (route("    compare: {unordered_arrays: {$.a: 3}}\n"), "3", "string or null"),
        (route("    compare: {numeric_tolerance: -1}\n"), "-1", "minimum"),
        (route("    promotion: {steps: [5, 5]}\n"), "5]", "ascend"),
        (route("    promotion: {steps: [5, 101]}\n"), "101", "out of range"),
        (route("    promotion: {max_error_rate: 2}\n"), "2}", "out of range 0..1"),
        (route("    promotion: {max_p99_ratio: 0}\n"), "0}", "greater than 0"),
        (BASE + "capture: {percent: 5}\n", "{percent", "missing required key 'path'"),
        (BASE + "limits: {body_timeout: soon}\n", "soon", "invalid duration"),
        (BASE + "a: !!python/object:os.system x\n", "!!python", "unsupported YAML tag"),
        (BASE + "a: !!binary aGk=\n", "!!binary", "unsupported YAML tag"),
        (BASE + "? [a]\n: 1\n", "[a]", "keys must be plain strings"),
        (BASE + "x: &a [*a]\n", "x:", "unknown key"),
    ],
)
def test_each_problem_is_reported_at_its_position(text: str, anchor: str, needle: str) -> None:
    errors = errors_of(text)
    hits = [e for e in errors if needle in e.message]
    assert hits, [str(e) for e in errors]
    expected = at(text, anchor) if anchor else (1, 1)
    assert (hits[0].line, hits[0].column) == expected, [str(e) for e in errors]


def test_issues_are_sorted_and_not_repeated() -> None:
    errors = errors_of(FIVE_MISTAKES + "bogus: 1\n" + "  - name: z\n")
    keys = [(e.line, e.column) for e in errors]
    assert keys == sorted(keys)
    assert len({str(e) for e in errors}) == len(errors)


def test_alias_bomb_is_an_error_not_a_hang() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    with pytest.raises(ConfigError, match="too many values"):
        loads("\n".join(lines) + "\n")


def test_deep_nesting_is_an_error() -> None:
    with pytest.raises(ConfigError):
        loads("a: " + "[" * 5000 + "]" * 5000 + "\n")


# --- schema --------------------------------------------------------------------------------


def test_schema_copy_in_config_is_identical_to_the_packaged_one() -> None:
    packaged = ROOT / "proxy" / "routes.schema.json"
    assert (ROOT / "config" / "routes.schema.json").read_bytes() == packaged.read_bytes()
    assert schema() == json.loads(packaged.read_text(encoding="utf-8"))


def test_demo_config_copy_in_the_package_is_identical() -> None:
    # `strangler demo` from an installed package reads proxy/demo.yaml
    packaged = ROOT / "proxy" / "demo.yaml"
    assert (ROOT / "config" / "demo.yaml").read_bytes() == packaged.read_bytes()


def test_schema_is_valid_draft_2020_12_and_closed() -> None:
    from jsonschema import Draft202012Validator  # type: ignore[import-untyped,unused-ignore]

    Draft202012Validator.check_schema(schema())

    def objects(node: Any) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        if isinstance(node, dict):
            if "properties" in node:
                found.append(node)
            for value in node.values():
                found += objects(value)
        elif isinstance(node, list):
            for value in node:
                found += objects(value)
        return found

    closed = objects(schema())
    assert len(closed) > 10
    assert all(o.get("additionalProperties") is False for o in closed)


def test_demo_config_validates_against_the_schema_alone() -> None:
    from jsonschema import Draft202012Validator  # type: ignore[import-untyped,unused-ignore]

    data = yaml.safe_load(DEMO.read_text(encoding="utf-8"))
    assert list(Draft202012Validator(schema()).iter_errors(data)) == []


_ROUTE = "routes:\n  - {name: r, match: {path: /a}}\n"


def _schema_errors(text: str) -> list[str]:
    from jsonschema import Draft202012Validator  # type: ignore[import-untyped,unused-ignore]

    return [e.message for e in Draft202012Validator(schema()).iter_errors(yaml.safe_load(text))]


# (config text, what the loader says): the published schema was looser than the loader on
# each of these, so an editor showed no problem in a file `strangler check` refuses
LOADER_AND_SCHEMA_REJECT = [
    (BASE + "listen: 127.0.0.1:70000\n", "listen: port 70000 is out of range 0..65535"),
    (BASE + "admin: {listen: '[::1]:99999'}\n", "admin.listen: port 99999 is out of range"),
    (BASE.replace("app", "app\n    timeout: 0s"), "timeout: must be greater than 0"),
    (BASE + "limits: {header_timeout: 0.0ms}\n", "header_timeout: must be greater than 0"),
    (
        BASE + "routes:\n  - {name: r, match: {path: /a}, shadow: {timeout: 0m}}\n",
        "routes[0].shadow.timeout: must be greater than 0",
    ),
    (
        BASE + "routes:\n  - {name: r, match: {path: api/v1}}\n",
        "routes[0].match.path: path 'api/v1' must start with /",
    ),
    (BASE.replace("    handlers: extracted.app\n", "    timeout: 1s\n"), "needs url or handlers"),
    (BASE.replace("app", "app\n    url: http://h:1"), "set either url or handlers, not both"),
    (BASE + "store: {url: 'mysql://u@h/db'}\n", "store.url: unsupported store URL"),
    (BASE + "store: {url: strangler.db}\n", "store.url: unsupported store URL"),
]


@pytest.mark.parametrize(("text", "needle"), LOADER_AND_SCHEMA_REJECT)
def test_the_schema_rejects_what_the_loader_rejects(text: str, needle: str) -> None:
    assert _schema_errors(text), "the published schema accepts it"
    messages = [e.message for e in errors_of(text)]
    assert len(messages) == 1 and needle in messages[0], messages  # the loader's own words


@pytest.mark.parametrize(
    "extra",
    [
        "listen: 127.0.0.1:65535\nadmin: {listen: '[::1]:0'}\n",
        "limits: {header_timeout: 0.5ms, body_timeout: 1s}\n",
        "store: {url: 'sqlite:///x.db'}\n",
        "store: {url: 'postgresql+psycopg_async://u@h/db'}\n",
        "store: {url: 'postgres://u@h/db'}\n",
    ],
)
def test_the_schema_accepts_what_the_loader_accepts(extra: str) -> None:
    text = BASE + extra + _ROUTE
    assert _schema_errors(text) == []
    loads(text, "f.yaml")


# --- fuzzing -------------------------------------------------------------------------------


def _loads_or_config_error(text: str) -> None:
    try:
        s = loads(text, "fuzz.yaml")
    except ConfigError as exc:
        assert exc.errors
        assert all(e.line >= 1 and e.column >= 1 for e in exc.errors)
    else:
        assert isinstance(s, Settings)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_any_text_gives_settings_or_config_error(text: str) -> None:
    _loads_or_config_error(text)


_DEMO_TEXT = DEMO.read_text(encoding="utf-8")
_DEMO_LINES = _DEMO_TEXT.splitlines(keepends=True)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["delete", "duplicate", "replace", "insert"]),
            st.integers(0, len(_DEMO_LINES) - 1),
            st.text(alphabet=" :-[]{}#&*!|>'\"\n\tabc01.%@`", max_size=12),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_mutated_demo_text_gives_settings_or_config_error(
    edits: list[tuple[str, int, str]],
) -> None:
    lines = list(_DEMO_LINES)
    for op, index, junk in edits:
        index %= len(lines) or 1
        if not lines:
            lines.append(junk)
        elif op == "delete":
            del lines[index]
        elif op == "duplicate":
            lines.insert(index, lines[index])
        elif op == "replace":
            line = lines[index]
            cut = len(line) // 2
            lines[index] = line[:cut] + junk + line[cut + len(junk) :]
        else:
            lines.insert(index, junk + "\n")
    _loads_or_config_error("".join(lines))


_DEMO_DATA = yaml.safe_load(_DEMO_TEXT)


def _leaf_paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _leaf_paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _leaf_paths(v, (*prefix, i))
    return out


_PATHS = [p for p in _leaf_paths(_DEMO_DATA) if p]
_JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(["", "5s", "0ms", "legacy", "orders", "/a/{b}", "/*", "GET", "$.x", "x"])
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(["url", "path", "percent", "name", "match", "mode", "timeout", "k"]),
            children,
            max_size=3,
        )
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_PATHS), _JSONISH), min_size=1, max_size=3))
def test_mutated_demo_values_give_settings_or_config_error(
    changes: list[tuple[tuple[Any, ...], Any]],
) -> None:
    data = copy.deepcopy(_DEMO_DATA)
    for path, value in changes:
        node = data
        try:
            for part in path[:-1]:
                node = node[part]
            node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change replaced this value's parent
    _loads_or_config_error(yaml.safe_dump(data, sort_keys=False))


def test_anchors_aliases_and_merge_keys_share_settings() -> None:
    s = loads(
        BASE
        + """\
routes:
  - name: a
    match: {path: /a}
    compare: &rules
      ignore_headers: [etag]
      numeric_tolerance: 0.5
  - name: b
    match: {path: /b}
    compare:
      <<: *rules
      numeric_tolerance: 0.1
  - name: c
    match: {path: /c}
    compare: *rules
"""
    )
    a, b, c = (r.compare for r in s.routes)
    assert a == c
    assert (b.ignore_headers, b.numeric_tolerance) == (("etag",), 0.1)


def test_recursive_merge_is_an_error() -> None:
    with pytest.raises(ConfigError, match="nesting too deep"):
        loads(BASE + "store: &s {<<: *s}\n")


def test_merged_values_are_reported_where_they_are_written() -> None:
    text = (
        BASE
        + "x: &bad {percent: 500}\nroutes:\n  - {name: a, match: {path: /a}, shadow: {<<: *bad}}\n"
    )
    errors = errors_of(text)
    hit = [e for e in errors if "500 is out of range" in e.message]
    assert hit and (hit[0].line, hit[0].column) == at(text, "500")


def test_routes_may_be_left_empty() -> None:
    assert loads(BASE + "routes:\n  # - name: later\n").routes == ()


def test_compare_rules_the_comparator_cannot_follow_are_reported_with_positions() -> None:
    text = """\
listen: 127.0.0.1:8080
backends:
  legacy: {url: "http://127.0.0.1:8081"}
  orders: {url: "http://127.0.0.1:8082"}
default_backend: legacy
routes:
  - name: r
    match: {path: /a}
    candidate: orders
    mode: shadow
    compare:
      ignore_json_paths: ["$.ok", "$.items[x"]
      unordered_arrays: {"$.tags[": null}
      normalizers: {"$.at": timestamp_secs, "$.n": decimal}
"""
    errors = errors_of(text)
    assert len(errors) == 3, errors
    by_line = {e.line: e for e in errors}
    assert "'$.items[x' is not a JSON path" in by_line[12].message
    assert "'$.tags[' is not a JSON path" in by_line[13].message
    assert "unknown normalizer 'timestamp_secs'" in by_line[14].message
    assert "did you mean 'timestamp_seconds'" in by_line[14].message
    assert by_line[14].column == 29  # the value timestamp_secs
