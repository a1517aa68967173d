"""A child process's tie to the process that started it: it goes when its parent goes, and
a worker's heartbeat, by which its supervisor tells a hung event loop from a busy one."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import NamedTuple

__all__ = [
    "HEARTBEAT_ENV",
    "Heartbeat",
    "Pulse",
    "ReloadAnswer",
    "start_heartbeat",
    "take_heartbeat_fd",
    "tie_to_parent",
]

HEARTBEAT_ENV = "STRANGLER_HEARTBEAT_FD"  # set for a worker: the pipe it beats into
HEARTBEAT_S = 0.5  # a worker's beat; off the request path, one byte per beat
# a beat is one byte; a reload's answer is `+GEN\n` (runs) or `-GEN\n` (refused), GEN the
# supervisor's generation of the snapshot that reload read (none: it read no snapshot), then
# ` WHY` when it could not read one; a pipe writes each whole (up to PIPE_BUF), so a beat
# never lands inside an answer
_BEAT, _RELOADED, _REJECTED, _END = b".", b"+", b"-", b"\n"
_WHY_MAX = 1000  # bytes of a reason sent: the answer stays far under PIPE_BUF (4096)


class ReloadAnswer(NamedTuple):
    """A worker's answer to a reload: the snapshot generation it read (None: none), whether
    the reload runs there, and why it read no snapshot (if it said)."""

    generation: int | None
    ok: bool
    reason: str = ""


def tie_to_parent(parent: int | None = None) -> bool:
    """Ask Linux to SIGTERM this process when its parent dies (even by SIGKILL). With
    `parent` (its pid), False if that parent is already gone: it died before the request,
    which then never fires, and the caller must exit rather than run as an orphan."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    return parent is None or os.getppid() == parent


class Heartbeat:
    """A worker's end of its heartbeat pipe: beats, and how each reload went."""

    def __init__(self, fd: int, loop: asyncio.AbstractEventLoop) -> None:
        self._fd = fd
        self._loop = loop
        os.set_blocking(fd, False)

    def _send(self, byte: bytes) -> None:
        with contextlib.suppress(OSError):  # a full pipe (the supervisor lags) or gone
            os.write(self._fd, byte)

    def beat(self) -> None:
        """Beat now and every HEARTBEAT_S from the loop (a timer: a stuck loop stops)."""
        self._send(_BEAT)
        self._loop.call_later(HEARTBEAT_S, self.beat)

    def reloaded(self, ok: bool, generation: int | None, reason: str = "") -> None:
        """Tell the supervisor whether a reload it asked for runs here (or the old config),
        naming the snapshot generation that reload read: an answer that comes late (a
        reload held while this worker started, one past the supervisor's wait) is not
        taken for the answer to a later reload. `reason`: why it read no snapshot."""
        number = b"" if generation is None else str(generation).encode()
        why = b""
        if reason:
            text = " ".join(reason.split())  # one line
            why = b" " + text.encode("utf-8", "replace")[:_WHY_MAX]
        self._send((_RELOADED if ok else _REJECTED) + number + why + _END)


def take_heartbeat_fd() -> int | None:
    """The heartbeat pipe this process was given, if any, taken out of the environment:
    call it before starting any child (the worker's shadow helper), which must not see it."""
    raw = os.environ.pop(HEARTBEAT_ENV, None)
    try:
        return int(raw) if raw else None
    except ValueError:
        return None


def start_heartbeat(fd: int, loop: asyncio.AbstractEventLoop) -> Heartbeat:
    """Beat into the supervisor's pipe `fd` (from `take_heartbeat_fd`) from `loop`."""
    heart = Heartbeat(fd, loop)
    heart.beat()
    return heart


class Pulse:
    """The supervisor's end of one worker's heartbeat pipe."""

    def __init__(self) -> None:
        self._read, self.fd = os.pipe()  # `fd`: the worker's end, closed here once handed
        os.set_blocking(self._read, False)
        self.last: float | None = None  # when a beat was last seen; None before the first
        # how the worker's reloads went, oldest first
        self.reloads: list[ReloadAnswer] = []
        self._partial = b""  # the start of an answer whose end is not read yet

    def handed(self) -> None:
        """The worker holds its end now (or never will): keep only ours."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def silent_s(self, now: float) -> float | None:
        """Seconds since the last beat, as of `now` (the beats waiting in the pipe taken
        first, so a supervisor that was itself held up does not misjudge); None before the
        worker's first beat (it is still starting)."""
        while True:
            try:
                data = os.read(self._read, 4096)
            except OSError:  # nothing waiting (BlockingIOError)
                break
            if not data:
                break
            self.last = now
            self._take(data)
        return None if self.last is None else now - self.last

    def _take(self, data: bytes) -> None:
        # Beats come only between answers (a reason may hold dots): skip those, then split.
        rest = self._partial + data
        while (rest := rest.lstrip(_BEAT)) and (end := rest.find(_END)) >= 0:
            answer, rest = rest[:end], rest[end + 1 :]
            number, _, why = answer[1:].partition(b" ")
            generation = int(number) if number.isdigit() else None
            reason = why.decode("utf-8", "replace")
            self.reloads.append(ReloadAnswer(generation, answer[:1] == _RELOADED, reason))
        self._partial = rest

    def close(self) -> None:
        """Close the supervisor's end."""
        self.handed()
        if self._read >= 0:
            os.close(self._read)
            self._read = -1
