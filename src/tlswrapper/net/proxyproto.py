"""The PROXY protocol (HAProxy's): the header a load balancer puts before the client's bytes.
Version 1 (text) is parsed and built here, version 2 (binary) in proxyproto2.py; the
ProxyReader here reads either, or both on one port (`-p 0`).

    PROXY TCP4 <src ip> <dst ip> <src port> <dst port>\\r\\n
    PROXY TCP6 <src ip> <dst ip> <src port> <dst port>\\r\\n
    PROXY UNKNOWN[ anything]\\r\\n

Rule: the header comes from the network before anything else is checked, so the parser is
strict and bounded. A v1 line is at most 116 bytes including the CRLF: the longest legal
header (TCP6 with both addresses written with a dotted IPv4 tail, 45 characters each; the
specification's 107 counts 39-character addresses only); single spaces; the addresses must
parse (with the ipaddress module) as the family named; ports are 0-65535 in plain decimal
(no sign, no leading zero); only printable ASCII. A header is refused as soon as its prefix
can no longer become a valid one (a TLS ClientHello sent without a header fails at its first
byte). The reader never asks for more bytes than the header can still need (wanted()); what
follows a v1 line in the same read (the start of the TLS ClientHello) is handed back as
`rest`, and a v2 header, whose length is known from its first 16 bytes, is read exactly.
"""

from __future__ import annotations

from tlswrapper.tls.frozen import Frozen, init

# ipaddress is imported when a ProxyReader is made or a header built, not with this module:
# the relay imports it for every connection, -p or not. A reader is made before the jail
# (nothing can be loaded after it), and the import is a dictionary look-up from then on.

# The longest legal v1 line, "PROXY" to CRLF inclusive: "PROXY TCP6 " + 2 x 45 characters
# (ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255) + " 65535 65535" + CRLF. The C version
# takes such a line too.
MAX_LINE = 116
SIGNATURE = b"PROXY "
# The values the C version gives prog for a connection whose addresses the proxy did not
# send (v1 UNKNOWN, v2 UNSPEC or AF_UNIX): never the socket's, which are the proxy's own, so
# that a prog that trusts its local network (an SMTP relay rule for 127.0.0.1, say) cannot
# take a stranger behind the proxy for the proxy.
UNKNOWN_IP = "::"
UNKNOWN_PORT = "0"
# The characters an address may have, and its length range (no re: its import costs a new
# interpreter a few ms). The ipaddress module then judges the address itself.
_DIGITS = b"0123456789"
_IPV4_CHARS = _DIGITS + b"."
_IPV6_CHARS = _DIGITS + b"ABCDEFabcdef:."


def _only(field: bytes, chars: bytes, shortest: int, longest: int) -> bool:
    return shortest <= len(field) <= longest and not field.translate(None, chars)


class ProxyError(ValueError):
    """The header is malformed; the message is one line for the log (no client bytes raw)."""


class ProxyHeader(Frozen):
    """A parsed header. For UNKNOWN and LOCAL every address field is None."""

    __slots__ = ("family", "source_ip", "dest_ip", "source_port", "dest_port")
    # "TCP4", "TCP6"; "UNKNOWN" (v1 UNKNOWN; v2 PROXY over UNSPEC or AF_UNIX: a client whose
    # address was not sent); "LOCAL" (v2 LOCAL: the proxy's own connection, a health check)
    family: str
    source_ip: str | None                # the client
    dest_ip: str | None                  # the address the client connected to
    source_port: int | None
    dest_port: int | None

    def __init__(self, family: str, source_ip: str | None = None, dest_ip: str | None = None,
                 source_port: int | None = None, dest_port: int | None = None) -> None:
        init(self, "family", family)
        init(self, "source_ip", source_ip)
        init(self, "dest_ip", dest_ip)
        init(self, "source_port", source_port)
        init(self, "dest_port", dest_port)

    def environment(self) -> dict[str, str]:
        """TCPREMOTEIP/TCPREMOTEPORT/TCPLOCALIP/TCPLOCALPORT as tcpserver would set them for
        the proxied connection. UNKNOWN: `::` and `0`, as the C version sets them (see
        UNKNOWN_IP). LOCAL: empty, the socket's stay: the connection is the proxy's own
        (PROXY protocol v2, section 2.2: "use the real connection endpoints")."""
        if self.family == "LOCAL":
            return {}
        if self.family == "UNKNOWN":
            return {"TCPREMOTEIP": UNKNOWN_IP, "TCPREMOTEPORT": UNKNOWN_PORT,
                    "TCPLOCALIP": UNKNOWN_IP, "TCPLOCALPORT": UNKNOWN_PORT}
        return {"TCPREMOTEIP": str(self.source_ip), "TCPREMOTEPORT": str(self.source_port),
                "TCPLOCALIP": str(self.dest_ip), "TCPLOCALPORT": str(self.dest_port)}


