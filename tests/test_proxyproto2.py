"""PROXY protocol v2 (src/tlswrapper/net/proxyproto2.py) and the reader's version choice (-p 0, 1,
2 in proxyproto.ProxyReader), without processes. Headers are written by hand from HAProxy's
specification (proxy-protocol.txt, section 2.2), not with our builder."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tlswrapper.net.proxyproto import ProxyError, ProxyHeader, ProxyReader
from tlswrapper.net.proxyproto2 import build, crc32c, parse

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
UNKNOWN_ENV = {"TCPREMOTEIP": "::", "TCPREMOTEPORT": "0", "TCPLOCALIP": "::",
               "TCPLOCALPORT": "0"}


def v2(command: int, family: int, body: bytes, version: int = 2) -> bytes:
    return SIG + bytes([version << 4 | command, family]) + len(body).to_bytes(2, "big") + body


def inet(src: str, dst: str, sport: int, dport: int) -> bytes:
    fam = socket.AF_INET6 if ":" in src else socket.AF_INET
    return (socket.inet_pton(fam, src) + socket.inet_pton(fam, dst)
            + sport.to_bytes(2, "big") + dport.to_bytes(2, "big"))


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + len(value).to_bytes(2, "big") + value


def with_crc(header_without_crc: bytes) -> bytes:
    """Append a CRC32C TLV (section 2.2.5) and fix the length and the checksum."""
    body = header_without_crc[16:] + tlv(0x03, b"\x00" * 4)
    zeroed = header_without_crc[:14] + len(body).to_bytes(2, "big") + body
    return zeroed[:-4] + crc32c(zeroed).to_bytes(4, "big")


TCP4 = v2(1, 0x11, inet("192.0.2.7", "198.51.100.9", 40001, 443))
GOOD = {
    "TCP4": (TCP4, ProxyHeader("TCP4", "192.0.2.7", "198.51.100.9", 40001, 443)),
    "TCP6": (v2(1, 0x21, inet("2001:db8::7", "2001:db8::9", 1, 65535)),
             ProxyHeader("TCP6", "2001:db8::7", "2001:db8::9", 1, 65535)),
    "TCP6 IPv4-mapped": (v2(1, 0x21, inet("::ffff:192.0.2.7", "::ffff:1.2.3.4", 5, 6)),
                         ProxyHeader("TCP6", "192.0.2.7", "1.2.3.4", 5, 6)),
    "TLVs skipped": (v2(1, 0x11, inet("192.0.2.7", "198.51.100.9", 1, 2) + tlv(0x01, b"h2")
                        + tlv(0x02, b"example.com") + tlv(0xEA, b"\x01vpce-0123")
                        + tlv(0x20, b"\x07" + b"\x00" * 4 + tlv(0x21, b"TLSv1.3"))
                        + tlv(0xFF, b"") + tlv(0x04, b"\x00" * 9) + tlv(0x05, b"x" * 300)),
                     ProxyHeader("TCP4", "192.0.2.7", "198.51.100.9", 1, 2)),
    "CRC32C right": (with_crc(TCP4), ProxyHeader("TCP4", "192.0.2.7", "198.51.100.9",
                                                 40001, 443)),
    "UNSPEC": (v2(1, 0x00, b""), ProxyHeader("UNKNOWN")),
    "UNSPEC with TLV": (v2(1, 0x00, tlv(0x04, b"\x00" * 4)), ProxyHeader("UNKNOWN")),   # NOOP
    "AF_UNIX stream": (v2(1, 0x31, b"/run/client".ljust(108, b"\x00") * 2), ProxyHeader("UNKNOWN")),
    # LOCAL: the family and the addresses are ignored (section 2.2), whatever they are.
    "LOCAL": (v2(0, 0x00, b""), ProxyHeader("LOCAL")),
    "LOCAL with addresses": (v2(0, 0x11, inet("192.0.2.7", "198.51.100.9", 1, 2)),
                             ProxyHeader("LOCAL")),
    "LOCAL odd family": (v2(0, 0x77, b"\x01\x02"), ProxyHeader("LOCAL")),
    "LOCAL body not TLVs": (v2(0, 0x00, b"\x01\xff\xff"), ProxyHeader("LOCAL")),
}

BAD = {
    "version 1": v2(1, 0x11, inet("1.2.3.4", "5.6.7.8", 1, 2), version=1),
    "version 3": v2(1, 0x11, inet("1.2.3.4", "5.6.7.8", 1, 2), version=3),
    "command 2": v2(2, 0x11, inet("1.2.3.4", "5.6.7.8", 1, 2)),
    "command 15": v2(15, 0x00, b""),
    "UDP4": v2(1, 0x12, inet("1.2.3.4", "5.6.7.8", 1, 2)),
    "UDP6": v2(1, 0x22, inet("::1", "::2", 1, 2)),
    "unix dgram": v2(1, 0x32, bytes(216)),
    "INET without transport": v2(1, 0x10, inet("1.2.3.4", "5.6.7.8", 1, 2)),
    "family 4": v2(1, 0x41, bytes(12)),
    "TCP4 short": v2(1, 0x11, bytes(11)),
    "TCP6 with TCP4 length": v2(1, 0x21, inet("1.2.3.4", "5.6.7.8", 1, 2)),
    "TLV truncated header": v2(1, 0x11, inet("1.2.3.4", "5.6.7.8", 1, 2) + b"\x01\x00"),
    "TLV past the end": v2(1, 0x11, inet("1.2.3.4", "5.6.7.8", 1, 2) + b"\x01\x00\x05abcd"),
    "TLV past the end, UNSPEC": v2(1, 0x00, b"\x01\xff\xff"),
    "CRC32C wrong": with_crc(TCP4)[:-1] + bytes([with_crc(TCP4)[-1] ^ 1]),
    "CRC32C size": v2(1, 0x11, inet("1.2.3.4", "5.6.7.8", 1, 2) + tlv(0x03, b"\x00" * 3)),
    "signature typo": SIG[:5] + b"\x01" + SIG[6:] + TCP4[12:],
}


def feed_in_pieces(reader: ProxyReader, data: bytes, piece: int) -> ProxyHeader | None:
    for i in range(0, len(data), piece):
        result = reader.feed(data[i:i + piece])
        if result is not None:
            return result
    return None


@pytest.mark.parametrize("name", sorted(GOOD))
def test_parse_good(name: str) -> None:
    header, expected = GOOD[name]
    assert parse(header) == expected
    for version in (2, 0):
        reader = ProxyReader(version)
        assert reader.feed(header + b"\x16\x03\x01rest") == expected
        assert reader.rest == b"\x16\x03\x01rest"


@pytest.mark.parametrize("name", sorted(BAD))
def test_parse_bad(name: str) -> None:
    header = BAD[name]
    with pytest.raises(ProxyError):
        parse(header)
    for version in (2, 0):
        with pytest.raises(ProxyError):
            feed_in_pieces(ProxyReader(version), header + b"\x16\x03\x01", 1)


def test_environment_proxy_unknown_and_local() -> None:
    assert GOOD["TCP6"][1].environment() == {
        "TCPREMOTEIP": "2001:db8::7", "TCPREMOTEPORT": "1", "TCPLOCALIP": "2001:db8::9",
        "TCPLOCALPORT": "65535"}
    # A client the proxy could not name: as the C version's v1 UNKNOWN, never the proxy's.
    assert ProxyHeader("UNKNOWN").environment() == UNKNOWN_ENV
    # The proxy's own connection (a health check): the socket's addresses stay.
    assert ProxyHeader("LOCAL").environment() == {}


def test_reader_never_asks_past_the_header() -> None:
    """wanted() gives the exact bytes left once the 16 fixed bytes are in: a reader that
    reads only what it is asked for never takes a byte of what follows."""
    header = GOOD["TLVs skipped"][0]
    data = header + b"\x16\x03\x01 the ClientHello"
    for version in (2, 0):
        reader = ProxyReader(version)
        pos = 0
        result = None
        while result is None:
            want = reader.wanted()
            assert 0 < want <= len(header) - pos
            result = reader.feed(data[pos:pos + want])
            pos += want
        assert pos == len(header) and reader.rest == b""


def test_bad_fixed_part_refused_before_the_body() -> None:
    """A version/command/family error is found in the first 16 bytes: the announced body
    (here 65535 bytes) is never waited for."""
    reader = ProxyReader(2)
    with pytest.raises(ProxyError, match="command 2"):
        reader.feed(SIG + b"\x22\x11\xff\xff")
    reader = ProxyReader(2)
    assert reader.feed(SIG + b"\x21\x11\xff\xff") is None
    assert reader.wanted() == 65535


def test_longest_body_accepted() -> None:
    header = v2(1, 0x11, inet("1.2.3.4", "5.6.7.8", 1, 2) + tlv(0x05, b"x" * (65535 - 15)))
    assert len(header) == 16 + 65535
    assert feed_in_pieces(ProxyReader(2), header, 4096) == ProxyHeader("TCP4", "1.2.3.4",
                                                                      "5.6.7.8", 1, 2)


@pytest.mark.parametrize("first", [b"\x16\x03\x01", b"GET /", b"\r\n\r\nX"])
def test_either_version_refuses_what_is_neither(first: bytes) -> None:
    with pytest.raises(ProxyError, match="signature"):
        feed_in_pieces(ProxyReader(0), first, 1)


def test_each_version_refuses_the_other() -> None:
    with pytest.raises(ProxyError):
        ProxyReader(2).feed(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n")
    with pytest.raises(ProxyError):
        ProxyReader(1).feed(TCP4)
    assert ProxyReader(0).feed(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n") == \
        ProxyHeader("TCP4", "1.2.3.4", "5.6.7.8", 1, 2)


def test_crc32c_check_value() -> None:
    # The CRC-32C (Castagnoli) check value of "123456789" (RFC 3720, B.4).
    assert crc32c(b"123456789") == 0xE3069283


def test_build() -> None:
    assert build(("192.0.2.7", 40001), ("198.51.100.9", 443)) == TCP4
    assert build(("::ffff:192.0.2.7", 40001), ("198.51.100.9", 443)) == TCP4
    assert build(("2001:db8::7", 1), ("2001:db8::9", 65535)) == GOOD["TCP6"][0]
    unspec = SIG + b"\x21\x00\x00\x00"
    assert build(None, ("::1", 2)) == unspec
    assert build(("1.2.3.4", 1), ("::1", 2)) == unspec
    assert build(("x", 1), ("::1", 2)) == unspec
    assert build(("1.2.3.4", 70000), ("5.6.7.8", 2)) == unspec


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.tuples(st.ip_addresses(v=4), st.ip_addresses(v=4)),
                 st.tuples(st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None),
                           st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None))),
       st.integers(0, 65535), st.integers(0, 65535), st.integers(1, 20))
def test_build_parse_roundtrip(ips, sport: int, dport: int, piece: int) -> None:
    header = build((str(ips[0]), sport), (str(ips[1]), dport))
    result = feed_in_pieces(ProxyReader(0), header, piece)
    assert result is not None
    assert (result.source_ip, result.dest_ip, result.source_port, result.dest_port) == \
        (str(ips[0]), str(ips[1]), sport, dport)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=120), st.integers(1, 40), st.sampled_from([0, 2]))
def test_random_bytes_after_the_signature_never_crash(data: bytes, piece: int,
                                                      version: int) -> None:
    reader = ProxyReader(version)
    try:
        result = feed_in_pieces(reader, SIG + data, piece)
    except ProxyError:
        return
    if result is not None:
        assert isinstance(result, ProxyHeader)
        length = int.from_bytes(data[2:4], "big")
        assert len(SIG + data) - len(reader.rest) == 16 + length


# A header haproxy 2.6 wrote (send-proxy-v2 proxy-v2-options crc32c,unique-id), captured
# by tests/test_e2e_haproxy.py's raw server: CRC32C TLV (type 3), then the unique id (type 5).
HAPROXY_26 = bytes.fromhex(
    "0d0a0d0a000d0a515549540a211100447f0000017f000001c6b4978103000440"
    "24e74b05002e37463030303030313a433642345f37463030303030313a393738"
    "315f36423132463833415f303030303a30334430")


def test_haproxy_header_with_crc32c_and_unique_id() -> None:
    assert parse(HAPROXY_26) == ProxyHeader("TCP4", "127.0.0.1", "127.0.0.1", 50868, 38785)
    at = HAPROXY_26.index(b"\x03\x00\x04") + 3
    for bit in (0x01, 0x80):
        broken = HAPROXY_26[:at] + bytes([HAPROXY_26[at] ^ bit]) + HAPROXY_26[at + 1:]
        with pytest.raises(ProxyError, match="CRC32C mismatch"):
            parse(broken)
    # Any other byte changed (here the source port) breaks the checksum too.
    with pytest.raises(ProxyError, match="CRC32C mismatch"):
        parse(HAPROXY_26[:24] + b"\x00\x01" + HAPROXY_26[26:])
