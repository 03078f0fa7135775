"""PROXY protocol v1 parser and builder (src/tlswrapper/net/proxyproto.py), without processes.
(Version 2 and the reader's -p 0: tests/test_proxyproto2.py.)"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tlswrapper.net.proxyproto import MAX_LINE, ProxyError, ProxyHeader, ProxyReader, build, parse_line

GOOD = [
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n",
     ProxyHeader("TCP4", "1.2.3.4", "5.6.7.8", 1111, 2222)),
    (b"PROXY TCP4 255.255.255.255 0.0.0.0 65535 0\r\n",
     ProxyHeader("TCP4", "255.255.255.255", "0.0.0.0", 65535, 0)),
    (b"PROXY TCP6 ::1 2001:db8::2 1111 2222\r\n",
     ProxyHeader("TCP6", "::1", "2001:db8::2", 1111, 2222)),
    (b"PROXY TCP6 2001:DB8:0:0:0:0:0:1 fe80::1 1 65535\r\n",
     ProxyHeader("TCP6", "2001:db8::1", "fe80::1", 1, 65535)),
    # IPv4-mapped shown as plain IPv4, as tcpserver shows such a socket address.
    (b"PROXY TCP6 ::ffff:1.2.3.4 ::ffff:5.6.7.8 1 2\r\n",
     ProxyHeader("TCP6", "1.2.3.4", "5.6.7.8", 1, 2)),
    (b"PROXY UNKNOWN\r\n", ProxyHeader("UNKNOWN")),
    (b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n", ProxyHeader("UNKNOWN")),
]

# The specification's worst case, 107 bytes: UNKNOWN with 39-character TCP6 fields after it
# (the TCP6 line itself is then 104). The longest legal line is 116: TCP6 with both addresses
# written with a dotted IPv4 tail (45 characters), which the C version takes too.
LONGEST_UNKNOWN = (b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                   b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n")
LONGEST_TCP6 = (b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n")
LONGEST = (b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255 "
           b"ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255 65535 65535\r\n")

BAD = {
    "double space": b"PROXY TCP4 1.2.3.4  5.6.7.8 1111 2222\r\n",
    "trailing space": b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222 \r\n",
    "tab": b"PROXY TCP4 1.2.3.4\t5.6.7.8 1111 2222\r\n",
    "LF only": b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\n",
    "CR only": b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\rX",
    "lower case": b"proxy TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n",
    "no signature": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    "family": b"PROXY TCP5 1.2.3.4 5.6.7.8 1111 2222\r\n",
    "UDP4": b"PROXY UDP4 1.2.3.4 5.6.7.8 1111 2222\r\n",
    "v6 in TCP4": b"PROXY TCP4 ::1 5.6.7.8 1111 2222\r\n",
    "v4 in TCP6": b"PROXY TCP6 1.2.3.4 ::1 1111 2222\r\n",
    "leading zero octet": b"PROXY TCP4 01.2.3.4 5.6.7.8 1111 2222\r\n",
    "short v4": b"PROXY TCP4 1.2.3 5.6.7.8 1111 2222\r\n",
    "octet 256": b"PROXY TCP4 1.2.3.256 5.6.7.8 1111 2222\r\n",
    "host name": b"PROXY TCP4 localhost 5.6.7.8 1111 2222\r\n",
    "scope id": b"PROXY TCP6 fe80::1%eth0 ::1 1111 2222\r\n",
    "bad v6": b"PROXY TCP6 1::2::3 ::1 1111 2222\r\n",
    "port 65536": b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 65536\r\n",
    "port leading zero": b"PROXY TCP4 1.2.3.4 5.6.7.8 01111 2222\r\n",
    "port plus": b"PROXY TCP4 1.2.3.4 5.6.7.8 +1111 2222\r\n",
    "port minus": b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2222\r\n",
    "port hex": b"PROXY TCP4 1.2.3.4 5.6.7.8 0x10 2222\r\n",
    "port empty": b"PROXY TCP4 1.2.3.4 5.6.7.8  2222\r\n",
    "port unicode digit": "PROXY TCP4 1.2.3.4 5.6.7.8 \u0661 2222\r\n".encode(),
    "missing port": b"PROXY TCP4 1.2.3.4 5.6.7.8 1111\r\n",
    "extra field": b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222 3333\r\n",
    "no family": b"PROXY\r\n",
    "empty family": b"PROXY \r\n",
    "UNKNOWN glued": b"PROXY UNKNOWNX\r\n",
    "NUL": b"PROXY TCP4 1.2.3.4\x005.6.7.8 1111 2222\r\n",
    "high byte": b"PROXY UNKNOWN \xff\r\n",
    "v2 signature": b"\r\n\r\n\x00\r\nQUIT\n",
    "over-long": b"PROXY UNKNOWN " + b"x" * 101 + b"\r\n",
}


@pytest.mark.parametrize("line,expected", GOOD)
def test_parse_good(line: bytes, expected: ProxyHeader) -> None:
    assert parse_line(line) == expected
    reader = ProxyReader()
    assert reader.feed(line + b"\x16\x03\x01rest") == expected
    assert reader.rest == b"\x16\x03\x01rest"


def test_longest_valid_line_dotted_ipv6_tails() -> None:
    assert len(LONGEST) == MAX_LINE == 116
    full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    assert parse_line(LONGEST) == ProxyHeader("TCP6", full, full, 65535, 65535)
    reader = ProxyReader()
    assert reader.feed(LONGEST) is not None and reader.rest == b""
    assert len(LONGEST_UNKNOWN) == 107
    assert parse_line(LONGEST_UNKNOWN) == ProxyHeader("UNKNOWN")
    assert len(LONGEST_TCP6) == 104
    assert parse_line(LONGEST_TCP6).source_port == 65535


def test_ipv4_mapped_dotted_tail_shown_as_ipv4() -> None:
    line = b"PROXY TCP6 0:0:0:0:0:ffff:192.0.2.7 0000:0000:0000:0000:0000:ffff:1.2.3.4 1 2\r\n"
    assert parse_line(line) == ProxyHeader("TCP6", "192.0.2.7", "1.2.3.4", 1, 2)


def test_one_byte_over_the_longest_refused() -> None:
    line = b"PROXY UNKNOWN " + b"x" * (MAX_LINE + 1 - 16) + b"\r\n"
    assert len(line) == MAX_LINE + 1
    with pytest.raises(ProxyError):
        parse_line(line)
    with pytest.raises(ProxyError):
        ProxyReader().feed(line)


@pytest.mark.parametrize("name", sorted(BAD))
def test_parse_bad(name: str) -> None:
    line = BAD[name]
    with pytest.raises(ProxyError):
        parse_line(line)
    with pytest.raises(ProxyError):
        ProxyReader().feed(line)
    # Byte by byte it fails too (by the CRLF at the latest), never returning a header.
    reader = ProxyReader()
    with pytest.raises(ProxyError):
        for b in line:
            assert reader.feed(bytes([b])) is None
        raise ProxyError("incomplete")


def test_early_refusal() -> None:
    # A ClientHello without a header fails at its first byte, not after 116 bytes.
    with pytest.raises(ProxyError):
        ProxyReader().feed(b"\x16")
    with pytest.raises(ProxyError):
        ProxyReader().feed(b"GET ")
    # An over-long line fails as soon as 116 bytes have come without a CRLF.
    reader = ProxyReader()
    assert reader.feed(b"PROXY UNKNOWN " + b"x" * (MAX_LINE - 15)) is None
    with pytest.raises(ProxyError):
        reader.feed(b"x")


def test_pieces_never_past_crlf() -> None:
    line, expected = GOOD[2]
    after = b"\x16\x03\x01\x00\x05hello"
    data = line + after
    for size in (1, 2, 3, 7, len(line) - 1, len(line), len(line) + 1, len(data)):
        reader = ProxyReader()
        result = None
        pos = 0
        while result is None:
            chunk = data[pos:pos + size]
            pos += size
            result = reader.feed(chunk)
        assert result == expected
        assert reader.rest + data[pos:] == after, size


def test_split_crlf() -> None:
    reader = ProxyReader()
    assert reader.feed(b"PROXY UNKNOWN\r") is None
    assert reader.feed(b"\nX") == ProxyHeader("UNKNOWN")
    assert reader.rest == b"X"


def test_environment() -> None:
    h = parse_line(b"PROXY TCP6 2001:db8::1 ::2 40000 443\r\n")
    assert h.environment() == {"TCPREMOTEIP": "2001:db8::1", "TCPREMOTEPORT": "40000",
                               "TCPLOCALIP": "::2", "TCPLOCALPORT": "443"}
    # As the C version: the proxy's own address must never pass for the client's.
    assert parse_line(b"PROXY UNKNOWN\r\n").environment() == {
        "TCPREMOTEIP": "::", "TCPREMOTEPORT": "0", "TCPLOCALIP": "::", "TCPLOCALPORT": "0"}


def test_build() -> None:
    assert build(("1.2.3.4", 1111), ("5.6.7.8", 2222)) == b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n"
    assert build(("::1", 1), ("2001:db8::2", 2)) == b"PROXY TCP6 ::1 2001:db8::2 1 2\r\n"
    assert build(("::ffff:1.2.3.4", 1), ("5.6.7.8", 2)) == b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"
    assert build(("1.2.3.4", 1), ("::1", 2)) == b"PROXY UNKNOWN\r\n"
    assert build(None, ("::1", 2)) == b"PROXY UNKNOWN\r\n"
    assert build(("x", 1), ("::1", 2)) == b"PROXY UNKNOWN\r\n"
    assert build(("1.2.3.4", 70000), ("5.6.7.8", 2)) == b"PROXY UNKNOWN\r\n"
    assert len(build(("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe",) * 1 + (65535,),
                     ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535))) <= MAX_LINE


addresses_v4 = st.ip_addresses(v=4).map(str)
addresses_v6 = st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None).map(str)
ports = st.integers(0, 65535)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.tuples(addresses_v4, addresses_v4), st.tuples(addresses_v6, addresses_v6)),
       ports, ports, st.integers(1, 20))
def test_build_parse_roundtrip(ips, sport: int, dport: int, piece: int) -> None:
    line = build((ips[0], sport), (ips[1], dport))
    assert len(line) <= MAX_LINE
    reader = ProxyReader()
    result = None
    for i in range(0, len(line), piece):
        assert result is None
        result = reader.feed(line[i:i + piece])
    assert result is not None
    assert (result.source_ip, result.dest_ip, result.source_port, result.dest_port) == \
        (ips[0], ips[1], sport, dport)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200), st.integers(1, 50))
def test_random_bytes_never_crash(data: bytes, piece: int) -> None:
    reader = ProxyReader()
    try:
        for i in range(0, len(data), piece):
            if reader.feed(data[i:i + piece]) is not None:
                break
    except ProxyError:
        return
    if reader.header is not None:
        consumed = len(data[:i + piece]) - len(reader.rest)
        assert data[:consumed].endswith(b"\r\n") and consumed <= MAX_LINE