def _address(field: bytes, family: str, what: str) -> str:
    import ipaddress
    if family == "TCP4":
        ok = _only(field, _IPV4_CHARS, 7, 15)
        cls: type = ipaddress.IPv4Address
    else:
        # Character check first: ipaddress also takes "fe80::1%eth0" (a scope id).
        ok = _only(field, _IPV6_CHARS, 2, 45)
        cls = ipaddress.IPv6Address
    try:
        if not ok:
            raise ValueError
        addr = cls(field.decode("ascii"))
    except ValueError:
        raise ProxyError(f"bad {what} address for {family}") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        # As for a socket address: tcpserver shows an IPv4-mapped client as plain IPv4.
        return str(addr.ipv4_mapped)
    return str(addr)


def _port(field: bytes, what: str) -> int:
    # 0 or 1-5 digits without a leading zero (no sign, no space: bytes.isdigit is ASCII-only).
    plain = _only(field, _DIGITS, 1, 5) and (field == b"0" or field[:1] != b"0")
    if not plain or int(field) > 65535:
        raise ProxyError(f"bad {what} port")
    return int(field)


def parse_line(line: bytes) -> ProxyHeader:
    """Parse one complete header line, CRLF included. Raises ProxyError."""
    if len(line) > MAX_LINE:
        raise ProxyError(f"header longer than {MAX_LINE} bytes")
    if not line.endswith(b"\r\n"):
        raise ProxyError("header does not end with CRLF")
    body = line[:-2]
    _check_prefix(body)
    if b"\r" in body or b"\n" in body:
        raise ProxyError("CR or LF inside the header")
    fields = body.split(b" ")
    if fields[0] != b"PROXY" or len(fields) < 2:
        raise ProxyError("no PROXY signature")
    family = fields[1]
    if family == b"UNKNOWN":
        # The protocol says: ignore whatever follows UNKNOWN up to the CRLF.
        return ProxyHeader("UNKNOWN")
    if family not in (b"TCP4", b"TCP6"):
        raise ProxyError("unknown protocol family")
    if len(fields) != 6:
        raise ProxyError(f"{len(fields)} fields instead of 6 (single spaces only)")
    name = family.decode()
    src = _address(fields[2], name, "source")
    dst = _address(fields[3], name, "destination")
    return ProxyHeader(name, src, dst, _port(fields[4], "source"),
                       _port(fields[5], "destination"))


def _check_prefix(data: bytes) -> None:
    """Refuse early what can never become a valid header (raises ProxyError)."""
    n = min(len(data), len(SIGNATURE))
    if data[:n] != SIGNATURE[:n]:
        raise ProxyError("no PROXY signature")
    for b in data:
        if not 0x20 <= b < 0x7F and b not in (0x0D, 0x0A):
            raise ProxyError("non-printable byte in the header")


