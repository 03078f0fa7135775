"""Client certificates (-a) without processes: clientcert.py's verdicts and mod_ssl formats,
the key side's read_anchor, and the engine's CertificateRequest / Certificate /
CertificateVerify handling against Python's ssl client over MemoryBIOs (TLS 1.2 and 1.3)."""

from __future__ import annotations

import datetime
import os
import ssl
import subprocess

import certs
import pytest
from testenv import which
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.x509.oid import NameOID
from test_engine_12 import ALL_GROUPS, SslWire, client_context, handshake_messages

from tlswrapper.keys.process import start_key_process
from tlswrapper.net import clientcert, sslenv
from tlswrapper.keys.files import KeyFiles
from tlswrapper.keys.local import LocalKeyService
from tlswrapper.tls import messages as m
from tlswrapper.tls import suites as s
from tlswrapper.tls.config import ServerConfig
from tlswrapper.tls.events import ConnectionFailed, HandshakeComplete
from tlswrapper.tls.keyservice import KeyServiceError

VERSIONS = {"tls12": ssl.TLSVersion.TLSv1_2, "tls13": ssl.TLSVersion.TLSv1_3}


# --- helpers ------------------------------------------------------------------------------------

def verifier(pki) -> clientcert.ClientCertificates:
    return clientcert.ClientCertificates.from_pem(pki.client_ca.path.read_bytes())


def config_for(v) -> ServerConfig:
    return v.server_config(ServerConfig(groups=ALL_GROUPS))


def ctx_with(pki, version: str, cert_path=None, key_path=None) -> ssl.SSLContext:
    ctx = client_context(pki, version=VERSIONS[version])
    if cert_path is not None:
        ctx.load_cert_chain(str(cert_path), str(key_path))
    return ctx


def pump(w: SslWire, rounds: int = 30) -> ssl.SSLError | None:
    """Run the handshake and a read until both sides are quiet; the client's SSLError, if any."""
    error = None
    for _ in range(rounds):
        try:
            w.tls.do_handshake()
            w.tls.read(1)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as e:
            error = e
        if not w.move() and (error is not None or w.of_type(ConnectionFailed)
                             or w.of_type(HandshakeComplete)):
            break
    return error


def failed_alert(w: SslWire) -> int | None:
    failed = w.of_type(ConnectionFailed)
    return failed[0].alert if failed else None


@pytest.fixture(scope="module")
def intermediate_client(pki, tmp_path_factory):
    """A client leaf issued by an intermediate under the client CA; its PEM holds leaf and
    intermediate (the client sends both)."""
    d = tmp_path_factory.mktemp("clientchain")
    inter = certs.make_ca("client intermediate CA", d / "inter.pem", issuer=pki.client_ca,
                          path_length=0)
    key = certs.generate_key("ecdsa-p256")
    leaf = certs.issue_leaf(inter, key, "chained-client", emails=("chained@example.com",),
                            subject_email="chained@example.com", server=False)
    chain = d / "chain.crt"
    chain.write_bytes(certs.cert_pem(leaf) + certs.cert_pem(inter.cert))
    leaf_only = d / "leaf.crt"
    leaf_only.write_bytes(certs.cert_pem(leaf))
    keyfile = d / "chain.key"
    keyfile.write_bytes(certs.key_pem(key))
    return {"chain": chain, "leaf": leaf_only, "key": keyfile, "cert": leaf,
            "intermediate": inter}


# --- formats ------------------------------------------------------------------------------------

@pytest.mark.parametrize("serial, text", [
    (0, "00"), (1, "01"), (0x0ABC, "0ABC"), (0x80, "80"), (0xFF00, "FF00"),
    (0x0123456789ABCDEF, "0123456789ABCDEF"), (-5, "-05")])
def test_serial_formatted_like_i2a_asn1_integer(serial, text):
    assert clientcert.format_serial(serial) == text


def test_time_formatted_like_asn1_time_print():
    when = datetime.datetime(2025, 3, 4, 5, 6, 7, tzinfo=datetime.UTC)
    assert clientcert.format_time(when) == "Mar  4 05:06:07 2025 GMT"


