"""Framing of KeyService requests and answers on a pair of pipes; shared by both processes.

Rule: a frame carries only plain values (bytes, int, str, bool, None, lists/tuples of them),
every length is checked against a named limit, and any malformed input raises IpcError.

Frame layout (all integers big-endian):

    u32 body_length | u8 opcode | body (exactly one encoded value)

Values are a one-byte tag followed by their content:

    'N' None        'T' True        'F' False       'I' i64
    'B' u32 n, n bytes              'S' u32 n, n bytes of UTF-8 (surrogatepass)
    'L' u32 n, n values (list)      'U' u32 n, n values (tuple)

Requests use opcode 1..len(METHODS) (the KeyService method at METHODS[opcode - 1]) and the
body is the tuple of positional arguments; answers use OP_OK (body: the result) or OP_ERR
(body: (alert, reason)).  Lists and tuples are kept apart because the KeyService's answers
mix both (open() returns a tuple holding a list of tuples).

The bulk path (seal/open of a batch of records) is kept to one Python-level copy per record
on each side: large bytes values are handed to os.writev as they are (no concatenation), and
a frame is read straight into a reusable buffer with os.readv, then sliced once into bytes.
"""

from __future__ import annotations

import os
import struct
from tlswrapper.tls.keyservice import Candidate, Unusable

TYPE_CHECKING = False
if TYPE_CHECKING:      # typing is not imported at run time (tcpserver mode pays for imports)
    from typing import Any, Union
    Value = Union[None, bool, int, bytes, str, list, tuple]

# A batch of 16 records of 16 KiB plus their headers and tags is ~260 KiB; 8 MiB leaves
# room for batches of ~500 full records and still bounds what one frame can make us buffer.
MAX_FRAME = 8 << 20
# Longest list/tuple in a frame: the records of a batch, or the certificates of a chain.
MAX_LIST = 4096
# Deepest nesting of lists/tuples: open()'s answer needs 3; this bounds the decoder's stack.
MAX_DEPTH = 8

HEADER = struct.Struct(">IB")
HEADER_SIZE = HEADER.size   # 5
_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")
_TAG_U32 = struct.Struct(">BI")
_TAG_I64 = struct.Struct(">Bq")

# bytes values at least this long are written from the caller's object by os.writev instead
# of being copied into the frame's small-value buffer.
_WRITEV_THRESHOLD = 2048
# The iovec count a single writev accepts (IOV_MAX; 1024 on Linux).
try:
    _IOV_MAX = max(16, os.sysconf("SC_IOV_MAX"))
except (ValueError, OSError):
    _IOV_MAX = 1024

# The calls that may be made over the pipe: those the engine (and the listener's spare, for
# ready) make in production, and no other (keys/service.py; no raw sign, key_share or
# derive13_*). Both processes come from the same code, so the numbering is theirs alone.
METHODS: tuple[str, ...] = (
    "load", "select", "derive12", "finished12", "finished13", "key_update",
    "activate", "seal", "open", "read_anchor",
    "server_flight13", "server_key_exchange12", "seal_finished12", "derive12_finished",
    "ready",
)
OPCODES: dict[str, int] = {name: i + 1 for i, name in enumerate(METHODS)}
OP_OK = 0x80
OP_ERR = 0x81

_N, _T, _F, _I, _B, _S, _L, _U = (ord(c) for c in "NTFIBSLU")

class IpcError(Exception):
    """A frame that is malformed, over a limit, or cut short; or a value that cannot be
    encoded. Either process treats it as fatal for the connection."""


# --- load()'s answer: the only non-plain values of the KeyService ------------------------

def candidate_to_wire(c: Candidate | Unusable) -> tuple:
    """("c", chain, key_type, bits) or ("u", reason, missing)."""
    if isinstance(c, Candidate):
        return ("c", tuple(c.chain), c.key_type, c.bits)
    if isinstance(c, Unusable):
        return ("u", c.reason, c.missing)
    raise IpcError("load() answered something that is not a Candidate or Unusable")


def candidate_from_wire(v: Any) -> Candidate | Unusable:
    """The inverse of candidate_to_wire; IpcError for anything else."""
    if type(v) is tuple and len(v) == 4 and v[0] == "c":
        _, chain, key_type, bits = v
        if (type(chain) is tuple and all(type(x) is bytes for x in chain)
                and type(key_type) is str and type(bits) is int):
            return Candidate(chain, key_type, bits)
    elif type(v) is tuple and len(v) == 3 and v[0] == "u":
        _, reason, missing = v
        if type(reason) is str and type(missing) is bool:
            return Unusable(reason, missing)
    raise IpcError("malformed load() answer")


# --- encoding -----------------------------------------------------------------------------

