"""TLS 1.0 / 1.1 and the CBC suites (-m tls10/tls11, -c AES_*_CBC_*), encrypt-then-MAC
(RFC 7366), the Lucky Thirteen countermeasure seen from the engine, and -s / -S.

Two layers:
- in memory: Python's ssl (OpenSSL 3.0) over MemoryBIOs against a ServerConnection with the
  in-process KeyService (SslWire from test_engine_12), plus hand-built ClientHellos and
  hand-built CBC records (the client's keys come from OpenSSL's key log and a PRF written
  here, so a record can be made with a bad MAC or a bad padding on purpose);
- end to end: `tcpserver ... tlswrapper -m tls10 -c ... -- prog` against openssl s_client and
  gnutls-cli, 1 MiB each way compared by hash, and the same against Debian's C tlswrapper.

Known difference with Debian's tlswrapper 20230101 (BearSSL), pinned below: in TLS 1.0 it
ends the connection ("invalid padding, or the record MAC is not correct") on the empty
record OpenSSL sends before each application record (the CBC chained-IV countermeasure);
with `s_client -bugs` (no empty fragments) or gnutls-cli it works. It offers neither
encrypt-then-MAC nor extended master secret. It frames its protocol_version alert with record
version 0x0000, which OpenSSL reports as "wrong version number". It stops relaying when the
client sends close_notify (ours relays prog's answer after it), hence talk_then_close().
"""

from __future__ import annotations

import hashlib
import hmac
import os
import random
import re
import select
import ssl
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass

import pytest
from testenv import DEBIAN_TLSWRAPPER, free_port, our_command, wait_for_port, which
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from test_engine_12 import SslWire, handshake_messages, records

from tlswrapper.keys.local import LocalKeyService
from tlswrapper.tls import messages as m
from tlswrapper.tls import suites as s
from tlswrapper.tls.config import ServerConfig
from tlswrapper.tls.events import (
    ApplicationData,
    ClientHelloReceived,
    ConnectionFailed,
    HandshakeComplete,
)
from tlswrapper.tls.server import MAX_EMPTY_RECORDS, ServerConnection
from tlswrapper.tls.wire import handshake_message

MiB = 1 << 20
CBC_NAMES = ("AES_128_CBC_SHA", "AES_256_CBC_SHA", "AES_128_CBC_SHA256", "AES_256_CBC_SHA384")
ALL_GROUPS = tuple(s.GROUP_NAMES)
OP_NO_ENCRYPT_THEN_MAC = 1 << 19   # SSL_OP_NO_ENCRYPT_THEN_MAC (OpenSSL 3); ssl has no name

# IANA code -> OpenSSL name, for the CBC suites.
OPENSSL_CBC = {
    0xC009: "ECDHE-ECDSA-AES128-SHA", 0xC013: "ECDHE-RSA-AES128-SHA",
    0xC00A: "ECDHE-ECDSA-AES256-SHA", 0xC014: "ECDHE-RSA-AES256-SHA",
    0xC023: "ECDHE-ECDSA-AES128-SHA256", 0xC027: "ECDHE-RSA-AES128-SHA256",
    0xC024: "ECDHE-ECDSA-AES256-SHA384", 0xC028: "ECDHE-RSA-AES256-SHA384",
}
SSL_VERSION = {s.TLS10: "TLSv1", s.TLS11: "TLSv1_1", s.TLS12: "TLSv1_2"}


def legacy_config(**kw) -> ServerConfig:
    kw.setdefault("version_min", s.TLS10)
    kw.setdefault("ciphers", CBC_NAMES)
    kw.setdefault("groups", ALL_GROUPS)
    return ServerConfig(**kw)


def ssl_client(pki, version: int, cipher: str, etm: bool = True,
               keylog: str | None = None) -> ssl.SSLContext:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # ssl.TLSVersion.TLSv1, TLSv1_1
        tls_version = getattr(ssl.TLSVersion, SSL_VERSION[version])
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ctx.maximum_version = tls_version
    ctx.load_verify_locations(cafile=str(pki.ca_pem))
    ctx.set_ciphers(cipher + ":@SECLEVEL=0")   # OpenSSL 3.0 refuses TLS 1.0/1.1 above 0
    if not etm:
        ctx.options |= OP_NO_ENCRYPT_THEN_MAC
    if keylog:
        ctx.keylog_filename = keylog
    return ctx


def _cert_for(code: int) -> str:
    return "ecdsa-p256" if s.SUITES[code].auth == "ecdsa" else "rsa-2048"


