"""Handshake messages and extensions: one immutable value class each (frozen.Frozen, the cheap
stand-in for a frozen dataclass), with a parse_x/build_x pair.

Rule: parsers are total (a value or a DecodeError carrying the RFC's alert); bodies exclude the
4-byte handshake header; builders raise ValueError only for our own out-of-range values."""

from __future__ import annotations

import struct

from . import suites
from .frozen import Frozen, init
from .wire import DecodeError, Reader, Writer

# Not `from typing import TYPE_CHECKING`: importing typing costs every connection's interpreter
# several ms (tcpserver mode), and the names below serve the type checker only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    T = TypeVar("T")

# Fixed sizes from RFC 8446 section 4.1.2 / RFC 5246 section 7.4.1.2.
RANDOM_LENGTH = 32
MAX_SESSION_ID = 32
# RFC 4492 section 5.4: ECCurveType named_curve; the only form RFC 8422 still allows.
CURVE_TYPE_NAMED_CURVE = 3
# RFC 8446 section 4.6.3: KeyUpdateRequest values.
UPDATE_NOT_REQUESTED = 0
UPDATE_REQUESTED = 1
# RFC 6066 section 3: NameType host_name.
NAME_TYPE_HOST_NAME = 0
# RFC 8446 section 4.2.11: PskBinderEntry<32..255>.
MIN_PSK_BINDER = 32


# --- shared pieces -------------------------------------------------------------------------

def _check_fixed(value: bytes, length: int, what: str) -> None:
    if len(value) != length:
        raise ValueError(f"{what} must be {length} bytes, not {len(value)}")


def _nonempty(value: bytes, what: str) -> bytes:
    if not value:
        raise DecodeError(f"empty {what}")
    return value


def _u16_list(r: Reader, what: str, nonempty: bool = True) -> tuple[int, ...]:
    # A vector of uint16 must have an even byte length (RFC 8446 section 3).
    n = r.remaining()
    if n % 2:
        raise DecodeError(f"odd length in {what}")
    if nonempty and not n:
        raise DecodeError(f"empty {what}")
    # One unpack for the whole vector: a valid ClientHello may list 32 k suites or schemes,
    # which one u16() call each made cost some 40 ms.
    return struct.unpack(f">{n // 2}H", r.raw(n))


def _write_u16_list(w: Writer, values: tuple[int, ...]) -> None:
    for v in values:
        w.u16(v)


class Extension(Frozen):
    __slots__ = ("type", "data")
    type: int
    data: bytes

    def __init__(self, type: int, data: bytes) -> None:
        init(self, "type", type)
        init(self, "data", data)


def find_extension(extensions: tuple[Extension, ...], ext_type: int) -> bytes | None:
    """The data of the extension of that type, or None (blocks hold each type at most once)."""
    for ext in extensions:
        if ext.type == ext_type:
            return ext.data
    return None


def _read_extensions(r: Reader, what: str) -> tuple[Extension, ...]:
    # Bounds-checked by hand over the block's bytes rather than with two Reader calls per
    # extension: a valid ClientHello may carry 16 k of them (half the time).
    block = r.block16().rest()
    end = len(block)
    pos = 0
    seen: set[int] = set()
    out = []
    while pos < end:
        if end - pos < 4:
            raise DecodeError(f"extension header cut short in {what}")
        ext_type = block[pos] << 8 | block[pos + 1]
        length = block[pos + 2] << 8 | block[pos + 3]
        pos += 4
        if end - pos < length:
            raise DecodeError(f"extension of {length} bytes, {end - pos} left in {what}")
        # RFC 8446 section 4.2: at most one extension of each type per block.
        if ext_type in seen:
            raise DecodeError(f"duplicate extension {ext_type} in {what}")
        seen.add(ext_type)
        out.append(Extension(ext_type, block[pos:pos + length]))
        pos += length
    return tuple(out)


def _write_extensions(w: Writer, extensions: tuple[Extension, ...]) -> None:
    with w.block16():
        for ext in extensions:
            w.u16(ext.type)
            w.vec16(ext.data)