def _openssl_fields(cert_path) -> dict[str, str]:
    out = subprocess.run([which("openssl"), "x509", "-in", str(cert_path), "-noout",
                          "-subject", "-issuer", "-serial", "-startdate", "-enddate",
                          "-nameopt", "RFC2253"], capture_output=True, text=True, check=True)
    return dict(line.split("=", 1) for line in out.stdout.splitlines())


@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
def test_identity_matches_openssl_rfc2253_output(pki, kind):
    client = pki.clients[kind]
    ident = clientcert.identity(client.cert)
    want = _openssl_fields(client.cert_path)
    assert ident.subject_dn == want["subject"]
    assert ident.issuer_dn == want["issuer"]
    assert ident.serial == want["serial"]
    assert ident.not_before == want["notBefore"]
    assert ident.not_after == want["notAfter"]
    assert ident.common_name == client.common_name
    assert ident.email == client.email


def test_dn_escapes_like_openssl(pki, tmp_path):
    key = certs.generate_key("ecdsa-p256")
    subject = x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, 'a,b+c"d\\e<f>g;h'),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "#lead and trail "),
        x509.NameAttribute(NameOID.COMMON_NAME, " x=y"),
        x509.NameAttribute(x509.ObjectIdentifier("1.2.3.4.5"), "odd"),
    ])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(0x00FF)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    path = tmp_path / "odd.crt"
    path.write_bytes(certs.cert_pem(cert))
    want = _openssl_fields(path)
    ident = clientcert.identity(cert)
    assert ident.subject_dn == want["subject"]
    assert ident.serial == want["serial"] == "FF"


def test_environment_control_characters_escaped():
    ident = sslenv.ClientIdentity("CN=a", "CN=b", "01", "x", "y", "bad\x00name\n", None)
    env = sslenv.tls_environment(s.TLS13, 0x1302, "example.com", ident)
    assert env["SSL_CLIENT_S_DN_CN"] == "bad\\00name\\0A"
    assert env["SSL_PROTOCOL"] == "TLSv1.3"
    assert env["SSL_CIPHER"] == "TLS_AES_256_GCM_SHA384"
    assert env["SSL_TLS_SNI"] == "example.com"
    assert "SSL_CLIENT_S_DN_Email" not in env


def test_environment_without_client_certificate():
    env = sslenv.tls_environment(s.TLS12, 0xC02F, None)
    assert env == {"SSL_PROTOCOL": "TLSv1.2", "SSL_CIPHER": "ECDHE-RSA-AES128-GCM-SHA256"}


def test_every_suite_has_an_openssl_name():
    assert set(sslenv.OPENSSL_CIPHER_NAMES) == set(s.SUITES)


# --- the verifier ---------------------------------------------------------------------------------

