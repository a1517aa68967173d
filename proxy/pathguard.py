"""Path confusion guard: a path must route the same however a backend reads it.

Backends normalise paths in different ways (RFC 3986 dot segments and unreserved escapes,
merged slashes like nginx, decoded `%2F`/`%5C`, servlet `;params`, full percent-decoding).
The data plane matches the raw path and forwards it byte for byte; when a path could be
read differently, every reading must match the same route, or the request is refused.
Only paths holding one of `%`, `//`, `;`, `/.` or a backslash are examined.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

__all__ = ["ambiguous_reading", "is_suspicious", "other_reading", "readings"]

_UNRESERVED = re.compile(r"[A-Za-z0-9\-._~]")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_SLASHES = re.compile(r"/{2,}")
_ENCODED_SLASH = re.compile(r"%(?:2[fF]|5[cC])")


def is_suspicious(path: str) -> bool:
    """Could a backend read this path differently from its raw spelling?"""
    return "%" in path or "//" in path or ";" in path or "/." in path or "\\" in path


def _unescape_unreserved(path: str) -> str:
    def one(m: re.Match[str]) -> str:
        ch = chr(int(m[1], 16))
        return ch if _UNRESERVED.fullmatch(ch) else m[0].upper()

    return _ESCAPE.sub(one, path)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4, on an absolute path."""
    out: list[str] = []
    segments = path.split("/")[1:]
    for seg in segments:
        if seg == "..":
            if out:
                out.pop()
        elif seg != ".":
            out.append(seg)
    trailing = "/" if segments and segments[-1] in (".", "..") else ""
    return "/" + "/".join(out) + trailing


def _rfc3986(path: str) -> str:
    return _remove_dot_segments(_unescape_unreserved(path))


def _merge(path: str) -> str:
    return _SLASHES.sub("/", path)


def _decode_slashes(path: str) -> str:
    return _ENCODED_SLASH.sub("/", path).replace("\\", "/")


def _strip_params(path: str) -> str:
    return "/".join(seg.split(";", 1)[0] for seg in path.split("/"))


_READINGS: tuple[Callable[[str], str], ...] = (
    _rfc3986,
    lambda p: _rfc3986(_merge(p)),
    lambda p: _rfc3986(_merge(_decode_slashes(p))),
    lambda p: _rfc3986(_merge(_strip_params(p))),
    lambda p: _remove_dot_segments(_merge(unquote(p))),
)


def readings(path: str) -> set[str]:
    """The other ways a backend may read `path` (the raw spelling excluded)."""
    if not path.startswith("/"):
        return set()
    return {read(path) for read in _READINGS} - {path}


def ambiguous_reading(path: str, match: Callable[[str], Any]) -> str | None:
    """A reading of `path` that `match` (path -> route) sends elsewhere than the raw
    spelling, or None. The data plane refuses such a request: 400 `ambiguous_path`."""
    if not is_suspicious(path):
        return None
    return other_reading(path, match(path), match)


def other_reading(path: str, route: Any, match: Callable[[str], Any]) -> str | None:
    """A reading of `path` that `match` sends elsewhere than `route` (what the raw spelling
    matched), or None."""
    return next((other for other in sorted(readings(path)) if match(other) is not route), None)
