"""Gated step-by-step migration of a route: its path, the evidence, the next change, the audit.

A route walks `legacy -> shadow -> canary at each promotion step -> extracted` (a step of
100 means extracted). Moving to a stage where the candidate serves users (canary,
extracted) is gated by the comparisons recorded since the route's last change (the store's
audit log; all of them when the route never changed). Changes are minimal YAML edits
(`proxy.yamledit`), recorded in the audit log, then written atomically.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import aiohttp
from aiohttp_retry import ExponentialRetry, RetryClient

from proxy.settings import ConfigError, Mode, RouteSettings, Settings, load, loads
from proxy.yamledit import YamlEditError, set_route_stage, unified_diff, write_atomic
from shadow.gates import Evidence, Verdict, evaluate
from shadow.record import RouteChange
from shadow.report import build_report
from shadow.store import Store

__all__ = [
    "RELOAD_TIMEOUT_S",
    "Action",
    "MigrateError",
    "Plan",
    "ReloadUnknown",
    "Stage",
    "WatchResult",
    "apply_plan",
    "current_stage",
    "find_route",
    "gather_evidence",
    "held_reason",
    "is_held",
    "load_config",
    "next_stage",
    "path_of",
    "plan_change",
    "reload_proxy",
    "reload_target",
    "single_controller",
    "watch_pass",
]

Action = Literal["advance", "promote", "rollback"]
_RANK: dict[str, int] = {"legacy": 0, "shadow": 1, "canary": 2, "extracted": 3}


class MigrateError(Exception):
    """A usage or config problem (exit 2): unknown route, unreadable config, bad URL."""


_UNKNOWN = (
    "whether the proxy reloaded is unknown (see config_version and last_reload_error in"
    " GET /-/config)"
)


class ReloadUnknown(MigrateError):
    """A reload POST got no answer (a timeout, a dropped connection): the proxy may or may
    not have reloaded."""


# Above the proxy's longest reload: with `serve --workers`, 10 s waiting for the workers'
# answers and, when one refuses, 10 s more for the rollback, plus starting new apps.
RELOAD_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class Stage:
    """Where a route stands: its mode and the share of requests the candidate serves."""

    mode: Mode
    percent: float = 0.0

    @property
    def share(self) -> float:
        """Percent of requests served by the candidate."""
        return {"legacy": 0.0, "shadow": 0.0, "extracted": 100.0}.get(self.mode, self.percent)

    @property
    def serves_candidate(self) -> bool:
        """Whether users get candidate responses at this stage (so moving here is gated)."""
        return self.mode in ("canary", "extracted")

    def key(self) -> tuple[int, float]:
        """Order along the migration path."""
        return (_RANK[self.mode], self.share)

    def __str__(self) -> str:
        return f"canary {self.percent:g}%" if self.mode == "canary" else self.mode


def path_of(route: RouteSettings) -> tuple[Stage, ...]:
    """Every stage of the route's migration, in order."""
    canary = [Stage("canary", p) for p in sorted(set(route.promotion.steps)) if 0 < p < 100]
    return (Stage("legacy"), Stage("shadow"), *canary, Stage("extracted"))


def current_stage(route: RouteSettings) -> Stage:
    """The stage the route's settings put it at."""
    if route.mode == "canary":
        return Stage("canary", route.canary.percent)
    return Stage(route.mode)


def next_stage(route: RouteSettings) -> Stage | None:
    """The next stage along the route's path (None when fully extracted)."""
    here = current_stage(route).key()
    return next((s for s in path_of(route) if s.key() > here), None)