def parse_extensions(data: bytes, what: str = "extensions") -> tuple[Extension, ...]:
    """A whole Extension extensions<0..2^16-1> vector, alone in data."""
    r = Reader(data)
    exts = _read_extensions(r, what)
    r.expect_end(what)
    return exts


def build_extensions(extensions: tuple[Extension, ...]) -> bytes:
    w = Writer()
    _write_extensions(w, extensions)
    return w.getvalue()


# --- ClientHello (RFC 8446 section 4.1.2, RFC 5246 section 7.4.1.2) -------------------------

class ClientHello(Frozen):
    __slots__ = ("legacy_version", "random", "session_id", "cipher_suites", "compression_methods",
                 "extensions")
    legacy_version: int
    random: bytes
    session_id: bytes
    cipher_suites: tuple[int, ...]
    compression_methods: bytes
    extensions: tuple[Extension, ...]

    def __init__(self, legacy_version: int, random: bytes, session_id: bytes,
                 cipher_suites: tuple[int, ...], compression_methods: bytes,
                 extensions: tuple[Extension, ...]) -> None:
        init(self, "legacy_version", legacy_version)
        init(self, "random", random)
        init(self, "session_id", session_id)
        init(self, "cipher_suites", cipher_suites)
        init(self, "compression_methods", compression_methods)
        init(self, "extensions", extensions)

    def extension(self, ext_type: int) -> bytes | None:
        return find_extension(self.extensions, ext_type)


def parse_client_hello(body: bytes) -> ClientHello:
    r = Reader(body)
    legacy_version = r.u16()
    random = r.raw(RANDOM_LENGTH)
    session_id = r.vec8()
    if len(session_id) > MAX_SESSION_ID:
        raise DecodeError("session_id longer than 32 bytes")
    # CipherSuite cipher_suites<2..2^16-2>.
    cipher_suites = _u16_list(r.block16(), "cipher_suites")
    # opaque legacy_compression_methods<1..2^8-1>.
    compression_methods = _nonempty(r.vec8(), "compression_methods")
    # RFC 5246 section 7.4.1.2: a TLS 1.0-1.2 client may end the message here.
    extensions: tuple[Extension, ...] = ()
    if not r.at_end():
        extensions = _read_extensions(r, "ClientHello")
    r.expect_end("ClientHello")
    # RFC 8446 section 4.2.11: pre_shared_key MUST be the last extension, else illegal_parameter.
    for ext in extensions[:-1]:
        if ext.type == suites.EXT_PRE_SHARED_KEY:
            raise DecodeError("pre_shared_key is not the last extension",
                              suites.ILLEGAL_PARAMETER)
    return ClientHello(legacy_version, random, session_id, cipher_suites,
                       compression_methods, extensions)


def build_client_hello(x: ClientHello) -> bytes:
    """Omits the extensions block when there are none (as a TLS 1.0 client may)."""
    _check_fixed(x.random, RANDOM_LENGTH, "random")
    w = Writer()
    w.u16(x.legacy_version)
    w.raw(x.random)
    w.vec8(x.session_id)
    with w.block16():
        _write_u16_list(w, x.cipher_suites)
    w.vec8(x.compression_methods)
    if x.extensions:
        _write_extensions(w, x.extensions)
    return w.getvalue()


# --- ServerHello / HelloRetryRequest (RFC 8446 section 4.1.3, 4.1.4) ------------------------

class ServerHello(Frozen):
    __slots__ = ("legacy_version", "random", "session_id", "cipher_suite", "extensions")
    legacy_version: int
    random: bytes
    session_id: bytes
    cipher_suite: int
    extensions: tuple[Extension, ...]

    def __init__(self, legacy_version: int, random: bytes, session_id: bytes, cipher_suite: int,
                 extensions: tuple[Extension, ...]) -> None:
        init(self, "legacy_version", legacy_version)
        init(self, "random", random)
        init(self, "session_id", session_id)
        init(self, "cipher_suite", cipher_suite)
        init(self, "extensions", extensions)

    def extension(self, ext_type: int) -> bytes | None:
        return find_extension(self.extensions, ext_type)

    @property
    def is_hello_retry_request(self) -> bool:
        return self.random == suites.HRR_RANDOM


