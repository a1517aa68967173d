"""A circuit breaker per candidate backend: consecutive failures or a failure ratio opens it."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from time import monotonic

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "Breaker"]

CLOSED, OPEN, HALF_OPEN = 0, 1, 2


class Breaker:
    """Closed -> open on failures; after `open_s`, half-open lets one probe through at a time."""

    __slots__ = (
        "_clock",
        "_opened_at",
        "_outcomes",
        "_probe_at",
        "_probing",
        "consecutive",
        "failures_in_window",
        "max_consecutive",
        "max_ratio",
        "min_samples",
        "name",
        "on_change",
        "open_s",
        "state",
    )

    def __init__(
        self,
        name: str,
        *,
        max_consecutive: int = 5,
        max_ratio: float = 0.5,
        window: int = 20,
        min_samples: int = 10,
        open_s: float = 5.0,
        clock: Callable[[], float] = monotonic,
        on_change: Callable[[str, int], None] | None = None,
    ) -> None:
        self.name = name
        self.max_consecutive = max_consecutive
        self.max_ratio = max_ratio
        self.min_samples = min_samples
        self.open_s = open_s
        self._clock = clock
        self._outcomes: deque[bool] = deque(maxlen=window)
        self.failures_in_window = 0
        self.consecutive = 0
        self.state = CLOSED
        self._opened_at = 0.0
        self._probing = False
        self._probe_at = 0.0
        self.on_change = on_change

    def allow(self) -> bool:
        """May a request be served by this backend now?"""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            if self._clock() - self._opened_at < self.open_s:
                return False
            self._set(HALF_OPEN)
        now = self._clock()
        if self._probing and now - self._probe_at < self.open_s:
            return False
        # One probe at a time; a probe that never reports (its request refused, dropped
        # unanswered, upgraded) gives its turn to the next one after `open_s`.
        self._probing = True
        self._probe_at = now
        return True

    def abandon(self) -> None:
        """The probe ended without a verdict on the backend (the client's fault): its turn
        goes to the next request. Only the probe's own end may call this (the data plane
        marks the request `allow` admitted while half-open)."""
        if self.state == HALF_OPEN:
            self._probing = False

    def success(self) -> None:
        """Count a healthy answer."""
        self.consecutive = 0
        if self.state == HALF_OPEN:
            self._probing = False
            self._outcomes.clear()
            self.failures_in_window = 0
            self._set(CLOSED)
            return
        self._push(False)

    def failure(self) -> None:
        """Count a failed answer (5xx, reset, timeout)."""
        self.consecutive += 1
        if self.state == HALF_OPEN:
            self._probing = False
            self._open()
            return
        self._push(True)
        n = len(self._outcomes)
        if self.consecutive >= self.max_consecutive or (
            n >= self.min_samples and self.failures_in_window / n >= self.max_ratio
        ):
            self._open()

    def _push(self, failed: bool) -> None:
        q = self._outcomes
        if len(q) == q.maxlen and q[0]:
            self.failures_in_window -= 1
        q.append(failed)
        if failed:
            self.failures_in_window += 1

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._set(OPEN)

    def _set(self, state: int) -> None:
        if state != self.state:
            self.state = state
            if self.on_change is not None:
                self.on_change(self.name, state)
