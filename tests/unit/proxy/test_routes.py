"""The route table: first match in file order over exact, template and prefix patterns."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.routes import Route, RouteTable, parse_pattern
from proxy.settings import MatchSettings, RouteSettings, Settings, load, loads

BASE = """\
backends:
  legacy: {url: "http://127.0.0.1:8081"}
  orders: {handlers: extracted.app}
  other: {url: "http://127.0.0.1:8083"}
default_backend: legacy
routes:
"""


def table(routes: str) -> RouteTable:
    """A route table from the YAML of a `routes:` list."""
    return RouteTable(loads(BASE + routes))


def name(
    t: RouteTable,
    method: str,
    path: str,
    query: str = "",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> str | None:
    """The name of the route a request matches, or None."""
    route = t.match(method, path, query, headers or [])
    return None if route is None else route.name


def test_route_attributes() -> None:
    t = table(
        """\
  - {name: a, match: {path: /a}, candidate: orders, mode: shadow}
  - {name: b, match: {path: /b}, backend: other}
"""
    )
    a, b = t.routes
    assert (a.name, a.index, a.mode, a.primary, a.candidate) == (
        "a",
        0,
        "shadow",
        "legacy",
        "orders",
    )
    assert (b.name, b.index, b.mode, b.primary, b.candidate) == ("b", 1, "legacy", "other", None)
    assert a.settings is t.settings.routes[0]
    assert t.by_name["b"] is b
    assert len(t) == 2
    assert not hasattr(a, "__dict__")


def test_exact_and_template_follow_file_order() -> None:
    exact_first = table(
        """\
  - {name: exact, match: {path: /orders/new}}
  - {name: template, match: {path: "/orders/{id}"}}
"""
    )
    assert name(exact_first, "GET", "/orders/new") == "exact"
    assert name(exact_first, "GET", "/orders/7") == "template"
    template_first = table(
        """\
  - {name: template, match: {path: "/orders/{id}"}}
  - {name: exact, match: {path: /orders/new}}
"""
    )
    assert name(template_first, "GET", "/orders/new") == "template"


def test_templates_match_whole_non_empty_segments() -> None:
    t = table('  - {name: t, match: {path: "/orders/{id}/events"}}\n')
    assert name(t, "GET", "/orders/42/events") == "t"
    assert name(t, "GET", "/orders/a%2Fb/events") == "t"
    for miss in [
        "/orders//events",
        "/orders/42",
        "/orders/42/events/",
        "/orders/4/2/events",
        "orders/4/events",
    ]:
        assert name(t, "GET", miss) is None, miss
    assert t.routes[0].params("/orders/42/events") == {"id": "42"}


def test_prefix_matches_itself_and_below_but_not_siblings() -> None:
    t = table('  - {name: p, match: {path: "/api/v1/orders/*"}}\n')
    for hit in ["/api/v1/orders", "/api/v1/orders/", "/api/v1/orders/1", "/api/v1/orders/1/ship"]:
        assert name(t, "GET", hit) == "p", hit
    for miss in ["/api/v1/ordersX", "/api/v1/order", "/api/v1", "/"]:
        assert name(t, "GET", miss) is None, miss


def test_root_prefix_matches_every_origin_form_path() -> None:
    t = table('  - {name: all, match: {path: "/*"}}\n')
    assert name(t, "GET", "/") == "all"
    assert name(t, "GET", "/x/y/z") == "all"
    assert name(t, "OPTIONS", "*") is None


def test_trailing_slash_and_root_are_exact() -> None:
    t = table("  - {name: root, match: {path: /}}\n  - {name: slash, match: {path: /a/}}\n")
    assert name(t, "GET", "/") == "root"
    assert name(t, "GET", "/a/") == "slash"
    assert name(t, "GET", "/a") is None


def test_prefix_with_a_parameter() -> None:
    t = table('  - {name: p, match: {path: "/t/{tenant}/*"}}\n')
    assert name(t, "GET", "/t/acme/x/y") == "p"
    assert t.routes[0].params("/t/acme/x/y") == {"tenant": "acme"}


def test_methods_skip_to_the_next_route() -> None:
    t = table(
        """\
  - {name: show, match: {path: "/o/{id}", methods: [GET]}}
  - {name: act, match: {path: "/o/{id}", methods: [post, PUT]}}
  - {name: any, match: {path: "/o/*"}}
"""
    )
    assert name(t, "GET", "/o/1") == "show"
    assert name(t, "POST", "/o/1") == "act"
    assert name(t, "PUT", "/o/1") == "act"
    assert name(t, "DELETE", "/o/1") == "any"
    assert name(t, "HEAD", "/o/1") == "any"


def test_header_matchers_are_exact_with_case_insensitive_names() -> None:
    t = table(
        """\
  - {name: beta, match: {path: /a, headers: {X-Tenant: beta, x-version: 2}}}
  - {name: rest, match: {path: /a}}
"""
    )
    both = [(b"X-TENANT", b"beta"), (b"X-Version", b"2")]
    assert name(t, "GET", "/a", headers=both) == "beta"
    assert (
        name(
            t,
            "GET",
            "/a",
            headers=[(b"x-tenant", b"gamma"), (b"x-tenant", b"beta"), (b"x-version", b"2")],
        )
        == "beta"
    )
    assert name(t, "GET", "/a", headers=[(b"x-tenant", b"Beta"), (b"x-version", b"2")]) == "rest"
    assert name(t, "GET", "/a", headers=[(b"x-tenant", b"beta")]) == "rest"


def test_query_matchers_compare_decoded_values() -> None:
    t = table(
        """\
  - {name: q, match: {path: /a, query: {view: "full list", page: 2}}}
  - {name: rest, match: {path: /a}}
