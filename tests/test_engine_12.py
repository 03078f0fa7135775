"""The engine's TLS 1.2 (and a TLS 1.3 smoke test) against Python's ssl module as the client,
in memory: ssl.MemoryBIO pairs (SSLContext.wrap_bio) pumped into a ServerConnection with the
in-process KeyService. The server's first flight is parsed with messages.py to check what it
negotiated on the wire.

Groups: Python 3.11's ssl cannot set a client's groups list in general (set_ecdh_curve sets a
single group), so the negotiated group is chosen from the server's side (ServerConfig.groups)
against OpenSSL's default client list (x25519, secp256r1, x448, secp521r1, secp384r1, ...), and
read back from the ServerKeyExchange. X25519MLKEM768 is TLS 1.3 only and OpenSSL 3.0 has no
ML-KEM: it is covered by the in-test client (test_engine_13.py).
"""

from __future__ import annotations

import hmac
import os
import ssl

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keyservices import key_service_kind, new_key_service  # noqa: F401 (autouse fixture)
from tlswrapper.tls import messages as m
from tlswrapper.tls import suites as s
from tlswrapper.tls.config import ServerConfig
from tlswrapper.tls.events import (ApplicationData, ClientHelloReceived, ConnectionFailed,
                                   HandshakeComplete, PeerClosed)
from tlswrapper.tls.server import ServerConnection
from tlswrapper.tls.wire import handshake_message

OPENSSL_CIPHER = {
    0xCCA9: "ECDHE-ECDSA-CHACHA20-POLY1305", 0xCCA8: "ECDHE-RSA-CHACHA20-POLY1305",
    0xC02C: "ECDHE-ECDSA-AES256-GCM-SHA384", 0xC030: "ECDHE-RSA-AES256-GCM-SHA384",
    0xC02B: "ECDHE-ECDSA-AES128-GCM-SHA256", 0xC02F: "ECDHE-RSA-AES128-GCM-SHA256",
}
ECDSA_CERTS = ("ecdsa-p256", "ecdsa-p384", "ecdsa-p521")
GROUPS_12 = ("x25519", "secp256r1", "secp384r1", "secp521r1")
ALL_GROUPS = tuple(s.GROUP_NAMES)


def _matrix():
    for code, name in OPENSSL_CIPHER.items():
        certs = ECDSA_CERTS if "ECDSA" in name else ("rsa-2048",)
        for cert in certs:
            for group in GROUPS_12:
                yield pytest.param(code, cert, group, id=f"{name}-{cert}-{group}")


def client_context(pki, version=ssl.TLSVersion.TLSv1_2, ciphers: str | None = None,
                   keylog: str | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(pki.ca_pem))
    ctx.minimum_version = ctx.maximum_version = version
    if ciphers:
        ctx.set_ciphers(ciphers)
    if keylog:
        ctx.keylog_filename = keylog
    return ctx


