"""`strangler migrate`: status, advance, promote, rollback and watch, as click commands.

The logic lives in `proxy.migrate`; this module parses flags, prints, and maps errors to
exit codes at one boundary: 0 ok, 1 gate failed or no evidence, 2 usage or config error
(one line, never a traceback).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import click
from sqlalchemy.engine import make_url

from proxy.migrate import (
    RELOAD_TIMEOUT_S,
    Action,
    MigrateError,
    Plan,
    ReloadUnknown,
    apply_plan,
    current_stage,
    find_route,
    gather_evidence,
    held_reason,
    is_held,
    load_config,
    next_stage,
    plan_change,
    reload_proxy,
    reload_target,
    single_controller,
    watch_pass,
)
from proxy.settings import Mode, RouteSettings, Settings
from shadow.gates import Evidence, Verdict, evaluate
from shadow.record import RouteChange
from shadow.store import Store, StoreError, mask_url, normalize_url

__all__ = ["register"]

_OK, _GATE, _USAGE = 0, 1, 2


def register(group: click.Group) -> None:
    """Attach the migrate subcommands to the `migrate` group."""
    for command in (status, advance, promote, rollback, watch):
        group.add_command(command)


# --- shared options ----------------------------------------------------------------------

_F = Callable[..., Any]


def _common(f: _F) -> _F:
    f = click.option(
        "--store",
        "store_url",
        default=None,
        help="Comparison store URL (default: the config's store.url).",
    )(f)
    return click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))(
        f
    )


def _changing(f: _F) -> _F:
    f = click.option("--apply", "do_apply", is_flag=True, help="Write the change (else: dry run).")(
        f
    )
    f = click.option("--actor", default=None, help="Who makes the change (default: $USER).")(f)
    return click.option(
        "--reload-url",
        default=None,
        help="Admin base URL (or its /-/reload URL) to POST after writing.",
    )(f)


# --- commands ----------------------------------------------------------------------------


@click.command()
@click.argument("route", required=False)
@_common
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def status(route: str | None, config_path: str, store_url: str | None, as_json: bool) -> None:
    """Per route: mode, share, next step, and the gate verdict with its evidence."""
    _exit(lambda: _status(route, config_path, store_url, as_json))


@click.command()
@click.argument("route", required=False)
@_common
@_changing
def advance(
    route: str | None,
    config_path: str,
    store_url: str | None,
    do_apply: bool,
    actor: str | None,
    reload_url: str | None,
) -> None:
    """Move a route one step along its path (gated); show the YAML diff."""
    _exit(
        lambda: _change(
            "advance", route, config_path, store_url, do_apply, actor, reload_url, False, "shadow"
        )
    )


@click.command()
@click.argument("route", required=False)
@_common
@_changing
@click.option("--force", is_flag=True, help="Promote even when a gate fails.")
def promote(
    route: str | None,
    config_path: str,
    store_url: str | None,
    do_apply: bool,
    actor: str | None,
    reload_url: str | None,
    force: bool,
) -> None:
    """Jump a route to extracted (gated unless --force)."""
    _exit(
        lambda: _change(
            "promote", route, config_path, store_url, do_apply, actor, reload_url, force, "shadow"
        )
    )


@click.command()
@click.argument("route", required=False)
@_common
@_changing
@click.option(
    "--to", "to", default="shadow", show_default=True, type=click.Choice(["shadow", "legacy"])
)
def rollback(
    route: str | None,
    config_path: str,
    store_url: str | None,
    do_apply: bool,
    actor: str | None,
    reload_url: str | None,
    to: Mode,
) -> None:
    """Send a route back to shadow (or legacy) at once, no gate."""
    _exit(
        lambda: _change(
            "rollback", route, config_path, store_url, do_apply, actor, reload_url, False, to
        )
    )


@click.command()
@_common
@click.option("--once", is_flag=True, help="One evaluation pass, then exit.")
@click.option(
    "--every", default=10.0, show_default=True, type=click.FloatRange(0.1), help="Seconds."
)
@click.option("--actor", default=None, help="Recorded as the actor (default: $USER).")
@click.option("--reload-url", default=None, help="Admin URL to POST /-/reload after a step.")
def watch(
    config_path: str,
    store_url: str | None,
    once: bool,
    every: float,
    actor: str | None,
    reload_url: str | None,
) -> None:
    """Single controller: advance `promotion.auto` routes whose gates pass, one step each."""
    _exit(lambda: _watch(config_path, store_url, once, every, actor, reload_url))


# --- the boundary ------------------------------------------------------------------------


def _exit(run: Callable[[], Coroutine[Any, Any, int]]) -> None:
    try:
        code = asyncio.run(run())
    except (MigrateError, StoreError) as e:
        click.echo(f"strangler migrate: error: {e}", err=True)
        code = _USAGE
    except KeyboardInterrupt:
        code = 130
    except Exception as e:  # the promise: one line, never a traceback
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        click.echo(f"strangler migrate: error: {detail}", err=True)
        code = _USAGE
    sys.exit(code)


def _actor(actor: str | None) -> str:
    return actor or os.environ.get("USER") or os.environ.get("LOGNAME") or "unknown"


async def _open_store(settings: Settings, store_url: str | None) -> Store:
    url = normalize_url(store_url or settings.store.url)
    try:
        make_url(url)
    except Exception:
        raise MigrateError(f"--store {mask_url(url)!r}: not a database URL") from None
    # Never makes a database a store (a missing SQLite file is "no such database file"):
    # migrate reads (and audits into) the proxy's own.
    return await Store.open(url, create=False)


def _token(settings: Settings, reload_url: str | None) -> str | None:
    if reload_url is None:
        return None
    reload_target(reload_url)
    token = os.environ.get(settings.admin.token_env, "")
    if not token:
        raise MigrateError(f"--reload-url needs the admin token in ${settings.admin.token_env}")
    return token


# --- status ------------------------------------------------------------------------------


def _since_text(since: datetime | None) -> str:
    return since.astimezone(UTC).isoformat(timespec="seconds") if since else "the beginning"


def _evidence_text(ev: Evidence) -> str:
    mm = f"{ev.mismatch_rate:.3%}" if ev.mismatch_rate is not None else "n/a"
    er = f"{ev.error_rate:.3%}" if ev.error_rate is not None else "n/a"

    def ms(v: float | None) -> str:
        return f"{v:.1f} ms" if v is not None else "n/a"

    ratio = f"{ev.p99_ratio:.2f}x" if ev.p99_ratio is not None else "n/a"
    return (
        f"samples {ev.samples}, mismatches {ev.mismatches} ({mm}), errors {ev.errors} ({er}),"
        f" p99 legacy {ms(ev.p99_primary_ms)} / candidate {ms(ev.p99_candidate_ms)}"
        f" (ratio {ratio})"
    )


def _verdict_lines(verdict: Verdict | None, ev: Evidence) -> list[str]:
    if verdict is None:
        return ["gate: none (the next step does not serve candidate responses)"]
    if ev.empty:
        return ["gate: FAIL", f"  - no evidence: 0 comparisons since {_since_text(ev.since)}"]
    if verdict.passed:
        return ["gate: pass"]
    return ["gate: FAIL", *(f"  - {r.message}" for r in verdict.reasons)]


def _auto_text(route: RouteSettings) -> str:
    if not route.promotion.auto:
        return ""
    every = route.promotion.interval
    return f"; auto every {every:g}s" if every else "; auto"


def _last_text(last: RouteChange | None) -> str:
    if last is None:
        return "never changed"
    return f"last change {_since_text(last.time)} ({last.kind} by {last.actor or 'unknown'})"


async def _status(route: str | None, config_path: str, store_url: str | None, as_json: bool) -> int:
    settings = load_config(config_path)
    routes = [find_route(settings, route)] if route else list(settings.routes)
    store = await _open_store(settings, store_url)
    failed = False
    out: list[dict[str, Any]] = []
    try:
        for r in routes:
            stage, nxt = current_stage(r), next_stage(r)
            last = await store.last_route_change(r.name)
            ev = await gather_evidence(store, r.name, last.time if last else None)
            verdict = evaluate(ev, r.promotion) if nxt and nxt.serves_candidate else None
            held = is_held(last, stage)
            failed |= verdict is not None and (ev.empty or not verdict.passed or held)
            if as_json:
                out.append(
                    {
                        "route": r.name,
                        "mode": stage.mode,
                        "share": stage.share,
                        "next": str(nxt) if nxt else None,
                        "last_change": last.time.isoformat() if last else None,
                        "gated": verdict is not None,
                        "no_evidence": ev.empty,
                        "auto": r.promotion.auto,
                        "held": held,
                        **(verdict or Verdict(ev)).to_json(),
                    }
                )
                continue
            click.echo(f"{r.name}")
            click.echo(
                f"  mode {stage.mode}, share {stage.share:g}%,"
                f" next {nxt if nxt else 'none (fully extracted)'}{_auto_text(r)}"
            )
            if held and last is not None:
                click.echo(f"  HELD: automatic rollback at {_since_text(last.time)}")
            click.echo(f"  evidence since {_since_text(ev.since)} ({_last_text(last)}):")
            click.echo(f"    {_evidence_text(ev)}")
            for line in _verdict_lines(verdict, ev):
                click.echo(f"  {line}")
    finally:
        await store.close()
    if as_json:
        click.echo(json.dumps({"routes": out}, indent=2))
    return _GATE if failed else _OK


# --- advance, promote, rollback ----------------------------------------------------------


async def _change(
    action: Action,
    route: str | None,
    config_path: str,
    store_url: str | None,
    do_apply: bool,
    actor: str | None,
    reload_url: str | None,
    force: bool,
    to: Mode,
) -> int:
    settings = load_config(config_path)
    if route is None:  # one route per change: a step of every route at once is not a step
        known = ", ".join(r.name for r in settings.routes) or "none"
        raise MigrateError(
            f"{action} changes one route: name it (routes in {settings.path}: {known});"
            " `strangler migrate watch` advances every route with promotion.auto"
        )
    find_route(settings, route)
    token = _token(settings, reload_url)
    store = await _open_store(settings, store_url)
    try:
        plan = await plan_change(settings, store, route, action, to=to)
        _show_plan(plan)
        if plan.target is None:
            return _OK
        if not plan.passed and not force:
            click.echo(f"refused: {plan.route} stays at {plan.current}", err=True)
            return _GATE
        if not do_apply:
            click.echo("dry run: nothing written (add --apply)")
            return _GATE if not plan.passed else _OK
        if not plan.passed:
            click.echo("forced: applying despite the failed gate", err=True)
        change = await apply_plan(plan, store, actor=_actor(actor), forced=force)
    finally:
        await store.close()
    click.echo(
        f"applied: {plan.route} {plan.current} -> {plan.target}; wrote {plan.config_path};"
        f" audit #{change.id} by {change.actor}"
    )
    if reload_url is not None and token is not None:
        done = f"{plan.route}: applied ({plan.current} -> {plan.target})"
        written = f"written to {plan.config_path} (audit #{change.id})"
        version = await _reload(reload_url, token, f"{done} and {written}")
        click.echo(f"reloaded: {reload_target(reload_url)} (config version {version or '?'})")
    return _OK


async def _reload(
    reload_url: str, token: str, done: str, *, timeout: float = RELOAD_TIMEOUT_S
) -> str:
    """POST the reload after a change was written; a failure says the change stands."""
    try:
        return await reload_proxy(reload_url, token, timeout=timeout)
    except ReloadUnknown as e:
        raise MigrateError(
            f"{done}, but {e}: do not apply it again; if the proxy runs the previous config,"
            " reload it (POST /-/reload or SIGHUP)"
        ) from None
    except MigrateError as e:
        raise MigrateError(
            f"{done}, but the reload failed: {e}; the proxy runs the previous config until it"
            " reloads (POST /-/reload or SIGHUP): do not apply it again"
        ) from None


def _show_plan(plan: Plan) -> None:
    if plan.target is None:
        where = "fully extracted" if plan.current.mode == "extracted" else f"at {plan.current}"
        click.echo(f"{plan.route}: nothing to {plan.action}: already {where}")
        return
    click.echo(f"{plan.route}: {plan.current} -> {plan.target} ({plan.action})")
    if plan.target.mode == "canary" and plan.keyless:
        click.echo(
            f"warning: {plan.route} has no canary.sticky key (header or cookie): at a canary"
            " step every request is still served by legacy, so the candidate first serves"
            " users when the route is extracted",
            err=True,
        )
    click.echo(
        f"evidence since {_since_text(plan.evidence.since)} ({_last_text(plan.last_change)}):"
    )
    click.echo(f"  {_evidence_text(plan.evidence)}")
    for line in _verdict_lines(plan.verdict, plan.evidence):
        click.echo(line)
    if plan.held is not None:
        click.echo(
            f"HELD: {held_reason(plan.held)}; the evidence since was made while legacy served"
            f" (`strangler migrate rollback {plan.route} --apply`, or clear the hold with"
            f" POST /-/routes/{plan.route}/clear, then gather fresh evidence)"
        )
    click.echo(plan.diff, nl=False)


# --- watch -------------------------------------------------------------------------------


async def _watch(
    config_path: str,
    store_url: str | None,
    once: bool,
    every: float,
    actor: str | None,
    reload_url: str | None,
) -> int:
    settings = load_config(config_path)
    token = _token(settings, reload_url)
    with single_controller(config_path):
        store = await _open_store(settings, store_url)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        if not once:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
        try:
            while True:
                try:
                    await _watch_pass(config_path, store, _actor(actor), reload_url, token)
                except (MigrateError, StoreError) as e:
                    if once:
                        raise
                    # A controller outlives a config mid-edit, a store or a proxy restart.
                    click.echo(f"{datetime.now(UTC):%H:%M:%S} pass failed: {e}", err=True)
                if once:
                    return _OK
                try:
                    await asyncio.wait_for(stop.wait(), timeout=every)
                    return _OK
                except TimeoutError:
                    pass
        finally:
            if not once:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
            await store.close()


async def _watch_pass(
    config_path: str, store: Store, actor: str, reload_url: str | None, token: str | None
) -> None:
    results = await watch_pass(config_path, store, actor=actor)
    for r in results:
        click.echo(f"{datetime.now(UTC):%H:%M:%S} {r.route}: {r.outcome}: {r.message}")
    advanced = [r.route for r in results if r.outcome == "advanced"]
    if reload_url and token and advanced:
        done = f"{', '.join(advanced)}: advanced and written to {config_path}"
        version = await _reload(reload_url, token, done)
        click.echo(f"reloaded: {reload_target(reload_url)} ({version or '?'})")
