"""Hostile HTTP/1.1 requests and the answer strangler owes each; shared with the nginx bench."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CASES", "KNOWN_GAPS", "HostileCase"]

_H = b"Host: a\r\n"


@dataclass(frozen=True, slots=True)
class HostileCase:
    """One raw request, the status it must get, and why it is hostile."""

    name: str
    group: str  # smuggling | header-chars | limits | protocol
    request: bytes
    status: int
    why: str


def _post(headers: bytes, body: bytes) -> bytes:
    return b"POST /echo HTTP/1.1\r\n" + _H + headers + b"\r\n" + body


_CHUNKED = b"Transfer-Encoding: chunked\r\n"

CASES: tuple[HostileCase, ...] = (
    # request smuggling: two framings, or a framing the parser could read two ways
    HostileCase(
        "cl-then-te",
        "smuggling",
        _post(b"Content-Length: 3\r\n" + _CHUNKED, b"0\r\n\r\n"),
        400,
        "Content-Length and Transfer-Encoding together (CL.TE)",
    ),
    HostileCase(
        "te-then-cl",
        "smuggling",
        _post(_CHUNKED + b"Content-Length: 3\r\n", b"0\r\n\r\n"),
        400,
        "Transfer-Encoding and Content-Length together (TE.CL)",
    ),
    HostileCase(
        "two-content-lengths",
        "smuggling",
        _post(b"Content-Length: 3\r\nContent-Length: 4\r\n", b"abcd"),
        400,
        "two differing Content-Length headers",
    ),
    HostileCase(
        "content-length-list",
        "smuggling",
        _post(b"Content-Length: 3, 4\r\n", b"abcd"),
        400,
        "a Content-Length list with differing values",
    ),
    HostileCase(
        "content-length-sign",
        "smuggling",
        _post(b"Content-Length: +3\r\n", b"abc"),
        400,
        "a signed Content-Length",
    ),
    HostileCase(
        "chunk-size-not-hex",
        "smuggling",
        _post(_CHUNKED, b"zz\r\nabc\r\n0\r\n\r\n"),
        400,
        "a chunk size that is not hex",
    ),
    HostileCase(
        "chunk-size-negative",
        "smuggling",
        _post(_CHUNKED, b"-3\r\nabc\r\n0\r\n\r\n"),
        400,
        "a negative chunk size",
    ),
    HostileCase(
        "chunk-size-overflow",
        "smuggling",
        _post(_CHUNKED, b"fffffffffffffffff1\r\nabc\r\n0\r\n\r\n"),
        400,
        "a chunk size past 64 bits",
    ),
    HostileCase(
        "chunk-size-bare-lf",
        "smuggling",
        _post(_CHUNKED, b"3\nabc\n0\n\n"),
        400,
        "chunk lines ended by a bare LF",
    ),
    HostileCase(
        "chunk-data-too-long",
        "smuggling",
        _post(_CHUNKED, b"3\r\nabcdef\r\n0\r\n\r\n"),
        400,
        "more chunk data than the chunk size says",
    ),
    HostileCase(
        "te-not-chunked-last",
        "smuggling",
        _post(b"Transfer-Encoding: chunked, identity\r\n", b"0\r\n\r\n"),
        400,
        "a transfer coding list that does not end in chunked",
    ),
    HostileCase(
        "te-unknown",
        "smuggling",
        _post(b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"),
        400,
        "an unknown transfer coding",
    ),
    HostileCase(
        "te-space-before-colon",
        "smuggling",
        _post(b"Transfer-Encoding : chunked\r\n", b"0\r\n\r\n"),
        400,
        "whitespace between a field name and its colon",
    ),
    HostileCase(
        "te-two-headers",
        "smuggling",
        _post(_CHUNKED + b"Transfer-Encoding: identity\r\n", b"0\r\n\r\n"),
        400,
        "two Transfer-Encoding headers",
    ),
    HostileCase(
        "obs-fold-space",
        "smuggling",
        b"GET /echo HTTP/1.1\r\n" + _H + b"X-A: 1\r\n  folded\r\n\r\n",
        400,
        "obsolete line folding (space)",
    ),
    HostileCase(
        "obs-fold-tab",
        "smuggling",
        b"GET /echo HTTP/1.1\r\n" + _H + b"X-A: 1\r\n\tTransfer-Encoding: chunked\r\n\r\n",
        400,
        "obsolete line folding (tab) hiding a header",
    ),
    HostileCase(
        "http10-te-chunked",
        "smuggling",
        b"POST /echo HTTP/1.0\r\n" + _H + _CHUNKED + b"\r\n0\r\n\r\n",
        400,
        "Transfer-Encoding in an HTTP/1.0 request (RFC 9112 6.1: faulty framing)",
    ),
    # control characters in names and values
    HostileCase(
        "cr-in-value",
        "header-chars",
        b"GET /echo HTTP/1.1\r\n" + _H + b"X-A: 1\rX-B: 2\r\n\r\n",
        400,
        "a bare CR inside a header value",
    ),
    HostileCase(
        "lf-in-value",
        "header-chars",
        b"GET /echo HTTP/1.1\r\n" + _H + b"X-A: 1\nX-B: 2\r\n\r\n",
        400,
        "a bare LF inside a header value",
    ),
    HostileCase(
        "nul-in-value",
        "header-chars",
        b"GET /echo HTTP/1.1\r\n" + _H + b"X-A: 1\x002\r\n\r\n",
        400,
        "a NUL inside a header value",
    ),
    HostileCase(
        "nul-in-name",
        "header-chars",
        b"GET /echo HTTP/1.1\r\n" + _H + b"X-\x00A: 1\r\n\r\n",
        400,
        "a NUL inside a header name",
    ),
    HostileCase(
        "cr-in-name",
        "header-chars",
        b"GET /echo HTTP/1.1\r\n" + _H + b"X-\rA: 1\r\n\r\n",
        400,
        "a CR inside a header name",
    ),
    HostileCase(
        "space-in-name",
        "header-chars",
        b"GET /echo HTTP/1.1\r\n" + _H + b"X A: 1\r\n\r\n",
        400,
        "a space inside a header name",
    ),
    HostileCase(
        "ctl-in-target",
        "header-chars",
        b"GET /e\x01cho HTTP/1.1\r\n" + _H + b"\r\n",
        400,
        "a control character in the request target",
    ),
    HostileCase(
        "bare-lf-lines",
        "header-chars",
        b"GET /echo HTTP/1.1\n" + _H.replace(b"\r", b"") + b"\n",
        400,
        "request and header lines ended by bare LF",
    ),
    # Host: RFC 9112 3.2 requires exactly one in HTTP/1.1
    HostileCase(
        "no-host-http11",
        "protocol",
        b"GET /echo HTTP/1.1\r\n\r\n",
        400,
        "an HTTP/1.1 request without Host (RFC 9112 3.2)",
    ),
    HostileCase(
        "two-hosts",
        "protocol",
        b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        400,
        "two Host headers (RFC 9112 3.2): which one routes, which one logs?",
    ),
    HostileCase(
        "http09",
        "protocol",
        b"GET /echo HTTP/0.9\r\n" + _H + b"\r\n",
        505,
        "an HTTP/0.9 request line: forwarded as HTTP/1.1, it changed protocol on the way",
    ),
    HostileCase(
        "http20",
        "protocol",
        b"GET /echo HTTP/2.0\r\n" + _H + b"\r\n",
        505,
        "an HTTP/2.0 request line over HTTP/1 framing: no such protocol",
    ),
    HostileCase(
        "connect",
        "protocol",
        b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n",
        405,
        "CONNECT: a tunnel to an arbitrary address",
    ),
    # size limits (limits.max_url_bytes 8 KiB, limits.max_header_bytes 64 KiB by default)
    HostileCase(
        "request-line-9k",
        "limits",
        b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n" + _H + b"\r\n",
        414,
        "a 9 KB request target",
    ),
    HostileCase(
        "headers-80k",
        "limits",
        b"GET /echo HTTP/1.1\r\n"
        + _H
        + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 1000) for i in range(80))
        + b"\r\n",
        431,
        "80 headers of 1 KB each",
    ),
    HostileCase(
        "one-header-70k",
        "limits",
        b"GET /echo HTTP/1.1\r\n" + _H + b"X-A: " + b"v" * 70_000 + b"\r\n\r\n",
        431,
        "one 70 KB header",
    ),
)

# Cases strangler gets wrong today, with the reason (tests mark them xfail(strict=True)).
KNOWN_GAPS: dict[str, str] = {}
