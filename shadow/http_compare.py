"""HTTP-level comparison: status, chosen headers and bodies of two responses (pure).

Bodies are decoded from any `Content-Encoding` (gzip, deflate, and br when the `brotli`
module is importable), then compared structurally when both sides are JSON (a JSON media
type, or no Content-Type and a body that parses) and by bytes otherwise. Identical body
bytes under the same codings are equal without being parsed.
"""

from __future__ import annotations

import importlib
import json
import math
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from types import ModuleType
from typing import Any, Final

import orjson

from shadow.compare import CompareRules, Comparison, Difference, DifferenceKind, compare

__all__ = [
    "COMPARED_HEADERS",
    "MAX_DECODED_BYTES",
    "BodyDecodeError",
    "HttpResponse",
    "compare_responses",
    "decode_body",
    "parse_json_body",
]

brotli: ModuleType | None
try:
    brotli = importlib.import_module("brotli")
except ImportError:  # optional: br bodies then compare as raw bytes
    brotli = None
# brotli >= 1.2 caps each step's output (`output_buffer_limit`, to within one buffer block:
# about twice the cap), so steps of 1 MiB; older ones are fed the input a few bytes at a
# time instead, each byte decoding to a few MiB at most.
_BROTLI_OUTPUT_LIMIT = brotli is not None and hasattr(brotli.Decompressor, "can_accept_more_data")
_BROTLI_STEP: Final = 8
_BROTLI_OUT_STEP: Final = 1 << 20

COMPARED_HEADERS: Final = ("content-type", "location", "cache-control")
MAX_DECODED_BYTES: Final = 64 << 20  # a decompression bomb stops here
_NOT_JSON: Final[Any] = object()
# Integers orjson would read as floats: past u64 (20 digits) or below i64 (minus and 19
# digits), found after mapping every digit to "0" (ten times faster than a regex).
_DIGITS_AS_ZERO: Final = bytes.maketrans(b"123456789", b"000000000")
_LONG_POSITIVE: Final = b"0" * 20
_LONG_NEGATIVE: Final = b"-" + b"0" * 19
_GZIP_WBITS: Final = 16 + zlib.MAX_WBITS
_BOM: Final = b"\xef\xbb\xbf"  # UTF-8
_JSON_STARTS: Final = frozenset(bytes([c]) for c in b'{["-0123456789tfn')


class BodyDecodeError(ValueError):
    """A body whose content-encoding is unknown, corrupt or decodes past the size cap."""


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """One side's response: status, header pairs in wire order, body as received."""

    status: int
    headers: Sequence[tuple[str, str]] = ()
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """All values of header `name` (case-insensitive) joined by `, `, or None."""
        wanted = name.lower()
        values = [value for key, value in self.headers if key.lower() == wanted]
        return ", ".join(v.strip() for v in values) if values else None


def _inflate(data: bytes, wbits: int, limit: int) -> bytes:
    """`data` inflated whole: a cut stream or bytes after its end are an error, as they are
    to a client; gzip may hold several members (RFC 1952), each decoded in turn."""
    if not data:  # a 204 or a HEAD answer may keep its Content-Encoding
        return data
    parts: list[bytes] = []
    size = 0
    while True:
        decoder = zlib.decompressobj(wbits)
        out = decoder.decompress(data, limit - size + 1)
        tail = b"" if decoder.unconsumed_tail else decoder.flush()
        size += len(out) + len(tail)
        if size > limit or decoder.unconsumed_tail:
            raise BodyDecodeError(f"decoded body exceeds {limit} bytes")
        parts += (out, tail)
        if not decoder.eof:
            raise BodyDecodeError("truncated body: the stream does not end")
        data = decoder.unused_data
        if not data:
            return b"".join(parts)
        if wbits != _GZIP_WBITS:
            raise BodyDecodeError(f"{len(data)} bytes after the end of the stream")


def _unbrotli(data: bytes, limit: int) -> bytes:
    """`data` brotli-decoded whole, stopping soon after the output passes `limit` bytes (a
    small body may expand a million times); a cut stream or bytes after its end are an
    error."""
    if not data:  # a 204 or a HEAD answer may keep its Content-Encoding
        return data
    assert brotli is not None
    decoder = brotli.Decompressor()
    parts: list[bytes] = []
    size = 0
    if _BROTLI_OUTPUT_LIMIT:
        out = decoder.process(data, output_buffer_limit=min(limit + 1, _BROTLI_OUT_STEP))
        while True:
            parts.append(out)
            size += len(out)
            if size > limit or decoder.is_finished():
                break
            out = decoder.process(b"", output_buffer_limit=min(limit - size + 1, _BROTLI_OUT_STEP))
            if not out:
                break  # it wants more input: the stream is cut
    else:
        for start in range(0, len(data), _BROTLI_STEP):
            out = decoder.process(data[start : start + _BROTLI_STEP])
            parts.append(out)
            size += len(out)
            if size > limit:
                break
    if size > limit:
        raise BodyDecodeError(f"decoded body exceeds {limit} bytes")
    if not decoder.is_finished():
        raise BodyDecodeError("truncated body: the stream does not end")
    return b"".join(parts)