def _engine_matrix():
    for version in (s.TLS10, s.TLS11, s.TLS12):
        for code, name in OPENSSL_CBC.items():
            if not s.SUITES[code].version_min <= version <= s.SUITES[code].version_max:
                continue
            for etm in (True, False):
                yield pytest.param(version, code, etm,
                                   id=f"{s.VERSION_LABELS[version]}-{name}-{'etm' if etm else 'mte'}")


# --- in memory: Python's ssl ------------------------------------------------------------------

@pytest.mark.parametrize("version, code, etm", list(_engine_matrix()))
def test_engine_cbc_suites(pki, version, code, etm):
    ctx = ssl_client(pki, version, OPENSSL_CBC[code], etm)
    w = SslWire(pki, ctx, certs=(_cert_for(code),), config=legacy_config())
    w.handshake()
    assert (w.client_hello().extension(s.EXT_ENCRYPT_THEN_MAC) is not None) is etm
    done = w.of_type(HandshakeComplete)[0]
    assert (done.version, done.cipher_suite) == (version, code)
    assert w.tls.cipher()[0] == OPENSSL_CBC[code]
    sh = w.server_hello()
    assert sh.legacy_version == version
    assert sh.extension(s.EXT_SUPPORTED_VERSIONS) is None
    # RFC 7366: echoed (empty) exactly when offered, for a CBC suite.
    assert sh.extension(s.EXT_ENCRYPT_THEN_MAC) == (b"" if etm else None)
    # The server's plaintext records carry the negotiated version.
    assert all(rec[1:3] == version.to_bytes(2, "big") for rec in _raw_records(w.server_chunks[0]))
    msgs = dict(handshake_messages(w.server_chunks[0]))
    if version < s.TLS12:
        # No SignatureAndHashAlgorithm in TLS 1.0/1.1 (RFC 4492 5.4); DOWNGRD\x00 since our
        # maximum is above 1.1 (RFC 8446 4.1.3).
        ske = m.parse_server_key_exchange(msgs[s.HS_SERVER_KEY_EXCHANGE], False)
        assert ske.scheme is None
        assert sh.random[24:] == s.DOWNGRADE_TLS11
    else:
        ske = m.parse_server_key_exchange(msgs[s.HS_SERVER_KEY_EXCHANGE], True)
        assert ske.scheme is not None
        assert sh.random[24:] == s.DOWNGRADE_TLS12
    w.exchange(40000)   # several full records each way, and a short one


