"""Hand-built ClientHellos for the hostile-client tests (engine and end to end): valid ones
at the size their length fields allow, and ones with one field wrong.

Rule: built with messages.py's builders or, where a builder would refuse the value (a
malformed host name, an empty vector), with raw bytes; nothing here talks to a server."""

from __future__ import annotations

import os

from cryptography.hazmat.primitives.asymmetric import x25519

from tlswrapper.tls import messages as m
from tlswrapper.tls import suites as s
from tlswrapper.tls.wire import handshake_message

SIGALGS = (s.ECDSA_SECP256R1_SHA256, s.RSA_PSS_RSAE_SHA256, s.RSA_PKCS1_SHA256)
SUITES_13 = (0x1301, 0x1302, 0x1303)
SUITES_12 = (0xC02B, 0xC02F, 0xCCA9, 0xCCA8)
BRAINPOOL_P256 = 26           # brainpoolP256r1 (RFC 7027): obsolete_RESERVED in TLS 1.3
MAX_EXTENSIONS_BLOCK = 0xFFFF
MAX_SUITES = 0xFFFE // 2      # cipher_suites<2..2^16-2>


def raw_server_name(host: bytes) -> bytes:
    """A server_name extension body with one host_name of any bytes (no check)."""
    entry = bytes((m.NAME_TYPE_HOST_NAME,)) + len(host).to_bytes(2, "big") + host
    return len(entry).to_bytes(2, "big") + entry


def x25519_public() -> bytes:
    return x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()


def unknown_codes(n: int, start: int = 0x2000) -> tuple[int, ...]:
    """n code points no registry gives us a meaning for in the place they are used here
    (not a suite, group, scheme or extension we know, not an SCSV, not obsolete)."""
    skip = (s.TLS_FALLBACK_SCSV, s.TLS_EMPTY_RENEGOTIATION_INFO_SCSV)
    codes = [c for c in range(start, start + n + len(skip)) if c not in skip]
    return tuple(codes[:n])


def client_hello(*, tls13: bool = True, legacy_version: int = s.TLS12,
                 cipher_suites: tuple[int, ...] | None = None, compression: bytes = b"\x00",
                 sni: bytes | None = b"localhost",
                 groups: tuple[int, ...] = (s.X25519, s.SECP256R1),
                 shares: tuple[tuple[int, bytes], ...] | None = None,
                 schemes: tuple[int, ...] = SIGALGS, extra: tuple[m.Extension, ...] = (),
                 replace: dict[int, bytes] | None = None, session_id: bytes = b"") -> bytes:
    """The ClientHello handshake message (header included). `replace` sets an extension's
    body outright (b"" included); `extra` adds extensions at the end."""
    exts: list[m.Extension] = []
    if sni is not None:
        exts.append(m.Extension(s.EXT_SERVER_NAME, raw_server_name(sni)))
    exts.append(m.Extension(s.EXT_SUPPORTED_GROUPS, m.build_supported_groups(groups)))
    exts.append(m.Extension(s.EXT_EC_POINT_FORMATS, m.build_ec_point_formats(b"\x00")))
    exts.append(m.Extension(s.EXT_SIGNATURE_ALGORITHMS, m.build_signature_algorithms(schemes)))
    if tls13:
        exts.append(m.Extension(s.EXT_SUPPORTED_VERSIONS,
                                m.build_supported_versions_client((s.TLS13, s.TLS12))))
        if shares is None:
            shares = ((s.X25519, x25519_public()),)
        exts.append(m.Extension(s.EXT_KEY_SHARE, m.build_key_share_client(shares)))
    for ext_type, body in (replace or {}).items():
        exts = [e for e in exts if e.type != ext_type] + [m.Extension(ext_type, body)]
    exts.extend(extra)
    if cipher_suites is None:
        cipher_suites = SUITES_13 if tls13 else SUITES_12
    body = m.build_client_hello(m.ClientHello(legacy_version, os.urandom(32), session_id,
                                              cipher_suites, compression, tuple(exts)))
    return handshake_message(s.HS_CLIENT_HELLO, body)


def records(message: bytes, size: int = s.MAX_PLAINTEXT, version: int = s.TLS10) -> bytes:
    """`message` as plaintext handshake records of at most `size` bytes."""
    out = bytearray()
    for i in range(0, len(message), size):
        chunk = message[i:i + size]
        out += bytes((s.HANDSHAKE, version >> 8, version & 0xFF)) \
            + len(chunk).to_bytes(2, "big") + chunk
    return bytes(out)


def extensions_size(exts: tuple[m.Extension, ...]) -> int:
    return sum(4 + len(e.data) for e in exts)


def filler(base_extensions: int, kind: str) -> dict:
    """Keyword arguments for client_hello() (or TLS13Client Options) that make the hello as
    large as its length fields allow in one dimension. `base_extensions` is the size of the
    other extensions (4 + body each)."""
    room = MAX_EXTENSIONS_BLOCK - base_extensions
    if kind == "extensions16k":
        return {"extra": tuple(m.Extension(c, b"") for c in unknown_codes(room // 4))}
    if kind == "padding64k":
        return {"extra": (m.Extension(s.EXT_PADDING, bytes(room - 4)),)}
    raise ValueError(kind)