def records(data: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos + 5 <= len(data):
        length = int.from_bytes(data[pos + 3:pos + 5], "big")
        out.append((data[pos], data[pos + 5:pos + 5 + length]))
        pos += 5 + length
    assert pos == len(data), "truncated record"
    return out


def handshake_messages(data: bytes) -> list[tuple[int, bytes]]:
    """The handshake messages in the plaintext handshake records of `data`."""
    stream = b"".join(frag for ct, frag in records(data) if ct == s.HANDSHAKE)
    out, pos = [], 0
    while pos + 4 <= len(stream):
        length = int.from_bytes(stream[pos + 1:pos + 4], "big")
        out.append((stream[pos], stream[pos + 4:pos + 4 + length]))
        pos += 4 + length
    return out


class SslWire:
    """An ssl.SSLObject over MemoryBIOs, wired to a ServerConnection."""

    def __init__(self, pki, ctx: ssl.SSLContext, certs=("ecdsa-p256",),
                 config: ServerConfig | None = None, sni: str | None = "localhost") -> None:
        paths = [str(pki[c].path) for c in certs]
        keys = new_key_service(paths)
        self.candidates = keys.load(paths)
        self.server = ServerConnection(config or ServerConfig(groups=ALL_GROUPS), keys)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=sni)
        self.events: list = []
        self.client_chunks: list[bytes] = []
        self.server_chunks: list[bytes] = []

    def _events(self, events: list) -> None:
        for ev in events:
            self.events.append(ev)
            if isinstance(ev, ClientHelloReceived):
                self._events(self.server.choose_certificate(self.candidates))

    def move(self) -> bool:
        moved = False
        data = self.outgoing.read()
        if data:
            self.client_chunks.append(data)
            self._events(self.server.receive(data))
            moved = True
        back = self.server.outgoing()
        if back:
            self.server_chunks.append(back)
            self.incoming.write(back)
            moved = True
        return moved

    def handshake(self) -> None:
        for _ in range(20):
            try:
                self.tls.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            if not self.move() and done:
                return
        raise AssertionError("handshake did not finish")

    def of_type(self, cls) -> list:
        return [e for e in self.events if isinstance(e, cls)]

    def app_data(self) -> bytes:
        return b"".join(e.data for e in self.of_type(ApplicationData))

    def client_read_all(self) -> bytes:
        out = bytearray()
        while True:
            try:
                chunk = self.tls.read(65536)
            except ssl.SSLWantReadError:
                return bytes(out)
            if not chunk:
                return bytes(out)
            out += chunk

    def exchange(self, size: int) -> None:
        up, down = os.urandom(size), os.urandom(size + 3)
        self.tls.write(up)
        self.move()
        assert self.app_data().endswith(up)
        self.server.send(down)
        self.move()
        assert self.client_read_all() == down

    def server_hello(self) -> m.ServerHello:
        msgs = handshake_messages(self.server_chunks[0])
        assert msgs[0][0] == s.HS_SERVER_HELLO
        return m.parse_server_hello(msgs[0][1])

    def client_hello(self) -> m.ClientHello:
        msgs = handshake_messages(self.client_chunks[0])
        assert msgs[0][0] == s.HS_CLIENT_HELLO
        return m.parse_client_hello(msgs[0][1])

    def server_key_exchange(self) -> m.ServerKeyExchangeECDHE:
        msgs = dict(handshake_messages(self.server_chunks[0]))
        return m.parse_server_key_exchange(msgs[s.HS_SERVER_KEY_EXCHANGE], True)


# --- the matrix -------------------------------------------------------------------------------

@pytest.mark.parametrize("suite, cert, group", list(_matrix()))
def test_tls12_every_suite_certificate_group(pki, suite, cert, group):
    config = ServerConfig(groups=(group,) + tuple(g for g in GROUPS_12 if g != group))
    w = SslWire(pki, client_context(pki, ciphers=OPENSSL_CIPHER[suite]), certs=(cert,),
                config=config)
    w.handshake()
    assert w.tls.version() == "TLSv1.2"
    assert w.tls.cipher()[0] == OPENSSL_CIPHER[suite]
    done = w.of_type(HandshakeComplete)
    assert len(done) == 1
    assert done[0].cipher_suite == suite and done[0].group == group
    assert done[0].version_name == "TLSv1.2"
    hello = w.server_hello()
    assert hello.legacy_version == s.TLS12 and hello.cipher_suite == suite
    assert w.server_key_exchange().group == s.GROUP_NAMES[group]
    # The client verified the chain to our root CA and the name "localhost".
    assert w.tls.getpeercert()["subject"]
    w.exchange(3000)


def test_tls12_100k_transfer(pki):
    w = SslWire(pki, client_context(pki, ciphers="ECDHE-RSA-AES256-GCM-SHA384"),
                certs=("rsa-2048",))
    w.handshake()
    w.exchange(100 * 1024)


def test_tls12_rsa_4096(pki):
    w = SslWire(pki, client_context(pki), certs=("rsa-4096",))
    w.handshake()
    assert w.of_type(HandshakeComplete)[0].cipher.startswith("TLS_ECDHE_RSA_")
    w.exchange(100)


def test_tls12_ecdsa_and_rsa_candidates_pick_by_suite(pki):
    w = SslWire(pki, client_context(pki, ciphers="ECDHE-RSA-CHACHA20-POLY1305"),
                certs=("ecdsa-p256", "rsa-2048"))
    w.handshake()
    assert w.tls.getpeercert(binary_form=True) == pki["rsa-2048"].der


# --- extensions on the wire ---------------------------------------------------------------