def _raw_records(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos + 5 <= len(data):
        n = int.from_bytes(data[pos + 3:pos + 5], "big")
        out.append(data[pos:pos + 5 + n])
        pos += 5 + n
    return out


@pytest.mark.parametrize("version", [s.TLS10, s.TLS11])
def test_no_downgrade_sentinel_when_max_is_legacy(pki, version):
    config = legacy_config(version_max=s.TLS11)
    w = SslWire(pki, ssl_client(pki, version, "ECDHE-ECDSA-AES128-SHA"), config=config)
    w.handshake()
    assert w.server_hello().random[24:] not in (s.DOWNGRADE_TLS11, s.DOWNGRADE_TLS12)
    w.exchange(100)


def test_no_encrypt_then_mac_for_aead(pki):
    # OpenSSL offers encrypt_then_mac in TLS 1.2 whatever the suites; an AEAD suite ignores it
    # (RFC 7366 section 3).
    ctx = ssl_client(pki, s.TLS12, "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-SHA")
    w = SslWire(pki, ctx, config=legacy_config(ciphers=("AES_128_GCM_SHA256",
                                                         "AES_128_CBC_SHA")))
    w.handshake()
    assert w.client_hello().extension(s.EXT_ENCRYPT_THEN_MAC) is not None
    assert w.of_type(HandshakeComplete)[0].cipher_suite == 0xC02B
    assert w.server_hello().extension(s.EXT_ENCRYPT_THEN_MAC) is None
    w.exchange(1000)


@pytest.mark.parametrize("server_preference, expected", [(True, 0xC00A), (False, 0xC009)])
def test_engine_server_or_client_preference(pki, server_preference, expected):
    # Server order AES_256 then AES_128; the client's order is the other way round.
    config = legacy_config(ciphers=("AES_256_CBC_SHA", "AES_128_CBC_SHA"),
                           server_preference=server_preference)
    ctx = ssl_client(pki, s.TLS11, "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA")
    w = SslWire(pki, ctx, config=config)
    w.handshake()
    assert w.client_hello().cipher_suites[:2] == (0xC009, 0xC00A)
    assert w.of_type(HandshakeComplete)[0].cipher_suite == expected


# --- in memory: hand-built ClientHellos -------------------------------------------------------

def client_hello(suites_: tuple[int, ...], legacy_version: int = s.TLS12,
                 versions: tuple[int, ...] | None = None, etm: bytes | None = None,
                 signature_algorithms: bool = True) -> bytes:
    exts = [
        m.Extension(s.EXT_SUPPORTED_GROUPS, m.build_supported_groups((s.X25519, s.SECP256R1))),
        m.Extension(s.EXT_EC_POINT_FORMATS, m.build_ec_point_formats(b"\x00")),
    ]
    if signature_algorithms:
        exts.append(m.Extension(s.EXT_SIGNATURE_ALGORITHMS, m.build_signature_algorithms(
            (s.ECDSA_SECP256R1_SHA256, s.RSA_PKCS1_SHA256, s.ECDSA_SHA1, s.RSA_PKCS1_SHA1))))
    if versions is not None:
        exts.append(m.Extension(s.EXT_SUPPORTED_VERSIONS,
                                m.build_supported_versions_client(versions)))
    if etm is not None:
        exts.append(m.Extension(s.EXT_ENCRYPT_THEN_MAC, etm))
    body = m.build_client_hello(m.ClientHello(legacy_version, os.urandom(32), b"",
                                              tuple(suites_), b"\x00", tuple(exts)))
    msg = handshake_message(s.HS_CLIENT_HELLO, body)
    return b"\x16\x03\x01" + len(msg).to_bytes(2, "big") + msg


def _hello_result(pki, hello: bytes, config: ServerConfig, cert: str = "ecdsa-p256"):
    """(events, outgoing records) after a hand-built ClientHello."""
    keys = LocalKeyService()
    server = ServerConnection(config, keys)
    candidates = keys.load([str(pki[cert].path)])
    events = server.receive(hello)
    if events and isinstance(events[-1], ClientHelloReceived):
        events += server.choose_certificate(candidates)
    out = server.outgoing()
    return server, events, out


@pytest.mark.parametrize("legacy_version", [s.TLS10, s.TLS11])
@pytest.mark.parametrize("offered", [
    pytest.param((0xC02B, 0xC02C, 0xCCA9), id="aead"),
    pytest.param((0xC023, 0xC024), id="cbc-sha256-sha384"),
])
def test_tls12_only_suites_refused_below_tls12(pki, legacy_version, offered):
    config = legacy_config(ciphers=s.CIPHER_NAMES)
    _, events, recs = _hello_result(pki, client_hello(offered, legacy_version), config)
    assert isinstance(events[-1], ConnectionFailed)
    assert events[-1].alert == s.HANDSHAKE_FAILURE
    assert records(recs) == [(s.ALERT, bytes((2, s.HANDSHAKE_FAILURE)))]


def test_aead_and_cbc_offered_in_tls11_picks_cbc(pki):
    config = legacy_config(ciphers=s.CIPHER_NAMES)   # AEAD first in the server's order
    server, events, _ = _hello_result(pki, client_hello((0xC02B, 0xCCA9, 0xC009), s.TLS11),
                                      config)
    assert not any(isinstance(e, ConnectionFailed) for e in events)
    assert (server.version, server.suite.code) == (s.TLS11, 0xC009)


@pytest.mark.parametrize("versions, expected", [
    ((s.TLS11, s.TLS10), s.TLS11),
    ((s.TLS10,), s.TLS10),
    ((0x7F1C, s.TLS12, s.TLS11), s.TLS12),     # an unknown draft value is skipped
])
def test_supported_versions_lists_legacy_versions(pki, versions, expected):
    hello = client_hello((0xC009,), s.TLS12, versions=versions)
    server, events, recs = _hello_result(pki, hello, legacy_config())
    assert not any(isinstance(e, ConnectionFailed) for e in events), events
    assert server.version == expected
    assert recs[1:3] == min(expected, s.TLS12).to_bytes(2, "big")   # record version
    sh = m.parse_server_hello(handshake_messages(recs)[0][1])
    assert sh.legacy_version == expected
    assert sh.extension(s.EXT_SUPPORTED_VERSIONS) is None   # only TLS 1.3 answers with it


@pytest.mark.parametrize("hello", [
    pytest.param(client_hello((0xC009,), s.TLS11), id="legacy_version-1.1"),
    pytest.param(client_hello((0xC009,), s.TLS12, versions=(s.TLS11, s.TLS10)),
                 id="supported_versions-1.1-1.0"),
])
def test_legacy_client_against_tls12_minimum_is_protocol_version(pki, hello):
    _, events, recs = _hello_result(pki, hello, ServerConfig(ciphers=CBC_NAMES))
    assert events[-1].alert == s.PROTOCOL_VERSION
    assert records(recs) == [(s.ALERT, bytes((2, s.PROTOCOL_VERSION)))]


def test_encrypt_then_mac_with_data_is_decode_error(pki):
    _, events, _ = _hello_result(pki, client_hello((0xC009,), s.TLS11, etm=b"\x00"),
                                 legacy_config())
    assert events[-1].alert == s.DECODE_ERROR


def test_tls10_client_without_signature_algorithms(pki):
    # A TLS 1.0 ClientHello has no signature_algorithms; the RSA signature is over MD5||SHA-1.
    hello = client_hello((0xC013,), s.TLS10, signature_algorithms=False)
    server, events, _ = _hello_result(pki, hello, legacy_config(), cert="rsa-2048")
    assert not any(isinstance(e, ConnectionFailed) for e in events), events
    assert server.scheme == s.LEGACY_RSA_MD5_SHA1


# --- in memory: hand-built CBC records (Lucky Thirteen, empty records) -------------------------

def _prf(version: int, prf_hash: str, secret: bytes, label: bytes, seed: bytes,
         length: int) -> bytes:
    """RFC 5246 section 5 / RFC 2246 section 5, written here for the test."""
    def p_hash(name, key, data):
        out, a = b"", data
        while len(out) < length:
            a = hmac.new(key, a, name).digest()
            out += hmac.new(key, a + data, name).digest()
        return out[:length]
    if version == s.TLS12:
        return p_hash(prf_hash, secret, label + seed)
    half = (len(secret) + 1) // 2
    md5 = p_hash("md5", secret[:half], label + seed)
    sha = p_hash("sha1", secret[len(secret) - half:], label + seed)
    return bytes(x ^ y for x, y in zip(md5, sha))


@dataclass
class CbcSide:
    """One direction's CBC + HMAC state, independent of keys/protect.py."""
    version: int
    key: bytes
    mac_key: bytes
    mac_hash: str
    etm: bool
    seq: int
    chain: bytes      # TLS 1.0: the last ciphertext block sent in this direction

    def _encrypt(self, data: bytes) -> bytes:
        iv = self.chain if self.version == s.TLS10 else os.urandom(16)
        enc = Cipher(algorithms.AES(self.key), modes.CBC(iv)).encryptor()
        body = enc.update(data) + enc.finalize()
        self.chain = body[-16:]
        return body if self.version == s.TLS10 else iv + body

    def _mac(self, content_type: int, data: bytes) -> bytes:
        header = self.seq.to_bytes(8, "big") + bytes((content_type,)) \
            + self.version.to_bytes(2, "big") + len(data).to_bytes(2, "big")
        return hmac.new(self.mac_key, header + data, self.mac_hash).digest()

    def record(self, content_type: int, plaintext: bytes, fault: str | None = None) -> bytes:
        """A whole record. fault: None, "mac" (one MAC bit flipped, padding good),
        "padding" (MAC good, one padding byte wrong), "padlen" (MAC good, padding length
        byte larger than the record)."""
        mac = bytearray(self._mac(content_type, plaintext)) if not self.etm else b""
        if fault == "mac" and not self.etm:
            mac[0] ^= 0x01
        n = len(plaintext) + len(mac)
        pad = 15 - n % 16
        if fault in ("padding", "padlen") and pad < 2:
            pad += 16                     # room for a wrong byte before the length byte
        padding = bytearray((pad,) * (pad + 1))
        if fault == "padding":
            padding[0] ^= 0x40
        elif fault == "padlen":
            padding[-1] = 255
        body = self._encrypt(plaintext + bytes(mac) + bytes(padding))
        if self.etm:
            mac = bytearray(self._mac(content_type, body))
            if fault == "mac":
                mac[0] ^= 0x01
            body += bytes(mac)
        self.seq += 1
        return bytes((content_type,)) + self.version.to_bytes(2, "big") \
            + len(body).to_bytes(2, "big") + body

    def open(self, record: bytes) -> tuple[int, bytes]:
        """Decrypt one record (MAC not checked: the test only wants to read an alert)."""
        content_type, frag = record[0], record[5:]
        if self.etm:
            frag = frag[:-len(self._mac(0, b""))]
        if self.version == s.TLS10:
            iv, body = self.chain, frag
        else:
            iv, body = frag[:16], frag[16:]
        dec = Cipher(algorithms.AES(self.key), modes.CBC(iv)).decryptor()
        plain = dec.update(body) + dec.finalize()
        self.chain = body[-16:]
        plain = plain[:-(plain[-1] + 1)]
        if not self.etm:
            plain = plain[:-len(self._mac(0, b""))]
        self.seq += 1
        return content_type, plain


def _last_cipher_block(chunks: list[bytes], mac_len: int) -> bytes:
    last = _raw_records(b"".join(chunks))[-1]
    end = len(last) - mac_len
    return last[end - 16:end]


def cbc_connection(pki, tmp_path, version: int, code: int, etm: bool):
    """A finished handshake through Python's ssl, then both sides' record state taken over:
    returns (server ServerConnection, client CbcSide, server CbcSide)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    keylog = tmp_path / "keys.log"
    ctx = ssl_client(pki, version, OPENSSL_CBC[code], etm, keylog=str(keylog))
    w = SslWire(pki, ctx, certs=(_cert_for(code),), config=legacy_config())
    w.handshake()
    suite = s.SUITES[code]
    client_random = w.client_hello().random
    server_random = w.server_hello().random
    master = next(bytes.fromhex(line.split()[2]) for line in keylog.read_text().splitlines()
                  if line.startswith("CLIENT_RANDOM " + client_random.hex()))
    mac_len, key_len = suite.mac_len, suite.key_len
    block = _prf(version, suite.prf_hash, master, b"key expansion",
                 server_random + client_random, 2 * (mac_len + key_len + 16))
    cmac, smac = block[:mac_len], block[mac_len:2 * mac_len]
    p = 2 * mac_len
    ckey, skey = block[p:p + key_len], block[p + key_len:p + 2 * key_len]
    etm_mac = mac_len if etm else 0
    # Sequence 0 went to each side's Finished.
    client = CbcSide(version, ckey, cmac, suite.mac, etm, 1,
                     _last_cipher_block(w.client_chunks, etm_mac))
    server = CbcSide(version, skey, smac, suite.mac, etm, 1,
                     _last_cipher_block(w.server_chunks, etm_mac))
    return w.server, client, server


LUCKY_CASES = [pytest.param(v, c, id=f"{s.VERSION_LABELS[v]}-{OPENSSL_CBC[c]}")
               for v, c in ((s.TLS12, 0xC013), (s.TLS12, 0xC027), (s.TLS12, 0xC024),
                            (s.TLS11, 0xC00A), (s.TLS10, 0xC009))]


@pytest.mark.parametrize("version, code", LUCKY_CASES)
@pytest.mark.parametrize("etm", [False, True], ids=["mte", "etm"])
def test_crafted_records_are_accepted(pki, tmp_path, version, code, etm):
    # The record maker is right: good records of every padding length open.
    server, client, _ = cbc_connection(pki, tmp_path, version, code, etm)
    for n in list(range(1, 40)) + [1000, 16384]:
        plaintext = os.urandom(n)
        events = server.receive(client.record(s.APPLICATION_DATA, plaintext))
        assert events == [ApplicationData(plaintext)], events


@pytest.mark.parametrize("version, code", LUCKY_CASES)
@pytest.mark.parametrize("size", [0, 1, 100, 1000, 16384])
def test_lucky13_bad_padding_and_bad_mac_fail_identically(pki, tmp_path, version, code, size):
    """MAC-then-encrypt: a bad MAC, a bad padding byte and an impossible padding length all
    end the connection the same way: bad_record_mac, the same log reason, the same alert
    record (length and content). (Timing: bench/lucky13.py; no timing assertion here.)"""
    outcomes = {}
    for fault in ("mac", "padding", "padlen"):
        server, client, server_side = cbc_connection(pki, tmp_path / fault, version, code,
                                                     False)
        good = b"x" * (size or 1)
        assert server.receive(client.record(s.APPLICATION_DATA, good)) == \
            [ApplicationData(good)]
        assert server.outgoing() == b""
        events = server.receive(client.record(s.APPLICATION_DATA, os.urandom(size), fault))
        failed = [e for e in events if isinstance(e, ConnectionFailed)]
        assert len(failed) == 1, (fault, events)
        assert not any(isinstance(e, ApplicationData) for e in events)
        alert_records = _raw_records(server.outgoing())
        assert len(alert_records) == 1
        alert = server_side.open(alert_records[0])
        outcomes[fault] = (failed[0].alert, failed[0].reason, len(alert_records[0]), alert)
        assert server.failed
    assert outcomes["mac"][0] == s.BAD_RECORD_MAC
    assert outcomes["mac"][3] == (s.ALERT, bytes((2, s.BAD_RECORD_MAC)))
    assert outcomes["mac"] == outcomes["padding"] == outcomes["padlen"], outcomes


@pytest.mark.parametrize("version, code", LUCKY_CASES[:1] + LUCKY_CASES[-1:])
def test_etm_bad_mac_is_bad_record_mac(pki, tmp_path, version, code):
    server, client, server_side = cbc_connection(pki, tmp_path, version, code, True)
    events = server.receive(client.record(s.APPLICATION_DATA, b"hello", "mac"))
    assert events[-1].alert == s.BAD_RECORD_MAC
    assert server_side.open(server.outgoing()) == (s.ALERT, bytes((2, s.BAD_RECORD_MAC)))


@pytest.mark.parametrize("etm", [False, True], ids=["mte", "etm"])
def test_tls10_empty_and_split_records(pki, tmp_path, etm):
    # OpenSSL's TLS 1.0 countermeasure (an empty record before each one) and the 1/n-1
    # split (a 1-byte record, then the rest) are both accepted.
    server, client, _ = cbc_connection(pki, tmp_path, s.TLS10, 0xC013, etm)
    got = bytearray()
    for chunk in (b"", b"h", b"ello", b"", b"", b"w", b"orld"):
        for e in server.receive(client.record(s.APPLICATION_DATA, chunk)):
            assert isinstance(e, ApplicationData), e
            got += e.data
    assert got == b"helloworld"
    events = []
    for _ in range(MAX_EMPTY_RECORDS + 1):
        events += server.receive(client.record(s.APPLICATION_DATA, b""))
    assert events[-1].alert == s.UNEXPECTED_MESSAGE


def test_cbc_record_limit_is_2_14_plus_2048(pki, tmp_path):
    server, _, _ = cbc_connection(pki, tmp_path, s.TLS12, 0xC024, False)
    # A record just over 2^14+2048 bytes of ciphertext: record_overflow before decryption.
    body = os.urandom((1 << 14) + 2048 + 16 - ((1 << 14) + 2048) % 16)
    events = server.receive(b"\x17\x03\x03" + len(body).to_bytes(2, "big") + body)
    assert events[-1].alert == s.RECORD_OVERFLOW


# --- end to end: tcpserver + tlswrapper + real clients ----------------------------------------

PROG = """\
import hashlib, random, sys
n = int(sys.argv[1])
data = sys.stdin.buffer.read(n)
sys.stdout.buffer.write(hashlib.sha256(data).hexdigest().encode() + b"\\n")
sys.stdout.buffer.write(random.Random(2).randbytes(n))
sys.stdout.buffer.flush()
"""


class Wrapper:
    """tcpserver running a tlswrapper (ours or Debian's) in front of PROG."""

    def __init__(self, binary: str, args: list[str], tmp_path, size: int = MiB) -> None:
        prog = tmp_path / "prog.py"
        prog.write_text(PROG)
        self.port = free_port()
        self.log = tmp_path / f"wrapper-{self.port}.log"
        ours = binary != DEBIAN_TLSWRAPPER
        cmd = [which("tcpserver"), "-HRDl0", "127.0.0.1", str(self.port), binary, *args]
        cmd += (["--"] if ours else []) + [sys.executable, str(prog), str(size)]
        self._logf = open(self.log, "wb")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._logf,
                                     stderr=self._logf)
        wait_for_port(self.port, proc=self.proc)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self._logf.close()


@pytest.fixture(scope="module")
def up_data() -> bytes:
    return random.Random(1).randbytes(MiB)


DOWN_HASH = hashlib.sha256(random.Random(2).randbytes(MiB)).hexdigest()


def check_transfer(stdout: bytes, up: bytes) -> bytes:
    """The part of stdout before the data (the client's own report) after checking the
    1 MiB each way."""
    marker = hashlib.sha256(up).hexdigest().encode() + b"\n"
    i = stdout.find(marker)
    assert i >= 0, f"prog's hash of the upload not seen; tail {stdout[-400:]!r}"
    down = stdout[i + len(marker):i + len(marker) + MiB]
    assert len(down) == MiB and hashlib.sha256(down).hexdigest() == DOWN_HASH
    return stdout[:i]


OPENSSL_VERSIONS = {s.TLS10: "-tls1", s.TLS11: "-tls1_1", s.TLS12: "-tls1_2"}
OPENSSL_LABEL = {s.TLS10: "TLSv1", s.TLS11: "TLSv1.1", s.TLS12: "TLSv1.2"}


def s_client(port: int, version: int, cipher: str, etm: bool, extra: list[str] = (),
             data: bytes = b"", timeout: float = 60):
    cmd = [which("openssl"), "s_client", "-connect", f"127.0.0.1:{port}",
           OPENSSL_VERSIONS[version], "-cipher", cipher + ":@SECLEVEL=0", "-ign_eof",
           "-tlsextdebug", *(() if etm else ("-no_etm",)), *extra]
    return subprocess.run(cmd, input=data, capture_output=True, timeout=timeout,
                          check=False)


E2E_OPENSSL = [
    (s.TLS10, "ECDHE-ECDSA-AES128-SHA"), (s.TLS10, "ECDHE-RSA-AES256-SHA"),
    (s.TLS11, "ECDHE-RSA-AES128-SHA"), (s.TLS11, "ECDHE-ECDSA-AES256-SHA"),
    (s.TLS12, "ECDHE-RSA-AES128-SHA256"), (s.TLS12, "ECDHE-ECDSA-AES256-SHA384"),
    (s.TLS12, "ECDHE-ECDSA-AES128-SHA256"), (s.TLS12, "ECDHE-RSA-AES256-SHA384"),
    (s.TLS12, "ECDHE-ECDSA-AES128-SHA"), (s.TLS12, "ECDHE-RSA-AES256-SHA"),
]
WRAPPER_ARGS = ["-m", "tls10", *[a for n in CBC_NAMES for a in ("-c", n)]]


@pytest.fixture(scope="module", params=["ours", "debian"])
def wrappers(request, pki, tmp_path_factory):
    """{cert kind: Wrapper} for ours or Debian's tlswrapper, -m tls10 and every CBC suite."""
    binary = our_command() if request.param == "ours" else which(DEBIAN_TLSWRAPPER)
    out = {}
    for kind, cert in (("ECDSA", "ecdsa-p256"), ("RSA", "rsa-2048")):
        tmp = tmp_path_factory.mktemp(f"{request.param}-{kind}")
        out[kind] = Wrapper(binary, [*WRAPPER_ARGS, "-f", str(pki[cert].path)], tmp)
    yield request.param, out
    for w in out.values():
        w.close()


@pytest.mark.parametrize("etm", [True, False], ids=["etm", "no_etm"])
@pytest.mark.parametrize("version, cipher", [pytest.param(v, c, id=f"{OPENSSL_LABEL[v]}-{c}")
                                             for v, c in E2E_OPENSSL])
def test_openssl_s_client_1mib(wrappers, up_data, version, cipher, etm):
    which_one, servers = wrappers
    port = servers["ECDSA" if "ECDSA" in cipher else "RSA"].port
    proc = s_client(port, version, cipher, etm, data=up_data)
    if which_one == "debian" and version == s.TLS10:
        # Known difference (module docstring): Debian's rejects OpenSSL's empty record.
        assert hashlib.sha256(up_data).hexdigest().encode() not in proc.stdout
        return
    head = check_transfer(proc.stdout, up_data).decode(errors="replace")
    assert re.search(rf"Protocol\s*: {re.escape(OPENSSL_LABEL[version])}\n", head), head
    assert re.search(rf"Cipher\s*: {cipher}\n", head), head
    etm_seen = '"encrypt-then-mac" (id=22)' in head
    # Ours echoes encrypt_then_mac when offered; Debian's (BearSSL) never does.
    assert etm_seen is (etm and which_one == "ours"), head
    assert ("Extended master secret: yes" in head) is (which_one == "ours")


def test_openssl_tls10_without_empty_fragments(wrappers, up_data):
    # -bugs turns off OpenSSL's empty records: then Debian's works too.
    _, servers = wrappers
    proc = s_client(servers["ECDSA"].port, s.TLS10, "ECDHE-ECDSA-AES128-SHA", False,
                    ["-bugs"], up_data)
    check_transfer(proc.stdout, up_data)


def talk_then_close(cmd: list[str], data: bytes, timeout: float = 60) -> bytes:
    """Run a client that closes (close_notify) when its stdin ends: send `data` but keep
    stdin open until prog's whole answer (hash line and 1 MiB) has arrived, so that the
    result does not depend on whether the server relays after the client's close_notify
    (ours does; Debian's ends the connection)."""
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    writer = threading.Thread(target=lambda: (proc.stdin.write(data), proc.stdin.flush()))
    writer.start()
    marker = hashlib.sha256(data).hexdigest().encode() + b"\n"
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
                break
            chunk = os.read(proc.stdout.fileno(), 1 << 16)
            if not chunk:
                break
            out += chunk
            i = out.find(marker)
            if i >= 0 and len(out) >= i + len(marker) + MiB:
                break
        writer.join(timeout)
        proc.stdin.close()
        out += proc.stdout.read()
        proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return bytes(out)


GNUTLS_CASES = [
    ("TLS1.0", "AES-128-CBC", "SHA1"), ("TLS1.0", "AES-256-CBC", "SHA1"),
    ("TLS1.1", "AES-128-CBC", "SHA1"), ("TLS1.1", "AES-256-CBC", "SHA1"),
    ("TLS1.2", "AES-128-CBC", "SHA256"), ("TLS1.2", "AES-256-CBC", "SHA384"),
    ("TLS1.2", "AES-256-CBC", "SHA1"),
]


@pytest.mark.parametrize("etm", [True, False], ids=["etm", "no_etm"])
@pytest.mark.parametrize("kind", ["ECDSA", "RSA"])
@pytest.mark.parametrize("version, cipher, mac", GNUTLS_CASES,
                         ids=["-".join(c) for c in GNUTLS_CASES])
def test_gnutls_cli_1mib(wrappers, up_data, version, cipher, mac, kind, etm):
    which_one, servers = wrappers
    priority = (f"NORMAL:-VERS-ALL:+VERS-{version}:-CIPHER-ALL:+{cipher}:-MAC-ALL:+{mac}"
                f"{'' if etm else ':%NO_ETM'}")
    cmd = [which("gnutls-cli"), "--insecure", "--priority", priority,
           "-p", str(servers[kind].port), "127.0.0.1"]
    head = check_transfer(talk_then_close(cmd, up_data), up_data).decode(errors="replace")
    desc = re.search(r"- Description: (.*)\n", head).group(1)
    assert desc.startswith(f"({version}-X.509)-(ECDHE-"), desc
    assert desc.endswith(f"-({cipher})-({mac})"), desc
    options = re.search(r"- Options: (.*)\n", head).group(1)
    assert ("EtM" in options) is (etm and which_one == "ours"), options


# --- end to end: negative and -s / -S ---------------------------------------------------------

def _server(tmp_path, pki, args, debian=False, cert="ecdsa-p256") -> Wrapper:
    binary = which(DEBIAN_TLSWRAPPER) if debian else our_command()
    return Wrapper(binary, [*args, "-f", str(pki[cert].path)], tmp_path, size=10)


@pytest.mark.parametrize("debian", [False, True], ids=["ours", "debian"])
def test_aead_only_server_and_tls11_client_is_handshake_failure(tmp_path, pki, debian):
    w = _server(tmp_path, pki, ["-m", "tls10", "-c", "AES_128_GCM_SHA256"], debian)
    try:
        proc = s_client(w.port, s.TLS11, "ECDHE-ECDSA-AES128-SHA", True, data=b"")
    finally:
        w.close()
    assert b"alert handshake failure" in proc.stderr, proc.stderr


@pytest.mark.parametrize("debian", [False, True], ids=["ours", "debian"])
@pytest.mark.parametrize("version", [s.TLS10, s.TLS11])
def test_tls12_minimum_and_legacy_client_is_protocol_version(tmp_path, pki, debian, version):
    w = _server(tmp_path, pki, ["-m", "tls12", "-c", "AES_128_CBC_SHA"], debian)
    try:
        proc = s_client(w.port, version, "ECDHE-ECDSA-AES128-SHA", True, data=b"")
    finally:
        w.close()
    if debian:
        # Debian's sends protocol_version in a record of version 0x0000 (15 00 00 00 02 02
        # 46), which OpenSSL drops as "wrong version number" before reading the alert.
        assert b"wrong version number" in proc.stderr, proc.stderr
    else:
        assert b"alert protocol version" in proc.stderr, proc.stderr


@pytest.mark.parametrize("debian", [False, True], ids=["ours", "debian"])
@pytest.mark.parametrize("flag, expected", [("-s", "ECDHE-ECDSA-AES256-SHA"),
                                            ("-S", "ECDHE-ECDSA-AES128-SHA"),
                                            (None, "ECDHE-ECDSA-AES256-SHA")])
def test_server_or_client_cipher_order(tmp_path, pki, debian, flag, expected):
    args = ["-m", "tls10", "-c", "AES_256_CBC_SHA", "-c", "AES_128_CBC_SHA"]
    if flag:
        args.append(flag)
    w = _server(tmp_path, pki, args, debian)
    try:
        # The client prefers AES-128; the server's -c order AES-256.
        proc = s_client(w.port, s.TLS12, "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA",
                        True, data=b"0123456789")
    finally:
        w.close()
    assert re.search(rf"Cipher\s*: {expected}\n", proc.stdout.decode(errors="replace")), \
        proc.stdout[-2000:]
