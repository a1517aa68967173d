"""The `--workers` supervisor's port probe refuses what the workers' binds would, no more."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from proxy.serve import _probe_listen


@pytest.fixture
def listening_v4() -> Iterator[int]:
    """A port another process's socket listens on, on every IPv4 address."""
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_an_ipv4_address_under_a_wildcard_listener_is_refused(listening_v4: int) -> None:
    with pytest.raises(OSError, match="address already in use"):
        _probe_listen("127.0.0.1", listening_v4)


def test_ipv6_beside_an_ipv4_wildcard_listener_is_free(listening_v4: int) -> None:
    """The workers' IPv6 listeners are IPV6_V6ONLY (as the event loop binds them): `[::]:P`
    binds beside `0.0.0.0:P`, so the probe must not say it is in use."""
    _probe_listen("::", listening_v4)
