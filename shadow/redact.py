"""Redaction before anything is stored or logged.

Values at configured JSON paths, credential headers, and e-mail addresses, card numbers
(Luhn-checked) and IBANs (mod-97-checked) found in any text become `REDACTED:` plus the
first 10 hex digits of HMAC-SHA256(key, value): equal values keep equal tokens, so a
side-by-side view still shows whether both sides agreed. Comparison runs on the real
values in memory; only what leaves memory goes through a `Redactor`. No method raises.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Final
from urllib.parse import unquote

import orjson

from shadow.compare import Difference, parse_path
from shadow.http_compare import BodyDecodeError, decode_body, parse_json_body

__all__ = ["KEY_ENV", "PREFIX", "SECRET_HEADERS", "Redactor", "mask_secrets", "warn_if_unkeyed"]

_log = logging.getLogger("strangler.redact")

KEY_ENV: Final = "STRANGLER_REDACT_KEY"
PREFIX: Final = "REDACTED:"
SECRET_HEADERS: Final = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"}
)

# Passwords in URLs (one may hold "/", as base64 does: it runs to the "@") and in
# secret-looking query parameters: masked in messages, /-/config and the dashboard.
_PASSWORD_IN_URL = re.compile(r"(://[^/:@\s'\"]*:)[^@\s'\"]*@")
# Query-like parameters; one is masked when a secret word is a whole part of its name
# (`api_key`, `access_token`, `X-Amz-Signature`), never a piece of a word (`bypass`). Two
# steps, each linear: one pattern doing both backtracked for seconds on `a-a-a-...`.
_PARAM = re.compile(r"(?<![\w.-])([\w.-]+)=([^&\s'\"]*)")
_SECRET_NAME = re.compile(
    r"(?i)(?:^|[_.-])(?:(?:ssl)?password|pass|passwd|pwd|token|secret|signature|credential"
    r"|auth|(?:api|access|secret|private)[_-]?key)(?:[_.-]|$)"
)


def _mask_param(m: re.Match[str]) -> str:
    return m[1] + "=***" if _SECRET_NAME.search(m[1]) else m[0]


# Header names with one of these parts carry credentials too (X-Auth-Token, X-CSRF-Token,
# X-Session-Id, X-Amz-Security-Token); their values were kept in captures.
_SECRET_HEADER_PARTS = frozenset(
    {"token", "secret", "password", "passwd", "auth", "credential", "credentials",
     "signature", "session", "csrf", "xsrf", "apikey"}
)  # fmt: skip


def _secret_header(name: str) -> bool:
    low = name.lower()
    if low in SECRET_HEADERS or "api-key" in low:
        return True
    return not _SECRET_HEADER_PARTS.isdisjoint(low.replace("_", "-").split("-"))


def warn_if_unkeyed(environ: Mapping[str, str] | None = None) -> None:
    """Log a warning when `STRANGLER_REDACT_KEY` is unset (once per start of a proxy)."""
    if not (os.environ if environ is None else environ).get(KEY_ENV, ""):
        _log.warning(
            "%s is not set: redaction tokens use a random key of this process, so one"
            " value gets different tokens in other workers, the shadow helper, replays"
            " and after a restart; set it to the same secret everywhere",
            KEY_ENV,
        )


def mask_secrets(text: str) -> str:
    """`text` with passwords in URLs and secret-looking query parameters replaced by `***`."""
    # Each pattern needs its literal ("@", "="): a request path has neither, most often,
    # and the two subs cost about 20,000 instructions where they find nothing (the template
    # goes through the re module's Python code on every call, and _PARAM tries each word).
    if "@" in text:
        text = _PASSWORD_IN_URL.sub(r"\1***@", text)
    if "=" in text:
        text = _PARAM.sub(_mask_param, text)
    return text


# Whether a text may hold anything the detectors find: "@", a digit, or (any case) bearer,
# basic, authorization, cookie, api-key. Written to start with a character class, so that
# the search skips every position that cannot start a match in C instead of trying each
# word there; the first letters have no other case-insensitive equivalents than these.
_TRIGGER = re.compile(
    r"[@0-9a-cA-C](?:(?<=[@0-9])|(?<=[bB])(?i:earer|asic)"
    r"|(?<=[aA])(?i:uthorization|pi-key)|(?<=[cC])(?i:ookie))"
)
# Credentials quoted in log lines: `Authorization: Bearer x`, `('cookie', 'sid=1')`, ...
_SECRET_FIELD = re.compile(
    r"""\b(?:proxy-authorization|authorization|set-cookie|cookie|x-api-key)"""
    r"""["']?\s*[:=,]\s*["']?([^"'\r\n]+)""",
    re.IGNORECASE,
)
_BEARER = re.compile(r"\b(?:bearer|basic)\s+([A-Za-z0-9._~+/=\-]{6,})", re.IGNORECASE)
# Any letters (jörg@, ann@exämple.com), an apostrophe inside the local part (o'brien@),
# and no length cap on it: a cap or a narrower class left part of an address in clear.
_EMAIL = re.compile(
    r"(?<![\w.%+\-])[\w.%+\-]+(?:'[\w.%+\-]+)*@"
    r"[^\W_][\w\-]{0,62}(?:\.[\w\-]{1,63})*\.[^\W\d_]{2,63}"
)
_DIGIT_RUN = re.compile(r"(?<![0-9])[0-9]+(?:[ \-+][0-9]+)*")  # "+": a space in a query
_DIGIT_GROUP = re.compile(r"[0-9]+")
# 4111.1111.1111.1111: dots only between groups of 3 to 6 digits, so that decimals, dates
# and addresses (1700000000.123456, 10.0.0.1) are not read as one number.
_DOTTED_CARD = re.compile(r"(?<![0-9.])[0-9]{3,6}(?:\.[0-9]{3,6}){2,5}(?!\.?[0-9])")
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}[0-9]{2}(?:[ \-]?[A-Za-z0-9]){11,32}")


_DOUBLED: Final = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)  # Luhn: 2d, minus 9 when over 9
_EXACT_FLOAT: Final = 2**53  # floats up to here hold every integer exactly


def _luhn(digits: str) -> bool:
    plain = sum(map(int, digits[-1::-2]))
    doubled = sum(map(_DOUBLED.__getitem__, map(int, digits[-2::-2])))
    return (plain + doubled) % 10 == 0


def _iban_end(raw: str) -> int:
    """End (in `raw`) of the longest prefix of `raw` that is a valid IBAN, or -1.

    Mod 97 of the rearranged number (rest of the digits, then the first four) is kept
    incrementally, so every prefix is checked in one pass.
    """
    head = "".join(str(int(c, 36)) for c in raw[:4])
    head_value, head_scale = int(head), 10 ** len(head)
    remainder = 0
    count = 4
    best = -1
    for index in range(4, len(raw)):
        char = raw[index]
        if char == " " or char == "-":  # printed in groups: DE89 3704 ..., DE89-3704-...
            continue
        value = int(char, 36)
        remainder = (remainder * (100 if value > 9 else 10) + value) % 97
        count += 1
        if count > 34:
            break
        if count >= 15 and (remainder * head_scale + head_value) % 97 == 1:
            best = index + 1
    return best


def _card_spans(text: str) -> list[tuple[int, int, str]]:
    spans = []
    for run in _DIGIT_RUN.finditer(text):
        found = run.group()
        if len(found) - found.count(" ") - found.count("-") - found.count("+") < 13:
            continue  # too few digits for a card: most numbers in text end here
        groups = [(m.start(), m.end(), m.group()) for m in _DIGIT_GROUP.finditer(found)]
        base = run.start()
        i = 0
        while i < len(groups):
            best = -1
            digits = ""
            for j in range(i, len(groups)):
                if j > i and (len(groups[j][2]) < 3 or len(groups[i][2]) < 3):
                    break  # grouped card numbers come in groups of 3 or more digits
                digits += groups[j][2]
                if len(digits) > 19:
                    break
                if len(digits) >= 13 and _luhn(digits):
                    best = j
            if best < 0:
                i += 1
                continue
            number = "".join(g[2] for g in groups[i : best + 1])
            spans.append((base + groups[i][0], base + groups[best][1], number))
            i = best + 1
    if "." in text:
        for match in _DOTTED_CARD.finditer(text):
            number = match.group().replace(".", "")
            if 13 <= len(number) <= 19 and _luhn(number):
                spans.append((match.start(), match.end(), number))
    return spans


def _iban_spans(text: str) -> list[tuple[int, int, str]]:
    spans: list[tuple[int, int, str]] = []
    pos = 0
    while True:
        match = _IBAN.search(text, pos)
        if match is None:
            return spans
        raw = match.group()
        end = _iban_end(raw)
        if end < 0:
            pos = match.start() + 1
            continue
        canonical = raw[:end].replace(" ", "").replace("-", "").upper()
        spans.append((match.start(), match.start() + end, canonical))
        pos = match.start() + end


class _PathNode:
    """A node of the redaction path trie."""

    __slots__ = ("children", "hit", "wild")

    def __init__(self) -> None:
        self.children: dict[str | int, _PathNode] = {}
        self.wild: _PathNode | None = None
        self.hit = False


def _step(nodes: tuple[_PathNode, ...], segment: Any) -> tuple[_PathNode, ...]:
    found = []
    for node in nodes:
        child = node.children.get(segment)
        if child is not None:
            found.append(child)
        if node.wild is not None:
            found.append(node.wild)
    return tuple(found)


_URLS_KEPT = 512
_URL_KEPT_MAX = 256  # characters: longer paths are redacted every time, never kept


class Redactor:
    """Replaces sensitive values with keyed-hash tokens; build once per store config."""

    __slots__ = ("_key", "_root", "_urls", "json_paths")

    def __init__(self, json_paths: Sequence[str] = (), key: bytes | None = None) -> None:
        """`key` None: a random per-process key (tokens then differ between processes)."""
        self.json_paths = tuple(json_paths)
        self._key = key if key else secrets.token_bytes(32)
        root = _PathNode()
        for path in self.json_paths:
            node = root
            for segment in parse_path(path):
                if segment is None:
                    node.wild = node.wild or _PathNode()
                    node = node.wild
                else:
                    node = node.children.setdefault(segment, _PathNode())
            node.hit = True
        self._root: tuple[_PathNode, ...] = (root,) if self.json_paths else ()
        self._urls: set[str] = set()  # short paths redact_url found nothing to redact in

    @classmethod
    def from_env(
        cls,
        json_paths: Sequence[str] = (),
        environ: Mapping[str, str] | None = None,
        *,
        warn: bool = False,
    ) -> Redactor:
        """A redactor keyed by `STRANGLER_REDACT_KEY`; when unset, a random per-process key,
        so tokens stay comparable within one process but not across restarts or workers
        (`warn`: say so in a log warning, at a store's start)."""
        value = (os.environ if environ is None else environ).get(KEY_ENV, "")
        if warn:
            warn_if_unkeyed(environ)
        return cls(json_paths, value.encode() if value else None)

    def token(self, value: str) -> str:
        """The redaction token of `value`."""
        data = value.encode("utf-8", "surrogatepass")
        return PREFIX + hmac.new(self._key, data, hashlib.sha256).hexdigest()[:10]

    def _token_of(self, value: Any) -> str:
        if type(value) is str:
            return self.token(value)
        try:
            text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
        except Exception:  # huge ints, deep nesting: still hidden, just not comparable
            text = f"<unserialisable {type(value).__name__} {id(value)}>"
        return self.token(text)

    def redact_text(self, text: str) -> str:
        """`text` with e-mail addresses, card numbers and IBANs replaced by tokens."""
        try:
            if "%" in text:  # a path's ann%40example.com: found (and stored) decoded
                decoded = unquote(text)
                if decoded != text:
                    redacted = self._redact_text(decoded)
                    if redacted != decoded:
                        return redacted
            return self._redact_text(text)
        except Exception:  # never leak on a detector bug: hide the whole text instead
            return self.token(text)

    def _redact_text(self, text: str) -> str:
        if not _TRIGGER.search(text):
            return text
        spans = [(m.start(1), m.end(1), m.group(1)) for m in _SECRET_FIELD.finditer(text)]
        spans += [(m.start(1), m.end(1), m.group(1)) for m in _BEARER.finditer(text)]
        spans += [(m.start(), m.end(), m.group()) for m in _EMAIL.finditer(text)]
        spans += _iban_spans(text)
        spans += _card_spans(text)
        if not spans:
            return text
        spans.sort(key=lambda span: (span[0], -span[1]))
        out: list[str] = []
        pos = 0
        for start, end, canonical in spans:
            if start < pos:  # overlaps one already replaced
                continue
            out.append(text[pos:start])
            out.append(self.token(canonical))
            pos = end
        out.append(text[pos:])
        return "".join(out)

    def _redact_int(self, value: int) -> Any:
        if 10**12 <= value < 10**19:
            digits = str(value)
            if _luhn(digits):
                return self.token(digits)
        return value

    def _redact_float(self, value: float) -> Any:
        # A card sent as a JSON float (4111111111111111.0, 4.111111111111111e15). Past
        # 2**53 a float no longer holds the literal's digits to check: hidden unchecked.
        if 10**12 <= value < 10**19 and value.is_integer():
            digits = str(int(value))
            if value > _EXACT_FLOAT or _luhn(digits):
                return self.token(digits)
        return value

    def _nodes_at(self, at: str) -> tuple[_PathNode, ...]:
        nodes = self._root
        if at == "$" or not nodes:
            return nodes
        try:
            segments = parse_path(at)
        except ValueError:  # `status`, `headers.x`: outside the body, detectors only
            return ()
        for segment in segments:
            if any(node.hit for node in nodes):
                break  # `at` lies inside a value redacted whole: so is everything below it
            nodes = _step(nodes, segment)
            if not nodes:
                break
        return nodes

    def redact_json(self, value: Any, at: str = "$") -> Any:
        """A redacted copy of a decoded JSON value found at concrete path `at` of a body
        (any depth; the input is not changed)."""
        try:
            return self._redact_json(value, at)
        except Exception:  # an exotic container: hide it whole rather than risk a leak
            return self._token_of(value)

    def _redact_json(self, value: Any, at: str) -> Any:
        holder: list[Any] = [None]
        start = self._nodes_at(at)
        stack: list[tuple[Any, Any, Any, tuple[_PathNode, ...]]] = [(value, holder, 0, start)]
        while stack:
            source, target, slot, nodes = stack.pop()
            if nodes and any(node.hit for node in nodes):
                target[slot] = self._token_of(source)
                continue
            kind = type(source)
            if kind is str:
                target[slot] = self.redact_text(source)
            elif kind is int:
                target[slot] = self._redact_int(source)
            elif kind is float:
                target[slot] = self._redact_float(source)
            elif isinstance(source, Mapping):
                copy: dict[Any, Any] = {}
                target[slot] = copy
                for key, item in source.items():
                    new_key = self.redact_text(key) if type(key) is str else key
                    copy[new_key] = None
                    stack.append((item, copy, new_key, _step(nodes, key) if nodes else ()))
            elif isinstance(source, list | tuple):
                items: list[Any] = [None] * len(source)
                target[slot] = items
                for index, item in enumerate(source):
                    stack.append((item, items, index, _step(nodes, index) if nodes else ()))
            else:
                target[slot] = source
        return holder[0]

    def redact_difference(self, difference: Difference) -> Difference:
        """`difference` with both values redacted as they would be in place in the body
        (a header's also with secrets in URLs masked: a Location may carry a token)."""
        path = difference.path
        primary, candidate = difference.primary, difference.candidate
        if not path.startswith("$"):
            primary = mask_secrets(primary) if type(primary) is str else primary
            candidate = mask_secrets(candidate) if type(candidate) is str else candidate
        return replace(
            difference,
            primary=self.redact_json(primary, path),
            candidate=self.redact_json(candidate, path),
        )

    def redact_url(self, url: str) -> str:
        """A request path or URL with secrets masked and personal data tokenised."""
        # Every stored comparison redacts its request path, and the same paths come again
        # and again (hot documents, list pages, health checks): short ones found to hold
        # nothing to redact are remembered (up to _URLS_KEPT, forgotten all at once when
        # full), a set hit instead of the detectors (5,000 instructions for a plain path,
        # 20,000 with digits). Only such paths: no secret stays in memory as a key.
        if url in self._urls:
            return url
        done = self.redact_text(mask_secrets(url))
        if done == url and len(url) <= _URL_KEPT_MAX:
            urls = self._urls
            if len(urls) >= _URLS_KEPT:
                urls.clear()
            urls.add(url)
        return done

    def redact_headers(self, pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """Header pairs with credential values tokenised and the rest text-redacted."""
        out = []
        for name, value in pairs:
            if _secret_header(name):
                out.append((name, self.token(value)))
            else:
                out.append((name, self.redact_text(value)))
        return out

    def redact_body(
        self, body: bytes, content_type: str | None = None, content_encoding: str | None = None
    ) -> bytes:
        """A redacted copy of a response or request body (decoded first when encoded)."""
        try:
            return self._redact_body(body, content_type, content_encoding)
        except Exception:  # unknown shape: hide it all rather than risk storing it
            return self.token(body.decode("latin-1")).encode()

    def _redact_body(
        self, body: bytes, content_type: str | None, content_encoding: str | None
    ) -> bytes:
        if content_encoding:
            try:
                body = decode_body(body, content_encoding)
            except BodyDecodeError:
                return f"{PREFIX}undecodable {len(body)} bytes".encode()
        if not body:
            return body
        first = body.lstrip()[:1]
        if first in (b"{", b"[") or "json" in (content_type or "").lower():
            try:
                value = parse_json_body(body)
            except ValueError:
                if self._root:  # values at redacted paths cannot be found: hide it all
                    return f"{PREFIX}unparseable JSON {len(body)} bytes".encode()
            else:
                redacted = self.redact_json(value)
                try:
                    return orjson.dumps(redacted)
                except Exception:  # past 64-bit integers or orjson's depth limit
                    pass
                try:
                    return json.dumps(redacted, separators=(",", ":")).encode()
                except (ValueError, RecursionError):  # too deep even for json
                    if self._root:  # the text below would show values at redacted paths
                        return f"{PREFIX}unserialisable JSON {len(body)} bytes".encode()
        text = body.decode("utf-8", "surrogateescape")
        return self.redact_text(text).encode("utf-8", "surrogateescape")