def test_extended_master_secret_renegotiation_info_and_point_formats(pki):
    w = SslWire(pki, client_context(pki))
    w.handshake()
    ch = w.client_hello()
    assert ch.extension(s.EXT_EXTENDED_MASTER_SECRET) is not None   # OpenSSL offers EMS
    sh = w.server_hello()
    assert sh.extension(s.EXT_EXTENDED_MASTER_SECRET) == b""
    assert sh.extension(s.EXT_RENEGOTIATION_INFO) == b"\x00"    # empty renegotiated_connection
    if ch.extension(s.EXT_EC_POINT_FORMATS) is not None:
        assert m.parse_ec_point_formats(sh.extension(s.EXT_EC_POINT_FORMATS)) == b"\x00"
    assert sh.session_id == b""   # never resumed
    w.exchange(10)


def test_no_extended_master_secret_when_not_offered(pki):
    # A hand-built client; the server must not echo what was not offered.
    hello = _client_hello_12(ems=False)
    server = _server(pki)
    events = server.receive(hello)
    assert isinstance(events[-1], ClientHelloReceived)
    server.choose_certificate(server._test_candidates)
    sh = m.parse_server_hello(handshake_messages(server.outgoing())[0][1])
    assert sh.extension(s.EXT_EXTENDED_MASTER_SECRET) is None
    assert sh.extension(s.EXT_RENEGOTIATION_INFO) == b"\x00"   # signalled by the SCSV


@pytest.mark.parametrize("version_max, sentinel", [(s.TLS13, True), (s.TLS12, False)])
def test_downgrade_sentinel(pki, version_max, sentinel):
    config = ServerConfig(version_max=version_max, groups=ALL_GROUPS)
    w = SslWire(pki, client_context(pki), config=config)
    w.handshake()
    random = w.server_hello().random
    assert (random[24:] == s.DOWNGRADE_TLS12) is sentinel
    assert random[24:] != s.DOWNGRADE_TLS11


def test_tls13_capable_client_against_tls12_max_server(pki):
    # The client offers 1.3 in supported_versions; the server (max 1.2) picks 1.2 from that
    # list, and puts no sentinel in (a 1.3-capable client would abort on one, RFC 8446 4.1.3).
    ctx = client_context(pki, version=ssl.TLSVersion.TLSv1_3)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    w = SslWire(pki, ctx, config=ServerConfig(version_max=s.TLS12, groups=ALL_GROUPS))
    w.handshake()
    assert w.tls.version() == "TLSv1.2"
    assert w.server_hello().random[24:] != s.DOWNGRADE_TLS12
    w.exchange(10)


@pytest.mark.parametrize("config, alert_text", [
    (ServerConfig(version_min=s.TLS13, groups=ALL_GROUPS), "PROTOCOL_VERSION"),
    (ServerConfig(groups=("secp521r1",), ciphers=("AES_128_GCM_SHA256",)),
     "HANDSHAKE_FAILURE"),
])
def test_ssl_client_reports_the_alert(pki, config, alert_text):
    ctx = client_context(pki, ciphers="ECDHE-ECDSA-CHACHA20-POLY1305")
    w = SslWire(pki, ctx, config=config)
    with pytest.raises(ssl.SSLError, match=alert_text):
        w.handshake()
    assert w.of_type(ConnectionFailed)


# --- hand-built ClientHellos --------------------------------------------------------------

def _client_hello_12(suites_=(0xC02B, 0xC02F, s.TLS_EMPTY_RENEGOTIATION_INFO_SCSV),
                     ems: bool = True, legacy_version: int = s.TLS12) -> bytes:
    exts = [
        m.Extension(s.EXT_SERVER_NAME, m.build_server_name("localhost")),
        m.Extension(s.EXT_SUPPORTED_GROUPS, m.build_supported_groups((s.X25519, s.SECP256R1))),
        m.Extension(s.EXT_EC_POINT_FORMATS, m.build_ec_point_formats(b"\x00")),
        m.Extension(s.EXT_SIGNATURE_ALGORITHMS, m.build_signature_algorithms(
            (s.ECDSA_SECP256R1_SHA256, s.RSA_PSS_RSAE_SHA256, s.RSA_PKCS1_SHA256))),
    ]
    if ems:
        exts.append(m.Extension(s.EXT_EXTENDED_MASTER_SECRET, b""))
    body = m.build_client_hello(m.ClientHello(legacy_version, os.urandom(32), b"",
                                              tuple(suites_), b"\x00", tuple(exts)))
    msg = handshake_message(s.HS_CLIENT_HELLO, body)
    return b"\x16\x03\x01" + len(msg).to_bytes(2, "big") + msg