class _Encoder:
    """Collects a frame as iovec parts: small values are packed into bytearrays, large bytes
    values are referenced, not copied."""

    __slots__ = ("parts", "cur", "size")

    def __init__(self) -> None:
        self.cur = bytearray(HEADER_SIZE)     # the header is filled in by finish()
        self.parts: list[Any] = [self.cur]
        self.size = 0                         # body bytes so far (header excluded)

    def value(self, v: Any, depth: int) -> None:
        cur = self.cur
        # Exact type checks first: bool is an int subclass and must keep its own tag.
        t = type(v)
        if t is bytes or t is bytearray or t is memoryview:
            n = len(v) if t is not memoryview else v.nbytes
            cur += _TAG_U32.pack(_B, n)
            self.size += 5 + n
            if n >= _WRITEV_THRESHOLD:
                self.parts.append(v)
                self.cur = bytearray()
                self.parts.append(self.cur)
            else:
                cur += v
        elif t is int:
            try:
                cur += _TAG_I64.pack(_I, v)
            except struct.error:
                raise IpcError("integer out of range") from None
            self.size += 9
        elif v is None:
            cur.append(_N)
            self.size += 1
        elif t is bool:
            cur.append(_T if v else _F)
            self.size += 1
        elif t is str:
            try:
                data = v.encode("utf-8", "surrogatepass")
            except UnicodeEncodeError:     # cannot happen with surrogatepass; kept total
                raise IpcError("unencodable string") from None
            cur += _TAG_U32.pack(_S, len(data))
            cur += data
            self.size += 5 + len(data)
        elif t is list or t is tuple:
            if depth >= MAX_DEPTH:
                raise IpcError("nesting too deep")
            if len(v) > MAX_LIST:
                raise IpcError("list too long")
            cur += _TAG_U32.pack(_L if t is list else _U, len(v))
            self.size += 5
            for item in v:
                self.value(item, depth + 1)
        elif isinstance(v, int) and not isinstance(v, bool):
            self.value(int(v), depth)     # IntEnum and the like travel as plain ints
            return
        elif isinstance(v, str):
            self.value(str(v), depth)
            return
        else:
            raise IpcError(f"cannot encode {t.__name__}")
        if self.size > MAX_FRAME:
            raise IpcError("frame too large")

    def finish(self, opcode: int) -> list[Any]:
        HEADER.pack_into(self.parts[0], 0, self.size, opcode)
        return [p for p in self.parts if len(p)]


def encode_parts(opcode: int, value: Value) -> list[Any]:
    """The frame for `value` as a list of buffers to write in order (for os.writev)."""
    if not 0 <= opcode <= 0xFF:
        raise IpcError("bad opcode")
    enc = _Encoder()
    enc.value(value, 0)
    return enc.finish(opcode)


def encode(opcode: int, value: Value) -> bytes:
    """The frame for `value` as one bytes object (tests and small messages)."""
    return b"".join(encode_parts(opcode, value))


def write_frame(fd: int, opcode: int, value: Value) -> None:
    """Write one frame to `fd`. Nothing is written if the value cannot be encoded."""
    write_parts(fd, encode_parts(opcode, value))


def write_parts(fd: int, buffers: list[Any]) -> None:
    """Write the buffers of encode_parts() to `fd`, all of them (writev may write only a part,
    e.g. when a signal arrives in the middle of a large frame)."""
    parts = [memoryview(p).cast("B") for p in buffers]
    i = 0
    while i < len(parts):
        n = os.writev(fd, parts[i:i + _IOV_MAX])
        # Skip the parts written in full, then trim the one written in part.
        while i < len(parts) and n >= len(parts[i]):
            n -= len(parts[i])
            i += 1
        if n:
            parts[i] = parts[i][n:]


# --- decoding -----------------------------------------------------------------------------

def _decode_value(buf: memoryview, pos: int, end: int, depth: int) -> tuple[Any, int]:
    if pos >= end:
        raise IpcError("truncated value")
    tag = buf[pos]
    pos += 1
    if tag == _B or tag == _S:
        if end - pos < 4:
            raise IpcError("truncated length")
        (n,) = _U32.unpack_from(buf, pos)
        pos += 4
        if n > end - pos:
            raise IpcError("length beyond frame")
        # The one copy of the bulk path: the reusable read buffer is sliced into bytes.
        data = bytes(buf[pos:pos + n])
        pos += n
        if tag == _B:
            return data, pos
        try:
            return data.decode("utf-8", "surrogatepass"), pos
        except UnicodeDecodeError:
            raise IpcError("invalid UTF-8") from None
    if tag == _I:
        if end - pos < 8:
            raise IpcError("truncated integer")
        return _I64.unpack_from(buf, pos)[0], pos + 8
    if tag == _N:
        return None, pos
    if tag == _T:
        return True, pos
    if tag == _F:
        return False, pos
    if tag == _L or tag == _U:
        if depth >= MAX_DEPTH:
            raise IpcError("nesting too deep")
        if end - pos < 4:
            raise IpcError("truncated length")
        (n,) = _U32.unpack_from(buf, pos)
        pos += 4
        # Every item takes at least one byte: this also stops a huge count early.
        if n > MAX_LIST or n > end - pos:
            raise IpcError("list too long")
        items = []
        for _ in range(n):
            item, pos = _decode_value(buf, pos, end, depth + 1)
            items.append(item)
        return (items if tag == _L else tuple(items)), pos
    raise IpcError(f"unknown tag {tag}")


