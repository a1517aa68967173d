"""Automatic-rollback holds shared by every worker of one proxy.

A hold keeps a route on legacy until that route's own config changes (its settings or its
backends'; not a comment or another route) or an operator clears it. With
several workers, holds are small marker files in a directory the supervisor shares with
its workers; each worker polls it (a directory listing every 250 ms, off the request
path), so a rollback decided in one worker applies in all. A single process keeps them
in memory only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

import orjson

if TYPE_CHECKING:
    from proxy.settings import RouteSettings, Settings

__all__ = ["STATE_DIR_ENV", "Hold", "HoldBoard", "route_version", "route_versions"]

STATE_DIR_ENV = "STRANGLER_STATE_DIR"


@dataclass(frozen=True, slots=True)
class Hold:
    """A route held on legacy: under which version of its config (`route_version`), when
    and why."""

    route: str
    version: str
    time: float
    reason: str


class HoldBoard:
    """Where holds live: a directory shared by workers, or this process's memory."""

    def __init__(self, directory: str | None = None) -> None:
        self.dir = Path(directory, "holds") if directory else None
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
        self._local: dict[str, Hold] = {}

    @classmethod
    def from_env(cls) -> HoldBoard:
        """The board for this process (shared when a supervisor set the state dir)."""
        return cls(os.environ.get(STATE_DIR_ENV) or None)

    def _file(self, route: str) -> Path:
        assert self.dir is not None
        return self.dir / quote(route, safe="")

    def put(self, hold: Hold) -> None:
        """Publish a hold."""
        self._local[hold.route] = hold
        if self.dir is not None:
            tmp = self._file(hold.route).with_suffix(".tmp")
            tmp.write_bytes(
                orjson.dumps({"version": hold.version, "time": hold.time, "reason": hold.reason})
            )
            tmp.replace(self._file(hold.route))

    def clear(self, route: str) -> bool:
        """Remove a route's hold; True if there was one."""
        had = self._local.pop(route, None) is not None
        if self.dir is not None:
            with contextlib.suppress(FileNotFoundError):
                self._file(route).unlink()
                had = True
        return had

    def prune(self, versions: dict[str, str]) -> None:
        """Forget the holds of routes whose config is not in `versions` (route -> version) any
        more: a hold lasts until its route changes, and one left behind came back when a
        later file had the same route again."""
        for route, hold in self.read().items():
            if versions.get(route) != hold.version:
                self.clear(route)

    def read(self) -> dict[str, Hold]:
        """Every hold in force (from the shared directory when there is one)."""
        if self.dir is None:
            return dict(self._local)
        holds: dict[str, Hold] = {}
        try:
            names = os.listdir(self.dir)
        except OSError:
            return dict(self._local)
        for name in names:
            if name.endswith(".tmp"):
                continue
            try:
                data = orjson.loads((self.dir / name).read_bytes())
                route = unquote(name)
                holds[route] = Hold(
                    route, str(data["version"]), float(data["time"]), str(data["reason"])
                )
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return holds


def route_version(settings: Settings, route: RouteSettings) -> str:
    """A short hash of what a route's hold is tied to: the route's settings (not its line in
    the file) and those of its backends."""
    primary = settings.backends.get(route.backend or settings.default_backend)
    candidate = settings.backends.get(route.candidate) if route.candidate else None
    text = repr((replace(route, line=0), primary, candidate))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def route_versions(settings: Settings) -> dict[str, str]:
    """`route_version` of every route of a config, by name."""
    return {r.name: route_version(settings, r) for r in settings.routes}