def test_anchor_file_must_hold_a_certificate():
    with pytest.raises(clientcert.AnchorError):
        clientcert.ClientCertificates.from_pem(b"no PEM here\n")
    with pytest.raises(clientcert.AnchorError):
        clientcert.ClientCertificates.from_pem(
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


def test_anchor_file_with_several_cas(pki):
    data = pki.ca.path.read_bytes() + pki.client_ca.path.read_bytes()
    v = clientcert.ClientCertificates.from_pem(data)
    assert v.names == (pki.ca.cert.subject.public_bytes(), pki.client_ca.cert.subject.public_bytes())
    alert, _, ident = v.verify_chain([pki.clients["rsa"].der])
    assert alert is None and ident.common_name == pki.clients["rsa"].common_name


@pytest.mark.parametrize("case, alert", [
    ("untrusted", s.UNKNOWN_CA), ("expired", s.CERTIFICATE_EXPIRED),
    ("garbage", s.BAD_CERTIFICATE), ("empty", s.CERTIFICATE_REQUIRED),
    ("server-cert", s.BAD_CERTIFICATE)])
def test_verifier_alerts(pki, case, alert):
    v = verifier(pki)
    if case == "untrusted":
        chain = [pki.issue_client("u", "u@example.com", untrusted=True).der]
    elif case == "expired":
        chain = [pki.issue_client("e", "e@example.com", expired=True).der]
    elif case == "garbage":
        chain = [b"\x30\x03\x02\x01\x00"]
    elif case == "empty":
        chain = []
    else:
        chain = pki.rsa_2048.chain_der      # chains to the server CA, not to the client CA
    got, reason, ident = v.verify_chain(chain)
    assert got == alert and reason and ident is None


def test_verifier_refuses_a_server_auth_leaf_of_the_right_ca(pki, tmp_path):
    key = certs.generate_key("ecdsa-p256")
    leaf = certs.issue_leaf(pki.client_ca, key, "server-ish", server=True)
    alert, _, _ = verifier(pki).verify_chain([leaf.public_bytes(certs.serialization.Encoding.DER)])
    assert alert == s.BAD_CERTIFICATE


def test_verifier_accepts_a_certificate_without_subject_alt_name(pki):
    client = pki.issue_client("nosan", None)
    alert, _, ident = verifier(pki).verify_chain([client.der])
    assert alert is None and ident.email is None and ident.common_name == "nosan"


def test_verifier_uses_its_clock(pki):
    client = pki.clients["ecdsa"]
    late = client.cert.not_valid_after_utc + datetime.timedelta(days=1)
    v = clientcert.ClientCertificates.from_pem(pki.client_ca.path.read_bytes(), clock=lambda: late)
    assert v.verify_chain([client.der])[0] == s.CERTIFICATE_EXPIRED


def test_verifier_with_intermediate(pki, intermediate_client):
    v = verifier(pki)
    der = [c.public_bytes(certs.serialization.Encoding.DER)
           for c in (intermediate_client["cert"], intermediate_client["intermediate"].cert)]
    assert v.verify_chain(der)[0] is None
    assert v.verify_chain(der[:1])[0] == s.UNKNOWN_CA


def test_signature_checks(pki):
    v = verifier(pki)
    data = b"transcript"
    ecc = pki.clients["ecdsa"]
    rsa_c = pki.clients["rsa"]
    sig = ecc.key.sign(data, ec.ECDSA(hashes.SHA256()))
    assert v.verify_signature(ecc.der, s.ECDSA_SECP256R1_SHA256, data, sig, True)
    assert not v.verify_signature(ecc.der, s.ECDSA_SECP256R1_SHA256, data + b"x", sig, True)
    assert not v.verify_signature(rsa_c.der, s.ECDSA_SECP256R1_SHA256, data, sig, True)
    # TLS 1.3 ties the ECDSA scheme to the curve; TLS 1.2 does not.
    sig384 = ecc.key.sign(data, ec.ECDSA(hashes.SHA384()))
    assert not v.verify_signature(ecc.der, s.ECDSA_SECP384R1_SHA384, data, sig384, True)
    assert v.verify_signature(ecc.der, s.ECDSA_SECP384R1_SHA384, data, sig384, False)
    pkcs1 = rsa_c.key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    assert v.verify_signature(rsa_c.der, s.RSA_PKCS1_SHA256, data, pkcs1, False)
    assert not v.verify_signature(rsa_c.der, s.RSA_PKCS1_SHA256, data, pkcs1, True)
    pss = rsa_c.key.sign(data, padding.PSS(padding.MGF1(hashes.SHA384()), 48), hashes.SHA384())
    assert v.verify_signature(rsa_c.der, s.RSA_PSS_RSAE_SHA384, data, pss, True)
    assert not v.verify_signature(rsa_c.der, s.RSA_PSS_RSAE_SHA256, data, pss, True)
    assert not v.verify_signature(b"garbage", s.RSA_PSS_RSAE_SHA384, data, pss, True)
    assert not v.verify_signature(rsa_c.der, 0x0807, data, pss, True)   # ed25519: not offered


def test_legacy_signature_checks(pki):
    import hashlib
    v = verifier(pki)
    data = b"handshake messages"
    ecc, rsa_c = pki.clients["ecdsa"], pki.clients["rsa"]
    assert v.verify_signature(ecc.der, None, data, ecc.key.sign(data, ec.ECDSA(hashes.SHA1())),
                              False)
    from cryptography.hazmat.primitives.asymmetric import utils
    digest = hashlib.md5(data).digest() + hashlib.sha1(data).digest()

    class MD5SHA1(hashes.HashAlgorithm):
        name, digest_size, block_size = "md5-sha1", 36, 64
    sig = rsa_c.key.sign(digest, padding.PKCS1v15(), utils.Prehashed(MD5SHA1()))
    assert v.verify_signature(rsa_c.der, None, data, sig, False)
    assert not v.verify_signature(rsa_c.der, None, data + b"!", sig, False)


# --- the key side ---------------------------------------------------------------------------------

def _certs(pem: bytes) -> list:
    return [c.public_bytes(serialization.Encoding.DER)
            for c in x509.load_pem_x509_certificates(pem)]


def test_read_anchor_before_load_only(pki):
    keys = LocalKeyService(files=KeyFiles([("file", str(pki.ecdsa_p256.path))],
                                          str(pki.client_ca.path)))
    assert _certs(keys.read_anchor()) == _certs(pki.client_ca.path.read_bytes())
    keys.load([str(pki.ecdsa_p256.path)])
    with pytest.raises(KeyServiceError, match="after load"):
        keys.read_anchor()


def test_read_anchor_of_a_missing_file_or_without_one(pki):
    missing = LocalKeyService(files=KeyFiles((), str(pki.dir / "does-not-exist.pem")))
    with pytest.raises(KeyServiceError, match="unable to read anchor"):
        missing.read_anchor()
    with pytest.raises(KeyServiceError, match="no anchor file"):
        LocalKeyService(files=KeyFiles(())).read_anchor()


def test_read_anchor_through_the_key_process(pki):
    files = KeyFiles([("file", str(pki.ecdsa_p256.path))], str(pki.client_ca.path))
    keys, _pid = start_key_process(None, files, log=None)
    with keys:
        assert _certs(keys.read_anchor()) == _certs(pki.client_ca.path.read_bytes())
        assert keys.load([str(pki.ecdsa_p256.path)])


def test_read_anchor_gives_only_the_certificates_of_a_file_with_a_key(pki):
    """An anchor file that holds a private key too (the server's PEM given to -a by mistake):
    the key never leaves the key process."""
    keys = LocalKeyService(files=KeyFiles((), str(pki.ecdsa_p256.path)))
    pem = keys.read_anchor()
    assert b"PRIVATE KEY" not in pem
    assert _certs(pem) == _certs(pki.ecdsa_p256.path.read_bytes())


def test_read_anchor_refuses_a_huge_file(pki, tmp_path):
    big = tmp_path / "big.pem"
    with open(big, "wb") as f:
        f.truncate((1 << 20) + 1)
    with pytest.raises(KeyServiceError, match="larger"):
        LocalKeyService(files=KeyFiles((), str(big))).read_anchor()


# --- the engine -------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["tls12", "tls13"])
@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
@pytest.mark.parametrize("server_cert", ["ecdsa-p256", "rsa-2048"])
def test_engine_accepts_a_good_client_certificate(pki, version, kind, server_cert):
    client = pki.clients[kind]
    w = SslWire(pki, ctx_with(pki, version, client.cert_path, client.key_path),
                certs=(server_cert,), config=config_for(verifier(pki)))
    w.handshake()
    done = w.of_type(HandshakeComplete)
    assert len(done) == 1 and not w.of_type(ConnectionFailed)
    ident = done[0].client_identity
    assert ident.common_name == client.common_name and ident.email == client.email
    assert ident.serial == clientcert.format_serial(client.cert.serial_number)
    env = sslenv.tls_environment(done[0].version, done[0].cipher_suite, done[0].sni, ident)
    assert env["SSL_CIPHER"] == w.tls.cipher()[0]       # OpenSSL's own name for the suite
    assert env["SSL_PROTOCOL"] == w.tls.version()
    assert env["SSL_CLIENT_VERIFY"] == "SUCCESS"
    w.exchange(5000)


@pytest.mark.parametrize("version", ["tls12", "tls13"])
def test_engine_accepts_a_chain_with_intermediate(pki, version, intermediate_client):
    ic = intermediate_client
    w = SslWire(pki, ctx_with(pki, version, ic["chain"], ic["key"]),
                config=config_for(verifier(pki)))
    w.handshake()
    assert w.of_type(HandshakeComplete)[0].client_identity.common_name == "chained-client"


@pytest.mark.parametrize("version", ["tls12", "tls13"])
def test_engine_refuses_a_leaf_without_its_intermediate(pki, version, intermediate_client):
    ic = intermediate_client
    w = SslWire(pki, ctx_with(pki, version, ic["leaf"], ic["key"]),
                config=config_for(verifier(pki)))
    error = pump(w)
    assert failed_alert(w) == s.UNKNOWN_CA
    assert error is not None and "unknown ca" in str(error).lower()


@pytest.mark.parametrize("version, alert, text", [
    ("tls12", s.HANDSHAKE_FAILURE, "handshake failure"),
    ("tls13", s.CERTIFICATE_REQUIRED, "certificate required")])
def test_engine_no_client_certificate(pki, version, alert, text):
    w = SslWire(pki, ctx_with(pki, version), config=config_for(verifier(pki)))
    error = pump(w)
    assert failed_alert(w) == alert
    assert not w.of_type(HandshakeComplete)
    assert error is not None and text in str(error).lower()


@pytest.mark.parametrize("version", ["tls12", "tls13"])
@pytest.mark.parametrize("case, alert, text", [
    ("untrusted", s.UNKNOWN_CA, "unknown ca"),
    ("expired", s.CERTIFICATE_EXPIRED, "certificate expired")])
def test_engine_refuses_bad_client_certificates(pki, version, case, alert, text):
    client = pki.issue_client(f"{case}-client", f"{case}@example.com", **{case: True})
    w = SslWire(pki, ctx_with(pki, version, client.cert_path, client.key_path),
                config=config_for(verifier(pki)))
    error = pump(w)
    assert failed_alert(w) == alert
    assert not w.of_type(HandshakeComplete)
    assert error is not None and text in str(error).lower()


class _Corrupting:
    """A verifier that flips a bit of every CertificateVerify signature before the real check."""

    def __init__(self, inner):
        self.inner = inner

    def verify_chain(self, chain):
        return self.inner.verify_chain(chain)

    def verify_signature(self, leaf, scheme, data, signature, tls13):
        return self.inner.verify_signature(leaf, scheme, data,
                                           bytes([signature[0] ^ 1]) + signature[1:], tls13)


@pytest.mark.parametrize("version", ["tls12", "tls13"])
@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
def test_engine_bad_certificate_verify_is_decrypt_error(pki, version, kind):
    client = pki.clients[kind]
    config = ServerConfig(groups=ALL_GROUPS, request_client_certificate=True,
                          client_verifier=_Corrupting(verifier(pki)))
    w = SslWire(pki, ctx_with(pki, version, client.cert_path, client.key_path), config=config)
    error = pump(w)
    assert failed_alert(w) == s.DECRYPT_ERROR
    assert error is not None and "decrypt error" in str(error).lower()


def _tamper_client_flight(w: SslWire, edit) -> None:
    """TLS 1.2: the client's Certificate/ClientKeyExchange/CertificateVerify are plaintext;
    run the handshake with `edit(msg_type, body) -> body` applied to the client's messages."""
    original = w.move

    def move() -> bool:
        data = w.outgoing.read()
        if data:
            out, pos = b"", 0
            while pos + 5 <= len(data):
                length = int.from_bytes(data[pos + 3:pos + 5], "big")
                rec = data[pos:pos + 5 + length]
                if rec[0] == s.HANDSHAKE and w.server.state.name != "START":
                    body, msgs, i = rec[5:], b"", 0
                    while i + 4 <= len(body):
                        n = int.from_bytes(body[i + 1:i + 4], "big")
                        new = edit(body[i], body[i + 4:i + 4 + n])
                        msgs += bytes([body[i]]) + len(new).to_bytes(3, "big") + new
                        i += 4 + n
                    msgs += body[i:]
                    rec = rec[:3] + len(msgs).to_bytes(2, "big") + msgs
                out += rec
                pos += 5 + length
            w.outgoing.write(out + data[pos:])
        return original()
    w.move = move


def test_engine_tls12_tampered_certificate_verify_on_the_wire(pki):
    client = pki.clients["ecdsa"]
    w = SslWire(pki, ctx_with(pki, "tls12", client.cert_path, client.key_path),
                config=config_for(verifier(pki)))

    def edit(msg_type, body):
        if msg_type == s.HS_CERTIFICATE_VERIFY:
            return body[:-1] + bytes([body[-1] ^ 0x40])
        return body
    _tamper_client_flight(w, edit)
    pump(w)
    assert failed_alert(w) == s.DECRYPT_ERROR


def test_engine_tls12_certificate_verify_with_a_scheme_not_offered(pki):
    client = pki.clients["rsa"]
    w = SslWire(pki, ctx_with(pki, "tls12", client.cert_path, client.key_path),
                config=config_for(verifier(pki)))

    def edit(msg_type, body):
        if msg_type == s.HS_CERTIFICATE_VERIFY:
            return s.RSA_PKCS1_SHA1.to_bytes(2, "big") + body[2:]
        return body
    _tamper_client_flight(w, edit)
    pump(w)
    assert failed_alert(w) == s.ILLEGAL_PARAMETER


def test_engine_tls12_client_key_exchange_before_certificate(pki):
    client = pki.clients["rsa"]
    w = SslWire(pki, ctx_with(pki, "tls12", client.cert_path, client.key_path),
                config=config_for(verifier(pki)))

    # Dropping the Certificate message: the ClientKeyExchange arrives first.
    original = w.move

    def move():
        data = w.outgoing.read()
        if data and w.server.state.name == "WAIT_CLIENT_CERTIFICATE":
            msgs = handshake_messages(data)
            kept = b"".join(bytes([t]) + len(b).to_bytes(3, "big") + b for t, b in msgs
                            if t != s.HS_CERTIFICATE)
            data = bytes([s.HANDSHAKE, 3, 3]) + len(kept).to_bytes(2, "big") + kept
        if data:
            w.outgoing.write(data)
        return original()
    w.move = move
    pump(w)
    assert failed_alert(w) == s.UNEXPECTED_MESSAGE


def test_engine_tls12_certificate_request_on_the_wire(pki):
    v = verifier(pki)
    client = pki.clients["rsa"]
    w = SslWire(pki, ctx_with(pki, "tls12", client.cert_path, client.key_path),
                config=config_for(v))
    w.handshake()
    msgs = dict(handshake_messages(w.server_chunks[0]))
    cr = m.parse_certificate_request12(msgs[s.HS_CERTIFICATE_REQUEST])
    assert cr.certificate_types == b"\x01\x40"
    assert cr.authorities == (pki.client_ca.cert.subject.public_bytes(),)
    assert s.RSA_PSS_RSAE_SHA256 in cr.signature_schemes
    assert s.RSA_PKCS1_SHA1 not in cr.signature_schemes
    order = [t for t, _ in handshake_messages(w.server_chunks[0])]
    assert order[-2:] == [s.HS_CERTIFICATE_REQUEST, s.HS_SERVER_HELLO_DONE]


def test_engine_without_verifier_fails_closed(pki):
    client = pki.clients["rsa"]
    config = ServerConfig(groups=ALL_GROUPS, request_client_certificate=True)
    w = SslWire(pki, ctx_with(pki, "tls13", client.cert_path, client.key_path), config=config)
    pump(w)
    assert failed_alert(w) == s.INTERNAL_ERROR
    assert not w.of_type(HandshakeComplete)


def test_engine_without_request_sends_no_certificate_request(pki):
    w = SslWire(pki, ctx_with(pki, "tls12"), config=ServerConfig(groups=ALL_GROUPS))
    w.handshake()
    assert s.HS_CERTIFICATE_REQUEST not in dict(handshake_messages(w.server_chunks[0]))
    assert w.of_type(HandshakeComplete)[0].client_identity is None


def test_no_cryptography_in_tls_package():
    root = os.path.join(os.path.dirname(os.path.dirname(clientcert.__file__)), "tls")
    for name in os.listdir(root):
        if name.endswith(".py"):
            with open(os.path.join(root, name)) as f:
                text = f.read()
            assert "import cryptography" not in text and "from cryptography" not in text, name
