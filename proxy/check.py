"""`strangler check` and `strangler explain`: validate a config file, trace one request.

Both print config problems as `PATH:LINE:COL: message` lines on stdout (what CI greps) and
exit 2 on any; neither ever shows a traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

import click
import yaml

from proxy.handlers import factory_problem
from proxy.pathguard import ambiguous_reading
from proxy.routes import Route, RouteTable, sticky_key
from proxy.settings import BackendSettings, ConfigError, ConfigIssue, Settings, load

__all__ = ["format_duration", "run_check", "run_explain"]

OK, CONFIG_ERROR = 0, 2
_T = TypeVar("_T")


def run_check(path: str) -> int:
    """Validate the config at `path`; print every problem (exit 2) or a summary (exit 0)."""
    settings = _load(path)
    if settings is None:
        return CONFIG_ERROR
    issues = _guarded(lambda: _handler_issues(path, settings))
    if issues:
        for issue in issues:
            click.echo(str(issue))
        return CONFIG_ERROR
    # about this machine, not the file (CI may check a config for another host): a warning
    for issue in _guarded(lambda: _capture_issues(path, settings)):
        click.echo(str(issue), err=True)
    click.echo(f"{path}: ok ({len(settings.routes)} routes, version {settings.version})")
    return OK


def run_explain(
    path: str, method: str, url_path: str, headers: Sequence[tuple[str, str]] = ()
) -> int:
    """Print which route `METHOD URL_PATH` (with `headers`) matches and what happens to it."""
    settings = _load(path)
    if settings is None:
        return CONFIG_ERROR
    method = method.upper()
    raw_path, _, query = url_path.partition("?")
    table = RouteTable(settings)
    raw_headers = [(k.encode("utf-8", "replace"), v.encode("utf-8", "replace")) for k, v in headers]
    _guarded(lambda: _explain(settings, table, method, raw_path, query, raw_headers))
    return OK


def format_duration(seconds: float) -> str:
    """A duration as it would be written in the config: `500ms`, `2s`, `1.5m`."""
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and (seconds / size * 10).is_integer():
            return f"{seconds / size:g}{unit}"
    return f"{seconds * 1000:g}ms"


def _load(path: str) -> Settings | None:
    try:
        return _guarded(lambda: load(path))
    except ConfigError as exc:
        for issue in exc.errors:
            click.echo(str(issue))
        return None


def _handler_issues(path: str, settings: Settings) -> list[ConfigIssue]:
    """The `handlers:` backends whose factory `serve` could not call, at their `handlers` line
    (`serve` calls `create_app(db)` when `db` is set, else `create_app()`)."""
    issues: list[ConfigIssue] = []
    for name, bs in settings.backends.items():
        problem = factory_problem(bs) if bs.handlers is not None else None
        if problem is not None:
            line, column = _position(path, ("backends", name, "handlers"))
            issues.append(ConfigIssue(path, line, column, f"backends.{name}.handlers: {problem}"))
    return issues


def _capture_issues(path: str, settings: Settings) -> list[ConfigIssue]:
    """A `capture.path` a proxy on this machine could never write (its directory missing,
    or the path a directory), at the path's line, as a warning: the proxy would start and
    lose every captured line. A relative path is taken from the current directory, as
    `serve` takes it."""
    cs = settings.capture
    if cs is None or not cs.path:
        return []
    target = os.path.abspath(cs.path)
    directory = os.path.dirname(target)
    if not os.path.exists(directory):
        problem = f"directory {directory} does not exist"
    elif not os.path.isdir(directory):
        problem = f"{directory} is not a directory"
    elif os.path.isdir(target):
        problem = f"{target} is a directory"
    else:
        return []
    line, column = _position(path, ("capture", "path"))
    message = f"warning: capture.path: {problem} on this machine (captures would be lost)"
    return [ConfigIssue(path, line, column, message)]


def _position(path: str, keys: tuple[str, ...]) -> tuple[int, int]:
    """Line and column of the value at `keys` in the (valid) YAML file; the nearest mapping
    found on the way when a key is not written there (merged in with `<<`)."""
    with open(path, encoding="utf-8") as fh:
        node: yaml.Node | None = yaml.compose(fh, Loader=yaml.SafeLoader)
    mark = node.start_mark if node is not None else None
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            break
        node = next((v for k, v in node.value if getattr(k, "value", None) == key), None)
        if node is None:
            break
        mark = node.start_mark
    return (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)


def _guarded(fn: Callable[[], _T]) -> _T:
    try:
        return fn()
    except ConfigError:
        raise
    except Exception as exc:  # a bug must still not print a traceback at the user
        click.echo(f"strangler: internal error: {exc!r}", err=True)
        sys.exit(CONFIG_ERROR)


def _explain(
    settings: Settings,
    table: RouteTable,
    method: str,
    path: str,
    query: str,
    headers: list[tuple[bytes, bytes]],
) -> None:
    out = click.echo
    out(f"request:    {method} {path}{'?' + query if query else ''}")
    reading = ambiguous_reading(path, lambda p: table.match(method, p, query, headers))
    if reading is not None:  # the data plane's path guard (proxy.dataplane)
        raw, read = (
            r.name if r is not None else "no route (the default backend)"
            for r in (table.match(method, p, query, headers) for p in (path, reading))
        )
        out(
            f"refused:    400 ambiguous_path: the raw path goes to {raw}, but read as {reading}"
            f" (as some backends normalise it) to {read}; the proxy answers 400 and forwards"
            " nothing"
        )
        return
    winner: Route | None = None
    for route in table.path_matches(path):
        if route.accepts(method, query, headers):
            winner = route
            break
        out(f"skipped:    {route.name} (line {route.settings.line}): {_why_not(route, method)}")
    if winner is None:
        out(f"no route matches: default backend {settings.default_backend} (untouched)")
        out(f"backend:    {_backend(settings, settings.default_backend)}")
        return
    rs = winner.settings
    methods = ", ".join(rs.match.methods) if rs.match.methods else "any method"
    out(f"route:      {winner.name} (#{winner.index + 1}, line {rs.line})")
    out(f"pattern:    {rs.match.path} [{methods}]")
    for k, v in rs.match.headers:
        out(f"requires:   header {k}: {v}")
    for k, v in rs.match.query:
        out(f"requires:   query {k}={v}")
    params = winner.params(path)
    if params:
        out("params:     " + ", ".join(f"{k}={v}" for k, v in params.items()))
    out(f"mode:       {winner.mode}")
    out(f"primary:    {_backend(settings, winner.primary)}")
    if winner.candidate is None:
        out("candidate:  none")
        return
    out(f"candidate:  {_backend(settings, winner.candidate)}")
    shadow, canary = rs.shadow, rs.canary
    sampled = f"by header {shadow.sample_key}" if shadow.sample_key else "by request id"
    shadowing = (
        f"{shadow.percent:g}% of requests ({sampled}), timeout "
        f"{format_duration(shadow.timeout)}, at most {shadow.max_concurrency} in flight, "
        f"writes: {shadow.writes}"
    )
    if winner.mode == "legacy":
        out("serves:     primary only; the candidate is not called")
    elif winner.mode == "shadow":
        out("serves:     primary; the candidate is called in the background and compared")
        out(f"shadow:     {shadowing}")
    elif winner.mode == "canary":
        if canary.sticky_header:
            key = f"header {canary.sticky_header}"
        elif canary.sticky_cookie:
            key = f"cookie {canary.sticky_cookie}"
        else:
            key = None
        if key is None:  # every request stays on legacy (docs/config.md)
            out("canary:     no sticky key set: every request is served by the primary")
        else:
            out(f"canary:     {canary.percent:g}% of keys served by the candidate, keyed by {key}")
            out(f"this key:   {_canary_side(winner, key, headers)}")
        out(f"shadow:     for the rest, {shadowing}")
    else:
        out("serves:     candidate; safe requests verified against the primary in the background")
        out(f"shadow:     {shadowing}")


def _canary_side(route: Route, key: str, headers: list[tuple[bytes, bytes]]) -> str:
    """Which side serves this request's sticky key (as `RouteEntry.choose`, breaker and
    automatic rollback aside)."""
    from proxy.shadowing import bucket

    canary = route.settings.canary
    header = canary.sticky_header.lower().encode() if canary.sticky_header else None
    cookie = canary.sticky_cookie.encode() if canary.sticky_cookie else None
    value = sticky_key(headers, header, cookie)
    if value is None:
        return "none in this request: served by legacy"
    served = bucket(route.name.encode() + b"/" + value) < round(canary.percent * 100)
    shown = value.decode("utf-8", "replace")
    return f"{key} {shown!r}: served by {'candidate' if served else 'legacy'}"


def _why_not(route: Route, method: str) -> str:
    match = route.settings.match
    if match.methods is not None and method not in match.methods:
        return f"methods {', '.join(match.methods)}"
    needs = [f"header {k}: {v}" for k, v in match.headers]
    needs += [f"query {k}={v}" for k, v in match.query]
    return "needs " + ", ".join(needs)


def _backend(settings: Settings, name: str) -> str:
    backend: BackendSettings | None = settings.backends.get(name)
    if backend is None:
        return name
    if backend.url is not None:
        return f"{name} ({backend.url})"
    db = f", db {backend.db}" if backend.db else ""
    return f"{name} (in-process handlers {backend.handlers}{db})"
