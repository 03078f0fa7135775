"""A minimal TLS 1.3 client for tests, sans-IO (bytes in, bytes out), built from cryptography
primitives and our messages.py. Rule: its key schedule is written here from RFC 8446 (HKDF via
hmac/hashlib), independent of keys/schedule13.py, so that the two cross-check each other.

It is strict about what the server sends (anything off raises ClientError: a test failure)
and permissive about what it sends itself: every knob and raw hook exists to send malformed
or out-of-place input to the server.

    client = TLS13Client(groups=(suites.X25519,), cipher_suites=(0x1301,))
    wire = Wire(server_connection, client, candidates)
    wire.handshake()
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from typing import Callable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, mlkem, padding, rsa, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from tlswrapper.tls import messages as m
from tlswrapper.tls import suites as s
from tlswrapper.tls.wire import handshake_message

# suite -> (hash, AEAD class, key length); RFC 8446 appendix B.4.
SUITES_13 = {
    0x1301: ("sha256", AESGCM, 16),
    0x1302: ("sha384", AESGCM, 32),
    0x1303: ("sha256", ChaCha20Poly1305, 32),
}
ALL_SUITES_13 = (0x1303, 0x1302, 0x1301)
ALL_GROUPS = (s.X25519MLKEM768, s.X25519, s.SECP256R1, s.SECP384R1, s.SECP521R1)
DEFAULT_SIGALGS = (
    s.ECDSA_SECP256R1_SHA256, s.ECDSA_SECP384R1_SHA384, s.ECDSA_SECP521R1_SHA512,
    s.RSA_PSS_RSAE_SHA256, s.RSA_PSS_RSAE_SHA384, s.RSA_PSS_RSAE_SHA512,
    s.RSA_PKCS1_SHA256, s.RSA_PKCS1_SHA384,
)
_CURVES = {s.SECP256R1: ec.SECP256R1, s.SECP384R1: ec.SECP384R1, s.SECP521R1: ec.SECP521R1}
_HASHES = {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}
TAG = 16


class ClientError(Exception):
    """The server did something a correct TLS 1.3 server must not do."""


# --- key schedule (RFC 8446 section 7), written from the RFC -----------------------------

def hkdf_extract(hash_name: str, salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt, ikm, hash_name).digest()


def hkdf_expand(hash_name: str, prk: bytes, info: bytes, length: int) -> bytes:
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes((counter,)), hash_name).digest()
        out += block
        counter += 1
    return out[:length]


def expand_label(hash_name: str, secret: bytes, label: bytes, context: bytes,
                 length: int) -> bytes:
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes((len(full),)) + full + bytes((len(context),)) \
        + context
    return hkdf_expand(hash_name, secret, info, length)


def derive_secret(hash_name: str, secret: bytes, label: bytes, transcript_hash: bytes) -> bytes:
    return expand_label(hash_name, secret, label, transcript_hash,
                        hashlib.new(hash_name).digest_size)


def finished_mac(hash_name: str, base_key: bytes, transcript_hash: bytes) -> bytes:
    size = hashlib.new(hash_name).digest_size
    key = expand_label(hash_name, base_key, b"finished", b"", size)
    return hmac.new(key, transcript_hash, hash_name).digest()


class Protection:
    """One direction's AEAD state (RFC 8446 section 5.2, 5.3)."""

    def __init__(self, suite: int, secret: bytes) -> None:
        self.suite = suite
        self.hash_name, aead, key_len = SUITES_13[suite]
        self.secret = secret
        self.aead = aead(expand_label(self.hash_name, secret, b"key", b"", key_len))
        self.iv = expand_label(self.hash_name, secret, b"iv", b"", 12)
        self.seq = 0

    def next_generation(self) -> "Protection":
        size = hashlib.new(self.hash_name).digest_size
        return Protection(self.suite, expand_label(self.hash_name, self.secret,
                                                   b"traffic upd", b"", size))

    def _nonce(self) -> bytes:
        seq = self.seq.to_bytes(12, "big")
        self.seq += 1
        return bytes(a ^ b for a, b in zip(self.iv, seq))

    def seal_inner(self, inner: bytes, outer_type: int = s.APPLICATION_DATA) -> bytes:
        """A protected record around an arbitrary TLSInnerPlaintext."""
        header = bytes((outer_type, 3, 3)) + (len(inner) + TAG).to_bytes(2, "big")
        return header + self.aead.encrypt(self._nonce(), inner, header)

    def seal(self, content_type: int, plaintext: bytes, padding_len: int = 0) -> bytes:
        return self.seal_inner(plaintext + bytes((content_type,)) + bytes(padding_len))

    def open(self, record: bytes) -> tuple[int, bytes]:
        header, body = record[:5], record[5:]
        inner = self.aead.decrypt(self._nonce(), body, header)
        stripped = inner.rstrip(b"\x00")
        if not stripped:
            raise ClientError("protected record without a content type")
        return stripped[-1], stripped[:-1]


