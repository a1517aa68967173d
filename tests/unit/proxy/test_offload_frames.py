"""The worker -> shadow helper frame format: what goes in comes out, whatever the split;
the served response travels as the backend's bytes and the helper reads it back."""

from __future__ import annotations

import gzip

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.offload import (
    Frame,
    decode_ack,
    decode_frames,
    encode_ack,
    encode_frame,
    served_response,
)

_frame = st.fixed_dictionaries(
    {
        "route": st.text(min_size=1, max_size=12).map(str.encode),
        "request_id": st.text(max_size=20),
        "head": st.binary(max_size=200),
        "body": st.binary(max_size=300),
        "raw": st.binary(max_size=500),
        "served_ms": st.floats(0, 1e6),
        "too_large": st.booleans(),
    }
)


@given(st.lists(_frame, min_size=1, max_size=5), st.integers(1, 97))
def test_frames_survive_any_split(frames: list[dict[str, object]], step: int) -> None:
    wire = b"".join(encode_frame(**f) for f in frames)  # type: ignore[arg-type]
    buf = bytearray()
    out: list[Frame] = []
    for i in range(0, len(wire), step):
        buf += wire[i : i + step]
        out.extend(decode_frames(buf))
    assert not buf  # nothing left over once every byte arrived
    assert len(out) == len(frames)
    for got, want in zip(out, frames, strict=True):
        assert type(got) is Frame
        assert got.route.encode() == want["route"]
        assert got.request_id == want["request_id"]
        assert got.head == want["head"]
        assert got.body == want["body"]
        assert got.raw == want["raw"]
        assert got.served_ms == want["served_ms"]
        assert got.too_large == want["too_large"]
    assert [f.size for f in out] == [len(encode_frame(**f)) for f in frames]  # type: ignore[arg-type]


def test_an_incomplete_frame_waits_for_the_rest() -> None:
    raw = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"
    wire = encode_frame(b"r", "id", b"GET /a HTTP/1.1\r\n\r\n", b"", raw, 1.0, False)
    buf = bytearray(wire[:-1])
    assert list(decode_frames(buf)) == []
    assert bytes(buf) == wire[:-1]
    buf += wire[-1:]
    [frame] = decode_frames(buf)
    assert frame.raw == raw
    assert not buf


@pytest.mark.parametrize(
    ("head", "want"),
    [
        (b"GET /orders/7?x=1&y=2 HTTP/1.1\r\nhost: a\r\n\r\n", ("GET", "/orders/7")),
        (b"HEAD / HTTP/1.1\r\n\r\n", ("HEAD", "/")),
        (b"OPTIONS * HTTP/1.1\r\n\r\n", ("OPTIONS", "*")),
        (b"PROPFIND /d%C3%A9j\xc3\xa0 HTTP/1.1\r\n\r\n", ("PROPFIND", "/d%C3%A9j\xc3\xa0")),
    ],
)
def test_method_and_path_come_back_from_the_request_line(
    head: bytes, want: tuple[str, str]
) -> None:
    # as the data plane had them: method by name, path without the query, latin-1
    [frame] = decode_frames(bytearray(encode_frame(b"r", "id", head, b"", b"", 1.0, False)))
    assert frame.request_line() == want


def _headers(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode(), v.encode()) for k, v in pairs]


def test_a_response_with_a_length_reads_back_as_served() -> None:
    raw = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n"
    raw += b'{"id": 7}'
    assert served_response(raw, head_only=False) == (
        201,
        _headers(("Content-Type", "application/json"), ("Content-Length", "9")),
        b'{"id": 7}',
    )


def test_a_chunked_response_is_dechunked_and_keeps_its_encoding() -> None:
    body = gzip.compress(b'{"a": 1}')
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n\r\n"
    raw += b"%x\r\n%s\r\n" % (5, body[:5]) + b"%x\r\n%s\r\n" % (len(body) - 5, body[5:])
    raw += b"0\r\n\r\n"
    status, headers, got = served_response(raw, head_only=False)
    assert (status, got) == (200, body)  # the comparison decodes gzip itself
    assert headers == _headers(("Transfer-Encoding", "chunked"), ("Content-Encoding", "gzip"))


def test_interim_responses_are_skipped() -> None:
    raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
    raw += b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\n\r\nok"
    assert served_response(raw, head_only=False) == (
        200,
        _headers(("Content-Length", "2"), ("X-A", "1")),
        b"ok",
    )


def test_a_head_answer_has_no_body_whatever_its_length_says() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n"
    assert served_response(raw, head_only=True) == (200, _headers(("Content-Length", "3")), b"")
    # read as a GET's answer, the same bytes would be a body cut short
    with pytest.raises(ValueError, match="cut short"):
        served_response(raw, head_only=False)
    # and what may follow a HEAD answer on the connection is not its body
    assert served_response(raw + b"abc", head_only=True)[2] == b""


def test_trailer_fields_are_not_headers() -> None:
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
    raw += b"2\r\nok\r\n0\r\nX-Sum: 1f\r\n\r\n"
    assert served_response(raw, head_only=False) == (
        200,
        _headers(("Transfer-Encoding", "chunked"), ("Trailer", "X-Sum")),
        b"ok",
    )


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
    ],
)
def test_a_body_cut_short_of_its_framing_is_an_error(raw: bytes) -> None:
    with pytest.raises(ValueError, match="cut short"):
        served_response(raw, head_only=False)


def test_a_body_that_ended_with_the_connection_is_whole() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"
    assert served_response(raw, head_only=False)[2] == b"until the end"


def test_bytes_after_the_response_are_not_part_of_it() -> None:
    raw = b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\n"
    assert served_response(raw, head_only=False) == (204, [], b"")


@pytest.mark.parametrize("raw", [b"", b"HTTP/1.1 100 Continue\r\n\r\n", b"not http at all\r\n\r\n"])
def test_no_final_response_is_an_error(raw: bytes) -> None:
    with pytest.raises(ValueError, match="response"):
        served_response(raw, head_only=False)


@given(st.dictionaries(st.text(), st.integers(min_value=0, max_value=1 << 62)))
def test_acks_roundtrip_on_one_line(ended: dict[str, int]) -> None:
    line = encode_ack(ended)
    assert line.endswith(b"\n") and line.count(b"\n") == 1  # route names are JSON-escaped
    assert decode_ack(line[:-1]) == ended


def test_lines_that_are_not_acks_are_ignored() -> None:
    assert decode_ack(b"R") is None
    assert decode_ack(b"A{not json") is None
    assert decode_ack(b"A[1, 2]") is None
    assert decode_ack(b'A{"r": true, "s": "3", "t": 4}') == {"t": 4}


@pytest.mark.parametrize(
    "after",
    [
        b"",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 500 Oops\r\nContent-Length: 3\r\nX-B: 2\r\n\r\nbad",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nbad\r\n0\r\n\r\n",
        b"\x00garbage\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n..",
    ],
)
@pytest.mark.parametrize("connection", [b"keep-alive", b"close"])
def test_what_follows_the_answer_is_not_part_of_it(after: bytes, connection: bytes) -> None:
    raw = b"HTTP/1.1 200 OK\r\nConnection: " + connection + b"\r\nContent-Length: 2\r\n\r\nok"
    assert served_response(raw + after, head_only=False) == (
        200,
        [(b"Connection", connection), (b"Content-Length", b"2")],
        b"ok",
    )
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-T: 1\r\n\r\n"
    assert served_response(chunked + after, head_only=False) == (
        200,
        [(b"Transfer-Encoding", b"chunked")],
        b"ok",
    )