@dataclass(frozen=True, slots=True)
class Plan:
    """One proposed change of one route, with the evidence and the verdict behind it."""

    config_path: str
    route: str
    action: Action
    current: Stage
    target: Stage | None  # None: nothing to do
    evidence: Evidence
    verdict: Verdict | None  # None: no gate applies to this change
    last_change: RouteChange | None
    old_text: str
    new_text: str
    keyless: bool = False  # the route has no canary.sticky key: a canary step serves nobody
    # The automatic rollback holding the route on legacy (its last change), when the change
    # would serve the candidate: the evidence since then was made while legacy served.
    held: RouteChange | None = None

    @property
    def diff(self) -> str:
        """The YAML change as a unified diff."""
        return unified_diff(self.old_text, self.new_text, self.config_path)

    @property
    def passed(self) -> bool:
        """Whether the change may be applied without --force: no gate applies, or it passed
        on some evidence (with `min_samples: 0`, no comparison at all is no pass either);
        never while an automatic rollback holds the route."""
        if self.held is not None:
            return False
        return self.verdict is None or (self.verdict.passed and not self.evidence.empty)

    def audit_evidence(self, *, forced: bool) -> dict[str, Any]:
        """The evidence JSON stored with the audit record."""
        verdict = self.verdict or Verdict(self.evidence)
        return {
            **verdict.to_json(),
            "gated": self.verdict is not None,
            "forced": forced and not self.passed,
            "action": self.action,
            "from": str(self.current),
            "to": str(self.target),
            "config": os.path.basename(self.config_path),
        }


def load_config(path: str) -> Settings:
    """The settings of `path`, or MigrateError with the first problem in one line."""
    try:
        return load(path)
    except ConfigError as e:
        raise MigrateError(str(e.errors[0])) from None


def find_route(settings: Settings, name: str) -> RouteSettings:
    """The route called `name`, or MigrateError listing the known routes."""
    for route in settings.routes:
        if route.name == name:
            return route
    known = ", ".join(r.name for r in settings.routes) or "none"
    raise MigrateError(f"unknown route {name!r} in {settings.path}; known routes: {known}")


async def gather_evidence(store: Store, route: str, since: datetime | None) -> Evidence:
    """The route's comparisons since `since`, aggregated in SQL by the report's queries."""
    report = await build_report(store, since=since, routes=[route], top_n=1, max_buckets=1)
    r = next(r for r in report.routes if r.route == route)
    return Evidence(
        samples=r.samples,
        mismatches=r.mismatches,
        errors=r.errors,
        served=r.served,
        p99_primary_ms=r.latency_primary.p99,
        p99_candidate_ms=r.latency_candidate.p99,
        since=since,
    )


async def plan_change(
    settings: Settings, store: Store, route_name: str, action: Action, *, to: Mode = "shadow"
) -> Plan:
    """The change `action` would make to the route now, with its evidence and verdict."""
    route = find_route(settings, route_name)
    current = current_stage(route)
    target: Stage | None
    if action == "advance":
        target = next_stage(route)
    elif action == "promote":
        target = Stage("extracted")
    else:
        if to not in ("shadow", "legacy"):
            raise MigrateError(f"rollback goes to shadow or legacy, not {to!r}")
        target = Stage(to)
    if target is not None and (
        (action == "rollback") != (target.key() < current.key()) or target == current
    ):
        target = None  # already there (or past it, for a rollback)
    last = await store.last_route_change(route.name)
    evidence = await gather_evidence(store, route.name, last.time if last else None)
    gated = target is not None and action != "rollback" and target.serves_candidate
    verdict = evaluate(evidence, route.promotion) if gated else None
    new_text = settings.source
    if target is not None:
        percent = target.percent if target.mode == "canary" else None
        try:
            new_text = set_route_stage(
                settings.source, route.name, mode=target.mode, percent=percent
            )
        except YamlEditError as e:
            raise MigrateError(f"{settings.path}: {e}") from None
    return Plan(
        config_path=settings.path,
        route=route.name,
        action=action,
        current=current,
        target=target,
        evidence=evidence,
        verdict=verdict,
        last_change=last,
        old_text=settings.source,
        new_text=new_text,
        keyless=not (route.canary.sticky_header or route.canary.sticky_cookie),
        held=last if gated and is_held(last, current) else None,
    )


