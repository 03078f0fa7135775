"""Reading a PEM file of certificate chain + private key, in two steps around the jail.

Rule: read_pem_file (privileged, before the jail) only finds marker lines and seals the secret
block unparsed; the secret is decrypted and parsed only after the jail, when it signs."""

from __future__ import annotations

import os
import stat

from cryptography import x509
from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tlswrapper.tls import suites
from tlswrapper.tls.frozen import Frozen, init

# cryptography's serialization names without importing its serialization package, which
# imports its SSH module and with it dataclasses, inspect, ast, dis and tokenize: about 9 ms of
# every tcpserver-mode key process (whose imports are on the client's path). Encoding and
# PublicFormat are defined in the private module the package takes them from, and the
# package's load_der_private_key is the Rust function named here. Should a cryptography
# release move either, the public package is used: slower, the same behaviour.
try:
    from cryptography.hazmat.bindings._rust import openssl as _rust_openssl
    from cryptography.hazmat.primitives._serialization import Encoding, PublicFormat
    load_der_private_key = _rust_openssl.keys.load_der_private_key
except (ImportError, AttributeError):       # pragma: no cover -- another cryptography
    from cryptography.hazmat.primitives.serialization import (Encoding, PublicFormat,
                                                              load_der_private_key)

MAX_PEM_FILE = 1 << 20          # a chain and a key fit many times over
RSA_MIN_BITS = 2048
RSA_MAX_BITS = 4096

_BEGIN = b"-----BEGIN "
_END = b"-----END "
_DASHES = b"-----"
_MAX_LABEL = 64

_CURVES = {"secp256r1": suites.KEY_EC_P256, "secp384r1": suites.KEY_EC_P384,
           "secp521r1": suites.KEY_EC_P521}