"""
    )
    assert name(t, "GET", "/a", "page=2&view=full+list") == "q"
    assert name(t, "GET", "/a", "view=full%20list&page=2&x=") == "q"
    assert name(t, "GET", "/a", "view=full+list") == "rest"
    assert name(t, "GET", "/a", "view=full+list&page=3") == "rest"
    assert name(t, "GET", "/a") == "rest"


def test_demo_routes() -> None:
    t = RouteTable(load(str(Path(__file__).resolve().parents[3] / "config" / "routes.yaml")))
    assert name(t, "POST", "/api/v1/orders") == "order-create"
    assert name(t, "GET", "/api/v1/orders") == "order-list"
    assert name(t, "GET", "/api/v1/orders/42") == "order-show"
    assert name(t, "GET", "/api/v1/orders/42/events") == "order-events"
    assert name(t, "POST", "/api/v1/orders/42/ship") == "order-actions"
    assert name(t, "GET", "/api/v1/orders/42/ship") is None
    assert name(t, "GET", "/health") is None


@pytest.mark.parametrize(
    ("pattern", "segments", "params", "prefix"),
    [
        ("/", ("",), (), False),
        ("/*", (), (), True),
        ("/a/{b}/c", ("a", None, "c"), ("b",), False),
        ("/a/*", ("a",), (), True),
        ("/a/{b}/*", ("a", None), ("b",), True),
    ],
)
def test_parse_pattern(
    pattern: str, segments: tuple[str | None, ...], params: tuple[str, ...], prefix: bool
) -> None:
    p = parse_pattern(pattern)
    assert (p.segments, p.params, p.prefix) == (segments, params, prefix)


@pytest.mark.parametrize(
    "pattern",
    ["a", "", "/a*", "/*/a", "/a/{b", "/{1x}", "/{a}/{a}", "/a//b", "/a//*", "/a b", "/a?b"],
)
def test_parse_pattern_rejects(pattern: str) -> None:
    with pytest.raises(ValueError):
        parse_pattern(pattern)


# --- many routes ---------------------------------------------------------------------------


def _many(n: int) -> RouteTable:
    routes = []
    for i in range(n):
        kind = i % 4
        path = [
            f"/api/v1/r{i}",
            f"/api/v1/r{i}/{{id}}",
            f"/api/v1/r{i}/{{id}}/x",
            f"/api/v2/r{i}/*",
        ][kind]
        methods = (("GET",), ("POST",), None, ("GET", "PUT"))[kind]
        routes.append(RouteSettings(name=f"r{i}", match=MatchSettings(path=path, methods=methods)))
    routes.append(
        RouteSettings(name="catch", match=MatchSettings(path="/api/*", methods=("DELETE",)))
    )
    s = loads(BASE + "  []\n")
    return RouteTable(
        Settings(
            path=s.path,
            host=s.host,
            port=s.port,
            admin=s.admin,
            backends=s.backends,
            default_backend=s.default_backend,
            store=s.store,
            routes=tuple(routes),
        )
    )


MANY = _many(500)


def _linear(t: RouteTable, method: str, path: str) -> Route | None:
    """Reference matcher: every route's regex in file order."""
    for route in t.routes:
        path_ok = re.fullmatch(_regex(route), path, re.DOTALL) is not None
        if path_ok and route.accepts(method, "", ()):
            return route
    return None


def _regex(route: Route) -> str:
    out = ""
    for seg in route.pattern.segments:
        out += "/" + ("[^/]+" if seg is None else re.escape(seg))
    return out + ("(?:/.*)?" if route.pattern.prefix else "")


def test_500_routes_match_like_a_linear_scan() -> None:
    cases = [
        ("GET", "/api/v1/r0"),
        ("POST", "/api/v1/r1/9"),
        ("PATCH", "/api/v1/r2/9/x"),
        ("PUT", "/api/v2/r3/a/b"),
        ("GET", "/api/v1/r496"),
        ("POST", "/api/v1/r497/1"),
        ("DELETE", "/api/v1/r0"),
        ("GET", "/api/v1/nope"),
        ("GET", "/other"),
        ("GET", "/api/v2/r3"),
    ]
    for method, path in cases:
        assert MANY.match(method, path) is _linear(MANY, method, path), (method, path)
    assert MANY.match("GET", "/api/v1/r496") is MANY.by_name["r496"]
    assert MANY.match("GET", "/api/v1/none") is None


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
    st.lists(
        st.sampled_from(["api", "v1", "v2", "r1", "r2", "r3", "r7", "x", "", "9"]), max_size=6
    ),
)
def test_500_routes_agree_with_the_reference_on_generated_paths(
    method: str, segs: list[str]
) -> None:
    path = "/" + "/".join(segs)
    assert MANY.match(method, path) is _linear(MANY, method, path)


def test_table_is_built_once_and_reused() -> None:
    s = loads(BASE + '  - {name: a, match: {path: "/a/{x}"}}\n')
    t = RouteTable(s)
    first = t.match("GET", "/a/1")
    assert first is not None and first is t.match("GET", "/a/2")