# --- key exchange ---------------------------------------------------------------------------

class KeyShare:
    """The client's ephemeral key for one group."""

    def __init__(self, group: int) -> None:
        self.group = group
        if group == s.X25519:
            self._x = x25519.X25519PrivateKey.generate()
            self.public = self._x.public_key().public_bytes_raw()
        elif group in _CURVES:
            self._ec = ec.generate_private_key(_CURVES[group]())
            self.public = self._ec.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        elif group == s.X25519MLKEM768:
            # draft-ietf-tls-ecdhe-mlkem: client share = ML-KEM-768 encapsulation key ||
            # X25519 public key.
            self._kem = mlkem.MLKEM768PrivateKey.generate()
            self._x = x25519.X25519PrivateKey.generate()
            self.public = self._kem.public_key().public_bytes_raw() \
                + self._x.public_key().public_bytes_raw()
        else:
            raise ValueError(f"group {group:#x}")

    def shared_secret(self, server_share: bytes) -> bytes:
        if self.group == s.X25519:
            if len(server_share) != 32:
                raise ClientError("X25519 server share of the wrong size")
            return self._x.exchange(x25519.X25519PublicKey.from_public_bytes(server_share))
        if self.group in _CURVES:
            peer = ec.EllipticCurvePublicKey.from_encoded_point(_CURVES[self.group](),
                                                                server_share)
            return self._ec.exchange(ec.ECDH(), peer)
        # server share = ML-KEM ciphertext (1088) || X25519 public (32); secret = ML-KEM
        # shared secret || X25519 shared secret.
        if len(server_share) != 1088 + 32:
            raise ClientError(f"X25519MLKEM768 server share of {len(server_share)} bytes")
        kem_ss = self._kem.decapsulate(server_share[:1088])
        x_ss = self._x.exchange(x25519.X25519PublicKey.from_public_bytes(server_share[1088:]))
        return kem_ss + x_ss


def verify_signature(cert_der: bytes, scheme: int, signature: bytes, content: bytes) -> None:
    """Raises ClientError unless `signature` verifies under the leaf's public key."""
    public = x509.load_der_x509_certificate(cert_der).public_key()
    hash_cls = _HASHES[s.SIGNATURE_SCHEME_HASH[scheme]]
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            curve = {s.ECDSA_SECP256R1_SHA256: "secp256r1", s.ECDSA_SECP384R1_SHA384: "secp384r1",
                     s.ECDSA_SECP521R1_SHA512: "secp521r1"}.get(scheme)
            if curve != public.curve.name:
                raise ClientError(f"scheme {scheme:#06x} does not fit a {public.curve.name} key")
            public.verify(signature, content, ec.ECDSA(hash_cls()))
        elif isinstance(public, rsa.RSAPublicKey):
            if scheme not in (s.RSA_PSS_RSAE_SHA256, s.RSA_PSS_RSAE_SHA384,
                              s.RSA_PSS_RSAE_SHA512):
                raise ClientError(f"scheme {scheme:#06x} is not RSA-PSS (TLS 1.3 needs it)")
            public.verify(signature, content,
                          padding.PSS(mgf=padding.MGF1(hash_cls()),
                                      salt_length=hash_cls.digest_size), hash_cls())
        else:
            raise ClientError("unexpected key type")
    except ClientError:
        raise
    except Exception as e:   # cryptography's InvalidSignature
        raise ClientError(f"CertificateVerify does not verify: {e!r}") from e


# --- the client -------------------------------------------------------------------------