def _server(pki, config: ServerConfig | None = None, cert: str = "ecdsa-p256"):
    keys = new_key_service([str(pki[cert].path)])
    server = ServerConnection(config or ServerConfig(groups=ALL_GROUPS), keys)
    server._test_candidates = keys.load([str(pki[cert].path)])
    return server


def _run(server, data: bytes) -> list:
    events = server.receive(data)
    if events and isinstance(events[-1], ClientHelloReceived):
        events += server.choose_certificate(server._test_candidates)
    return events


def _alert_sent(server) -> tuple[int, int]:
    recs = records(server.outgoing())
    assert recs[-1][0] == s.ALERT
    return recs[-1][1][0], recs[-1][1][1]


def test_fallback_scsv_with_tls13_enabled_is_inappropriate_fallback(pki):
    server = _server(pki)
    events = _run(server, _client_hello_12(suites_=(0xC02B, s.TLS_FALLBACK_SCSV)))
    assert events[-1] == ConnectionFailed(s.INAPPROPRIATE_FALLBACK, events[-1].reason)
    assert _alert_sent(server) == (2, s.INAPPROPRIATE_FALLBACK)


def test_fallback_scsv_when_tls12_is_our_best_is_accepted(pki):
    server = _server(pki, ServerConfig(version_max=s.TLS12, groups=ALL_GROUPS))
    events = _run(server, _client_hello_12(suites_=(0xC02B, s.TLS_FALLBACK_SCSV)))
    assert not any(isinstance(e, ConnectionFailed) for e in events)
    msgs = handshake_messages(server.outgoing())
    assert [t for t, _ in msgs] == [s.HS_SERVER_HELLO, s.HS_CERTIFICATE,
                                    s.HS_SERVER_KEY_EXCHANGE, s.HS_SERVER_HELLO_DONE]


def test_tls12_client_with_tls13_only_server_is_protocol_version(pki):
    server = _server(pki, ServerConfig(version_min=s.TLS13, groups=ALL_GROUPS))
    events = _run(server, _client_hello_12())
    assert events[-1].alert == s.PROTOCOL_VERSION
    assert _alert_sent(server) == (2, s.PROTOCOL_VERSION)


def test_tls12_no_common_suite_is_handshake_failure(pki):
    # The ECDSA certificate cannot serve an RSA-only suite list.
    server = _server(pki)
    events = _run(server, _client_hello_12(suites_=(0xC02F, 0xC030)))
    assert events[-1].alert == s.HANDSHAKE_FAILURE
    assert _alert_sent(server) == (2, s.HANDSHAKE_FAILURE)


def test_tls12_non_empty_renegotiation_info_in_initial_hello(pki):
    server = _server(pki)
    hello = _client_hello_12(suites_=(0xC02B,))
    # Append renegotiation_info with a non-empty value: rebuild by hand.
    msgs = handshake_messages(hello)
    ch = m.parse_client_hello(msgs[0][1])
    ch = m.ClientHello(ch.legacy_version, ch.random, ch.session_id, ch.cipher_suites,
                       ch.compression_methods, ch.extensions + (
                           m.Extension(s.EXT_RENEGOTIATION_INFO,
                                       m.build_renegotiation_info(b"\x01" * 12)),))
    msg = handshake_message(s.HS_CLIENT_HELLO, m.build_client_hello(ch))
    events = _run(server, b"\x16\x03\x01" + len(msg).to_bytes(2, "big") + msg)
    assert events[-1].alert == s.HANDSHAKE_FAILURE
    assert _alert_sent(server) == (2, s.HANDSHAKE_FAILURE)


# --- closing ------------------------------------------------------------------------------

def test_tls12_close_notify_both_ways(pki):
    w = SslWire(pki, client_context(pki))
    w.handshake()
    w.exchange(10)
    try:
        w.tls.unwrap()
    except ssl.SSLWantReadError:
        pass
    w.move()
    assert w.events[-1] == PeerClosed(clean=True)
    w.server.close()
    w.move()
    w.tls.unwrap()   # completes: the server's close_notify arrived
    assert not w.of_type(ConnectionFailed)