def decode_body(body: bytes, content_encoding: str | None, limit: int = MAX_DECODED_BYTES) -> bytes:
    """`body` with its content-codings removed (last applied, first removed)."""
    if not content_encoding:
        return body
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    for coding in reversed(codings):
        try:
            if coding in ("gzip", "x-gzip"):
                body = _inflate(body, _GZIP_WBITS, limit)
            elif coding == "deflate":
                try:
                    body = _inflate(body, zlib.MAX_WBITS, limit)
                except zlib.error:  # some servers send raw deflate without the zlib wrapper
                    body = _inflate(body, -zlib.MAX_WBITS, limit)
            elif coding == "br" and brotli is not None:
                body = _unbrotli(body, limit)
            elif coding != "identity":
                raise BodyDecodeError(f"unsupported content-encoding {coding!r}")
        except (zlib.error, ValueError) as exc:
            if isinstance(exc, BodyDecodeError):
                raise
            raise BodyDecodeError(f"corrupt {coding} body: {exc}") from exc
        except Exception as exc:  # brotli.error is not a ValueError
            raise BodyDecodeError(f"corrupt {coding} body: {exc}") from exc
    return body


def _float_or_decimal(text: str) -> float | Decimal:
    """A float, or the exact Decimal when the literal is past the double range (1e400)."""
    value = float(text)
    return Decimal(text) if math.isinf(value) else value


def parse_json_body(body: bytes) -> Any:
    """The decoded JSON value of `body`, or raise `ValueError` if it is not JSON."""
    digits = body.translate(_DIGITS_AS_ZERO)
    if _LONG_POSITIVE not in digits and _LONG_NEGATIVE not in digits:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    try:  # orjson refuses nesting past 1024, non-UTF-8 and floats past the double range
        return json.loads(body, parse_float=_float_or_decimal)
    except (ValueError, RecursionError) as exc:
        raise ValueError("not JSON") from exc


def _first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        found.setdefault(key, value)
    return found


def _repeats_a_key(body: bytes, value: Any) -> bool:
    """Whether the JSON text `body`, parsed as `value`, repeats a key in an object."""
    if type(value) is not dict and type(value) is not list:
        return False
    # Every ":" of a JSON text is a member's or inside a string; re-encoded, a parse that
    # dropped a repeated member has fewer. Escaped colons (\u003a) count only there.
    try:
        kept = orjson.dumps(value).count(b":")
    except orjson.JSONEncodeError:  # past 64-bit integers or 255 levels: cannot tell, so
        return True  # parse again keeping the first value (rare bodies, a little slower)
    sent = body.count(b":")
    return sent > kept or (sent < kept and b"\\u003" in body)


def _first_wins_value(body: bytes) -> Any:
    """`body` parsed as a client that keeps the first of repeated keys reads it."""
    return json.loads(body, object_pairs_hook=_first_wins, parse_float=_float_or_decimal)


def _summary(body: bytes) -> str:
    # No digest: an unkeyed hash of a body holding personal data lets whoever reads the
    # store confirm a guess (the stored bodies themselves are redacted).
    return f"<{len(body)} bytes, UTF-8 BOM>" if body.startswith(_BOM) else f"<{len(body)} bytes>"


def _diff(path: str, a: Any, b: Any) -> Difference:
    kind: DifferenceKind = "added" if a is None else "removed" if b is None else "changed"
    return Difference(path, kind, a, b, path)


_UTF8_CHARSETS: Final = frozenset({"charset=utf-8", 'charset="utf-8"'})


def _media_type(value: str) -> str:
    media, *params = (part.strip() for part in value.lower().split(";"))
    kept = ["=".join(x.strip() for x in p.split("=", 1)) for p in params if p]
    if "json" in media:  # JSON is UTF-8 and has no charset (RFC 8259): utf-8 says nothing
        kept = [p for p in kept if p not in _UTF8_CHARSETS]
    return ";".join((media, *kept))


def _directives(value: str) -> list[str]:
    """Cache-Control directives in a canonical order, names in lower case (RFC 9111 5.2)."""
    found = []
    for part in value.split(","):
        name, eq, arg = part.strip().partition("=")
        if name:
            found.append(f"{name.strip().lower()}{eq}{arg.strip()}")
    return sorted(found)


def _compare_headers(
    primary: HttpResponse, candidate: HttpResponse, names: Iterable[str]
) -> list[Difference]:
    diffs = []
    for name in names:
        a, b = primary.header(name), candidate.header(name)
        if name == "content-type" and a is not None and b is not None:
            same = _media_type(a) == _media_type(b)
        elif name == "cache-control" and a is not None and b is not None:
            same = a == b or _directives(a) == _directives(b)
        else:
            same = a == b
        if not same:
            diffs.append(_diff(f"headers.{name}", a, b))
    return diffs