def parse_server_hello(body: bytes) -> ServerHello:
    r = Reader(body)
    legacy_version = r.u16()
    random = r.raw(RANDOM_LENGTH)
    session_id = r.vec8()
    if len(session_id) > MAX_SESSION_ID:
        raise DecodeError("session_id longer than 32 bytes")
    cipher_suite = r.u16()
    # legacy_compression_method: only null exists (RFC 8446 4.1.3, RFC 3749 unused).
    if r.u8() != 0:
        raise DecodeError("non-null compression method", suites.ILLEGAL_PARAMETER)
    extensions: tuple[Extension, ...] = ()
    if not r.at_end():
        extensions = _read_extensions(r, "ServerHello")
    r.expect_end("ServerHello")
    return ServerHello(legacy_version, random, session_id, cipher_suite, extensions)


def build_server_hello(x: ServerHello) -> bytes:
    """Always writes the extensions block; an empty one is valid in TLS 1.0-1.2."""
    _check_fixed(x.random, RANDOM_LENGTH, "random")
    if len(x.session_id) > MAX_SESSION_ID:
        raise ValueError("session_id longer than 32 bytes")
    w = Writer()
    w.u16(x.legacy_version)
    w.raw(x.random)
    w.vec8(x.session_id)
    w.u16(x.cipher_suite)
    w.u8(0)
    _write_extensions(w, x.extensions)
    return w.getvalue()


# --- EncryptedExtensions (RFC 8446 section 4.3.1) -------------------------------------------

class EncryptedExtensions(Frozen):
    __slots__ = ("extensions",)
    extensions: tuple[Extension, ...]

    def __init__(self, extensions: tuple[Extension, ...]) -> None:
        init(self, "extensions", extensions)

    def extension(self, ext_type: int) -> bytes | None:
        return find_extension(self.extensions, ext_type)


def parse_encrypted_extensions(body: bytes) -> EncryptedExtensions:
    return EncryptedExtensions(parse_extensions(body, "EncryptedExtensions"))


def build_encrypted_extensions(x: EncryptedExtensions) -> bytes:
    return build_extensions(x.extensions)


# --- Certificate (RFC 8446 section 4.4.2, RFC 5246 section 7.4.2) ---------------------------

class Certificate13(Frozen):
    __slots__ = ("context", "entries")
    context: bytes
    entries: tuple[tuple[bytes, bytes], ...]   # (cert_data DER, raw extensions vector body)

    def __init__(self, context: bytes, entries: tuple[tuple[bytes, bytes], ...]) -> None:
        init(self, "context", context)
        init(self, "entries", entries)


def parse_certificate13(body: bytes) -> Certificate13:
    r = Reader(body)
    context = r.vec8()
    # CertificateEntry certificate_list<0..2^24-1>: empty means the client has no certificate.
    block = r.block24()
    entries = []
    while not block.at_end():
        # opaque cert_data<1..2^24-1>; Extension extensions<0..2^16-1>.
        cert_data = _nonempty(block.vec24(), "cert_data")
        entries.append((cert_data, block.vec16()))
    r.expect_end("Certificate")
    return Certificate13(context, tuple(entries))


def build_certificate13(x: Certificate13) -> bytes:
    w = Writer()
    w.vec8(x.context)
    with w.block24():
        for cert_data, extensions in x.entries:
            w.vec24(cert_data)
            w.vec16(extensions)
    return w.getvalue()


class Certificate12(Frozen):
    __slots__ = ("chain",)
    chain: tuple[bytes, ...]

    def __init__(self, chain: tuple[bytes, ...]) -> None:
        init(self, "chain", chain)


def parse_certificate12(body: bytes) -> Certificate12:
    r = Reader(body)
    # ASN.1Cert certificate_list<0..2^24-1>, each ASN.1Cert<1..2^24-1>.
    block = r.block24()
    chain = []
    while not block.at_end():
        chain.append(_nonempty(block.vec24(), "ASN.1Cert"))
    r.expect_end("Certificate")
    return Certificate12(tuple(chain))


def build_certificate12(x: Certificate12) -> bytes:
    w = Writer()
    with w.block24():
        for cert in x.chain:
            w.vec24(cert)
    return w.getvalue()


