"""tls/wire.py: Reader is total and bounded, Writer's blocks get the right lengths."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tlswrapper.tls import suites
from tlswrapper.tls.wire import DecodeError, Reader, Writer, handshake_message

FAST = settings(max_examples=200, deadline=None)


def test_decode_error_carries_reason_and_alert() -> None:
    e = DecodeError("short")
    assert e.reason == "short" and e.alert == suites.DECODE_ERROR and str(e) == "short"
    e = DecodeError("bad value", suites.ILLEGAL_PARAMETER)
    assert e.alert == suites.ILLEGAL_PARAMETER


def test_integers_are_big_endian() -> None:
    r = Reader(bytes.fromhex("01 0203 040506 0708090a".replace(" ", "")))
    assert (r.u8(), r.u16(), r.u24(), r.u32()) == (1, 0x0203, 0x040506, 0x0708090A)
    assert r.at_end() and r.remaining() == 0
    r.expect_end("test")


def test_vectors_read_their_length_prefix() -> None:
    data = b"\x02ab" + b"\x00\x01c" + b"\x00\x00\x03def"
    r = Reader(data)
    assert (r.vec8(), r.vec16(), r.vec24()) == (b"ab", b"c", b"def")
    r.expect_end("test")


def test_reader_accepts_memoryview_and_returns_bytes() -> None:
    r = Reader(memoryview(b"\x03xyz!"))
    value = r.vec8()
    assert type(value) is bytes and value == b"xyz"
    assert r.raw(1) == b"!"


@pytest.mark.parametrize("method", ["u8", "u16", "u24", "u32", "vec8", "vec16", "vec24",
                                    "block8", "block16", "block24"])
def test_every_read_on_empty_input_is_a_decode_error(method: str) -> None:
    with pytest.raises(DecodeError) as info:
        getattr(Reader(b""), method)()
    assert info.value.alert == suites.DECODE_ERROR


def test_reader_reads_signed_and_char_views_as_unsigned_bytes() -> None:
    data = bytearray(b"\xff\x80\x01")
    for view in (memoryview(data).cast("b"), memoryview(data).cast("c")):
        r = Reader(view)
        assert (r.u8(), r.u16()) == (0xFF, 0x8001)


def test_raw_refuses_negative_and_excess_lengths() -> None:
    r = Reader(b"abc")
    with pytest.raises(DecodeError):
        r.raw(4)
    with pytest.raises(DecodeError):
        r.raw(-1)
    assert r.raw(3) == b"abc"


def test_vector_longer_than_data_is_a_decode_error_and_consumes_nothing_useful() -> None:
    with pytest.raises(DecodeError):
        Reader(b"\x05abc").vec8()
    with pytest.raises(DecodeError):
        Reader(b"\x00\x00\x04abc").vec24()


def test_block_bounds_the_sub_reader_and_advances_the_parent() -> None:
    r = Reader(b"\x00\x02\x01\x02\x03")
    sub = r.block16()
    assert r.remaining() == 1 and sub.remaining() == 2
    assert sub.u16() == 0x0102
    # The byte after the block belongs to the parent, never to the sub-reader.
    with pytest.raises(DecodeError):
        sub.u8()
    assert r.u8() == 3


def test_inner_vector_cannot_run_past_its_block() -> None:
    # block8 of 3 bytes holding a vec8 that claims 4; the parent has enough bytes after it.
    r = Reader(b"\x03\x04abcdefgh")
    sub = r.block8()
    with pytest.raises(DecodeError):
        sub.vec8()


def test_expect_end_reports_trailing_bytes() -> None:
    r = Reader(b"\x01\x02")
    r.u8()
    with pytest.raises(DecodeError, match="trailing bytes in thing"):
        r.expect_end("thing")


def test_writer_integers_and_vectors() -> None:
    w = Writer()
    w.u8(1)
    w.u16(0x0203)
    w.u24(0x040506)
    w.u32(0x0708090A)
    w.raw(b"!")
    w.vec8(b"ab")
    w.vec16(b"c")
    w.vec24(b"")
    assert w.getvalue() == bytes.fromhex("010203040506 0708090a 21 026162 000163 000000"
                                         .replace(" ", ""))


@pytest.mark.parametrize("method,value", [("u8", 256), ("u16", 1 << 16), ("u24", 1 << 24),
                                          ("u32", 1 << 32), ("u8", -1)])
def test_writer_rejects_integers_out_of_range(method: str, value: int) -> None:
    with pytest.raises(ValueError):
        getattr(Writer(), method)(value)


def test_writer_rejects_vectors_too_long() -> None:
    with pytest.raises(ValueError):
        Writer().vec8(bytes(256))
    with pytest.raises(ValueError):
        Writer().vec16(bytes(1 << 16))
    Writer().vec8(bytes(255))
    Writer().vec16(bytes((1 << 16) - 1))


def test_writer_blocks_write_their_length_afterwards() -> None:
    w = Writer()
    with w.block16():
        w.u8(7)
        with w.block8():
            w.raw(b"xyz")
        with w.block24():
            pass
    assert w.getvalue() == b"\x00\x08\x07\x03xyz\x00\x00\x00"


def test_writer_block_too_long_is_a_value_error() -> None:
    w = Writer()
    with pytest.raises(ValueError):
        with w.block8():
            w.raw(bytes(256))


def test_handshake_message_header() -> None:
    assert handshake_message(suites.HS_FINISHED, b"abc") == b"\x14\x00\x00\x03abc"
    assert handshake_message(suites.HS_SERVER_HELLO_DONE, b"") == b"\x0e\x00\x00\x00"
    with pytest.raises(ValueError):
        handshake_message(256, b"")


# --- properties ------------------------------------------------------------------------------

_OPS = ["u8", "u16", "u24", "u32", "vec8", "vec16", "vec24", "block8", "block16", "block24",
        "raw", "expect_end"]


@FAST
@given(st.binary(max_size=64), st.lists(st.sampled_from(_OPS), max_size=20),
       st.integers(min_value=-2, max_value=70))
def test_reader_is_total_on_any_input(data: bytes, ops: list[str], n: int) -> None:
    r = Reader(data)
    try:
        for op in ops:
            before = r.remaining()
            if op == "raw":
                r.raw(n)
            elif op == "expect_end":
                r.expect_end("fuzz")
            elif op.startswith("block"):
                r = getattr(r, op)()   # descend into the block
            else:
                getattr(r, op)()
            assert 0 <= r.remaining() <= before
    except DecodeError:
        pass


_Item = st.one_of(
    st.tuples(st.just("u8"), st.integers(0, 0xFF)),
    st.tuples(st.just("u16"), st.integers(0, 0xFFFF)),
    st.tuples(st.just("u24"), st.integers(0, 0xFFFFFF)),
    st.tuples(st.just("u32"), st.integers(0, 0xFFFFFFFF)),
    st.tuples(st.sampled_from(["vec8", "vec16", "vec24"]), st.binary(max_size=40)),
)


@FAST
@given(st.lists(_Item, max_size=12), st.sampled_from(["block8", "block16", "block24"]))
def test_writer_then_reader_round_trips(items: list[tuple[str, object]], block: str) -> None:
    w = Writer()
    with getattr(w, block)():
        for method, value in items:
            getattr(w, method)(value)
    r = Reader(w.getvalue())
    sub = getattr(r, block)()
    r.expect_end("outer")
    assert [(m, getattr(sub, m)()) for m, _ in items] == items
    sub.expect_end("block")


@FAST
@given(st.binary(max_size=30), st.integers(min_value=1, max_value=40))
def test_overlong_inner_vector_in_a_block_is_a_decode_error(payload: bytes, extra: int) -> None:
    # A vec8 whose length exceeds its enclosing block by `extra`, with plenty of bytes after.
    inner_length = len(payload) + extra
    if inner_length > 255:
        return
    data = bytes((len(payload) + 1, inner_length)) + payload + bytes(100)
    sub = Reader(data).block8()
    with pytest.raises(DecodeError):
        sub.vec8()
