"""Automatic-rollback holds shared by every worker of one proxy.

A hold keeps a route on legacy until that route's own config changes (its settings or its
backends'; not a comment or another route) or an operator clears it. With
several workers, holds are small marker files in a directory the supervisor shares with
its workers; each worker polls it (a directory listing every 250 ms, off the request
path), so a rollback decided in one worker applies in all. A hold whose file cannot be
written (a full disk) holds in its own worker and is written again at each poll. A single
process keeps them in memory only.
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
        self._unshared: dict[str, Hold] = {}  # holds whose file could not be written yet

    @classmethod
    def from_env(cls) -> HoldBoard:
        """The board for this process (shared when a supervisor set the state dir)."""
        return cls(os.environ.get(STATE_DIR_ENV) or None)

    def _file(self, route: str) -> Path:
        assert self.dir is not None
        return self.dir / quote(route, safe="")

    def put(self, hold: Hold) -> None:
        """Publish a hold. OSError when its file cannot be written (a full disk): this
        process holds the route anyway (`read` returns it) and writes it again at each
        `read` until it can."""
        self._local[hold.route] = hold
        if self.dir is not None:
            self._unshared[hold.route] = hold
            self._write(hold)
            del self._unshared[hold.route]

    def _write(self, hold: Hold) -> None:
        # Its own temporary name: two workers tripping at once (or two routes named `a.x`
        # and `a.y`) would rename each other's file away.
        target = self._file(hold.route)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        try:
            tmp.write_bytes(
                orjson.dumps({"version": hold.version, "time": hold.time, "reason": hold.reason})
            )
            tmp.replace(target)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    def clear(self, route: str) -> bool:
        """Remove a route's hold; True if there was one."""
        had = self._local.pop(route, None) is not None
        self._unshared.pop(route, None)
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
        for hold in list(self._unshared.values()):
            with contextlib.suppress(OSError):
                self._write(hold)
                del self._unshared[hold.route]
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
        return {**holds, **self._unshared}


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
