"""The `strangler` command line: thin click wrappers over the modules that do the work.

Each command imports its implementation lazily so `strangler check` stays fast and one
broken subsystem cannot break unrelated commands. Exit codes: 0 ok, 1 gate failed,
2 usage or config error.
"""

from __future__ import annotations

import sys

from proxy.earlyhup import hold_early_hup

if sys.argv[1:2] == ["serve"]:
    # before the imports below (~0.5 s): a reload sent right after start must not kill it
    hold_early_hup()

import click

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="strangler")
def main() -> None:
    """strangler: a strangler-fig extraction proxy."""


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option("--watch", is_flag=True, help="Reload when the config file changes.")
def serve(config_path: str, workers: int, watch: bool) -> None:
    """Run the proxy and its admin listener."""
    from proxy.serve import run

    sys.exit(run(config_path, workers=workers, watch=watch))


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
def check(config_path: str) -> None:
    """Validate a config file; print PATH:LINE:COL: message per problem."""
    from proxy.check import run_check

    sys.exit(run_check(config_path))


def _headers(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> list[tuple[str, str]]:
    """`--header 'Name: value'` options as (name, value) pairs."""
    pairs = []
    for text in values:
        name, sep, value = text.partition(":")
        if not sep or not name.strip():
            raise click.BadParameter(f"{text!r}: expected 'Name: value'")
        pairs.append((name.strip(), value.strip()))
    return pairs


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option(
    "--header",
    "-H",
    "headers",
    multiple=True,
    metavar="'NAME: VALUE'",
    callback=_headers,
    help="A request header (repeatable): header matchers, a canary's sticky key.",
)
@click.argument("method")
@click.argument("url_path")
def explain(config_path: str, headers: list[tuple[str, str]], method: str, url_path: str) -> None:
    """Show which route a request matches, its mode, backends and sampling."""
    from proxy.check import run_explain

    sys.exit(run_explain(config_path, method, url_path, headers))


@main.command()
@click.option("--listen", default="127.0.0.1:8081", show_default=True)
@click.option("--db", "db_url", default="sqlite+aiosqlite:///legacy.db", show_default=True)
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0))
def legacy(listen: str, db_url: str, seed: int) -> None:
    """Run the reference legacy monolith."""
    from legacy.server import run
    from shadow.store import normalize_url

    sys.exit(run(listen, normalize_url(db_url), seed=seed))


@main.command()
@click.option("--listen", default="127.0.0.1:8082", show_default=True)
@click.option("--db", "db_url", default="sqlite+aiosqlite:///legacy.db", show_default=True)
def extracted(listen: str, db_url: str) -> None:
    """Run the extracted Order service standalone."""
    from extracted.server import run
    from shadow.store import normalize_url

    sys.exit(run(listen, normalize_url(db_url)))


@main.command(context_settings={"ignore_unknown_options": False})
@click.option("--store", "store_url", required=True)
@click.option("--since", default=None)
@click.option("--until", default=None)
@click.option("--route", "routes", multiple=True)
@click.option(
    "--format",
    "fmt",
    default="text",
    type=click.Choice(["text", "markdown", "json", "junit", "html"]),
)
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False))
@click.option("--max-mismatch-rate", type=float, default=None)
@click.option("--max-error-rate", type=float, default=None)
@click.option("--min-samples", type=int, default=None)
@click.option("--output", "-o", default=None, type=click.Path(dir_okay=False))
def report(
    store_url: str,
    since: str | None,
    until: str | None,
    routes: tuple[str, ...],
    fmt: str,
    config_path: str | None,
    max_mismatch_rate: float | None,
    max_error_rate: float | None,
    min_samples: int | None,
    output: str | None,
) -> None:
    """Per-route mismatch report; exits 1 when a route fails its gate."""
    from shadow.report_cli import run_report

    sys.exit(
        run_report(
            store_url=store_url,
            since=since,
            until=until,
            routes=routes,
            fmt=fmt,
            config_path=config_path,
            max_mismatch_rate=max_mismatch_rate,
            max_error_rate=max_error_rate,
            min_samples=min_samples,
            output=output,
        )
    )


@main.command()
@click.option("--keep-running", is_flag=True, help="Keep the stack up after the report.")
def demo(keep_running: bool) -> None:
    """The whole story on one machine, on embedded SQLite."""
    from proxy.demo import run_demo

    sys.exit(run_demo(keep_running=keep_running))


@main.command()
@click.argument("traffic", type=click.Path(dir_okay=False))
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option("--store", "store_url", default=None, help="Defaults to the config's store.url.")
@click.option("--concurrency", default=16, show_default=True, type=click.IntRange(1, 1024))
@click.option(
    "--format",
    "fmt",
    default="text",
    type=click.Choice(["text", "markdown", "json", "junit", "html"]),
)
def replay(
    traffic: str, config_path: str, store_url: str | None, concurrency: int, fmt: str
) -> None:
    """Replay captured requests through the compare pipeline offline."""
    from shadow.replay_cli import run_replay

    sys.exit(
        run_replay(
            traffic=traffic,
            config_path=config_path,
            store_url=store_url,
            concurrency=concurrency,
            fmt=fmt,
        )
    )


class _MigrateGroup(click.Group):
    """The `migrate` group, whose subcommands are defined with their implementation
    (`proxy.migrate_cli`, which pulls in SQLAlchemy, aiohttp and ruamel.yaml): attached the
    first time the group is listed or a subcommand looked up, so that every other command
    (`check`, `explain`, `--help` ...) starts without importing them."""

    _loaded = False

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        from proxy.migrate_cli import register  # an import error must show, not hide commands

        register(self)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._load()
        return super().get_command(ctx, cmd_name)


@main.group(cls=_MigrateGroup)
def migrate() -> None:
    """Gated step-by-step migration of routes (edits the routing YAML, comments kept)."""