# --- CertificateVerify (RFC 8446 section 4.4.3; RFC 5246 section 7.4.8) ---------------------

class CertificateVerify(Frozen):
    __slots__ = ("scheme", "signature")
    scheme: int
    signature: bytes

    def __init__(self, scheme: int, signature: bytes) -> None:
        init(self, "scheme", scheme)
        init(self, "signature", signature)


def parse_certificate_verify(body: bytes) -> CertificateVerify:
    r = Reader(body)
    scheme = r.u16()
    signature = r.vec16()
    r.expect_end("CertificateVerify")
    return CertificateVerify(scheme, signature)


def build_certificate_verify(x: CertificateVerify) -> bytes:
    w = Writer()
    w.u16(x.scheme)
    w.vec16(x.signature)
    return w.getvalue()


# --- ServerKeyExchange, ECDHE (RFC 8422 section 5.4, RFC 5246 section 7.4.3) ----------------

class ServerKeyExchangeECDHE(Frozen):
    __slots__ = ("group", "public", "scheme", "signature")
    group: int
    public: bytes
    scheme: int | None   # None: TLS 1.0/1.1, no SignatureAndHashAlgorithm on the wire
    signature: bytes

    def __init__(self, group: int, public: bytes, scheme: int | None, signature: bytes) -> None:
        init(self, "group", group)
        init(self, "public", public)
        init(self, "scheme", scheme)
        init(self, "signature", signature)


def ecdhe_params(group: int, public: bytes) -> bytes:
    """ServerECDHParams: what is signed after client_random + server_random."""
    w = Writer()
    w.u8(CURVE_TYPE_NAMED_CURVE)
    w.u16(group)
    w.vec8(public)
    return w.getvalue()


def parse_server_key_exchange(body: bytes, has_scheme: bool) -> ServerKeyExchangeECDHE:
    r = Reader(body)
    # RFC 8422 section 5.4: explicit curves are deprecated; only named_curve is accepted.
    if r.u8() != CURVE_TYPE_NAMED_CURVE:
        raise DecodeError("curve_type is not named_curve", suites.ILLEGAL_PARAMETER)
    group = r.u16()
    public = _nonempty(r.vec8(), "ECPoint")
    scheme = r.u16() if has_scheme else None
    signature = r.vec16()
    r.expect_end("ServerKeyExchange")
    return ServerKeyExchangeECDHE(group, public, scheme, signature)


def build_server_key_exchange(x: ServerKeyExchangeECDHE) -> bytes:
    w = Writer()
    w.raw(ecdhe_params(x.group, x.public))
    if x.scheme is not None:
        w.u16(x.scheme)
    w.vec16(x.signature)
    return w.getvalue()


# --- ClientKeyExchange, ECDHE (RFC 8422 section 5.7) ----------------------------------------

class ClientKeyExchangeECDHE(Frozen):
    __slots__ = ("public",)
    public: bytes

    def __init__(self, public: bytes) -> None:
        init(self, "public", public)


def parse_client_key_exchange(body: bytes) -> ClientKeyExchangeECDHE:
    r = Reader(body)
    # ClientECDiffieHellmanPublic: opaque point <1..2^8-1> (explicit form only for ECDHE).
    public = _nonempty(r.vec8(), "ECPoint")
    r.expect_end("ClientKeyExchange")
    return ClientKeyExchangeECDHE(public)


def build_client_key_exchange(x: ClientKeyExchangeECDHE) -> bytes:
    w = Writer()
    w.vec8(x.public)
    return w.getvalue()


# --- Finished (RFC 8446 section 4.4.4, RFC 5246 section 7.4.9) ------------------------------

class Finished(Frozen):
    __slots__ = ("verify_data",)
    verify_data: bytes

    def __init__(self, verify_data: bytes) -> None:
        init(self, "verify_data", verify_data)


def parse_finished(body: bytes, length: int) -> Finished:
    # A wrong length is malformed (decode_error); a wrong value is decrypt_error, the caller's.
    if len(body) != length:
        raise DecodeError(f"Finished of {len(body)} bytes, expected {length}")
    return Finished(bytes(body))