def decode_body(body: bytes | bytearray | memoryview) -> Value:
    """The one value a frame body holds; IpcError if it is malformed or followed by junk."""
    buf = memoryview(body).cast("B")
    value, pos = _decode_value(buf, 0, len(buf), 0)
    if pos != len(buf):
        raise IpcError("junk after value")
    return value


def decode(frame: bytes | bytearray | memoryview) -> tuple[int, Value]:
    """(opcode, value) of one complete frame given as a whole."""
    buf = memoryview(frame).cast("B")
    if len(buf) < HEADER_SIZE:
        raise IpcError("truncated header")
    n, opcode = HEADER.unpack_from(buf, 0)
    if n > MAX_FRAME:
        raise IpcError("frame too large")
    if len(buf) - HEADER_SIZE != n:
        raise IpcError("frame length mismatch")
    return opcode, decode_body(buf[HEADER_SIZE:])


class FrameReader:
    """Reads whole frames from a blocking fd into a reused buffer (grown up to MAX_FRAME).

    The network process may send several requests in one write (calls it deferred, then the
    one it needs answered): bytes read past the end of a frame are kept for the next one."""

    # Small at first: a handshake's frames are a few KiB, and every page of a new buffer is a
    # page fault in a freshly forked process; bulk batches grow it to their size once.
    _INITIAL = 8 * 1024

    def __init__(self, fd: int, limits: dict[int, int] | None = None) -> None:
        self.fd = fd
        # Largest body per opcode (the key process's request limits); an opcode not in it,
        # or a body over its limit, is refused from the header, before the body is read.
        self._limits = limits
        self._buf = bytearray(self._INITIAL)
        self._view = memoryview(self._buf)
        self._start = 0   # first unconsumed byte
        self._end = 0     # end of the bytes read

    def _fill(self, need: int) -> bool:
        """Make at least `need` bytes available from _start; False on EOF before any of
        them arrived, IpcError on EOF in the middle."""
        have = self._end - self._start
        if need > len(self._buf) - self._start:
            # Move the pending bytes to the front of a buffer large enough for the frame.
            size = max(len(self._buf), need)
            if size > len(self._buf):
                new = bytearray(size)
                new[:have] = self._view[self._start:self._end]
                self._view.release()
                self._buf, self._view = new, memoryview(new)
            else:
                # Same size assignment: allowed while self._view is exported.
                self._buf[:have] = self._buf[self._start:self._end]
            self._start, self._end = 0, have
        while self._end - self._start < need:
            n = os.readv(self.fd, [self._view[self._end:]])
            if n == 0:
                if self._end == self._start:
                    return False
                raise IpcError("frame cut short")
            self._end += n
        return True

    def buffered(self) -> bool:
        """Whether a whole frame (or a header announcing one too large) is buffered already,
        so that read() returns without reading from the fd."""
        have = self._end - self._start
        if have < HEADER_SIZE:
            return False
        n, opcode = HEADER.unpack_from(self._view, self._start)
        if self._limits is not None and n > self._limits.get(opcode, -1):
            return True
        return n > MAX_FRAME or have - HEADER_SIZE >= n

    def read(self) -> tuple[int, Value] | None:
        """The next (opcode, value), or None on EOF at a frame boundary."""
        if self._end == self._start:
            self._start = self._end = 0   # reuse the buffer from its start
        if not self._fill(HEADER_SIZE):
            return None
        n, opcode = HEADER.unpack_from(self._view, self._start)
        if n > MAX_FRAME:
            raise IpcError("frame too large")
        if self._limits is not None and n > self._limits.get(opcode, -1):
            raise IpcError(f"frame of {n} bytes over the limit of opcode {opcode}")
        self._fill(HEADER_SIZE + n)
        body_start = self._start + HEADER_SIZE
        self._start = body_start + n
        return opcode, decode_body(self._view[body_start:body_start + n])