class PemError(OSError):
    """A PEM file that cannot be used; `reason` is the line for the log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SealedPem(Frozen):
    """A PEM file as read before the jail. `certificates` are the CERTIFICATE blocks (PEM
    text, not secret); `sealed_key` is nonce || AES-GCM(the private-key block); `key_labels`
    the labels of the private-key blocks found (e.g. b'EC PRIVATE KEY')."""

    __slots__ = ("path", "certificates", "key_labels", "legacy_encrypted", "sealed_key",
                 "_sealer")
    path: str
    certificates: tuple[bytes, ...]
    key_labels: tuple[bytes, ...]
    legacy_encrypted: bool
    sealed_key: bytes
    _sealer: AESGCM

    def __init__(self, path: str, certificates: tuple[bytes, ...],
                 key_labels: tuple[bytes, ...], legacy_encrypted: bool, sealed_key: bytes,
                 _sealer: AESGCM) -> None:
        init(self, "path", path)
        init(self, "certificates", certificates)
        init(self, "key_labels", key_labels)
        init(self, "legacy_encrypted", legacy_encrypted)
        init(self, "sealed_key", sealed_key)
        init(self, "_sealer", _sealer)


def _blocks(buf: bytearray, size: int) -> list[tuple[bytes, int, int]]:
    """(label, start, end) of each BEGIN/END block, found from the marker lines only: the
    base64 in between is not looked at. `end` includes the END line."""
    found = []
    pos = 0
    while True:
        begin = buf.find(_BEGIN, pos, size)
        if begin < 0:
            return found
        label_start = begin + len(_BEGIN)
        label_end = buf.find(_DASHES, label_start, min(size, label_start + _MAX_LABEL))
        if label_end < 0:
            pos = label_start
            continue
        label = bytes(buf[label_start:label_end])
        end_marker = _END + label + _DASHES
        end = buf.find(end_marker, label_end + len(_DASHES), size)
        if end < 0:
            raise PemError(f"no END line for {label.decode('ascii', 'replace')}")
        end += len(end_marker)
        found.append((label, begin, end))
        pos = end


def read_pem_file(path: str) -> SealedPem | None:
    """Read `path` (privileged, before the jail). None if it does not exist; PemError or
    another OSError for other failures. The private-key block(s) are encrypted under a
    fresh random key as soon as they are located and their bytes in the read buffer are
    zeroed, so the secret never exists in clear as a Python object.

    Security: the file is read with os.readv straight into one preallocated bytearray (no
    intermediate bytes object holding the secret), which is wiped before returning."""
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0) \
        | os.O_NONBLOCK   # a FIFO must not hang us
    try:
        fd = os.open(path, flags)
    except (FileNotFoundError, NotADirectoryError):
        return None
    buf = bytearray(0)
    size = 0
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PemError("not a regular file")
        # Sized from fstat (one byte more, to see EOF): a 1 MiB buffer costs a millisecond of
        # page faults and wiping per connection. A file that grew since is read on into a
        # buffer of the full limit.
        buf = bytearray(min(st.st_size, MAX_PEM_FILE) + 1)
        while size <= MAX_PEM_FILE:
            if size == len(buf):
                bigger = bytearray(MAX_PEM_FILE + 1)
                bigger[:size] = buf
                buf[:] = bytes(len(buf))
                buf = bigger
            with memoryview(buf) as view:
                n = os.readv(fd, [view[size:]])
            if n == 0:
                break
            size += n
        if size > MAX_PEM_FILE:
            raise PemError("file larger than 1 MiB")
        return _seal(path, buf, size)
    finally:
        os.close(fd)
        buf[:] = bytes(len(buf))


def _seal(path: str, buf: bytearray, size: int) -> SealedPem:
    certificates = []
    key_labels = []
    key_regions = []
    legacy_encrypted = False
    for label, start, end in _blocks(buf, size):
        if label.endswith(b"PRIVATE KEY"):
            key_labels.append(label)
            key_regions.append((start, end))
            # RFC 1421 headers mark a traditional encrypted key (before the base64).
            if buf.find(b"Proc-Type:", start, end) >= 0 and \
                    buf.find(b"ENCRYPTED", start, end) >= 0:
                legacy_encrypted = True
        elif label == b"CERTIFICATE":
            certificates.append(bytes(buf[start:end]))
    sealer = AESGCM(AESGCM.generate_key(256))
    sealed = b""
    with memoryview(buf) as view:
        if len(key_regions) == 1:
            start, end = key_regions[0]
            nonce = os.urandom(12)
            sealed = nonce + sealer.encrypt(nonce, view[start:end], None)
        for start, end in key_regions:
            view[start:end] = bytes(end - start)
    return SealedPem(path, tuple(certificates), tuple(key_labels), legacy_encrypted, sealed,
                     sealer)


def _key_type(public_key: object) -> tuple[str, int]:
    if isinstance(public_key, rsa.RSAPublicKey):
        bits = public_key.key_size
        if not RSA_MIN_BITS <= bits <= RSA_MAX_BITS:
            raise PemError(f"RSA key of {bits} bits (2048 to 4096 supported)")
        return suites.KEY_RSA, bits
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        key_type = _CURVES.get(public_key.curve.name)
        if key_type is None:
            raise PemError(f"EC curve {public_key.curve.name} not supported")
        return key_type, 0
    raise PemError(f"key type {type(public_key).__name__} not supported")


def parse_public(sealed: SealedPem) -> tuple[tuple[bytes, ...], str, int]:
    """After the jail: (chain as DER, leaf first; key type; RSA bits or 0). Raises PemError
    when the file cannot serve: no certificate, no or several or encrypted private keys,
    an unsupported key type or size. The private key itself is not decrypted here."""
    if not sealed.certificates:
        raise PemError("no certificate")
    if not sealed.key_labels:
        raise PemError("no private key")
    if len(sealed.key_labels) > 1:
        raise PemError("more than one private key")
    if sealed.key_labels[0] == b"ENCRYPTED PRIVATE KEY" or sealed.legacy_encrypted:
        raise PemError("encrypted private key")
    if sealed.key_labels[0] not in (b"PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY"):
        raise PemError(f"unsupported key format {sealed.key_labels[0].decode('ascii', 'replace')}")
    chain = []
    leaf = None
    for block in sealed.certificates:
        try:
            cert = x509.load_pem_x509_certificate(block)
        except ValueError as e:
            raise PemError(f"bad certificate: {e}") from None
        chain.append(cert.public_bytes(Encoding.DER))
        if leaf is None:
            leaf = cert
    try:
        leaf_key = leaf.public_key()
    except (ValueError, TypeError) as e:
        raise PemError(f"bad certificate key: {e}") from None
    key_type, bits = _key_type(leaf_key)
    return tuple(chain), key_type, bits


def _check_rsa_crt(key: rsa.RSAPrivateKey) -> None:
    """n = p*q, the CRT values agree with d, and e*d = 1 modulo p-1 and q-1: what OpenSSL's
    signing relies on (no primality test: that is the expensive part).
    Raises ValueError (reported as a bad private key)."""
    priv = key.private_numbers()
    pub = priv.public_numbers
    p, q, d = priv.p, priv.q, priv.d
    if p < 3 or q < 3 or p * q != pub.n or priv.dmp1 != d % (p - 1) \
            or priv.dmq1 != d % (q - 1) or (priv.iqmp * q) % p != 1 \
            or (pub.e * priv.dmp1) % (p - 1) != 1 or (pub.e * priv.dmq1) % (q - 1) != 1:
        raise ValueError("inconsistent RSA private key")


# base64's alphabet: value of each byte, -1 for anything else (whitespace is skipped apart).
_B64 = [-1] * 256
for _i, _c in enumerate(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"):
    _B64[_c] = _i
_SPACE = frozenset(b" \t\r\n")


def _decode_key_block(clear: bytearray, der: bytearray) -> int:
    """The DER inside the one PEM block in `clear` (its BEGIN line, base64, END line), decoded
    into `der` byte by byte: no bytes object ever holds it, so that wiping `der` leaves no
    copy (cryptography's load_pem_private_key decodes into a buffer it frees unwiped).
    Returns the DER's length. Raises PemError."""
    start = clear.find(b"\n") + 1
    end = clear.find(_END, start)
    if start <= 0 or end < 0:
        raise PemError("bad private key: no base64 body")
    # Every value computed from the secret stays below 256: CPython's small ints are shared
    # and never allocated, so no freed int object keeps a piece of the key either.
    n = phase = prev = 0
    padding = False
    for i in range(start, end):
        c = clear[i]
        if c in _SPACE:
            continue
        if c == 0x3D:   # '='
            padding = True
            continue
        v = _B64[c]
        if v < 0 or padding:
            raise PemError("bad private key: not base64")
        if phase == 0:
            prev = v
        elif phase == 1:
            der[n] = (prev << 2) | (v >> 4)
            prev = v & 0x0F
            n += 1
        elif phase == 2:
            der[n] = (prev << 4) | (v >> 2)
            prev = v & 0x03
            n += 1
        else:
            der[n] = (prev << 6) | v
            n += 1
        phase = (phase + 1) & 3
    return n


def unseal_private_key(sealed: SealedPem) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    """After the jail, when the key is selected for signing: decrypt the secret block into a
    buffer that is wiped after cryptography has parsed it, and check that the key is the
    leaf certificate's. Raises PemError."""
    leaf = parse_public(sealed)[0][0]
    sealed_key = sealed.sealed_key
    clear = bytearray(len(sealed_key) - 12 - 16)
    der = bytearray(len(clear))
    try:
        try:
            sealed._sealer.decrypt_into(sealed_key[:12], memoryview(sealed_key)[12:], None,
                                        clear)
        except InvalidTag:
            raise PemError("sealed key corrupted") from None
        size = _decode_key_block(clear, der)
        try:
            # cryptography's RSA key validation (OpenSSL's RSA_check_key: primality tests of
            # p and q) costs about 65 ms per load for RSA 2048, i.e. per connection, which is
            # most of an RSA handshake. The C version (BearSSL) does not do it either. Skipped,
            # and replaced by _check_rsa_crt's arithmetic consistency check (microseconds),
            # which catches a corrupted key before it could make a faulty CRT signature.
            with memoryview(der) as view:
                key = load_der_private_key(
                    view[:size], password=None, unsafe_skip_rsa_key_validation=True)
            if isinstance(key, rsa.RSAPrivateKey):
                _check_rsa_crt(key)
        except TypeError:
            raise PemError("encrypted private key") from None
        except (ValueError, UnsupportedAlgorithm) as e:
            raise PemError(f"bad private key: {e}") from None
    finally:
        clear[:] = bytes(len(clear))
        der[:] = bytes(len(der))
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise PemError("private key type not supported")
    leaf_public = x509.load_der_x509_certificate(leaf).public_key()
    spki = PublicFormat.SubjectPublicKeyInfo
    der = Encoding.DER
    if key.public_key().public_bytes(der, spki) != leaf_public.public_bytes(der, spki):
        raise PemError("key does not match certificate")
    return key