def build_finished(x: Finished) -> bytes:
    return bytes(x.verify_data)


# --- KeyUpdate (RFC 8446 section 4.6.3) -----------------------------------------------------

class KeyUpdate(Frozen):
    __slots__ = ("request_update",)
    request_update: int

    def __init__(self, request_update: int) -> None:
        init(self, "request_update", request_update)


def parse_key_update(body: bytes) -> KeyUpdate:
    r = Reader(body)
    value = r.u8()
    r.expect_end("KeyUpdate")
    # "If an implementation receives any other value, it MUST terminate the connection
    # with an illegal_parameter alert."
    if value not in (UPDATE_NOT_REQUESTED, UPDATE_REQUESTED):
        raise DecodeError(f"KeyUpdate request_update {value}", suites.ILLEGAL_PARAMETER)
    return KeyUpdate(value)


def build_key_update(x: KeyUpdate) -> bytes:
    if x.request_update not in (UPDATE_NOT_REQUESTED, UPDATE_REQUESTED):
        raise ValueError(f"KeyUpdate request_update {x.request_update}")
    return bytes((x.request_update,))


# --- CertificateRequest (RFC 8446 section 4.3.2, RFC 5246 section 7.4.4) --------------------

class CertificateRequest13(Frozen):
    __slots__ = ("context", "extensions")
    context: bytes
    extensions: tuple[Extension, ...]

    def __init__(self, context: bytes, extensions: tuple[Extension, ...]) -> None:
        init(self, "context", context)
        init(self, "extensions", extensions)

    def extension(self, ext_type: int) -> bytes | None:
        return find_extension(self.extensions, ext_type)


def parse_certificate_request13(body: bytes) -> CertificateRequest13:
    r = Reader(body)
    context = r.vec8()
    extensions = _read_extensions(r, "CertificateRequest")
    r.expect_end("CertificateRequest")
    return CertificateRequest13(context, extensions)


def build_certificate_request13(x: CertificateRequest13) -> bytes:
    w = Writer()
    w.vec8(x.context)
    _write_extensions(w, x.extensions)
    return w.getvalue()


class CertificateRequest12(Frozen):
    __slots__ = ("certificate_types", "signature_schemes", "authorities")
    certificate_types: bytes
    signature_schemes: tuple[int, ...]   # () when has_schemes is False (TLS 1.0/1.1)
    authorities: tuple[bytes, ...]

    def __init__(self, certificate_types: bytes, signature_schemes: tuple[int, ...],
                 authorities: tuple[bytes, ...]) -> None:
        init(self, "certificate_types", certificate_types)
        init(self, "signature_schemes", signature_schemes)
        init(self, "authorities", authorities)


def parse_certificate_request12(body: bytes, has_schemes: bool = True) -> CertificateRequest12:
    """has_schemes=False is the TLS 1.0/1.1 form, which has no supported_signature_algorithms."""
    r = Reader(body)
    # ClientCertificateType certificate_types<1..2^8-1>.
    certificate_types = _nonempty(r.vec8(), "certificate_types")
    schemes: tuple[int, ...] = ()
    if has_schemes:
        # SignatureAndHashAlgorithm supported_signature_algorithms<2..2^16-2>.
        schemes = _u16_list(r.block16(), "supported_signature_algorithms")
    authorities = _read_names(r.block16())
    r.expect_end("CertificateRequest")
    return CertificateRequest12(certificate_types, schemes, authorities)


def build_certificate_request12(x: CertificateRequest12, has_schemes: bool = True) -> bytes:
    if not has_schemes and x.signature_schemes:
        raise ValueError("signature_schemes given for the TLS 1.0/1.1 form")
    w = Writer()
    w.vec8(x.certificate_types)
    if has_schemes:
        with w.block16():
            _write_u16_list(w, x.signature_schemes)
    _write_names(w, x.authorities)
    return w.getvalue()


def _read_names(block: Reader) -> tuple[bytes, ...]:
    # DistinguishedName<1..2^16-1> each (RFC 8446 section 4.2.4, RFC 5246 section 7.4.4).
    names = []
    while not block.at_end():
        names.append(_nonempty(block.vec16(), "DistinguishedName"))
    return tuple(names)


