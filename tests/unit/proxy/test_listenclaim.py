"""The listen reservation of `strangler serve`: conflicts exactly as the listeners' binds."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

import proxy.listenclaim as listenclaim
from proxy.listenclaim import claim_listen
from tests.support import free_port


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def held() -> Iterator[list[socket.socket]]:
    """Reservations to let go of after the test."""
    socks: list[socket.socket] = []
    yield socks
    for sock in socks:
        sock.close()


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("0.0.0.0", "127.0.0.1"),
        ("127.0.0.1", "0.0.0.0"),
        ("0.0.0.0", "10.1.2.3"),
        ("::", "::1"),
        ("::1", "::"),
        ("::1", "0:0:0:0:0:0:0:1"),
        ("localhost", "127.0.0.1"),
        ("127.0.0.1", "localhost"),
        ("::ffff:127.0.0.1", "127.0.0.1"),
        ("127.0.0.1", "::ffff:127.0.0.1"),
    ],
)
def test_spellings_that_conflict_on_bind_conflict(
    port: int, held: list[socket.socket], first: str, second: str
) -> None:
    held += claim_listen(first, port)
    with pytest.raises(OSError, match="address already in use") as caught:
        held.extend(claim_listen(second, port))
    assert str(port) in str(caught.value)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("127.0.0.1", "127.0.0.2"),  # two specific addresses of one host: both bind
        ("0.0.0.0", "::"),  # IPv6 listeners are IPV6_V6ONLY: the families are apart
        ("::1", "127.0.0.1"),
    ],
)
def test_addresses_that_both_bind_are_both_held(
    port: int, held: list[socket.socket], first: str, second: str
) -> None:
    held += claim_listen(first, port)
    held += claim_listen(second, port)
    assert held


def test_other_ports_do_not_conflict(port: int, held: list[socket.socket]) -> None:
    held += claim_listen("0.0.0.0", port)
    held += claim_listen("0.0.0.0", free_port())
    held += claim_listen("127.0.0.1", port + 1 if port < 65535 else port - 1)


def test_a_closed_reservation_is_free_again(port: int, held: list[socket.socket]) -> None:
    for sock in claim_listen("0.0.0.0", port):
        sock.close()
    held += claim_listen("127.0.0.1", port)


def test_a_refused_claim_holds_nothing(port: int, held: list[socket.socket]) -> None:
    held += claim_listen("127.0.0.1", port)
    with pytest.raises(OSError):
        claim_listen("0.0.0.0", port)
    for sock in held:
        sock.close()
    held.clear()
    held += claim_listen("::", port)  # the lock was let go as well
    held += claim_listen("0.0.0.0", port)


def test_port_0_holds_nothing() -> None:
    assert claim_listen("0.0.0.0", 0) == []


def test_an_instance_stuck_inside_its_claim_refuses_after_the_wait(
    port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another instance holds the port's lock (stopped while claiming): wait, then refuse
    with a clear message rather than start unchecked."""
    monkeypatch.setattr(listenclaim, "_LOCK_WAIT_S", 0.05)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as lock:
        lock.bind(f"\0strangler-serve/{port}/lock")
        with pytest.raises(OSError, match=f"port {port}: address already in use"):
            claim_listen("127.0.0.1", port)
