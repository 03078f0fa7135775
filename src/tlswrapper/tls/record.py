"""Record framing, size limits and handshake message reassembly (RFC 8446 section 5, RFC 5246
section 6.2). Rule: bounded buffers only; every malformed input raises DecodeError with its
alert."""

from __future__ import annotations

from . import suites
from .wire import DecodeError

RECORD_HEADER = 5
_CONTENT_TYPES = frozenset(
    {suites.CHANGE_CIPHER_SPEC, suites.ALERT, suites.HANDSHAKE, suites.APPLICATION_DATA})
# Compact the input buffer once this much of it has been consumed.
_COMPACT_AT = 1 << 16


def record_header(content_type: int, version: int, length: int) -> bytes:
    return bytes((content_type, version >> 8, version & 0xFF, length >> 8, length & 0xFF))


def plaintext_records(content_type: int, version: int, data: bytes) -> bytes:
    """`data` framed as unprotected records of at most 2^14 bytes each."""
    out = bytearray()
    for i in range(0, len(data), suites.MAX_PLAINTEXT):
        chunk = data[i:i + suites.MAX_PLAINTEXT]
        out += record_header(content_type, version, len(chunk))
        out += chunk
    return bytes(out)


def split_fragments(data: bytes, size: int = suites.MAX_PLAINTEXT) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)] or [b""]


class RecordReader:
    """Splits the client's byte stream into records. `limit` is the largest fragment
    accepted: 2^14 for plaintext, the RFC's ciphertext expansion once protection is on.
    The buffer never holds more than what the caller fed since the last complete record."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self.limit = suites.MAX_PLAINTEXT

    def feed(self, data: bytes) -> None:
        if self._pos >= _COMPACT_AT or (self._pos and self._pos == len(self._buf)):
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += data

    def peek_type(self) -> int | None:
        """Content type of the next record, once its header is complete."""
        if len(self._buf) - self._pos < RECORD_HEADER:
            return None
        return self._buf[self._pos]

    def next_record(self) -> tuple[int, bytes] | None:
        """The next whole record (header included) and its content type, or None when it
        has not fully arrived. Raises DecodeError for a record no peer may send."""
        buf, pos = self._buf, self._pos
        if len(buf) - pos < RECORD_HEADER:
            return None
        content_type = buf[pos]
        if content_type not in _CONTENT_TYPES:
            raise DecodeError(f"record of unknown content type {content_type}",
                              suites.UNEXPECTED_MESSAGE)
        if buf[pos + 1] != 3:
            raise DecodeError("record with a version that is not TLS", suites.PROTOCOL_VERSION)
        length = (buf[pos + 3] << 8) | buf[pos + 4]
        if length > self.limit:
            raise DecodeError(f"record of {length} bytes, over the limit of {self.limit}",
                              suites.RECORD_OVERFLOW)
        end = pos + RECORD_HEADER + length
        if len(buf) < end:
            return None
        record = bytes(buf[pos:end])
        self._pos = end
        return content_type, record


class HandshakeReassembler:
    """Joins handshake message fragments across records and splits several messages in one
    record (RFC 8446 section 5.1). Messages over MAX_HANDSHAKE_MESSAGE (a ClientHello: over
    MAX_CLIENT_HELLO, the most its length fields allow) are refused."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, fragment: bytes) -> None:
        if not fragment:
            # RFC 8446 5.1: zero-length fragments of handshake type MUST NOT be sent.
            raise DecodeError("empty handshake record", suites.UNEXPECTED_MESSAGE)
        self._buf += fragment
        if len(self._buf) >= 4:
            self._check_length(int.from_bytes(self._buf[1:4], "big"))

    def _check_length(self, length: int) -> None:
        # The buffer holds at most one message (each is taken out as soon as it is whole)
        # plus one record's fragment: bounded by the limit of the message's type.
        limit = suites.MAX_CLIENT_HELLO if self._buf[0] == suites.HS_CLIENT_HELLO \
            else suites.MAX_HANDSHAKE_MESSAGE
        if length > limit:
            raise DecodeError(f"handshake message of {length} bytes is too long",
                              suites.DECODE_ERROR)

    def empty(self) -> bool:
        return not self._buf

    def next_message(self) -> tuple[int, bytes, bytes] | None:
        """(msg_type, body, whole message) of the next complete message, or None."""
        buf = self._buf
        if len(buf) < 4:
            return None
        length = int.from_bytes(buf[1:4], "big")
        self._check_length(length)
        if len(buf) < 4 + length:
            return None
        whole = bytes(buf[:4 + length])
        del buf[:4 + length]
        return whole[0], whole[4:], whole