def test_tls12_transport_eof_is_unclean(pki):
    w = SslWire(pki, client_context(pki))
    w.handshake()
    assert w.server.receive(b"") == [PeerClosed(clean=False)]


# --- renegotiation, injected by hand ------------------------------------------------------

def _prf(secret: bytes, label: bytes, seed: bytes, length: int, hash_name="sha256") -> bytes:
    """The TLS 1.2 PRF (RFC 5246 section 5), written here for the test."""
    seed = label + seed
    out, a = b"", seed
    while len(out) < length:
        a = hmac.new(secret, a, hash_name).digest()
        out += hmac.new(secret, a + seed, hash_name).digest()
    return out[:length]


def _gcm12_seal(key, salt, seq, content_type, plaintext):
    explicit = seq.to_bytes(8, "big")
    aad = seq.to_bytes(8, "big") + bytes((content_type, 3, 3)) + len(plaintext).to_bytes(2, "big")
    body = explicit + AESGCM(key).encrypt(salt + explicit, plaintext, aad)
    return bytes((content_type, 3, 3)) + len(body).to_bytes(2, "big") + body


def _gcm12_open(key, salt, seq, record):
    content_type, body = record[0], record[5:]
    explicit, ct = body[:8], body[8:]
    aad = seq.to_bytes(8, "big") + bytes((content_type, 3, 3)) \
        + (len(ct) - 16).to_bytes(2, "big")
    return content_type, AESGCM(key).decrypt(salt + explicit, ct, aad)


def test_tls12_client_renegotiation_refused_with_warning(pki, tmp_path):
    # Python's ssl cannot renegotiate, so the client's side is taken over after the handshake:
    # its master secret comes from the key log, the key block from our own PRF, and an
    # encrypted ClientHello is injected as the next client record.
    keylog = tmp_path / "keys.log"
    w = SslWire(pki, client_context(pki, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256",
                                    keylog=str(keylog)))
    w.handshake()
    client_random = w.client_hello().random
    server_random = w.server_hello().random
    master = None
    for line in keylog.read_text().splitlines():
        parts = line.split()
        if parts[:2] == ["CLIENT_RANDOM", client_random.hex()]:
            master = bytes.fromhex(parts[2])
    assert master is not None
    block = _prf(master, b"key expansion", server_random + client_random, 2 * 16 + 2 * 4)
    c_key, s_key, c_salt, s_salt = block[:16], block[16:32], block[32:36], block[36:40]

    # Seq 0 went to each side's Finished. Renegotiation ClientHello (its renegotiation_info
    # would carry client verify_data; the server refuses before looking).
    hello = handshake_messages(_client_hello_12(suites_=(0xC02B,)))[0]
    msg = handshake_message(hello[0], hello[1])
    events = w.server.receive(_gcm12_seal(c_key, c_salt, 1, s.HANDSHAKE, msg))
    assert not any(isinstance(e, ConnectionFailed) for e in events), events
    ct, alert = _gcm12_open(s_key, s_salt, 1, w.server.outgoing())
    assert (ct, alert) == (s.ALERT, bytes((1, s.NO_RENEGOTIATION)))
    # The connection goes on.
    events = w.server.receive(_gcm12_seal(c_key, c_salt, 2, s.APPLICATION_DATA, b"still on"))
    assert events == [ApplicationData(b"still on")]


# --- TLS 1.3 through Python's ssl ---------------------------------------------------------

@pytest.mark.parametrize("cert", ["ecdsa-p256", "rsa-2048"])
@pytest.mark.parametrize("group", ["x25519", "secp256r1", "secp384r1", "secp521r1"])
def test_tls13_smoke_through_ssl(pki, cert, group):
    config = ServerConfig(groups=(group,))
    w = SslWire(pki, client_context(pki, version=ssl.TLSVersion.TLSv1_3), certs=(cert,),
                config=config)
    w.handshake()
    assert w.tls.version() == "TLSv1.3"
    done = w.of_type(HandshakeComplete)[0]
    assert done.group == group and done.version == s.TLS13
    w.exchange(20000)


