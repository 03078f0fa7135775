"""The shared fixtures are what they claim: PEM files that verify to ca.pem with openssl, keys
that match their certificates, the variants that later tests rely on."""

from __future__ import annotations

import datetime
import re

import pytest
from certs import PKI, SERVER_KEY_TYPES, cert_pem
from testenv import free_port, run, which
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key

PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----\r?\n?", re.DOTALL)


def pem_blocks(data: bytes) -> list[tuple[str, bytes]]:
    return [(m.group(1).decode(), m.group(0)) for m in PEM_BLOCK.finditer(data)]


def split_server_file(data: bytes):
    """(private key, [certificates]) from a key+chain file, in whatever order."""
    keys, certs = [], []
    for label, block in pem_blocks(data):
        if label.endswith("PRIVATE KEY"):
            keys.append(load_pem_private_key(block, None))
        elif label == "CERTIFICATE":
            certs.append(x509.load_pem_x509_certificate(block))
    assert len(keys) == 1, f"{len(keys)} private keys"
    return keys[0], certs


def same_public_key(key, cert: x509.Certificate) -> bool:
    return key.public_key().public_numbers() == cert.public_key().public_numbers()


def openssl_verify(pki: PKI, tmp_path, certs: list[x509.Certificate], purpose: str = "sslserver",
                   anchor=None):
    """openssl verify the first certificate with the rest as untrusted intermediates."""
    openssl = which("openssl")
    leaf = tmp_path / "leaf.pem"
    leaf.write_bytes(cert_pem(certs[0]))
    cmd = [openssl, "verify", "-purpose", purpose, "-CAfile", anchor or pki.ca.path]
    if certs[1:]:
        untrusted = tmp_path / "untrusted.pem"
        untrusted.write_bytes(b"".join(cert_pem(c) for c in certs[1:]))
        cmd += ["-untrusted", untrusted]
    cmd.append(leaf)
    return run(cmd, timeout=30)


