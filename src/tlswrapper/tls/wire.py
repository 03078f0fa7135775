"""Reading and writing TLS presentation-language vectors (RFC 8446 section 3).

Rule: every read is bounds-checked; running out of bytes is a DecodeError, never an IndexError."""

from __future__ import annotations

from . import suites


class DecodeError(Exception):
    """Malformed input from the peer; .alert is the alert description to send."""

    def __init__(self, reason: str, alert: int = suites.DECODE_ERROR) -> None:
        super().__init__(reason)
        self.reason = reason
        self.alert = alert

    def __repr__(self) -> str:
        return f"DecodeError({self.reason!r}, alert={self.alert})"


class Reader:
    """A cursor over bytes, bounded to [pos, end); sub-readers share the buffer, never copy it.

    Values returned are bytes copies. A Reader over a bytearray pins it (no resizing) while the
    Reader, or a traceback holding it, lives: pass bytes or a slice copy if that matters."""

    __slots__ = ("_buf", "_pos", "_end")

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        # Index as unsigned bytes whatever the caller's buffer format ('b', 'c', 2-D...).
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        self._buf = view
        self._pos = 0
        self._end = len(view)

    @classmethod
    def _sub(cls, buf: memoryview, start: int, end: int) -> Reader:
        r = cls.__new__(cls)
        r._buf = buf
        r._pos = start
        r._end = end
        return r

    def _take(self, n: int) -> int:
        # Returns the start offset of n bytes and advances; the only place bounds are checked.
        if n < 0 or self._end - self._pos < n:
            raise DecodeError(f"need {n} bytes, have {self._end - self._pos}")
        start = self._pos
        self._pos = start + n
        return start

    def _uint(self, n: int) -> int:
        start = self._take(n)
        return int.from_bytes(self._buf[start:start + n], "big")

    def u8(self) -> int:
        start = self._take(1)
        return self._buf[start]

    def u16(self) -> int:
        return self._uint(2)

    def u24(self) -> int:
        return self._uint(3)

    def u32(self) -> int:
        return self._uint(4)

    def raw(self, n: int) -> bytes:
        start = self._take(n)
        return bytes(self._buf[start:start + n])

    def vec8(self) -> bytes:
        return self.raw(self.u8())

    def vec16(self) -> bytes:
        return self.raw(self.u16())

    def vec24(self) -> bytes:
        return self.raw(self.u24())

    def _block(self, n: int) -> Reader:
        # The length is checked against this reader's bound, so an inner vector can never
        # claim bytes beyond its enclosing one.
        length = self._uint(n)
        start = self._take(length)
        return Reader._sub(self._buf, start, start + length)

    def block8(self) -> Reader:
        return self._block(1)

    def block16(self) -> Reader:
        return self._block(2)

    def block24(self) -> Reader:
        return self._block(3)

    def remaining(self) -> int:
        return self._end - self._pos

    def at_end(self) -> bool:
        return self._pos >= self._end

    def rest(self) -> bytes:
        """All bytes left, consumed."""
        return self.raw(self.remaining())

    def expect_end(self, what: str) -> None:
        if self._pos != self._end:
            raise DecodeError(f"trailing bytes in {what}")


class Writer:
    """An append-only buffer; lengths of blocks are filled in when the block closes."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def _uint(self, v: int, n: int) -> None:
        # A value out of range is our own bug, not the peer's: ValueError, not DecodeError.
        if not 0 <= v < (1 << (8 * n)):
            raise ValueError(f"value {v} does not fit in {n} bytes")
        self._buf += v.to_bytes(n, "big")

    def u8(self, v: int) -> None:
        self._uint(v, 1)

    def u16(self, v: int) -> None:
        self._uint(v, 2)

    def u24(self, v: int) -> None:
        self._uint(v, 3)

    def u32(self, v: int) -> None:
        self._uint(v, 4)

    def raw(self, b: bytes | bytearray | memoryview) -> None:
        self._buf += b

    def _vec(self, b: bytes | bytearray | memoryview, n: int) -> None:
        self._uint(len(b), n)
        self._buf += b

    def vec8(self, b: bytes | bytearray | memoryview) -> None:
        self._vec(b, 1)

    def vec16(self, b: bytes | bytearray | memoryview) -> None:
        self._vec(b, 2)

    def vec24(self, b: bytes | bytearray | memoryview) -> None:
        self._vec(b, 3)

    def block8(self) -> _Block:
        return _Block(self, 1)

    def block16(self) -> _Block:
        return _Block(self, 2)

    def block24(self) -> _Block:
        return _Block(self, 3)

    def __len__(self) -> int:
        return len(self._buf)

    def getvalue(self) -> bytes:
        return bytes(self._buf)


class _Block:
    """`with w.block16(): ...`: an n-byte length, filled in when the block closes without an
    exception. (A class, not contextlib.contextmanager: no contextlib import per process.)"""

    __slots__ = ("_writer", "_n", "_at")

    def __init__(self, writer: Writer, n: int) -> None:
        self._writer = writer
        self._n = n
        self._at = len(writer._buf)
        writer._buf += bytes(n)

    def __enter__(self) -> Writer:
        return self._writer

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            return
        buf, n, at = self._writer._buf, self._n, self._at
        length = len(buf) - at - n
        if length >= 1 << (8 * n):
            raise ValueError(f"block of {length} bytes does not fit a {n}-byte length")
        buf[at:at + n] = length.to_bytes(n, "big")


def handshake_message(msg_type: int, body: bytes) -> bytes:
    """The 4-byte handshake header (RFC 8446 section 4: type u8, length u24) plus body."""
    if not 0 <= msg_type < 256 or len(body) >= 1 << 24:
        raise ValueError("handshake message type or length out of range")
    return bytes((msg_type,)) + len(body).to_bytes(3, "big") + body