def _decoded(response: HttpResponse) -> bytes | None:
    try:
        return decode_body(response.body, response.header("content-encoding"))
    except BodyDecodeError:
        return None


def _json_or_not(body: bytes, content_type: str | None) -> Any:
    media = content_type.partition(";")[0].strip().lower() if content_type else ""
    if media:
        # Only a JSON media type is compared structurally: a text/plain "42" is not "42.0".
        if "json" not in media:
            return _NOT_JSON
    elif body.lstrip()[:1] not in _JSON_STARTS:  # unlabelled: JSON if it looks like it
        return _NOT_JSON
    try:
        return parse_json_body(body)
    except ValueError:
        return _NOT_JSON


def _codings(response: HttpResponse) -> list[str]:
    """The content-codings applied to `response`'s body, in order (identity left out)."""
    value = response.header("content-encoding")
    if not value:
        return []
    return [c for c in (c.strip().lower() for c in value.split(",")) if c and c != "identity"]


def _compare_bodies(
    primary: HttpResponse, candidate: HttpResponse, rules: CompareRules
) -> Comparison:
    # Equal bytes are equal bodies only under the same codings: gzip bytes sent without
    # `Content-Encoding: gzip` are not the body they encode.
    if primary.body == candidate.body and _codings(primary) == _codings(candidate):
        return Comparison(True)
    body_a, body_b = _decoded(primary), _decoded(candidate)
    if body_a is None or body_b is None:
        # Undecodable on a side: only the raw bytes can be compared, and they differ.
        shown_a = _summary(primary.body) if body_a is None else _summary(body_a)
        shown_b = _summary(candidate.body) if body_b is None else _summary(body_b)
        return Comparison(False, [_diff("$", shown_a, shown_b)])
    if body_a == body_b:
        return Comparison(True)
    text_a, text_b = body_a, body_b
    if body_a.startswith(_BOM) or body_b.startswith(_BOM):
        # RFC 8259 forbids sending a BOM and many JSON clients fail on one: a BOM on one
        # side only is a difference of its own; on both, what follows is compared.
        if not (body_a.startswith(_BOM) and body_b.startswith(_BOM)):
            return Comparison(False, [_diff("$", _summary(body_a), _summary(body_b))])
        text_a, text_b = body_a[len(_BOM) :], body_b[len(_BOM) :]
    value_a = _json_or_not(text_a, primary.header("content-type"))
    if value_a is not _NOT_JSON:
        value_b = _json_or_not(text_b, candidate.header("content-type"))
        if value_b is not _NOT_JSON:
            result = compare(value_a, value_b, rules)
            # The parse kept the last of a repeated key; clients that keep the first may
            # read something else. A member's ":" is one more on its side: compared only
            # then (two bytes.count on the path of equal values; a repeat on both sides
            # alike is not looked for).
            if (
                result.equal
                and text_a.count(b":") != text_b.count(b":")
                and (_repeats_a_key(text_a, value_a) or _repeats_a_key(text_b, value_b))
            ):
                try:
                    first_a, first_b = _first_wins_value(text_a), _first_wins_value(text_b)
                except (ValueError, RecursionError):
                    return result
                return compare(first_a, first_b, rules)
            return result
    return Comparison(False, [_diff("$", _summary(body_a), _summary(body_b))])


def compare_responses(
    primary: HttpResponse,
    candidate: HttpResponse,
    rules: CompareRules | None = None,
    *,
    ignore_headers: Iterable[str] | None = None,
    compared_headers: Iterable[str] = COMPARED_HEADERS,
) -> Comparison:
    """Compare two responses: `status`, `headers.<name>`, then the body at `$...`; never raises.

    `ignore_headers` defaults to `rules.ignore_headers`. Body differences count against
    `rules.max_differences`; status and header differences always come first.
    """
    rules = rules if rules is not None else _DEFAULT_RULES
    ignored = frozenset(
        h.lower() for h in (rules.ignore_headers if ignore_headers is None else ignore_headers)
    )
    names = [h.lower() for h in compared_headers if h.lower() not in ignored]
    head: list[Difference] = []
    if primary.status != candidate.status:
        head.append(Difference("status", "changed", primary.status, candidate.status, "status"))
    head += _compare_headers(primary, candidate, names)
    try:
        body = _compare_bodies(primary, candidate, rules)
    except Exception as exc:  # the comparator must never break the shadow path
        failed = f"<comparison failed: {exc!r}>"
        body = Comparison(False, [Difference("$", "changed", failed, failed, "$")])
    if not head:
        return body
    return Comparison(False, head + body.differences, body.truncated)


_DEFAULT_RULES: Final = CompareRules()