@dataclass
class Options:
    cipher_suites: tuple[int, ...] = ALL_SUITES_13
    groups: tuple[int, ...] = (s.X25519,)                 # supported_groups
    key_share_groups: tuple[int, ...] | None = None       # default: groups[:1]
    signature_algorithms: tuple[int, ...] | None = DEFAULT_SIGALGS   # None: omit
    sni: str | None = "localhost"
    session_id: bytes | None = None     # None: 32 random bytes (middlebox mode); b"": empty
    versions: tuple[int, ...] = (s.TLS13,)
    psk: bool = False                   # offer a made-up PSK (psk_key_exchange_modes, pre_shared_key)
    early_data: bytes = b""             # with psk: 0-RTT data sent after the ClientHello
    send_ccs: bool | None = None        # middlebox CCS before our 2nd flight; None: if session_id
    omit_extensions: tuple[int, ...] = ()
    extra_extensions: tuple[m.Extension, ...] = ()
    # HelloRetryRequest: shares for the second ClientHello; None: the group asked for.
    hrr_key_shares: Callable[[int], tuple[tuple[int, bytes], ...]] | None = None
    handshake_record_size: int = s.MAX_PLAINTEXT   # fragment our handshake messages
    bad_finished: bool = False


class TLS13Client:
    def __init__(self, options: Options | None = None, **kw) -> None:
        self.o = options or Options(**kw)
        o = self.o
        self.random = os.urandom(32)
        self.session_id = os.urandom(32) if o.session_id is None else o.session_id
        self.middlebox_ccs = bool(self.session_id) if o.send_ccs is None else o.send_ccs
        share_groups = o.groups[:1] if o.key_share_groups is None else o.key_share_groups
        self.shares = {g: KeyShare(g) for g in share_groups}
        self._out: list[bytes] = []
        self._inbuf = bytearray()
        self._hsbuf = bytearray()
        self.transcript: list[bytes] = []
        self.read: Protection | None = None
        self.write: Protection | None = None
        self.state = "start"
        # what the server did, for the tests to check
        self.server_hello: m.ServerHello | None = None
        self.hello_retry_request: m.ServerHello | None = None
        self.encrypted_extensions: m.EncryptedExtensions | None = None
        self.certificate: m.Certificate13 | None = None
        self.certificate_verify: m.CertificateVerify | None = None
        self.suite: int | None = None
        self.group: int | None = None
        self.alerts: list[tuple[int, int]] = []
        self.ccs_received = 0
        self.app_data = bytearray()
        self.key_updates_received: list[int] = []
        self.closed_by_server = False
        self.record_types_received: list[int] = []
        self.server_record_sizes: list[int] = []
        self.plaintext_records_received: list[bytes] = []   # raw, unprotected records
        self._early_protection: Protection | None = None

    # ---------------------------------------------------------------- output plumbing
    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def send_raw(self, data: bytes) -> None:
        """Hook: bytes on the wire exactly as given."""
        self._out.append(data)

    def send_plaintext_record(self, content_type: int, payload: bytes,
                              version: int = s.TLS12) -> None:
        """Hook: an unprotected record of any type."""
        self._out.append(bytes((content_type, version >> 8, version & 0xFF))
                         + len(payload).to_bytes(2, "big") + payload)

    def send_protected(self, content_type: int, plaintext: bytes, padding_len: int = 0) -> None:
        """Hook: a record under the current write protection (handshake or application keys)."""
        self._out.append(self.write.seal(content_type, plaintext, padding_len))

    def send_inner(self, inner: bytes, outer_type: int = s.APPLICATION_DATA) -> None:
        """Hook: a protected record around an arbitrary TLSInnerPlaintext."""
        self._out.append(self.write.seal_inner(inner, outer_type))

    def send_handshake(self, data: bytes, record_size: int | None = None) -> None:
        """Handshake bytes (one or more messages, or a fragment), protected once we have
        write keys, cut into records of `record_size` bytes."""
        size = record_size or self.o.handshake_record_size
        for i in range(0, len(data), size):
            chunk = data[i:i + size]
            if self.write is None:
                self.send_plaintext_record(s.HANDSHAKE, chunk,
                                           s.TLS10 if not self.transcript else s.TLS12)
            else:
                self.send_protected(s.HANDSHAKE, chunk)

    def send_ccs(self) -> None:
        self.send_plaintext_record(s.CHANGE_CIPHER_SPEC, b"\x01")

    # ---------------------------------------------------------------- ClientHello
    def _hash_name(self) -> str:
        return SUITES_13[self.suite][0] if self.suite else "sha256"

    def transcript_hash(self) -> bytes:
        return hashlib.new(self._hash_name(), b"".join(self.transcript)).digest()

    def _extensions(self, shares: tuple[tuple[int, bytes], ...], second: bool) \
            -> list[m.Extension]:
        o = self.o
        exts: list[m.Extension] = []
        if o.sni is not None:
            exts.append(m.Extension(s.EXT_SERVER_NAME, m.build_server_name(o.sni)))
        exts.append(m.Extension(s.EXT_SUPPORTED_VERSIONS,
                                m.build_supported_versions_client(o.versions)))
        exts.append(m.Extension(s.EXT_SUPPORTED_GROUPS, m.build_supported_groups(o.groups)))
        if o.signature_algorithms is not None:
            exts.append(m.Extension(s.EXT_SIGNATURE_ALGORITHMS,
                                    m.build_signature_algorithms(o.signature_algorithms)))
        exts.append(m.Extension(s.EXT_KEY_SHARE, m.build_key_share_client(shares)))
        if second and self.hello_retry_request is not None:
            cookie = self.hello_retry_request.extension(s.EXT_COOKIE)
            if cookie is not None:
                exts.append(m.Extension(s.EXT_COOKIE, cookie))
        exts.extend(o.extra_extensions)
        if o.psk:
            exts.append(m.Extension(s.EXT_PSK_KEY_EXCHANGE_MODES,
                                    m.build_psk_key_exchange_modes(b"\x01")))
            if o.early_data and not second:
                exts.append(m.Extension(s.EXT_EARLY_DATA, b""))
        exts = [e for e in exts if e.type not in o.omit_extensions]
        return exts

    def _hello(self, shares: tuple[tuple[int, bytes], ...], second: bool) -> bytes:
        exts = self._extensions(shares, second)
        psk_hash = "sha256"
        if self.o.psk:
            # A made-up resumption PSK the server cannot know; the binder is computed as the
            # RFC says (4.2.11.2) over the truncated ClientHello.
            identity = os.urandom(16)
            size = hashlib.new(psk_hash).digest_size
            placeholder = m.Extension(s.EXT_PRE_SHARED_KEY, m.build_pre_shared_key_client(
                ((identity, 0x01020304),), (bytes(size),)))
            hello = self._build_hello(exts + [placeholder])
            truncated = hello[:-(2 + 1 + size)]
            self._psk = os.urandom(size)
            early = hkdf_extract(psk_hash, bytes(size), self._psk)
            binder_key = derive_secret(psk_hash, early, b"res binder",
                                       hashlib.new(psk_hash).digest())
            prefix = b"".join(self.transcript)
            binder = finished_mac(psk_hash, binder_key,
                                  hashlib.new(psk_hash, prefix + truncated).digest())
            exts.append(m.Extension(s.EXT_PRE_SHARED_KEY, m.build_pre_shared_key_client(
                ((identity, 0x01020304),), (binder,))))
            hello = self._build_hello(exts)
            if not second and self.o.early_data:
                c_e = derive_secret(psk_hash, early, b"c e traffic",
                                    hashlib.new(psk_hash, hello).digest())
                self._early_protection = Protection(0x1301, c_e)
            return hello
        return self._build_hello(exts)

    def _build_hello(self, exts: Sequence[m.Extension]) -> bytes:
        hello = m.ClientHello(legacy_version=s.TLS12, random=self.random,
                              session_id=self.session_id, cipher_suites=self.o.cipher_suites,
                              compression_methods=b"\x00", extensions=tuple(exts))
        return handshake_message(s.HS_CLIENT_HELLO, m.build_client_hello(hello))

    def start(self) -> bytes:
        """Queue the ClientHello (and any 0-RTT data); returns the ClientHello message."""
        shares = tuple((g, k.public) for g, k in self.shares.items())
        hello = self._hello(shares, second=False)
        self.transcript.append(hello)
        self.send_handshake(hello)
        if self._early_protection is not None:
            for i in range(0, len(self.o.early_data), 1000):
                self._out.append(self._early_protection.seal(
                    s.APPLICATION_DATA, self.o.early_data[i:i + 1000]))
        self.state = "wait_server_hello"
        return hello

    # ---------------------------------------------------------------- records in
    def receive(self, data: bytes) -> None:
        self._inbuf += data
        while len(self._inbuf) >= 5:
            length = int.from_bytes(self._inbuf[3:5], "big")
            if len(self._inbuf) < 5 + length:
                return
            record = bytes(self._inbuf[:5 + length])
            del self._inbuf[:5 + length]
            self._record(record)

    def _record(self, record: bytes) -> None:
        content_type = record[0]
        fragment = record[5:]
        self.server_record_sizes.append(len(fragment))
        if record[1:3] != b"\x03\x03":
            raise ClientError(f"record version {record[1:3].hex()}")
        if content_type == s.CHANGE_CIPHER_SPEC:
            if fragment != b"\x01" or self.state == "connected":
                raise ClientError("bad or late change_cipher_spec")
            self.ccs_received += 1
            self.record_types_received.append(content_type)
            return
        if self.read is None or (content_type == s.ALERT and len(fragment) == 2):
            if len(fragment) > s.MAX_PLAINTEXT:
                raise ClientError("plaintext record over 2^14")
            if self.read is not None and self.state != "wait_encrypted_extensions":
                # An unprotected alert is only excusable right after ServerHello.
                raise ClientError("unprotected alert after the handshake keys")
            self.plaintext_records_received.append(record)
            self._inner(content_type, fragment)
            return
        if content_type != s.APPLICATION_DATA:
            raise ClientError(f"unprotected record of type {content_type} after ServerHello")
        if len(fragment) > s.MAX_CIPHERTEXT_13:
            raise ClientError("ciphertext over 2^14+256")
        inner_type, plaintext = self.read.open(record)
        if len(plaintext) > s.MAX_PLAINTEXT:
            raise ClientError("inner plaintext over 2^14")
        self._inner(inner_type, plaintext)

    def _inner(self, content_type: int, plaintext: bytes) -> None:
        self.record_types_received.append(content_type)
        if content_type == s.ALERT:
            alert = m.parse_alert(plaintext)
            self.alerts.append((alert.level, alert.description))
            if alert.description == s.CLOSE_NOTIFY:
                self.closed_by_server = True
            return
        if content_type == s.APPLICATION_DATA:
            if self.state != "connected":
                raise ClientError("application data before the handshake completed")
            self.app_data += plaintext
            return
        if content_type != s.HANDSHAKE:
            raise ClientError(f"record of type {content_type}")
        if not plaintext:
            raise ClientError("empty handshake record")
        self._hsbuf += plaintext
        while len(self._hsbuf) >= 4:
            length = int.from_bytes(self._hsbuf[1:4], "big")
            if len(self._hsbuf) < 4 + length:
                return
            whole = bytes(self._hsbuf[:4 + length])
            del self._hsbuf[:4 + length]
            self._handshake(whole[0], whole[4:], whole)

    # ---------------------------------------------------------------- handshake
    def _handshake(self, msg_type: int, body: bytes, whole: bytes) -> None:
        state = self.state
        if state == "wait_server_hello" and msg_type == s.HS_SERVER_HELLO:
            self._server_hello(m.parse_server_hello(body), whole)
        elif state == "wait_encrypted_extensions" and msg_type == s.HS_ENCRYPTED_EXTENSIONS:
            self.encrypted_extensions = m.parse_encrypted_extensions(body)
            ee = self.encrypted_extensions
            if ee.extension(s.EXT_EARLY_DATA) is not None:
                raise ClientError("server accepted 0-RTT without a PSK")
            for ext in ee.extensions:
                if ext.type in (s.EXT_KEY_SHARE, s.EXT_SUPPORTED_VERSIONS, s.EXT_PRE_SHARED_KEY):
                    raise ClientError(f"extension {ext.type} in EncryptedExtensions")
            self.transcript.append(whole)
            self.state = "wait_certificate"
        elif state == "wait_certificate" and msg_type == s.HS_CERTIFICATE:
            cert = m.parse_certificate13(body)
            if cert.context != b"" or not cert.entries:
                raise ClientError("bad server Certificate")
            self.certificate = cert
            self.transcript.append(whole)
            self.state = "wait_certificate_verify"
        elif state == "wait_certificate_verify" and msg_type == s.HS_CERTIFICATE_VERIFY:
            cv = m.parse_certificate_verify(body)
            if self.o.signature_algorithms is None or cv.scheme not in self.o.signature_algorithms:
                raise ClientError(f"server signed with scheme {cv.scheme:#06x} we did not offer")
            content = b"\x20" * 64 + b"TLS 1.3, server CertificateVerify\x00" \
                + self.transcript_hash()
            verify_signature(self.certificate.entries[0][0], cv.scheme, cv.signature, content)
            self.certificate_verify = cv
            self.transcript.append(whole)
            self.state = "wait_finished"
        elif state == "wait_finished" and msg_type == s.HS_FINISHED:
            expected = finished_mac(self._hash_name(), self._s_hs, self.transcript_hash())
            if not hmac.compare_digest(expected, body):
                raise ClientError("server Finished does not verify")
            self.transcript.append(whole)
            self._server_finished()
        elif state == "connected" and msg_type == s.HS_KEY_UPDATE:
            update = m.parse_key_update(body)
            if self._hsbuf:
                raise ClientError("KeyUpdate not at a record boundary")
            self.key_updates_received.append(update.request_update)
            self.read = self.read.next_generation()
            if update.request_update == m.UPDATE_REQUESTED:
                self.key_update(requested=False)
        elif state == "connected" and msg_type == s.HS_NEW_SESSION_TICKET:
            pass
        else:
            raise ClientError(f"handshake message {msg_type} in state {state}")

    def _server_hello(self, sh: m.ServerHello, whole: bytes) -> None:
        if sh.legacy_version != s.TLS12:
            raise ClientError("ServerHello legacy_version is not 0x0303")
        if sh.session_id != self.session_id:
            raise ClientError("ServerHello does not echo legacy_session_id")
        if sh.cipher_suite not in self.o.cipher_suites:
            raise ClientError(f"server chose suite {sh.cipher_suite:#06x} we did not offer")
        raw = sh.extension(s.EXT_SUPPORTED_VERSIONS)
        if raw is None or m.parse_supported_versions_server(raw) != s.TLS13:
            raise ClientError("ServerHello without supported_versions TLS 1.3")
        if self._hsbuf:
            raise ClientError("ServerHello not at a record boundary")
        for ext in sh.extensions:
            if ext.type not in (s.EXT_SUPPORTED_VERSIONS, s.EXT_KEY_SHARE, s.EXT_COOKIE):
                raise ClientError(f"extension {ext.type} in ServerHello")
        if sh.is_hello_retry_request:
            self._hello_retry_request(sh, whole)
            return
        if self.hello_retry_request is not None \
                and sh.cipher_suite != self.hello_retry_request.cipher_suite:
            raise ClientError("ServerHello suite differs from the HelloRetryRequest's")
        if sh.random[24:] in (s.DOWNGRADE_TLS12, s.DOWNGRADE_TLS11):
            raise ClientError("downgrade sentinel in a TLS 1.3 ServerHello")
        raw = sh.extension(s.EXT_KEY_SHARE)
        if raw is None:
            raise ClientError("ServerHello without key_share")
        group, share = m.parse_key_share_server(raw)
        if group not in self.shares:
            raise ClientError(f"server share for group {group:#x} we sent no share for")
        self.server_hello = sh
        self.suite = sh.cipher_suite
        self.group = group
        self.transcript.append(whole)
        shared = self.shares[group].shared_secret(share)
        h = self._hash_name()
        size = hashlib.new(h).digest_size
        empty = hashlib.new(h).digest()
        early = hkdf_extract(h, bytes(size), bytes(size))
        hs = hkdf_extract(h, derive_secret(h, early, b"derived", empty), shared)
        th = self.transcript_hash()
        self._c_hs = derive_secret(h, hs, b"c hs traffic", th)
        self._s_hs = derive_secret(h, hs, b"s hs traffic", th)
        self._master = hkdf_extract(h, derive_secret(h, hs, b"derived", empty), bytes(size))
        self.read = Protection(self.suite, self._s_hs)
        self.state = "wait_encrypted_extensions"

    def _hello_retry_request(self, hrr: m.ServerHello, whole: bytes) -> None:
        if self.hello_retry_request is not None:
            raise ClientError("second HelloRetryRequest")
        if hrr.session_id != self.session_id:
            raise ClientError("HelloRetryRequest does not echo legacy_session_id")
        raw = hrr.extension(s.EXT_KEY_SHARE)
        if raw is None:
            raise ClientError("HelloRetryRequest without key_share (and we send no cookie)")
        group = m.parse_key_share_hrr(raw)
        if group not in self.o.groups or group in self.shares:
            raise ClientError(f"HelloRetryRequest asks for group {group:#x}")
        self.hello_retry_request = hrr
        self.suite = hrr.cipher_suite
        # RFC 8446 4.4.1: ClientHello1 replaced by message_hash.
        ch1 = hashlib.new(self._hash_name(), self.transcript[0]).digest()
        self.transcript = [bytes((s.HS_MESSAGE_HASH, 0, 0, len(ch1))) + ch1, whole]
        if self.o.hrr_key_shares is not None:
            shares = self.o.hrr_key_shares(group)
        else:
            self.shares = {group: KeyShare(group)}
            shares = ((group, self.shares[group].public),)
        if self.middlebox_ccs:
            # RFC 8446 D.4: the client's CCS may go right before its second ClientHello.
            self.send_ccs()
            self.middlebox_ccs = False
        self.hello_retry_group = group
        hello = self._hello(shares, second=True)
        self.transcript.append(hello)
        self.send_handshake(hello)

    def _server_finished(self) -> None:
        h = self._hash_name()
        th = self.transcript_hash()
        self._c_ap = derive_secret(h, self._master, b"c ap traffic", th)
        self._s_ap = derive_secret(h, self._master, b"s ap traffic", th)
        self.read = Protection(self.suite, self._s_ap)
        if self.middlebox_ccs:
            self.send_ccs()
        self.write = Protection(self.suite, self._c_hs)
        verify = finished_mac(h, self._c_hs, th)
        if self.o.bad_finished:
            verify = bytes((verify[0] ^ 1,)) + verify[1:]
        fin = handshake_message(s.HS_FINISHED, verify)
        self.transcript.append(fin)
        self.send_handshake(fin)
        self.write = Protection(self.suite, self._c_ap)
        self.state = "connected"

    # ---------------------------------------------------------------- after the handshake
    @property
    def connected(self) -> bool:
        return self.state == "connected"

    def send(self, data: bytes, record_size: int = s.MAX_PLAINTEXT, padding_len: int = 0) -> None:
        for i in range(0, len(data), record_size):
            self.send_protected(s.APPLICATION_DATA, data[i:i + record_size], padding_len)

    def key_update(self, requested: bool) -> None:
        """Send KeyUpdate under the current key, then switch our write key."""
        msg = handshake_message(s.HS_KEY_UPDATE, m.build_key_update(
            m.KeyUpdate(m.UPDATE_REQUESTED if requested else m.UPDATE_NOT_REQUESTED)))
        self.send_protected(s.HANDSHAKE, msg)
        self.write = self.write.next_generation()

    def close(self) -> None:
        self.send_protected(s.ALERT, b"\x01\x00")

    def decrypt_record(self, record: bytes) -> tuple[int, bytes]:
        """Hook: open one server record with the current read keys."""
        return self.read.open(record)


