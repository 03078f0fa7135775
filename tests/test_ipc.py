"""Tests of the pipe framing: round trips, limits, and totality of the decoder.

Rule: any byte string given to the decoder yields a value or IpcError, nothing else."""

from __future__ import annotations

import os
import struct
import threading

import pytest
from hypothesis import given, settings, strategies as st

from tlswrapper import ipc
from tlswrapper.ipc import IpcError
from tlswrapper.tls.keyservice import Candidate, Unusable

# --- values -------------------------------------------------------------------------------------

leaf = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**63, max_value=2**63 - 1),
    st.binary(max_size=300), st.text(max_size=50),
)
values = st.recursive(
    leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=6), st.lists(inner, max_size=6).map(tuple)),
    max_leaves=30,
)


def roundtrip(v):
    op, out = ipc.decode(ipc.encode(7, v))
    assert op == 7
    return out


@pytest.mark.parametrize("v", [
    None, True, False, 0, 1, -1, 2**63 - 1, -2**63, b"", b"\x00" * 3, b"x" * 5000,
    "", "h\u00e9llo", "\udcff\udc80 surrogate-escaped path", [], (), [()], ([(23, b"ab")], 0, ""),
    [[[[[[[[b"deep"]]]]]]]],
])
def test_roundtrip_examples(v):
    out = roundtrip(v)
    assert out == v and type(out) is type(v)


def test_bool_stays_bool_and_list_tuple_stay_apart():
    out = roundtrip([True, 1, (False, 0), [None]])
    assert [type(x) for x in out] == [bool, int, tuple, list]
    assert type(out[1]) is int and type(out[2][0]) is bool


def test_bytes_like_are_sent_as_bytes():
    assert roundtrip(bytearray(b"abc")) == b"abc"
    assert roundtrip(memoryview(b"x" * 4000)) == b"x" * 4000


def test_int_subclasses_travel_as_int():
    import enum

    class E(enum.IntEnum):
        A = 5
    out = roundtrip((E.A,))
    assert out == (5,) and type(out[0]) is int


@given(values)
def test_roundtrip_property(v):
    assert roundtrip(v) == v


@pytest.mark.parametrize("v", [2**63, -2**63 - 1, 1.5, {"a": 1}, {1}, object()])
def test_unencodable(v):
    with pytest.raises(IpcError):
        ipc.encode(1, v)


def test_encode_limits():
    deep: list = []
    for _ in range(ipc.MAX_DEPTH):
        deep = [deep]
    with pytest.raises(IpcError):
        ipc.encode(1, deep)
    with pytest.raises(IpcError):
        ipc.encode(1, [0] * (ipc.MAX_LIST + 1))
    with pytest.raises(IpcError):
        ipc.encode(1, b"x" * (ipc.MAX_FRAME + 1))
    with pytest.raises(IpcError):
        ipc.encode(256, None)


def test_frame_layout():
    assert ipc.encode(3, b"ab") == b"\x00\x00\x00\x07\x03B\x00\x00\x00\x02ab"
    assert ipc.encode(ipc.OP_OK, None) == b"\x00\x00\x00\x01\x80N"


# --- the decoder is total ---------------------------------------------------------------------------

def _decode_total(data: bytes) -> None:
    for f in (ipc.decode, ipc.decode_body):
        try:
            f(data)
        except IpcError:
            pass


@given(st.binary(max_size=200))
def test_decoder_total_on_any_bytes(data):
    _decode_total(data)


@given(st.binary(max_size=64))
def test_decoder_total_on_framed_junk(body):
    # A correct header in front of junk: the body decoder itself is exercised.
    _decode_total(struct.pack(">IB", len(body), 1) + body)


@given(values, st.data())
def test_decoder_total_on_mutated_frames(v, data):
    frame = bytearray(ipc.encode(2, v))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(frame) - 1))
        frame[i] = data.draw(st.integers(0, 255))
    _decode_total(bytes(frame))


@given(values)
@settings(max_examples=50)
def test_every_truncation_is_an_error(v):
    frame = ipc.encode(2, v)
    for n in range(len(frame)):
        with pytest.raises(IpcError):
            ipc.decode(frame[:n])


def test_junk_after_value():
    with pytest.raises(IpcError):
        ipc.decode_body(b"NN")


