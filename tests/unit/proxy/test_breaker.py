"""The candidate's circuit breaker: open on failures, one half-open probe at a time."""

from __future__ import annotations

from proxy.breaker import CLOSED, HALF_OPEN, OPEN, Breaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _opened(clock: Clock) -> Breaker:
    br = Breaker("orders", max_consecutive=2, open_s=5.0, clock=clock)
    br.failure()
    br.failure()
    assert br.state == OPEN and not br.allow()
    clock.now += 5.0
    return br


def test_one_probe_at_a_time_and_its_success_closes() -> None:
    clock = Clock()
    br = _opened(clock)
    assert br.allow() and br.state == HALF_OPEN
    assert not br.allow()  # the probe is under way
    br.success()
    assert br.state == CLOSED and br.allow()


def test_a_probe_that_never_reports_gives_its_turn_away_after_open_s() -> None:
    # its request was refused, dropped unanswered or upgraded: the breaker must not stay
    # half-open with no probe for ever
    clock = Clock()
    br = _opened(clock)
    assert br.allow()
    clock.now += 4.9
    assert not br.allow()
    clock.now += 0.2
    assert br.allow() and br.state == HALF_OPEN
    br.failure()
    assert br.state == OPEN and not br.allow()


def test_an_abandoned_probe_lets_the_next_request_probe() -> None:
    clock = Clock()
    br = _opened(clock)
    assert br.allow()
    br.abandon()  # the client left: no verdict
    assert br.state == HALF_OPEN and br.allow()
    closed = Breaker("orders", clock=clock)
    closed.abandon()  # nothing to give back when closed
    assert closed.state == CLOSED and closed.consecutive == 0