def _write_names(w: Writer, names: tuple[bytes, ...]) -> None:
    with w.block16():
        for name in names:
            w.vec16(name)


# --- ServerHelloDone and other empty bodies -------------------------------------------------

def build_server_hello_done() -> bytes:
    return b""


def parse_empty(body: bytes, what: str) -> None:
    """ServerHelloDone, EndOfEarlyData: the body must be empty (decode_error otherwise)."""
    if len(body):
        raise DecodeError(f"non-empty {what}")


# --- Alert (RFC 8446 section 6, RFC 5246 section 7.2) ---------------------------------------

class Alert(Frozen):
    __slots__ = ("level", "description")
    level: int
    description: int

    def __init__(self, level: int, description: int) -> None:
        init(self, "level", level)
        init(self, "description", description)


def parse_alert(body: bytes) -> Alert:
    # Levels and descriptions are not judged here: the record layer decides what they mean.
    r = Reader(body)
    level = r.u8()
    description = r.u8()
    r.expect_end("Alert")
    return Alert(level, description)


def build_alert(x: Alert) -> bytes:
    w = Writer()
    w.u8(x.level)
    w.u8(x.description)
    return w.getvalue()


# --- extension data, client forms -----------------------------------------------------------

def _whole(data: bytes, what: str, read: Callable[[Reader], T]) -> T:
    # Runs read(Reader) and insists it consumed all of data: every extension's data is exactly
    # one structure (RFC 8446 section 4.2).
    r = Reader(data)
    value = read(r)
    r.expect_end(what)
    return value


def parse_server_name(data: bytes) -> str | None:
    """The host_name of a client's server_name (RFC 6066 section 3), ASCII lower-cased."""
    r = Reader(data)
    # ServerName server_name_list<1..2^16-1>.
    block = r.block16()
    r.expect_end("server_name")
    if block.at_end():
        raise DecodeError("empty server_name list")
    host: str | None = None
    while not block.at_end():
        name_type = block.u8()
        # Every NameType so far (only host_name) carries a vec16; unknown types are skipped.
        name = block.vec16()
        if name_type != NAME_TYPE_HOST_NAME:
            continue
        # "The ServerNameList MUST NOT contain more than one name of the same name_type."
        if host is not None:
            raise DecodeError("two host_name entries in server_name", suites.ILLEGAL_PARAMETER)
        # HostName<1..2^16-1>: an empty one is out of its range (decode_error).
        if not name:
            raise DecodeError("empty host_name")
        host = _host_name(name)
    return host


# RFC 1035 2.3.4 / RFC 1123 2.1: labels of 1..63 bytes, 253 for a name without its final dot.
MAX_HOST_LABEL = 63
MAX_HOST_NAME = 253
# Letters, digits and hyphens (RFC 1123), and the underscore some real host names carry;
# nothing that a shell, a log line or a file name would read as anything but a name.
_HOST_NAME_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-_")


def _host_name(name: bytes) -> str:
    """The host name lower-cased, or illegal_parameter: RFC 6066 3 says HostName is the
    fully qualified DNS host name in ASCII. A control byte (ESC, BEL, NUL, LF), a byte
    outside ASCII, an empty label or one over 63 bytes is no host name, and must never
    reach prog's SSL_TLS_SNI or a certdir. One final dot (the absolute form, which some
    clients send) is allowed: the certdir lookup drops it."""
    lowered = name.lower()
    labels = lowered.split(b".")
    if labels[-1] == b"" and len(labels) > 1:
        labels.pop()
    if len(lowered) > MAX_HOST_NAME + (lowered[-1:] == b"."):
        raise DecodeError("host_name longer than 253 bytes", suites.ILLEGAL_PARAMETER)
    for label in labels:
        if not label or len(label) > MAX_HOST_LABEL:
            raise DecodeError("host_name with an empty label or one over 63 bytes",
                              suites.ILLEGAL_PARAMETER)
        if not _HOST_NAME_BYTES.issuperset(label):
            raise DecodeError("host_name with a byte that is not a letter, digit, hyphen "
                              "or underscore", suites.ILLEGAL_PARAMETER)
    return lowered.decode("ascii")


