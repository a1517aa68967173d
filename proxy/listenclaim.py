"""Reserve a listen address against every other `strangler serve` in this network namespace.

A `--workers` supervisor's port probe lets go of the port before its workers bind it with
SO_REUSEPORT; without a reservation two instances started together both served it (users
split between two configs), or the other one's plain bind made the workers fail with no
clear reason. The reservation is an abstract Unix socket per address, per network
namespace like the ports themselves, gone with the process however it ends.

Two reservations conflict exactly when the kernel would refuse to bind both listeners (as
the proxy binds them: IPv6 sockets are IPV6_V6ONLY): the same port and address family,
and the same address or a wildcard (`0.0.0.0`, `::`) on either side, whatever the
spelling (`localhost`, `127.0.0.1`, `[::ffff:127.0.0.1]`). Different specific addresses on
one port (`127.0.0.1:P` and `127.0.0.2:P`) do not conflict, nor `0.0.0.0:P` and `[::]:P`.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import sys
import time
from collections.abc import Iterable

__all__ = ["WILDCARDS", "Claim", "canonical", "claim_listen", "conflict"]

_PREFIX = "strangler-serve/"
_LOCK_WAIT_S = 5.0  # a claim holds the port's lock for a few ms; a stopped holder, longer
_PROC_UNIX = "/proc/net/unix"  # this network namespace's Unix sockets, abstract ones "@name"

Claim = tuple[int, str]  # address family, canonical IP text
WILDCARDS = frozenset({"0.0.0.0", "::"})  # what a listener on every address binds


def claim_listen(host: str, port: int) -> list[socket.socket]:
    """Hold `host:port` against every other `strangler serve` for as long as the returned
    sockets are open (close them to let go), or raise OSError (EADDRINUSE) naming the
    address and the reservation it conflicts with. Port 0 and non-Linux: nothing held."""
    if port == 0 or not sys.platform.startswith("linux"):  # abstract sockets are Linux's
        return []
    wanted = _resolve(host, port)
    lock = _lock(port)
    try:
        held = _held(port)
        for claim in wanted:
            for other in held:
                if conflict(claim, other):
                    raise OSError(
                        errno.EADDRINUSE,
                        f"listen {_show(claim, port)}: address already in use (another"
                        f" strangler serve holds {_show(other, port)})",
                    )
        return _bind_all(wanted, port)
    finally:
        lock.close()


def _resolve(host: str, port: int) -> list[Claim]:
    """The addresses a listener on `host:port` binds, as the event loop resolves them."""
    claims: list[Claim] = []
    for family, _, _, _, addr in socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    ):
        scope = int(addr[3]) if len(addr) == 4 else 0  # an IPv6 zone (fe80::1%eth0)
        claim = canonical(family, str(addr[0]), scope)
        if claim not in claims:
            claims.append(claim)
    return claims


def canonical(family: int, ip: str, scope: int = 0) -> Claim:
    """One spelling per address: compressed, IPv4-mapped IPv6 as IPv4, with its zone."""
    parsed = ipaddress.ip_address(ip.partition("%")[0])
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return (socket.AF_INET, str(parsed.ipv4_mapped))
    text = str(parsed)
    if family == socket.AF_INET6 and scope:
        text = f"{text}%{scope}"
    return (family, text)


def conflict(a: Claim, b: Claim) -> bool:
    """Whether listeners on the two addresses (one port) cannot both be bound (IPv6 ones
    bind IPV6_V6ONLY, as the event loop's do: `::` leaves the IPv4 port alone)."""
    return a[0] == b[0] and (a[1] == b[1] or a[1] in WILDCARDS or b[1] in WILDCARDS)


def _name(port: int, what: str) -> str:
    return f"\0{_PREFIX}{port}/{what}"


def _lock(port: int) -> socket.socket:
    """The port's lock, held while one instance looks at the claims and adds its own: two
    that start together do not both see none (and neither refuses both)."""
    deadline = time.monotonic() + _LOCK_WAIT_S
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        while True:
            try:
                sock.bind(_name(port, "lock"))
                return sock
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                if time.monotonic() >= deadline:
                    raise OSError(
                        errno.EADDRINUSE,
                        f"listen port {port}: address already in use (another strangler"
                        f" serve is starting on it)",
                    ) from None
            time.sleep(0.001)  # the holder reads one file and binds a socket or two
    except BaseException:
        sock.close()
        raise


def _held(port: int) -> list[Claim]:
    """The claims other instances hold on `port` (their names in /proc/net/unix)."""
    try:
        with open(_PROC_UNIX, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except OSError:  # no /proc: only the same spelling conflicts (at bind, below)
        return []
    return list(_parse_held(lines, port))


def _parse_held(lines: Iterable[str], port: int) -> Iterable[Claim]:
    head = f"@{_PREFIX}{port}/"
    for line in lines:
        fields = line.split()
        if len(fields) < 8 or not fields[7].startswith(head):
            continue
        family, _, ip = fields[7][len(head) :].partition("/")
        if family in ("ipv4", "ipv6") and ip:
            yield (socket.AF_INET if family == "ipv4" else socket.AF_INET6, ip)


def _bind_all(claims: list[Claim], port: int) -> list[socket.socket]:
    held: list[socket.socket] = []
    try:
        for claim in claims:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            held.append(sock)
            family = "ipv4" if claim[0] == socket.AF_INET else "ipv6"
            try:
                sock.bind(_name(port, f"{family}/{claim[1]}"))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                raise OSError(
                    exc.errno,
                    f"listen {_show(claim, port)}: address already in use (another strangler"
                    f" serve holds it)",
                ) from None
    except BaseException:
        for sock in held:
            sock.close()
        raise
    return held


def _show(claim: Claim, port: int) -> str:
    return f"[{claim[1]}]:{port}" if claim[0] == socket.AF_INET6 else f"{claim[1]}:{port}"
