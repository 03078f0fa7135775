"""A minimal TLS 1.2 client for tests, sans-IO: any ClientHello the test builds (tests/support/hostile.py),
then ECDHE X25519 and TLS_ECDHE_*_WITH_AES_128_GCM_SHA256 (RFC 5246, RFC 5288, RFC 7627
extended master secret when the server echoes it). Rule: its PRF and record protection are
written here from the RFCs, independent of keys/, so that the two cross-check each other.
It does not verify the server's certificate or signature (the tests check the server's
behaviour, and test_engine_12 runs OpenSSL's client for that)."""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tlswrapper.tls import messages as m
from tlswrapper.tls import suites as s
from tlswrapper.tls.wire import handshake_message

SUITES = (0xC02B, 0xC02F)   # ECDHE_ECDSA / ECDHE_RSA _WITH_AES_128_GCM_SHA256


def prf(secret: bytes, label: bytes, seed: bytes, size: int) -> bytes:
    """RFC 5246 section 5, P_SHA256."""
    out, a = b"", label + seed
    while len(out) < size:
        a = hmac.new(secret, a, hashlib.sha256).digest()
        out += hmac.new(secret, a + label + seed, hashlib.sha256).digest()
    return out[:size]


class Gcm:
    """One direction of AES-128-GCM record protection (RFC 5288)."""

    def __init__(self, key: bytes, salt: bytes) -> None:
        self.aead, self.salt, self.seq = AESGCM(key), salt, 0

    def seal(self, content_type: int, plaintext: bytes) -> bytes:
        explicit = self.seq.to_bytes(8, "big")
        aad = explicit + bytes((content_type, 3, 3)) + len(plaintext).to_bytes(2, "big")
        body = explicit + self.aead.encrypt(self.salt + explicit, plaintext, aad)
        self.seq += 1
        return bytes((content_type, 3, 3)) + len(body).to_bytes(2, "big") + body

    def open(self, content_type: int, fragment: bytes) -> bytes:
        explicit, sealed = fragment[:8], fragment[8:]
        aad = self.seq.to_bytes(8, "big") + bytes((content_type, 3, 3)) \
            + (len(sealed) - 16).to_bytes(2, "big")
        self.seq += 1
        return self.aead.decrypt(self.salt + explicit, sealed, aad)


class TLS12Client:
    def __init__(self, hello: bytes) -> None:
        """`hello`: the whole ClientHello message (handshake header included)."""
        self.hello = hello
        self.transcript = [hello]
        self.random = m.parse_client_hello(hello[4:]).random
        self._in = bytearray()
        self._hs = bytearray()
        self._out: list[bytes] = []
        self.read: Gcm | None = None
        self.write: Gcm | None = None
        self.state = "wait_server_hello_done"
        self.alerts: list[tuple[int, int]] = []
        self.app_data = bytearray()
        self._server_random = b""
        self._ems = False
        self._group = 0
        self._server_public = b""
        self._master = b""

    @property
    def connected(self) -> bool:
        return self.state == "connected"

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def send(self, data: bytes) -> None:
        self._out.append(self.write.seal(s.APPLICATION_DATA, data))

    def receive(self, data: bytes) -> None:
        self._in += data
        while len(self._in) >= 5:
            length = int.from_bytes(self._in[3:5], "big")
            if len(self._in) < 5 + length:
                return
            content_type, fragment = self._in[0], bytes(self._in[5:5 + length])
            del self._in[:5 + length]
            if self.read is not None and content_type != s.CHANGE_CIPHER_SPEC:
                fragment = self.read.open(content_type, fragment)
            self._record(content_type, fragment)

    def _record(self, content_type: int, fragment: bytes) -> None:
        if content_type == s.ALERT:
            self.alerts.append((fragment[0], fragment[1]))
        elif content_type == s.CHANGE_CIPHER_SPEC:
            self.read = Gcm(self._keys[16:32], self._keys[36:40])
        elif content_type == s.APPLICATION_DATA:
            self.app_data += fragment
        elif content_type == s.HANDSHAKE:
            self._hs += fragment
            while len(self._hs) >= 4 and len(self._hs) >= 4 + int.from_bytes(self._hs[1:4],
                                                                                  "big"):
                n = 4 + int.from_bytes(self._hs[1:4], "big")
                whole = bytes(self._hs[:n])
                del self._hs[:n]
                self._handshake(whole)

    def _handshake(self, whole: bytes) -> None:
        msg_type, body = whole[0], whole[4:]
        if msg_type == s.HS_FINISHED:
            expected = prf(self._master, b"server finished",
                           hashlib.sha256(b"".join(self.transcript)).digest(), 12)
            assert body == expected, "server Finished does not verify"
            self.state = "connected"
            return
        self.transcript.append(whole)
        if msg_type == s.HS_SERVER_HELLO:
            sh = m.parse_server_hello(body)
            assert sh.cipher_suite in SUITES, hex(sh.cipher_suite)
            self._server_random = sh.random
            self._ems = sh.extension(s.EXT_EXTENDED_MASTER_SECRET) is not None
        elif msg_type == s.HS_SERVER_KEY_EXCHANGE:
            ske = m.parse_server_key_exchange(body, True)
            assert ske.group == s.X25519, ske.group
            self._server_public = ske.public
        elif msg_type == s.HS_SERVER_HELLO_DONE:
            self._finish()

    def _finish(self) -> None:
        key = x25519.X25519PrivateKey.generate()
        premaster = key.exchange(x25519.X25519PublicKey.from_public_bytes(self._server_public))
        cke = handshake_message(s.HS_CLIENT_KEY_EXCHANGE, m.build_client_key_exchange(
            m.ClientKeyExchangeECDHE(key.public_key().public_bytes_raw())))
        self.transcript.append(cke)
        if self._ems:
            self._master = prf(premaster, b"extended master secret",
                               hashlib.sha256(b"".join(self.transcript)).digest(), 48)
        else:
            self._master = prf(premaster, b"master secret",
                               self.random + self._server_random, 48)
        # client key, server key (16 each), client and server fixed IV (4 each)
        self._keys = prf(self._master, b"key expansion", self._server_random + self.random, 40)
        verify = prf(self._master, b"client finished",
                     hashlib.sha256(b"".join(self.transcript)).digest(), 12)
        fin = handshake_message(s.HS_FINISHED, verify)
        self._out.append(b"\x16\x03\x03" + len(cke).to_bytes(2, "big") + cke)
        self._out.append(b"\x14\x03\x03\x00\x01\x01")
        self.write = Gcm(self._keys[0:16], self._keys[32:36])
        self._out.append(self.write.seal(s.HANDSHAKE, fin))
        self.transcript.append(fin)