def build_server_name(name: str) -> bytes:
    w = Writer()
    with w.block16():
        w.u8(NAME_TYPE_HOST_NAME)
        w.vec16(name.encode("ascii"))
    return w.getvalue()


def parse_supported_groups(data: bytes) -> tuple[int, ...]:
    # NamedGroup named_group_list<2..2^16-1> (RFC 8446 section 4.2.7).
    return _whole(data, "supported_groups",
                  lambda r: _u16_list(r.block16(), "supported_groups"))


def build_supported_groups(groups: tuple[int, ...]) -> bytes:
    w = Writer()
    with w.block16():
        _write_u16_list(w, groups)
    return w.getvalue()


def parse_signature_algorithms(data: bytes) -> tuple[int, ...]:
    # SignatureScheme supported_signature_algorithms<2..2^16-2> (RFC 8446 section 4.2.3);
    # signature_algorithms_cert has the same shape.
    return _whole(data, "signature_algorithms",
                  lambda r: _u16_list(r.block16(), "signature_algorithms"))


def build_signature_algorithms(schemes: tuple[int, ...]) -> bytes:
    return build_supported_groups(schemes)


def parse_supported_versions_client(data: bytes) -> tuple[int, ...]:
    # ProtocolVersion versions<2..254> (RFC 8446 section 4.2.1).
    return _whole(data, "supported_versions",
                  lambda r: _u16_list(r.block8(), "supported_versions"))


def build_supported_versions_client(versions: tuple[int, ...]) -> bytes:
    w = Writer()
    with w.block8():
        _write_u16_list(w, versions)
    return w.getvalue()


def parse_supported_versions_server(data: bytes) -> int:
    return _whole(data, "supported_versions", lambda r: r.u16())


def build_supported_versions_server(version: int) -> bytes:
    w = Writer()
    w.u16(version)
    return w.getvalue()


def _read_key_share_entry(r: Reader) -> tuple[int, bytes]:
    # KeyShareEntry: NamedGroup group; opaque key_exchange<1..2^16-1>.
    group = r.u16()
    return group, _nonempty(r.vec16(), "key_exchange")


def parse_key_share_client(data: bytes) -> tuple[tuple[int, bytes], ...]:
    r = Reader(data)
    # KeyShareEntry client_shares<0..2^16-1>: empty is valid (the client awaits an HRR).
    block = r.block16()
    r.expect_end("key_share")
    shares = []
    seen: set[int] = set()
    while not block.at_end():
        group, key_exchange = _read_key_share_entry(block)
        # RFC 8446 section 4.2.8: one share per group; servers MAY abort with illegal_parameter.
        if group in seen:
            raise DecodeError(f"two key shares for group {group}", suites.ILLEGAL_PARAMETER)
        seen.add(group)
        shares.append((group, key_exchange))
    return tuple(shares)


def build_key_share_client(shares: tuple[tuple[int, bytes], ...]) -> bytes:
    w = Writer()
    with w.block16():
        for group, key_exchange in shares:
            w.u16(group)
            w.vec16(key_exchange)
    return w.getvalue()


def parse_key_share_server(data: bytes) -> tuple[int, bytes]:
    return _whole(data, "key_share", _read_key_share_entry)


def build_key_share_server(group: int, key_exchange: bytes) -> bytes:
    w = Writer()
    w.u16(group)
    w.vec16(key_exchange)
    return w.getvalue()


def parse_key_share_hrr(data: bytes) -> int:
    # KeyShareHelloRetryRequest: NamedGroup selected_group.
    return _whole(data, "key_share", lambda r: r.u16())


def build_key_share_hrr(group: int) -> bytes:
    return build_supported_versions_server(group)


def parse_ec_point_formats(data: bytes) -> bytes:
    # ECPointFormat ec_point_format_list<1..2^8-1> (RFC 8422 section 5.1.2).
    return _whole(data, "ec_point_formats", lambda r: _nonempty(r.vec8(), "ec_point_formats"))


def build_ec_point_formats(formats: bytes) -> bytes:
    w = Writer()
    w.vec8(formats)
    return w.getvalue()


