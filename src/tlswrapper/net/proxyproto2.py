"""PROXY protocol version 2 (HAProxy's binary header): check it, parse it, build it.

    12 bytes  signature \\r\\n\\r\\n\\0\\r\\nQUIT\\n
     1 byte   version (high nibble, 2) and command (low: 0 LOCAL, 1 PROXY)
     1 byte   address family (high: 0 UNSPEC, 1 INET, 2 INET6, 3 UNIX) and transport
              (low: 0 UNSPEC, 1 STREAM, 2 DGRAM)
     2 bytes  length of what follows (network order): the addresses, then TLVs
              (type 1 byte, length 2 bytes, value)

Rule: everything here is checked before it is used, and the 16 fixed bytes are judged before
one byte of the announced body is read, so a bad header costs at most 16 bytes and the body
is read only when it can be valid. The body is bounded by its 16-bit length (65535 bytes);
the addresses must fit in it, every TLV must end within it (none may cross its end), a
CRC32C TLV must hold the header's checksum, and the other TLVs are skipped (section 2.2:
"the receiver must ignore unknown TLVs"); a LOCAL header's body is skipped whole. Only TCP
is meaningful in front of TLS: a PROXY command with a datagram transport or an unknown
family is refused; UNSPEC and AF_UNIX (a client the proxy cannot name by an IP address)
give an UNKNOWN header.
"""

from __future__ import annotations

import socket

from tlswrapper.net.proxyproto import ProxyError, ProxyHeader, endpoints

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
FIXED = 16                       # signature, version/command, family/transport, length
VERSION = 0x2
LOCAL, PROXY = 0x0, 0x1
# family/transport byte -> (our family name, bytes of addresses). AF_UNIX addresses (two
# 108-byte paths) are skipped: prog is told the client's address is unknown.
FAMILIES = {
    0x00: ("UNKNOWN", 0),        # UNSPEC
    0x11: ("TCP4", 12),          # INET, STREAM: src, dst (4 each), src port, dst port
    0x21: ("TCP6", 36),          # INET6, STREAM: src, dst (16 each), ports
    0x31: ("UNKNOWN", 216),      # UNIX, STREAM
}
PP2_TYPE_CRC32C = 0x03             # section 2.2.5 (0x04 is PP2_TYPE_NOOP)
TLV_HEADER = 3
_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"


def check_prefix(data: bytes) -> None:
    """Refuse early what can never become a valid v2 header (raises ProxyError); `data` is
    the start of the connection, however short."""
    n = min(len(data), len(SIGNATURE))
    if data[:n] != SIGNATURE[:n]:
        raise ProxyError("no PROXY v2 signature")


def body_length(fixed: bytes) -> int:
    """Judge the 16 fixed bytes; returns the length of the body to read after them."""
    check_prefix(fixed)
    version, command = fixed[12] >> 4, fixed[12] & 0x0F
    if version != VERSION:
        raise ProxyError(f"version {version} in a v2 header")
    if command not in (LOCAL, PROXY):
        raise ProxyError(f"unknown command {command}")
    length = int.from_bytes(fixed[14:16], "big")
    if command == PROXY:
        # LOCAL: the family is discarded (section 2.2), only the length counts.
        family = FAMILIES.get(fixed[13])
        if family is None:
            raise ProxyError(f"unsupported address family/transport 0x{fixed[13]:02x}")
        if length < family[1]:
            raise ProxyError(f"length {length} too short for the addresses")
    return length


def _ip(raw: bytes) -> str:
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw)
    if raw.startswith(_MAPPED_PREFIX):
        # As for a socket address: tcpserver shows an IPv4-mapped client as plain IPv4.
        return socket.inet_ntop(socket.AF_INET, raw[12:])
    return socket.inet_ntop(socket.AF_INET6, raw)


def parse(header: bytes) -> ProxyHeader:
    """Parse one complete v2 header (16 fixed bytes and exactly the announced body)."""
    if len(header) < FIXED:
        raise ProxyError("v2 header shorter than 16 bytes")
    length = body_length(header[:FIXED])
    if len(header) != FIXED + length:
        raise ProxyError("v2 header length does not match")
    if header[12] & 0x0F == LOCAL:
        # Section 2.2: "discard the protocol block including the family" (so where TLVs
        # would start is unknown too): the whole body is skipped.
        return ProxyHeader("LOCAL")
    name, size = FAMILIES[header[13]]
    _check_tlvs(header, FIXED + size)
    if name not in ("TCP4", "TCP6"):
        return ProxyHeader(name)
    half = (size - 4) // 2
    addrs = header[FIXED:FIXED + size]
    return ProxyHeader(name, _ip(addrs[:half]), _ip(addrs[half:2 * half]),
                       int.from_bytes(addrs[2 * half:2 * half + 2], "big"),
                       int.from_bytes(addrs[2 * half + 2:], "big"))


def _check_tlvs(header: bytes, start: int) -> None:
    """Walk the TLVs from `start` to the end of the header: each must end within it."""
    at = start
    end = len(header)
    while at < end:
        if end - at < TLV_HEADER:
            raise ProxyError("truncated TLV")
        kind = header[at]
        size = int.from_bytes(header[at + 1:at + 3], "big")
        if size > end - at - TLV_HEADER:
            raise ProxyError(f"TLV 0x{kind:02x} runs past the header")
        value_at = at + TLV_HEADER
        if kind == PP2_TYPE_CRC32C:
            # Section 2.2.5: the checksum of the whole header with this value zeroed.
            if size != 4:
                raise ProxyError("CRC32C TLV of a wrong size")
            zeroed = header[:value_at] + b"\x00" * 4 + header[value_at + 4:]
            if crc32c(zeroed) != int.from_bytes(header[value_at:value_at + 4], "big"):
                raise ProxyError("CRC32C mismatch")
        at = value_at + size


_CRC32C_TABLE: list[int] = []


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as section 2.2.5 names it. Not
    zlib's CRC-32 (another polynomial); neither the standard library nor cryptography has it."""
    table = _CRC32C_TABLE
    if not table:
        for n in range(256):
            c = n
            for _ in range(8):
                c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
            table.append(c)
    crc = 0xFFFFFFFF
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def build(source: tuple[str, int] | None, dest: tuple[str, int] | None) -> bytes:
    """The v2 header (command PROXY) for a connection from `source` to `dest` (ip, port).
    UNSPEC with no addresses when an address is missing, does not parse, or the two are of
    different families (section 2.2: "the sender should use this family ... when dealing with
    unsupported protocol families")."""
    pair = endpoints(source, dest)
    if pair is None:
        return SIGNATURE + bytes([VERSION << 4 | PROXY, 0x00]) + b"\x00\x00"
    (sa, sp), (da, dp) = pair
    family = 0x11 if sa.version == 4 else 0x21
    body = sa.packed + da.packed + sp.to_bytes(2, "big") + dp.to_bytes(2, "big")
    return SIGNATURE + bytes([VERSION << 4 | PROXY, family]) + len(body).to_bytes(2, "big") \
        + body
