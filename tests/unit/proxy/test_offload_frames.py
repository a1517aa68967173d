"""The worker -> shadow helper frame format: what goes in comes out, whatever the split."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.offload import Frame, decode_ack, decode_frames, encode_ack, encode_frame

_name = st.binary(max_size=20).filter(lambda b: b"\r\n" not in b and not b.endswith(b"\r"))
_value = st.binary(max_size=40).filter(lambda b: b"\r\n" not in b and not b.startswith(b"\n"))
_frame = st.fixed_dictionaries(
    {
        "route": st.text(min_size=1, max_size=12).map(str.encode),
        "method": st.sampled_from(["GET", "HEAD", "POST", "DELETE"]),
        "path": st.text(max_size=30),
        "request_id": st.text(alphabet="0123456789abcdef", max_size=20),
        "head": st.binary(max_size=200),
        "body": st.binary(max_size=300),
        "status": st.integers(100, 599),
        "headers": st.lists(st.tuples(_name, _value), max_size=6),
        "served_body": st.binary(max_size=500),
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
        assert got.route.encode() == want["route"]
        assert got.method == want["method"]
        assert got.path == want["path"]
        assert got.request_id == want["request_id"]
        assert got.head == want["head"]
        assert got.body == want["body"]
        assert got.status == want["status"]
        assert got.headers == want["headers"]
        assert got.served_body == want["served_body"]
        assert got.served_ms == want["served_ms"]
        assert got.too_large == want["too_large"]
    assert [f.size for f in out] == [len(encode_frame(**f)) for f in frames]  # type: ignore[arg-type]


def test_an_incomplete_frame_waits_for_the_rest() -> None:
    wire = encode_frame(
        b"r", "GET", "/a", "id", b"GET /a HTTP/1.1\r\n\r\n", b"", 200, [], b"{}", 1.0, False
    )
    buf = bytearray(wire[:-1])
    assert list(decode_frames(buf)) == []
    assert bytes(buf) == wire[:-1]
    buf += wire[-1:]
    [frame] = decode_frames(buf)
    assert frame.served_body == b"{}"
    assert not buf


def test_a_header_holding_the_separator_is_refused() -> None:
    # httptools never passes CR LF inside a parsed value; if one did, the frame would shift
    with pytest.raises(ValueError, match="CR LF"):
        encode_frame(b"r", "GET", "/", "id", b"", b"", 200, [(b"a", b"x\r\ny")], b"", 1.0, False)


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