@pytest.mark.parametrize("name", list(SERVER_KEY_TYPES))
def test_server_pem_verifies_to_ca_and_key_matches(pki: PKI, tmp_path, name):
    sc = pki[name]
    assert sc.path.name == f"{name}.pem" and sc.path.parent == pki.dir
    key, certs = split_server_file(sc.path.read_bytes())
    assert len(certs) == 2, "chain = leaf + intermediate"
    assert certs[0] == sc.cert and certs[1] == pki.intermediate.cert
    assert same_public_key(key, certs[0])
    assert sc.der == certs[0].public_bytes(Encoding.DER)
    assert sc.chain_der == [c.public_bytes(Encoding.DER) for c in certs]
    # the same command the brief names: leaf file with the chain as -untrusted
    openssl = which("openssl")
    proc = run([openssl, "verify", "-CAfile", pki.ca.path, "-untrusted", sc.path, sc.path],
               timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = openssl_verify(pki, tmp_path, certs)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", list(SERVER_KEY_TYPES))
def test_server_names_and_key_types(pki: PKI, name):
    sc = pki[name]
    san = sc.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "example.com"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    kind, param = SERVER_KEY_TYPES[name]
    if kind == "ec":
        assert isinstance(sc.key, ec.EllipticCurvePrivateKey)
        assert sc.key.curve.name == param.name
        assert sc.kind == "ec" and set(sc.secrets) == {"scalar"}
        assert len(sc.secrets["scalar"]) == (sc.key.curve.key_size + 7) // 8
    else:
        assert isinstance(sc.key, rsa.RSAPrivateKey) and sc.key.key_size == param
        assert sc.kind == "rsa" and set(sc.secrets) == {"p", "q", "d"}
    assert set(sc.secret_patterns) == set(sc.secrets) | {k + "-le" for k in sc.secrets}


def test_pki_paths_have_no_slash_dot(pki: PKI):
    # tlswrapper rewrites "/." to "/:" in the paths it opens
    for sc in pki.servers.values():
        assert "/." not in str(sc.path)
    assert "/." not in str(pki.ca.path)


@pytest.mark.parametrize("name,key_format,label", [
    ("rsa-2048", "pkcs1", b"BEGIN RSA PRIVATE KEY"),
    ("rsa-2048", "pkcs8", b"BEGIN PRIVATE KEY"),
    ("ecdsa-p256", "sec1", b"BEGIN EC PRIVATE KEY"),
    ("ecdsa-p384", "pkcs8", b"BEGIN PRIVATE KEY"),
])
@pytest.mark.parametrize("key_first", [True, False])
def test_variants_key_format_and_order(pki: PKI, name, key_format, label, key_first):
    path = pki.write_variant(name, key_first=key_first, key_format=key_format)
    data = path.read_bytes()
    assert label in data
    labels = [lbl for lbl, _ in pem_blocks(data)]
    assert labels[0 if key_first else -1].endswith("PRIVATE KEY")
    key, certs = split_server_file(data)
    assert same_public_key(key, certs[0]) and certs[0] == pki[name].cert
    assert "/." not in str(path)


def test_variant_paths_are_distinct(pki: PKI):
    assert pki.write_variant() != pki.write_variant()


def test_mismatched_key(pki: PKI):
    for key_of, cert_of in [("ecdsa-p256", "ecdsa-p256"), ("rsa-2048", "ecdsa-p256")]:
        key, certs = split_server_file(pki.write_mismatched(key_of, cert_of).read_bytes())
        assert certs[0] == pki[cert_of].cert
        assert not same_public_key(key, certs[0])


def test_expired_certificate(pki: PKI, tmp_path):
    sc = pki.write_expired("ecdsa-p256")
    assert sc.cert.not_valid_after_utc < datetime.datetime.now(datetime.UTC)
    key, certs = split_server_file(sc.path.read_bytes())
    assert same_public_key(key, certs[0])
    proc = openssl_verify(pki, tmp_path, certs)
    assert proc.returncode != 0 and b"expired" in proc.stdout + proc.stderr


def test_certdir(pki: PKI):
    d = pki.certdir({"localhost": "ecdsa-p256", "example.com": "rsa-2048"})
    assert (d / "localhost").read_bytes() == pki.ecdsa_p256.path.read_bytes()
    assert (d / "example.com").read_bytes() == pki.rsa_2048.path.read_bytes()


@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
def test_client_certificates(pki: PKI, tmp_path, kind):
    cc = pki.clients[kind]
    cn = cc.cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    email = cc.cert.subject.get_attributes_for_oid(x509.NameOID.EMAIL_ADDRESS)[0].value
    assert (cn, email) == (cc.common_name, cc.email)
    key, certs = split_server_file(cc.path.read_bytes())
    assert same_public_key(key, certs[0])
    assert load_pem_private_key(cc.key_path.read_bytes(), None).public_key().public_numbers() \
        == cc.cert.public_key().public_numbers()
    assert x509.load_pem_x509_certificate(cc.cert_path.read_bytes()) == cc.cert
    proc = openssl_verify(pki, tmp_path, [cc.cert], purpose="sslclient", anchor=pki.client_ca.path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # a client certificate does not chain to the server CA, and vice versa
    assert openssl_verify(pki, tmp_path, [cc.cert], purpose="sslclient").returncode != 0


def test_untrusted_client_certificate(pki: PKI, tmp_path):
    cc = pki.issue_client("mallory", "mallory@example.com", untrusted=True)
    proc = openssl_verify(pki, tmp_path, [cc.cert], purpose="sslclient", anchor=pki.client_ca.path)
    assert proc.returncode != 0


def test_free_port_is_bindable():
    import socket
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_run_helper():
    proc = run(["cat"], input=b"hello")
    assert proc.returncode == 0 and proc.stdout == b"hello"
    proc = run(["sh", "-c", "echo oops >&2; exit 3"])
    assert proc.returncode == 3 and proc.stderr == b"oops\n"