def is_held(last: RouteChange | None, stage: Stage) -> bool:
    """Whether the route's last change is an automatic rollback that holds it (the proxy
    holds canary and extracted routes on legacy until the route changes or is cleared)."""
    return last is not None and last.kind == "auto_rollback" and stage.serves_candidate


def held_reason(change: RouteChange) -> str:
    """Why a route is held, in words: when, and the rollback's own reason."""
    when = change.time.astimezone(UTC).isoformat(timespec="seconds")
    why = change.evidence.get("message") if isinstance(change.evidence, dict) else None
    return f"held after an automatic rollback at {when}" + (f": {why}" if why else "")


async def apply_plan(
    plan: Plan, store: Store, *, actor: str, kind: str | None = None, forced: bool = False
) -> RouteChange:
    """Audit the change, then write the planned YAML (atomically, if the file is unchanged).

    The record comes first: a step on disk without its record would leave the evidence
    window at the change before, and the next `advance` or watch pass would judge the same
    evidence again and step on. A record without its step only asks for fresh evidence."""
    if plan.target is None:
        raise MigrateError(f"route {plan.route!r}: nothing to apply")
    _check_config(plan)
    change = await store.record_route_change(
        route=plan.route,
        to_mode=plan.target.mode,
        actor=actor,
        kind=kind or plan.action,
        from_mode=plan.current.mode,
        from_percent=plan.current.share,
        to_percent=plan.target.share,
        evidence=plan.audit_evidence(forced=forced),
    )
    try:
        write_atomic(plan.config_path, plan.new_text)
    except OSError as e:
        raise MigrateError(
            f"cannot write {plan.config_path}: {e.strerror or e}; the change was recorded"
            f" (audit #{change.id}) but not made: {plan.route} stays at {plan.current}"
        ) from None
    return change


def _check_config(plan: Plan) -> None:
    """Validate the edited text; MigrateError if the file changed since it was read."""
    try:
        with open(plan.config_path, encoding="utf-8", newline="") as fh:
            on_disk = fh.read()
    except OSError as e:
        raise MigrateError(f"cannot read {plan.config_path}: {e.strerror or e}") from None
    if on_disk != plan.old_text:
        raise MigrateError(f"{plan.config_path} changed while planning; run the command again")
    try:
        loads(plan.new_text, plan.config_path)
    except ConfigError as e:
        raise MigrateError(f"the edited config would be invalid: {e.errors[0]}") from None


# --- reload ------------------------------------------------------------------------------


def reload_target(url: str) -> str:
    """The full `/-/reload` URL for an admin base URL (or the reload URL itself)."""
    if not url.startswith(("http://", "https://")):
        raise MigrateError(f"--reload-url {url!r}: expected http://HOST:PORT or .../-/reload")
    return url if url.rstrip("/").endswith("/-/reload") else url.rstrip("/") + "/-/reload"


