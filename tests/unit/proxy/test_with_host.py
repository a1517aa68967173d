"""Rewriting a forwarded head's Host for another backend (fallback, shadow copies)."""

from __future__ import annotations

from proxy.shadowing import client_host, with_host

HEAD = b"GET /a HTTP/1.1\r\nAccept: */*\r\nHost: orders.internal\r\nx-request-id: r\r\n\r\n"


def test_the_host_field_is_replaced_wherever_it_stands() -> None:
    out = with_host(HEAD, b"legacy.internal")
    assert (
        out == b"GET /a HTTP/1.1\r\nhost: legacy.internal\r\nAccept: */*\r\nx-request-id: r\r\n\r\n"
    )


def test_a_body_after_the_head_is_kept_and_not_searched() -> None:
    request = HEAD + b"Host: in-the-body"
    assert with_host(request, b"x").endswith(b"\r\n\r\nHost: in-the-body")
    assert with_host(request, b"x").count(b"host: x\r\n") == 1


def test_an_empty_host_removes_the_field() -> None:
    # a request that came without a Host (HTTP/1.0) goes on without one
    assert b"host" not in with_host(HEAD, b"").lower()


def test_the_clients_host() -> None:
    assert client_host([(b"Accept", b"*/*"), (b"HOST", b"shop.example")]) == b"shop.example"
    assert client_host([]) == b""
