"""`strangler report`: build a report from a store, print it, and exit by its gate (0/1/2)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url

from shadow.record import SAFE_METHODS
from shadow.report import Report, Thresholds, build_report
from shadow.report_format import FORMATS, render
from shadow.store import StoreError, mask_url, normalize_url, sqlite_file

if TYPE_CHECKING:
    from proxy.settings import RouteSettings

__all__ = ["UsageError", "parse_when", "run_report"]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class UsageError(Exception):
    """A bad flag value; reported in one line with exit status 2."""


def parse_when(text: str, now: datetime, flag: str = "--since") -> datetime:
    """A point in time from a duration before `now` (`1h`, `30m`, `1h30m`) or an ISO timestamp."""
    value = text.strip()
    compact = value.replace(" ", "")
    if compact and re.fullmatch(f"(?:{_DURATION.pattern})+", compact):
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION.findall(compact))
        try:
            return now - timedelta(seconds=seconds)
        except OverflowError:
            raise UsageError(f"{flag} {text!r}: reaches before the year 1") from None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(
            f"{flag} {text!r}: expected a duration such as 1h or 30m, or an ISO timestamp"
            " such as 2024-05-01T12:00:00Z"
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _check_store_url(url: str) -> None:
    shown = mask_url(url)
    try:
        parsed = make_url(normalize_url(url))
    except Exception:
        raise UsageError(f"--store {shown!r}: not a database URL") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        db = sqlite_file(parsed)
        if db and not os.path.exists(db):
            raise UsageError(f"--store {shown!r}: no such database file {db!r}")
    elif backend != "postgresql":
        raise UsageError(
            f"--store {shown!r}: unsupported; use sqlite:///FILE or postgresql://USER@HOST/DB"
        )


def _compared(route: RouteSettings) -> bool:
    """Whether the proxy compares some of the route's requests while it is being migrated
    (shadow or canary, a candidate, a sampled share, and a method it may copy), so that no
    comparison in the window is no evidence. A fully extracted route has no gate left (as
    in `strangler migrate`)."""
    if route.mode not in ("shadow", "canary") or route.candidate is None:
        return False
    methods = route.match.methods
    copied = not methods or route.shadow.writes == "dry_run" or not SAFE_METHODS.isdisjoint(methods)
    return route.shadow.percent > 0 and copied


def _verified(route: RouteSettings) -> bool:
    """Whether the store holds candidate answers of a route that is not judged: an
    extracted route whose requests the proxy still compares against legacy (verification),
    or the writes the candidate serves of a canary or extracted route that is not compared
    (each is stored: `candidate_error`, `candidate_timeout` or `skipped`). Shown in the
    report, outside the gate."""
    if route.candidate is None or _compared(route):
        return False
    methods = route.match.methods
    writes = not methods or not SAFE_METHODS.issuperset(methods)
    if route.mode == "extracted":
        return route.shadow.percent > 0 or writes
    return route.mode == "canary" and route.canary.percent > 0 and writes


def _thresholds(
    config_path: str | None,
    min_samples: int | None,
    max_mismatch_rate: float | None,
    max_error_rate: float | None,
    max_p99_ratio: float | None,
) -> tuple[dict[str, Thresholds], Thresholds, list[str], list[str]]:
    """Thresholds per configured route, the default ones, the configured routes whose
    requests are compared (judged even when the store holds nothing of them), and the
    extracted ones still verified against legacy (shown, not judged)."""
    default = Thresholds()
    per_route: dict[str, Thresholds] = {}
    compared: list[str] = []
    verified: list[str] = []
    if config_path is not None:
        from proxy.settings import ConfigError, load

        try:
            settings = load(config_path)
        except ConfigError as e:
            raise UsageError(str(e).splitlines()[0]) from None
        except NotImplementedError:
            raise UsageError(f"--config {config_path}: config loading is not available") from None
        per_route = {r.name: Thresholds.from_promotion(r.promotion) for r in settings.routes}
        compared = [r.name for r in settings.routes if _compared(r)]
        verified = [r.name for r in settings.routes if _verified(r)]

    def apply(t: Thresholds) -> Thresholds:
        return t.override(
            min_samples=min_samples,
            max_mismatch_rate=max_mismatch_rate,
            max_error_rate=max_error_rate,
            max_p99_ratio=max_p99_ratio,
        )

    try:
        thresholds = {name: apply(t) for name, t in per_route.items()}
        return thresholds, apply(default), compared, verified
    except ValueError as e:
        raise UsageError(str(e)) from None


async def _build(
    store_url: str,
    since: datetime | None,
    until: datetime | None,
    routes: Sequence[str],
    expected: Sequence[str],
    skip: Sequence[str],
    unjudged: Sequence[str],
    per_route: dict[str, Thresholds],
    default: Thresholds,
    now: datetime,
) -> Report:
    return await build_report(
        store_url,
        since=since,
        until=until,
        routes=routes,
        expected=expected,
        skip=skip,
        unjudged=unjudged,
        thresholds_by_route=per_route,
        default_thresholds=default,
        now=now,
    )


def run_report(
    *,
    store_url: str,
    since: str | None,
    until: str | None,
    routes: Sequence[str],
    fmt: str,
    config_path: str | None,
    max_mismatch_rate: float | None,
    max_error_rate: float | None,
    min_samples: int | None,
    output: str | None,
    max_p99_ratio: float | None = None,
    now: datetime | None = None,
) -> int:
    """Print (or write to `output`) the report; 0 all routes pass, 1 a gate fails, 2 usage error.

    Thresholds come from each route's `promotion` block in `config_path` (else the defaults
    of a promotion block); the `max_*`/`min_samples` flags override them for every route.
    """
    now = now or datetime.now(UTC)
    try:
        if fmt not in FORMATS:
            raise UsageError(f"--format {fmt!r}: choose from {', '.join(FORMATS)}")
        start = parse_when(since, now, "--since") if since else None
        end = parse_when(until, now, "--until") if until else None
        if start and end and start >= end:
            raise UsageError("--since must be before --until")
        _check_store_url(store_url)
        per_route, default, expected, verified = _thresholds(
            config_path, min_samples, max_mismatch_rate, max_error_rate, max_p99_ratio
        )
        # configured routes the proxy does not compare for a migration (extracted, writes
        # skipped): not judged, even with rows in the store, unless named; an extracted
        # route's verification is still shown
        unjudged = [n for n in verified if n not in routes]
        shown = {*expected, *routes, *unjudged}
        skip = [n for n in per_route if n not in shown]
        report = asyncio.run(
            _build(store_url, start, end, routes, expected, skip, unjudged, per_route, default, now)
        )
        text = render(report, fmt)
        if output:
            with open(output, "w", encoding="utf-8") as fh:
                fh.write(text)
        else:
            sys.stdout.write(text)
            sys.stdout.flush()
    except UsageError as e:
        print(f"strangler report: error: {e}", file=sys.stderr)
        return 2
    except StoreError as e:
        print(f"strangler report: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"strangler report: error: cannot write {output}: {e.strerror}", file=sys.stderr)
        return 2
    return 0 if report.passed else 1