def test_tls13_through_ssl_key_share_mismatch_uses_hello_retry_request(pki):
    # OpenSSL 3.0 sends an x25519 share only; a secp384r1-only server asks again.
    w = SslWire(pki, client_context(pki, version=ssl.TLSVersion.TLSv1_3),
                config=ServerConfig(groups=("secp384r1",)))
    w.handshake()
    hrr = m.parse_server_hello(handshake_messages(w.server_chunks[0])[0][1])
    assert hrr.is_hello_retry_request
    w.exchange(10)


# --- the client's Finished, tampered ------------------------------------------------------

def _second_flight(pki, tmp_path):
    """An ssl client up to its second flight (ClientKeyExchange, CCS, Finished), held back;
    returns the wire, that flight's records and the client's write key and salt."""
    keylog = tmp_path / "keys.log"
    w = SslWire(pki, client_context(pki, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256",
                                    keylog=str(keylog)))
    try:
        w.tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    w.move()   # ClientHello in, server flight out and into the client
    try:
        w.tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    flight = records(w.outgoing.read())
    assert [ct for ct, _ in flight] == [s.HANDSHAKE, s.CHANGE_CIPHER_SPEC, s.HANDSHAKE]
    client_random = w.client_hello().random
    server_random = w.server_hello().random
    master = next(bytes.fromhex(line.split()[2]) for line in keylog.read_text().splitlines()
                  if line.startswith("CLIENT_RANDOM " + client_random.hex()))
    block = _prf(master, b"key expansion", server_random + client_random, 40)
    return w, flight, block[:16], block[32:36]


def _frame(content_type: int, body: bytes) -> bytes:
    return bytes((content_type, 3, 3)) + len(body).to_bytes(2, "big") + body


def test_tls12_tampered_finished_record_is_bad_record_mac(pki, tmp_path):
    w, flight, _, _ = _second_flight(pki, tmp_path)
    fin = bytearray(flight[2][1])
    fin[-1] ^= 1
    data = b"".join(_frame(ct, body) for ct, body in flight[:2]) + _frame(s.HANDSHAKE, fin)
    events = w.server.receive(data)
    assert events[-1].alert == s.BAD_RECORD_MAC
    assert _alert_sent(w.server) == (2, s.BAD_RECORD_MAC)   # in the clear: no CCS sent yet


def test_tls12_wrong_finished_verify_data_is_decrypt_error(pki, tmp_path):
    w, flight, key, salt = _second_flight(pki, tmp_path)
    bad = _gcm12_seal(key, salt, 0, s.HANDSHAKE,
                      handshake_message(s.HS_FINISHED, b"\x00" * 12))
    data = b"".join(_frame(ct, body) for ct, body in flight[:2]) + bad
    events = w.server.receive(data)
    assert events[-1].alert == s.DECRYPT_ERROR
    assert _alert_sent(w.server) == (2, s.DECRYPT_ERROR)


def test_tls12_finished_without_ccs_is_unexpected(pki, tmp_path):
    w, flight, _, _ = _second_flight(pki, tmp_path)
    data = _frame(*flight[0]) + _frame(*flight[2])
    events = w.server.receive(data)
    assert events[-1].alert == s.UNEXPECTED_MESSAGE
    assert _alert_sent(w.server) == (2, s.UNEXPECTED_MESSAGE)


def test_tls12_application_data_before_finished_is_unexpected(pki, tmp_path):
    w, flight, key, salt = _second_flight(pki, tmp_path)
    data = b"".join(_frame(ct, body) for ct, body in flight[:2]) \
        + _gcm12_seal(key, salt, 0, s.APPLICATION_DATA, b"early")
    events = w.server.receive(data)
    assert events[-1].alert == s.UNEXPECTED_MESSAGE


def test_tls12_key_update_is_unexpected(pki, tmp_path):
    w, flight, key, salt = _second_flight(pki, tmp_path)
    w.server.receive(b"".join(_frame(ct, body) for ct, body in flight))
    assert w.server.handshake_done
    events = w.server.receive(_gcm12_seal(key, salt, 1, s.HANDSHAKE,
                                          handshake_message(s.HS_KEY_UPDATE, b"\x00")))
    assert events[-1].alert == s.UNEXPECTED_MESSAGE