class ProxyReader:
    """Feed it the first bytes of the connection as they arrive.

    `version` is 1 (text), 2 (binary) or 0 (either: the first byte tells, `P` or CR; neither
    can start the other, nor a TLS record). feed() returns None while the header is
    incomplete, the ProxyHeader once it is complete, and raises ProxyError for a malformed or
    over-long one. wanted() is the most bytes to read next: a v2 header is then read exactly,
    and never more than a v1 line can still hold. After the header, `rest` holds the bytes
    that followed it in the same reads; they belong to whatever comes next (the handshake)."""

    def __init__(self, version: int = 1) -> None:
        import ipaddress  # noqa: F401  (now, before the jail: parse_line needs it)
        if version != 1:
            from tlswrapper.net import proxyproto2  # noqa: F401  (idem)
        self.accepts = version
        self.version = version if version else None   # None until the first byte tells
        self._buf = bytearray()
        self._need = 0               # v2: the whole header's length, once the 16 bytes are in
        self.header: ProxyHeader | None = None
        self.rest = b""

    @property
    def started(self) -> bool:
        """True once any byte has been fed (to tell a silent close from a cut header)."""
        return bool(self._buf) or self.header is not None

    def wanted(self) -> int:
        if self.version == 2:
            from tlswrapper.net import proxyproto2
            return (self._need or proxyproto2.FIXED) - len(self._buf)
        if self.version is None:
            return 16      # both headers are longer: "PROXY UNKNOWN\r\n" and the v2 fixed part
        return max(1, MAX_LINE - len(self._buf))

    def feed(self, data: bytes) -> ProxyHeader | None:
        if self.header is not None:
            raise ProxyError("header already complete")
        if self.version is None and data:
            self.version = 2 if data[:1] == b"\r" else 1
        if self.version == 2:
            header = self._feed_v2(data)
        else:
            header = self._feed_v1(data)
        if header is not None:
            self._buf.clear()
            self.header = header
        return header

    def _feed_v2(self, data: bytes) -> ProxyHeader | None:
        from tlswrapper.net import proxyproto2
        self._buf += data
        if not self._need:
            proxyproto2.check_prefix(bytes(self._buf[:proxyproto2.FIXED]))
            if len(self._buf) < proxyproto2.FIXED:
                return None
            fixed = bytes(self._buf[:proxyproto2.FIXED])
            self._need = proxyproto2.FIXED + proxyproto2.body_length(fixed)
        if len(self._buf) < self._need:
            return None
        header = proxyproto2.parse(bytes(self._buf[:self._need]))
        self.rest = bytes(self._buf[self._need:])
        return header

    def _feed_v1(self, data: bytes) -> ProxyHeader | None:
        start = max(0, len(self._buf) - 1)     # a CR may end the previous piece
        self._buf += data
        end = self._buf.find(b"\r\n", start)
        if end < 0:
            head = bytes(self._buf[:MAX_LINE])
            _check_prefix(head)
            # A lone CR or LF before the end can never become a valid line.
            cr = head.find(b"\r")
            if head.find(b"\n") >= 0 or 0 <= cr < len(head) - 1:
                raise ProxyError("CR or LF inside the header")
            if len(self._buf) >= MAX_LINE:
                raise ProxyError(f"no CRLF within {MAX_LINE} bytes")
            return None
        line = bytes(self._buf[:end + 2])
        if len(line) > MAX_LINE:
            raise ProxyError(f"no CRLF within {MAX_LINE} bytes")
        header = parse_line(line)
        self.rest = bytes(self._buf[end + 2:])
        return header


def endpoints(source: tuple[str, int] | None, dest: tuple[str, int] | None):
    """((source address, port), (dest address, port)) as ipaddress objects for an outgoing
    header of either version: scope ids dropped, IPv4-mapped addresses as IPv4. None when an
    address is missing, does not parse, or the two are of different families (the header then
    says UNKNOWN, or UNSPEC in version 2)."""
    if source is None or dest is None:
        return None
    import ipaddress
    try:
        addrs = []
        for ip, port in (source, dest):
            addr = ipaddress.ip_address(str(ip).split("%", 1)[0])
            if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
                addr = addr.ipv4_mapped
            if not 0 <= int(port) <= 65535:
                raise ValueError
            addrs.append((addr, int(port)))
    except (ValueError, TypeError):
        return None
    if addrs[0][0].version != addrs[1][0].version:
        return None
    return addrs[0], addrs[1]


def build(source: tuple[str, int] | None, dest: tuple[str, int] | None) -> bytes:
    """The header line for a connection from `source` to `dest` (ip, port). UNKNOWN when an
    address is missing, does not parse, or the two are of different families."""
    pair = endpoints(source, dest)
    if pair is None:
        return b"PROXY UNKNOWN\r\n"
    (sa, sp), (da, dp) = pair
    family = "TCP4" if sa.version == 4 else "TCP6"
    return f"PROXY {family} {sa} {da} {sp} {dp}\r\n".encode("ascii")