def parse_renegotiation_info(data: bytes) -> bytes:
    # opaque renegotiated_connection<0..255> (RFC 5746 section 3.2).
    return _whole(data, "renegotiation_info", lambda r: r.vec8())


def build_renegotiation_info(renegotiated_connection: bytes) -> bytes:
    return build_ec_point_formats(renegotiated_connection)


def parse_psk_key_exchange_modes(data: bytes) -> bytes:
    # PskKeyExchangeMode ke_modes<1..255> (RFC 8446 section 4.2.9).
    return _whole(data, "psk_key_exchange_modes",
                  lambda r: _nonempty(r.vec8(), "psk_key_exchange_modes"))


def build_psk_key_exchange_modes(modes: bytes) -> bytes:
    return build_ec_point_formats(modes)


PskIdentities = tuple[tuple[bytes, int], ...]


def parse_pre_shared_key_client(data: bytes) -> tuple[PskIdentities, tuple[bytes, ...]]:
    """OfferedPsks (RFC 8446 section 4.2.11): (identities, binders)."""
    r = Reader(data)
    # PskIdentity identities<7..2^16-1>; opaque identity<1..2^16-1>; uint32 ticket age.
    block = r.block16()
    if block.at_end():
        raise DecodeError("empty PSK identities")
    identities = []
    while not block.at_end():
        identity = _nonempty(block.vec16(), "PSK identity")
        identities.append((identity, block.u32()))
    # PskBinderEntry binders<33..2^16-1>; opaque PskBinderEntry<32..255>.
    block = r.block16()
    if block.at_end():
        raise DecodeError("empty PSK binders")
    binders = []
    while not block.at_end():
        binder = block.vec8()
        if len(binder) < MIN_PSK_BINDER:
            raise DecodeError("PSK binder shorter than 32 bytes")
        binders.append(binder)
    r.expect_end("pre_shared_key")
    # One binder per identity, in order; a mismatch cannot be a valid offer.
    if len(binders) != len(identities):
        raise DecodeError("PSK identities and binders differ in number",
                          suites.ILLEGAL_PARAMETER)
    return tuple(identities), tuple(binders)


def build_pre_shared_key_client(identities: PskIdentities, binders: tuple[bytes, ...]) -> bytes:
    w = Writer()
    with w.block16():
        for identity, age in identities:
            w.vec16(identity)
            w.u32(age)
    with w.block16():
        for binder in binders:
            w.vec8(binder)
    return w.getvalue()


def parse_cookie(data: bytes) -> bytes:
    # opaque cookie<1..2^16-1> (RFC 8446 section 4.2.2).
    return _whole(data, "cookie", lambda r: _nonempty(r.vec16(), "cookie"))


def build_cookie(cookie: bytes) -> bytes:
    w = Writer()
    w.vec16(cookie)
    return w.getvalue()


def parse_alpn(data: bytes) -> tuple[bytes, ...]:
    """ProtocolNameList (RFC 7301 section 3.1); the server's answer is a one-name list."""
    r = Reader(data)
    # ProtocolName protocol_name_list<2..2^16-1>; opaque ProtocolName<1..2^8-1>.
    block = r.block16()
    r.expect_end("application_layer_protocol_negotiation")
    if block.at_end():
        raise DecodeError("empty ALPN protocol list")
    names = []
    while not block.at_end():
        names.append(_nonempty(block.vec8(), "ALPN protocol name"))
    return tuple(names)


def build_alpn(protocols: tuple[bytes, ...]) -> bytes:
    w = Writer()
    with w.block16():
        for name in protocols:
            w.vec8(name)
    return w.getvalue()


def parse_certificate_authorities(data: bytes) -> tuple[bytes, ...]:
    # DistinguishedName authorities<3..2^16-1> (RFC 8446 section 4.2.4).
    r = Reader(data)
    block = r.block16()
    r.expect_end("certificate_authorities")
    if block.at_end():
        raise DecodeError("empty certificate_authorities")
    return _read_names(block)


def build_certificate_authorities(authorities: tuple[bytes, ...]) -> bytes:
    w = Writer()
    _write_names(w, authorities)
    return w.getvalue()