async def reload_proxy(
    url: str, token: str, *, timeout: float = RELOAD_TIMEOUT_S, attempts: int = 3
) -> str:
    """POST the proxy's `/-/reload` with the bearer token; the new config version.
    ReloadUnknown when the POST got no answer (it may have reloaded), else MigrateError."""
    target = reload_target(url)
    # Retried only when the proxy surely did not take it: a refused connection, or a 503
    # (not ready). One that timed out, lost its connection, or met a gateway's 502/504 may
    # still be reloading: another POST would only queue another reload behind it.
    retry = ExponentialRetry(
        attempts=attempts,
        start_timeout=0.2,
        max_timeout=2.0,
        statuses={503},
        exceptions={aiohttp.ClientConnectorError},
        methods={"POST"},
        retry_all_server_errors=False,
    )
    client = RetryClient(retry_options=retry, timeout=aiohttp.ClientTimeout(total=timeout))
    try:
        async with client.post(target, headers={"Authorization": f"Bearer {token}"}) as resp:
            body = await resp.text()
            if resp.status in (502, 504):  # a gateway in front gave up, not the proxy
                raise ReloadUnknown(
                    f"reload at {target}: HTTP {resp.status} from a gateway; {_UNKNOWN}"
                )
            if resp.status != 200:
                raise MigrateError(f"reload at {target} failed: HTTP {resp.status}: {body[:300]}")
            try:
                data = await resp.json(content_type=None)
            except ValueError:
                data = {}
    except aiohttp.ClientConnectorError as e:  # not connected: nothing was sent
        raise MigrateError(f"reload at {target} failed: {str(e) or type(e).__name__}") from None
    except (TimeoutError, aiohttp.ClientError) as e:  # sent, answer lost (reset, cut short)
        why = f"no answer within {timeout:g} s" if isinstance(e, TimeoutError) else str(e)
        raise ReloadUnknown(f"reload at {target}: {why or type(e).__name__}; {_UNKNOWN}") from None
    finally:
        await client.close()
    return str(data.get("config_version", "")) if isinstance(data, dict) else ""


# --- watch -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WatchResult:
    """What one watch pass did with one auto route."""

    route: str
    outcome: Literal["advanced", "refused", "waiting", "held", "skipped"]
    message: str
    change: RouteChange | None = None


@contextmanager
def single_controller(config_path: str) -> Iterator[None]:
    """Hold the one-controller lock of a config file (MigrateError if another holds it)."""
    directory, name = os.path.split(os.path.abspath(config_path))
    lock_path = os.path.join(directory, f".{name}.migrate-watch.lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise MigrateError(f"cannot open the watch lock {lock_path}: {e.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MigrateError(
                f"another `strangler migrate watch` already controls {config_path}"
            ) from None
        yield
    finally:
        os.close(fd)


async def watch_pass(
    config_path: str, store: Store, *, actor: str, now: datetime | None = None
) -> list[WatchResult]:
    """Advance each `promotion.auto` route whose gates pass by one step, once per interval."""
    results: list[WatchResult] = []
    names = [r.name for r in load_config(config_path).routes if r.promotion.auto]
    for name in names:
        settings = load_config(config_path)  # each applied change rewrites the file
        route = next((r for r in settings.routes if r.name == name), None)
        if route is None or not route.promotion.auto:
            continue
        results.append(await _watch_route(settings, route, store, actor, now or datetime.now(UTC)))
    return results


async def _watch_route(
    settings: Settings, route: RouteSettings, store: Store, actor: str, now: datetime
) -> WatchResult:
    stage = current_stage(route)
    if stage.mode not in ("shadow", "canary"):
        why = "fully extracted" if stage.mode == "extracted" else "starting is an operator's call"
        return WatchResult(route.name, "skipped", f"{stage}: {why}")
    last = await store.last_route_change(route.name)
    if last is not None and last.kind == "auto_rollback":
        return WatchResult(route.name, "held", f"held after an automatic rollback at {last.time}")
    interval = timedelta(seconds=route.promotion.interval or 0.0)
    if last is not None and now - last.time < interval:
        due = last.time + interval
        return WatchResult(route.name, "waiting", f"next step not before {due.isoformat()}")
    plan = await plan_change(settings, store, route.name, "advance")
    if plan.target is None:
        return WatchResult(route.name, "skipped", "nothing to advance")
    if not plan.passed:
        reasons = "; ".join(r.message for r in plan.verdict.reasons) if plan.verdict else ""
        reasons = reasons or "no evidence: 0 comparisons"
        return WatchResult(route.name, "refused", f"{plan.current} -> {plan.target}: {reasons}")
    change = await apply_plan(plan, store, actor=actor, kind="auto_advance")
    return WatchResult(route.name, "advanced", f"{plan.current} -> {plan.target}", change)