@pytest.mark.parametrize("body", [
    b"B\xff\xff\xff\xff",                       # bytes longer than the frame
    b"S\x00\x00\x00\x02\xc3\x28",               # invalid UTF-8
    b"L" + struct.pack(">I", ipc.MAX_LIST + 1) + b"N" * (ipc.MAX_LIST + 1),
    b"L\x00\x00\x00\x05NN",                     # count beyond the frame
    b"I\x00\x00",                               # short integer
    b"X",                                       # unknown tag
    b"",                                        # no value at all
    b"U" + b"\x00\x00\x00\x01U" * (ipc.MAX_DEPTH + 1) + b"\x00\x00\x00\x00",
])
def test_malformed_bodies(body):
    with pytest.raises(IpcError):
        ipc.decode_body(body)


def test_header_over_limit():
    with pytest.raises(IpcError):
        ipc.decode(struct.pack(">IB", ipc.MAX_FRAME + 1, 1))


# --- candidates ---------------------------------------------------------------------------------

def test_candidate_wire():
    for c in (Candidate((b"a", b"b"), "ec-p256", 0), Unusable("missing", True)):
        assert ipc.candidate_from_wire(roundtrip(ipc.candidate_to_wire(c))) == c
    for bad in (None, ("c", [b"a"], "rsa", 1), ("u", "x"), ("z", 1, 2), ("c", (1,), "rsa", 0)):
        with pytest.raises(IpcError):
            ipc.candidate_from_wire(bad)
    with pytest.raises(IpcError):
        ipc.candidate_to_wire("nope")  # type: ignore[arg-type]


# --- pipes -----------------------------------------------------------------------------------------

@pytest.fixture
def pipe():
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


def _writer(fd, frames):
    def run():
        for op, v in frames:
            ipc.write_frame(fd, op, v)
        os.close(fd)
    t = threading.Thread(target=run)
    t.start()
    return t


def test_reader_frames_then_eof(pipe):
    r, w = pipe
    big = os.urandom(3 << 20)       # larger than the reader's first buffer and the pipe
    frames = [(1, None), (2, [b"a", ("b", 3)]), (ipc.OP_OK, big), (3, b"")]
    t = _writer(w, frames)
    reader = ipc.FrameReader(r)
    got = [reader.read() for _ in frames]
    assert reader.read() is None
    t.join()
    assert got == frames


def test_reader_several_frames_in_one_read(pipe):
    r, w = pipe
    os.write(w, ipc.encode(1, b"one") + ipc.encode(2, b"two") + ipc.encode(3, b"three"))
    os.close(w)
    reader = ipc.FrameReader(r)
    assert [reader.read() for _ in range(3)] == [(1, b"one"), (2, b"two"), (3, b"three")]
    assert reader.read() is None


def test_reader_eof_mid_frame(pipe):
    r, w = pipe
    frame = ipc.encode(1, b"abcdef")
    os.write(w, frame[:-2])
    os.close(w)
    with pytest.raises(IpcError):
        ipc.FrameReader(r).read()


def test_reader_eof_mid_header(pipe):
    r, w = pipe
    os.write(w, b"\x00\x00")
    os.close(w)
    with pytest.raises(IpcError):
        ipc.FrameReader(r).read()


def test_reader_refuses_huge_header_without_reading_it(pipe):
    r, w = pipe
    os.write(w, struct.pack(">IB", ipc.MAX_FRAME + 1, 1))
    with pytest.raises(IpcError):
        ipc.FrameReader(r).read()


def test_partial_writes_are_completed(pipe, monkeypatch):
    r, w = pipe
    real = os.writev

    def stingy(fd, bufs):
        # Write at most 1000 bytes per call, as a signal in the middle of a writev could.
        out, left = [], 1000
        for b in bufs:
            mv = memoryview(b)[:left]
            out.append(mv)
            left -= len(mv)
            if not left:
                break
        return real(fd, out)
    monkeypatch.setattr(os, "writev", stingy)
    value = [(23, os.urandom(5000)), (22, b"small"), (23, os.urandom(3000))]
    t = _writer(w, [(9, value)])
    assert ipc.FrameReader(r).read() == (9, value)
    t.join()


def test_more_large_parts_than_iov_max(pipe):
    r, w = pipe
    n = 1500  # more than IOV_MAX (1024) iovecs of large bytes
    value = [os.urandom(ipc._WRITEV_THRESHOLD) for _ in range(n)]
    assert len(ipc.encode_parts(1, value)) > 1024
    t = _writer(w, [(1, value)])
    assert ipc.FrameReader(r).read() == (1, value)
    t.join()