# --- wiring to a ServerConnection, no sockets ------------------------------------------------

class Wire:
    """Moves bytes between a TLS13Client and a tlswrapper ServerConnection in memory, answers
    ClientHelloReceived with `candidates`, and keeps every server event."""

    def __init__(self, server, client: TLS13Client, candidates) -> None:
        self.server = server
        self.client = client
        self.candidates = candidates
        self.events: list = []
        self.server_bytes: list[bytes] = []   # every chunk the server wrote, in order

    def _server_events(self, events: list) -> None:
        from tlswrapper.tls.events import ClientHelloReceived
        for ev in events:
            self.events.append(ev)
            if isinstance(ev, ClientHelloReceived):
                self._server_events(self.server.choose_certificate(self.candidates))

    def pump(self, max_rounds: int = 100) -> None:
        for _ in range(max_rounds):
            moved = False
            out = self.client.data_to_send()
            if out:
                self._server_events(self.server.receive(out))
                moved = True
            back = self.server.outgoing()
            if back:
                self.server_bytes.append(back)
                self.client.receive(back)
                moved = True
            if not moved:
                return
        raise AssertionError("no quiescence after many rounds")

    def feed_server(self, data: bytes) -> list:
        """Bytes straight to the server; returns the new events and delivers its answer."""
        start = len(self.events)
        self._server_events(self.server.receive(data))
        back = self.server.outgoing()
        if back:
            self.server_bytes.append(back)
            self.client.receive(back)
        return self.events[start:]

    def handshake(self) -> None:
        if self.client.state == "start":
            self.client.start()
        self.pump()

    def of_type(self, cls) -> list:
        return [e for e in self.events if isinstance(e, cls)]

    def app_data(self) -> bytes:
        from tlswrapper.tls.events import ApplicationData
        return b"".join(e.data for e in self.events if isinstance(e, ApplicationData))
