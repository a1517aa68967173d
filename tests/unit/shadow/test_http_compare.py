"""Unit tests of response-level comparison: status, headers, encodings, JSON and bytes bodies."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib

import orjson
import pytest

from shadow import http_compare
from shadow.compare import CompareRules
from shadow.http_compare import (
    BodyDecodeError,
    HttpResponse,
    compare_responses,
    decode_body,
    parse_json_body,
)

_JSON = ("Content-Type", "application/json")
_DOC = {"id": 7, "items": [{"sku": "a", "price": 1.5}], "meta": {"generated_at": "t1"}}


def _json(doc: object, *headers: tuple[str, str], status: int = 200) -> HttpResponse:
    return HttpResponse(status, [_JSON, *headers], orjson.dumps(doc))


def _raw(body: bytes) -> HttpResponse:
    return HttpResponse(200, [_JSON], body)


def _paths(primary: HttpResponse, candidate: HttpResponse, **kwargs: object) -> list[str]:
    result = compare_responses(primary, candidate, **kwargs)  # type: ignore[arg-type]
    assert result.equal == (not result.differences)
    return [d.path for d in result.differences]


def test_identical_responses_are_equal() -> None:
    response = _json(_DOC)
    assert compare_responses(response, _json(_DOC)).equal


def test_status_and_chosen_headers() -> None:
    primary = _json(_DOC, ("Location", "/a"), ("Date", "x"), ("Cache-Control", "no-store"))
    candidate = _json(_DOC, ("location", "/b"), ("date", "y"), status=201)
    result = compare_responses(primary, candidate)
    assert [(d.path, d.kind) for d in result.differences] == [
        ("status", "changed"),
        ("headers.location", "changed"),
        ("headers.cache-control", "removed"),
    ]
    assert result.differences[0].primary == 200 and result.differences[0].candidate == 201
    assert _paths(primary, candidate, ignore_headers=["location", "cache-control"]) == ["status"]
    assert _paths(primary, candidate, compared_headers=["date"], ignore_headers=[]) == [
        "status",
        "headers.date",
    ]


def test_content_type_parameters_are_compared_loosely_but_media_types_strictly() -> None:
    loose = HttpResponse(200, [("content-type", "application/json;charset=UTF-8")], b"{}")
    spaced = HttpResponse(200, [("content-type", "Application/JSON; charset=utf-8")], b"{}")
    assert compare_responses(loose, spaced).equal
    text = HttpResponse(200, [("content-type", "text/plain")], b"{}")
    assert _paths(loose, text) == ["headers.content-type"]


@pytest.mark.parametrize("other", ["application/json", "application/problem+json"])
def test_a_utf8_charset_on_json_is_the_default_spelled_out(other: str) -> None:
    # JSON has no charset parameter and is UTF-8 (RFC 8259): frameworks differ in adding
    # it, so an extracted service flagged every response.
    plain = HttpResponse(200, [("content-type", other)], b"{}")
    spelled = HttpResponse(200, [("content-type", f"{other}; charset=UTF-8")], b"{}")
    assert compare_responses(plain, spelled).equal
    latin = HttpResponse(200, [("content-type", f"{other}; charset=iso-8859-1")], b"{}")
    assert _paths(plain, latin) == ["headers.content-type"]
    text = HttpResponse(200, [("content-type", "text/plain")], b"x")
    text_utf8 = HttpResponse(200, [("content-type", "text/plain; charset=utf-8")], b"x")
    assert _paths(text, text_utf8) == ["headers.content-type"]  # not for other types


def test_cache_control_compares_its_directives_in_any_order_and_case() -> None:
    def cached(value: str) -> HttpResponse:
        return HttpResponse(200, [_JSON, ("Cache-Control", value)], b"{}")

    assert compare_responses(cached("no-cache, no-store"), cached("no-store,no-cache")).equal
    assert compare_responses(cached("Private, Max-Age=60"), cached("max-age=60, private")).equal
    assert _paths(cached("max-age=60"), cached("max-age=61")) == ["headers.cache-control"]
    assert _paths(cached("private"), cached("public")) == ["headers.cache-control"]


def test_json_bodies_compare_structurally_with_rules() -> None:
    primary = HttpResponse(200, [_JSON], b'{"id": 7,  "items": [{"sku":"a","price":1.5}]}')
    candidate = HttpResponse(200, [_JSON], b'{"items":[{"price":1.5,"sku":"a"}],"id":7}')
    assert compare_responses(primary, candidate).equal
    changed = _json(
        {"id": 8, "items": [{"sku": "a", "price": 1.5}], "meta": {"generated_at": "t2"}}
    )
    assert _paths(_json(_DOC), changed) == ["$.id", "$.meta.generated_at"]
    rules = CompareRules(ignore_json_paths=["$.meta.generated_at"])
    assert _paths(_json(_DOC), changed, rules=rules) == ["$.id"]


def test_json_detected_without_a_json_content_type() -> None:
    primary = HttpResponse(200, [], b"[1, 2]")
    candidate = HttpResponse(200, [], b"[1,3]")
    assert _paths(primary, candidate) == ["$[1]"]


@pytest.mark.parametrize(
    ("first", "second"), [(b"42", b"42.0"), (b"[1, 2]", b"[1,2]"), (b"true", b"true\n")]
)
@pytest.mark.parametrize("media_type", ["text/plain", "text/csv; charset=utf-8", "text/html"])
def test_bodies_of_other_media_types_compare_as_bytes_even_if_they_parse_as_json(
    first: bytes, second: bytes, media_type: str
) -> None:
    # A client of a text/plain "42" reads text: "42.0" is another answer.
    header = ("Content-Type", media_type)
    assert _paths(HttpResponse(200, [header], first), HttpResponse(200, [header], second)) == ["$"]
    # JSON media types, and bodies that do not say, still compare structurally
    for headers in ([_JSON], [("content-type", "application/problem+json")], []):
        assert compare_responses(
            HttpResponse(200, headers, first), HttpResponse(200, headers, second)
        ).equal


def test_other_bodies_compare_as_bytes() -> None:
    primary = HttpResponse(200, [("content-type", "text/html")], b"<p>a</p>")
    candidate = HttpResponse(200, [("content-type", "text/html")], b"<p>b</p>")
    result = compare_responses(primary, candidate)
    assert [(d.path, d.kind) for d in result.differences] == [("$", "changed")]
    assert result.differences[0].primary == "<8 bytes>"  # no digest of unredacted bytes
    half_json = HttpResponse(200, [_JSON], b'{"a": 1')
    assert _paths(half_json, HttpResponse(200, [_JSON], b'{"a": 1}')) == ["$"]


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda data: zlib.compress(data)[2:-4]),  # raw deflate, no zlib wrapper
        ("gzip, deflate", lambda data: zlib.compress(gzip.compress(data))),
    ],
)
def test_content_encodings_are_decoded_on_either_side(encoding: str, encode: object) -> None:
    body = orjson.dumps(_DOC)
    encoded = encode(body)  # type: ignore[operator]
    plain = HttpResponse(200, [_JSON], body)
    packed = HttpResponse(200, [_JSON, ("Content-Encoding", encoding)], encoded)
    assert _paths(plain, packed, ignore_headers=[]) == []
    assert _paths(packed, plain) == []
    other = orjson.dumps({**_DOC, "id": 9})
    assert _paths(packed, HttpResponse(200, [_JSON], other)) == ["$.id"]


@pytest.mark.parametrize("other", [None, "identity", "deflate"])
def test_equal_bytes_under_other_content_encodings_differ(other: str | None) -> None:
    # A client decodes the gzip side and takes the other as it is: not the same body.
    body = gzip.compress(orjson.dumps(_DOC))
    packed = HttpResponse(200, [_JSON, ("Content-Encoding", "gzip")], body)
    headers = [_JSON] if other is None else [_JSON, ("Content-Encoding", other)]
    assert _paths(packed, HttpResponse(200, headers, body)) == ["$"]
    same = HttpResponse(200, [_JSON, ("content-encoding", " GZIP")], body)
    assert compare_responses(packed, same).equal


def test_brotli_bodies_are_decoded() -> None:
    brotli = pytest.importorskip("brotli")
    body = orjson.dumps(_DOC)
    packed = HttpResponse(200, [_JSON, ("content-encoding", "br")], brotli.compress(body))
    assert compare_responses(packed, HttpResponse(200, [_JSON], body)).equal


def test_undecodable_bodies_differ_without_raising() -> None:
    corrupt = HttpResponse(200, [_JSON, ("content-encoding", "gzip")], b"not gzip at all")
    good = _json(_DOC)
    result = compare_responses(corrupt, good)
    assert [(d.path, d.kind) for d in result.differences] == [("$", "changed")]
    assert compare_responses(corrupt, corrupt).equal  # identical bytes need no decoding
    unknown = HttpResponse(200, [("content-encoding", "zstd")], b"\x28\xb5")
    assert not compare_responses(unknown, good).equal


@pytest.mark.parametrize(
    ("encoding", "encoded"),
    [
        ("gzip", gzip.compress(orjson.dumps(_DOC))[:-8]),  # no CRC and length trailer
        ("gzip", gzip.compress(orjson.dumps(_DOC))[:-1]),
        ("deflate", zlib.compress(orjson.dumps(_DOC))[:-4]),  # no Adler-32
        ("deflate", zlib.compress(orjson.dumps(_DOC))[2:-6]),  # raw, cut before the end
        ("gzip", gzip.compress(orjson.dumps(_DOC)) + b"junk after the stream"),
        ("deflate", zlib.compress(orjson.dumps(_DOC)) + b"junk"),
    ],
    ids=["gzip-no-trailer", "gzip-cut", "zlib-no-adler", "raw-cut", "gzip-junk", "zlib-junk"],
)
def test_truncated_or_padded_encoded_bodies_are_undecodable(encoding: str, encoded: bytes) -> None:
    # A client fails on these ("unexpected end of file"): never a match for a whole body.
    with pytest.raises(BodyDecodeError):
        decode_body(encoded, encoding)
    cut = HttpResponse(200, [_JSON, ("Content-Encoding", encoding)], encoded)
    assert _paths(_json(_DOC), cut) == ["$"]


def test_gzip_members_are_all_decoded() -> None:
    body = orjson.dumps(_DOC)
    members = gzip.compress(body[:10]) + gzip.compress(body[10:])
    assert decode_body(members, "gzip") == body
    packed = HttpResponse(200, [_JSON, ("Content-Encoding", "gzip")], members)
    assert compare_responses(_json(_DOC), packed).equal
    assert decode_body(b"", "gzip") == b""  # a 204 or a HEAD answer keeps the header


def test_decode_body_caps_the_decoded_size() -> None:
    bomb = gzip.compress(b"\0" * 1_000_000)
    assert len(decode_body(bomb, "gzip")) == 1_000_000
    with pytest.raises(BodyDecodeError):
        decode_body(bomb, "gzip", limit=1000)
    assert decode_body(b"x", None) == b"x"
    assert decode_body(b"x", "identity") == b"x"


def test_deep_json_bodies_never_raise() -> None:
    deep = b"[" * 5000 + b"1" + b"]" * 5000
    other = b"[" * 5000 + b"2" + b"]" * 5000
    result = compare_responses(HttpResponse(200, [_JSON], deep), HttpResponse(200, [_JSON], other))
    assert not result.equal


def test_header_lookup_joins_repeated_values() -> None:
    response = HttpResponse(200, [("Cache-Control", "no-cache"), ("cache-control", " private")])
    assert response.header("CACHE-CONTROL") == "no-cache, private"
    assert response.header("location") is None


def test_integers_past_64_bits_keep_their_precision() -> None:
    primary = HttpResponse(200, [_JSON], b'{"n": 123456789012345678901234567890}')
    candidate = HttpResponse(200, [_JSON], b'{"n": 123456789012345678901234567891}')
    assert _paths(primary, candidate) == ["$.n"]


def test_negative_integers_past_64_bits_keep_their_precision() -> None:
    # 19 digits below -2**63: orjson reads them as floats, which made these two equal
    primary = HttpResponse(200, [_JSON], b'{"n": -9223372036854775809}')
    candidate = HttpResponse(200, [_JSON], b'{"n": -9223372036854775810}')
    assert _paths(primary, candidate) == ["$.n"]
    assert parse_json_body(b"[-9999999999999999999]") == [-9999999999999999999]


def _brotli_bomb(size: int) -> bytes:
    """A brotli body of a few hundred bytes that decodes to `size` zero bytes."""
    brotli = pytest.importorskip("brotli")
    packer = brotli.Compressor(quality=5)
    block = bytes(1 << 20)
    packed = b"".join(packer.process(block) for _ in range(size >> 20))
    tail: bytes = packer.finish()
    return packed + tail


@pytest.mark.parametrize("output_limit", [True, False], ids=["output-limit", "input-steps"])
def test_brotli_bombs_stop_at_the_cap(monkeypatch: pytest.MonkeyPatch, output_limit: bool) -> None:
    # br decoded whole before the size check: 80 MiB in memory for a 127-byte body.
    bomb = _brotli_bomb(80 << 20)
    assert len(bomb) < 1000
    monkeypatch.setattr(http_compare, "_BROTLI_OUTPUT_LIMIT", output_limit, raising=False)
    tracemalloc.start()
    try:
        with pytest.raises(BodyDecodeError, match="exceeds"):
            decode_body(bomb, "br", limit=1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 24 << 20, f"decoding took {peak >> 20} MiB"
    assert len(decode_body(_brotli_bomb(2 << 20), "br", limit=2 << 20)) == 2 << 20
    packed = HttpResponse(200, [_JSON, ("Content-Encoding", "br")], bomb)
    assert _paths(packed, HttpResponse(200, [_JSON], b"")) == ["$"]


@pytest.mark.parametrize("output_limit", [True, False], ids=["output-limit", "input-steps"])
def test_cut_or_padded_brotli_bodies_are_undecodable(
    monkeypatch: pytest.MonkeyPatch, output_limit: bool
) -> None:
    brotli = pytest.importorskip("brotli")
    monkeypatch.setattr(http_compare, "_BROTLI_OUTPUT_LIMIT", output_limit, raising=False)
    body = orjson.dumps(_DOC)
    packed = brotli.compress(body)
    assert decode_body(packed, "br") == body
    assert decode_body(b"", "br") == b""  # a 204 or a HEAD answer keeps the header
    for broken in (packed[:-1], packed + b"junk"):
        with pytest.raises(BodyDecodeError):
            decode_body(broken, "br")


@pytest.mark.parametrize("content_type", ["application/json", None])
def test_a_utf8_bom_on_one_side_only_differs(content_type: str | None) -> None:
    # RFC 8259 forbids sending a BOM and many JSON clients fail on one: it parsed away
    # and the two bodies matched.
    headers = [("Content-Type", content_type)] if content_type else []
    plain = orjson.dumps(_DOC)
    bom = HttpResponse(200, headers, b"\xef\xbb\xbf" + plain)
    result = compare_responses(bom, HttpResponse(200, headers, plain))
    assert [(d.path, d.primary, d.candidate) for d in result.differences] == [
        ("$", f"<{len(plain) + 3} bytes, UTF-8 BOM>", f"<{len(plain)} bytes>")
    ]
    assert compare_responses(bom, bom).equal
    spaced = HttpResponse(
        200, headers, b"\xef\xbb\xbf" + orjson.dumps(_DOC, option=orjson.OPT_INDENT_2)
    )
    assert compare_responses(bom, spaced).equal  # a BOM on both sides: the JSON compared
    other = HttpResponse(200, headers, b"\xef\xbb\xbf" + orjson.dumps({**_DOC, "id": 8}))
    assert _paths(bom, other) == ["$.id"]


@pytest.mark.parametrize(
    ("primary", "candidate", "paths"),
    [
        (b'{"a": 1, "a": 2}', b'{"a": 2}', ["$.a"]),  # first-wins clients read 1, then 2
        (b'{"a": 2}', b'{"a": 1, "a": 2}', ["$.a"]),
        (b'[{"id": 1, "s": "x:y", "s": "z"}]', b'[{"s": "z", "id": 1}]', ["$[0].s"]),
        (b'{"k\\u003a": 1, "k:": 2}', b'{"k:": 2}', ['$["k:"]']),  # an escaped colon
        (b'{"a": 1, "a": 2}', b'{ "a": 1, "a": 2 }', []),  # the same keys on both sides
        (b'{"a": 1, "a": 1}', b'{"a": 1}', []),  # every parser reads the same value
        (b'{"x": {"a": 1, "a": 2}}', b'{"x": {"a": 2}}', []),  # an ignored path
        # beside a number orjson cannot write back (past 64 bits, past the double range)
        (
            b'{"id": 123456789012345678901, "a": 1, "a": 2}',
            b'{"id": 123456789012345678901, "a": 2}',
            ["$.a"],
        ),
        (b'{"big": 1e400, "a": 1, "a": 2}', b'{"big": 1e400, "a": 2}', ["$.a"]),
    ],
)
def test_duplicate_keys_are_compared_as_first_wins_clients_read_them(
    primary: bytes, candidate: bytes, paths: list[str]
) -> None:
    # The parser kept the last value of a repeated key: the first one a client may read
    # was never compared.
    rules = CompareRules(ignore_json_paths=["$.x"])
    assert _paths(_raw(primary), _raw(candidate), rules=rules) == paths
