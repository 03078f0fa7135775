"""PEM files: every key format in either order, chains, and every way a file can be unusable;
the secret block is sealed at read time and only parsed by unseal_private_key."""

from __future__ import annotations

import base64
import datetime
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

import certs as kh
from tlswrapper.keys import pem
from tlswrapper.tls import suites

SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _same_key(a: kh.PrivateKey, b: kh.PrivateKey) -> bool:
    return a.public_key().public_bytes(*SPKI) == b.public_key().public_bytes(*SPKI)


KEYS = {
    "rsa2048": (lambda: kh.rsa_key(2048), suites.KEY_RSA, 2048),
    "p256": (lambda: kh.ec_key(ec.SECP256R1()), suites.KEY_EC_P256, 0),
    "p384": (lambda: kh.ec_key(ec.SECP384R1()), suites.KEY_EC_P384, 0),
    "p521": (lambda: kh.ec_key(ec.SECP521R1()), suites.KEY_EC_P521, 0),
}


@pytest.mark.parametrize("key_name", sorted(KEYS))
@pytest.mark.parametrize("fmt", ["pkcs8", "traditional"])
@pytest.mark.parametrize("key_first", [True, False])
def test_every_key_format_in_either_order(tmp_path: Path, key_name: str, fmt: str,
                                          key_first: bool) -> None:
    make, key_type, bits = KEYS[key_name]
    key = make()
    ca_key = kh.ec_key()
    ca = kh.certificate(ca_key, "Test CA", ca=True)
    leaf = kh.certificate(key, "example.org", issuer_key=ca_key, issuer_cn="Test CA")
    path = kh.write_pem(tmp_path / "cert.pem", key, [leaf, ca], fmt, key_first)
    label = {"pkcs8": b"PRIVATE KEY", "traditional": b"RSA PRIVATE KEY"
             if key_type == suites.KEY_RSA else b"EC PRIVATE KEY"}[fmt]

    sealed = pem.read_pem_file(str(path))
    assert sealed is not None
    assert sealed.key_labels == (label,)
    chain, got_type, got_bits = pem.parse_public(sealed)
    assert chain == kh.der_chain([leaf, ca])
    assert (got_type, got_bits) == (key_type, bits)
    assert _same_key(pem.unseal_private_key(sealed), key)


def test_secret_block_is_not_kept_in_clear(tmp_path: Path) -> None:
    key = kh.ec_key()
    path = kh.write_pem(tmp_path / "c.pem", key, [kh.certificate(key)])
    sealed = pem.read_pem_file(str(path))
    assert sealed is not None
    key_text = kh.key_pem(key)
    body = b"".join(key_text.splitlines()[1:-1])
    der = base64.b64decode(body)
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    blobs = [*sealed.certificates, sealed.sealed_key]
    for blob in blobs:
        for secret in (body[:40], body[-40:], der, scalar):
            assert secret not in blob
        assert b"PRIVATE KEY" not in blob
    assert len(sealed.sealed_key) == 12 + len(key_text.rstrip(b"\n")) + 16


def test_rsa_4096_and_sizes_out_of_range(tmp_path: Path) -> None:
    for bits, ok in ((4096, True), (1024, False), (4104, False)):
        key = kh.rsa_key(bits)
        path = kh.write_pem(tmp_path / f"{bits}.pem", key, [kh.certificate(key)])
        sealed = pem.read_pem_file(str(path))
        assert sealed is not None
        if ok:
            assert pem.parse_public(sealed)[1:] == (suites.KEY_RSA, bits)
        else:
            with pytest.raises(pem.PemError, match=f"RSA key of {bits} bits"):
                pem.parse_public(sealed)


def test_unsupported_key_type(tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    # cryptography signs Ed25519 certificates with algorithm None.
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "ed")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, None))
    path = tmp_path / "ed.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()) + kh.cert_pem(cert))
    sealed = pem.read_pem_file(str(path))
    assert sealed is not None
    with pytest.raises(pem.PemError, match="not supported"):
        pem.parse_public(sealed)


def test_key_not_matching_certificate_found_when_unsealed(tmp_path: Path) -> None:
    key, other = kh.ec_key(), kh.ec_key()
    path = kh.write_pem(tmp_path / "c.pem", key, [kh.certificate(other)])
    sealed = pem.read_pem_file(str(path))
    assert sealed is not None
    pem.parse_public(sealed)
    with pytest.raises(pem.PemError, match="key does not match certificate"):
        pem.unseal_private_key(sealed)
    # Same for a key of another type than the certificate's.
    path = kh.write_pem(tmp_path / "d.pem", kh.rsa_key(2048), [kh.certificate(other)])
    sealed = pem.read_pem_file(str(path))
    assert sealed is not None
    with pytest.raises(pem.PemError, match="key does not match certificate"):
        pem.unseal_private_key(sealed)


def test_missing_file_is_none(tmp_path: Path) -> None:
    assert pem.read_pem_file(str(tmp_path / "nope.pem")) is None
    assert pem.read_pem_file(str(tmp_path / "nodir" / "nope.pem")) is None


def test_garbage_file_has_no_certificate(tmp_path: Path) -> None:
    path = tmp_path / "garbage"
    path.write_bytes(os.urandom(5000))
    sealed = pem.read_pem_file(str(path))
    assert sealed is not None
    with pytest.raises(pem.PemError, match="no certificate"):
        pem.parse_public(sealed)


def test_bad_base64_in_certificate(tmp_path: Path) -> None:
    key = kh.ec_key()
    path = tmp_path / "c.pem"
    path.write_bytes(kh.key_pem(key) + b"-----BEGIN CERTIFICATE-----\n!!!!\n"
                     b"-----END CERTIFICATE-----\n")
    sealed = pem.read_pem_file(str(path))
    assert sealed is not None
    with pytest.raises(pem.PemError, match="bad certificate"):
        pem.parse_public(sealed)


def test_bad_private_key_found_when_unsealed(tmp_path: Path) -> None:
    key = kh.ec_key()
    path = tmp_path / "c.pem"
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
                     + kh.cert_pem(kh.certificate(key)))
    sealed = pem.read_pem_file(str(path))
    assert sealed is not None
    pem.parse_public(sealed)
    with pytest.raises(pem.PemError, match="bad private key"):
        pem.unseal_private_key(sealed)


def test_certificate_without_key_and_two_keys(tmp_path: Path) -> None:
    key = kh.ec_key()
    cert = kh.cert_pem(kh.certificate(key))
    (tmp_path / "nokey").write_bytes(cert)
    (tmp_path / "twokeys").write_bytes(kh.key_pem(key) + kh.key_pem(kh.ec_key()) + cert)
    (tmp_path / "unterminated").write_bytes(cert + b"-----BEGIN PRIVATE KEY-----\nAAAA\n")
    for name, reason in (("nokey", "no private key"), ("twokeys", "more than one private key")):
        sealed = pem.read_pem_file(str(tmp_path / name))
        assert sealed is not None
        with pytest.raises(pem.PemError, match=reason):
            pem.parse_public(sealed)
    with pytest.raises(pem.PemError, match="no END line"):
        pem.read_pem_file(str(tmp_path / "unterminated"))


@pytest.mark.parametrize("fmt", ["pkcs8", "traditional"])
def test_encrypted_key_refused(tmp_path: Path, fmt: str) -> None:
    key = kh.rsa_key(2048)
    path = tmp_path / "enc.pem"
    path.write_bytes(kh.key_pem(key, fmt, password=b"secret") + kh.cert_pem(kh.certificate(key)))
    sealed = pem.read_pem_file(str(path))
    assert sealed is not None
    with pytest.raises(pem.PemError, match="encrypted private key"):
        pem.parse_public(sealed)


def test_other_blocks_are_ignored(tmp_path: Path) -> None:
    # `openssl ecparam -genkey` writes an EC PARAMETERS block before the key.
    key = kh.ec_key()
    path = tmp_path / "c.pem"
    path.write_bytes(b"Bag Attributes\n-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n"
                     b"-----END EC PARAMETERS-----\n" + kh.key_pem(key, "traditional")
                     + b"subject=CN = example.org\n" + kh.cert_pem(kh.certificate(key)))
    sealed = pem.read_pem_file(str(path))
    assert sealed is not None
    assert pem.parse_public(sealed)[1] == suites.KEY_EC_P256
    assert _same_key(pem.unseal_private_key(sealed), key)


def test_file_over_one_mebibyte_refused(tmp_path: Path) -> None:
    key = kh.ec_key()
    path = tmp_path / "big.pem"
    path.write_bytes(kh.key_pem(key) + kh.cert_pem(kh.certificate(key)) + b"\n" * (1 << 20))
    with pytest.raises(pem.PemError, match="larger than 1 MiB"):
        pem.read_pem_file(str(path))
    path.write_bytes(b"\n" * (1 << 20))
    assert pem.read_pem_file(str(path)) is not None


def test_not_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(pem.PemError, match="not a regular file"):
        pem.read_pem_file(str(fifo))
    with pytest.raises(OSError):
        pem.read_pem_file(str(tmp_path))


def test_unreadable_file_is_an_oserror(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads anything")
    path = tmp_path / "c.pem"
    path.write_bytes(b"x")
    path.chmod(0)
    with pytest.raises(PermissionError):
        pem.read_pem_file(str(path))


def test_key_block_base64_decoded_in_place_matches_the_standard_decoder() -> None:
    """unseal_private_key decodes the key's base64 itself (into a buffer it wipes), not through
    cryptography's PEM loader, which leaves the DER in freed memory."""
    import base64

    from tlswrapper.keys.pem import PemError, _decode_key_block

    for size in range(1, 200):
        data = os.urandom(size)
        block = bytearray(b"-----BEGIN PRIVATE KEY-----\r\n" + base64.encodebytes(data)
                          + b"-----END PRIVATE KEY-----\n")
        out = bytearray(len(block))
        assert bytes(out[:_decode_key_block(block, out)]) == data
    for bad in (b"AB*D\n", b"AB=D\n"):
        block = bytearray(b"-----BEGIN PRIVATE KEY-----\n" + bad + b"-----END PRIVATE KEY-----\n")
        with pytest.raises(PemError):
            _decode_key_block(block, bytearray(len(block)))


def test_key_side_imports_leave_out_dataclasses_and_the_serialization_package() -> None:
    """Under tcpserver the key process imports the key side after its fork, on the client's
    path: cryptography's serialization package (its SSH module) and dataclasses would pull in
    inspect, ast, dis and tokenize, about 9 ms per connection. The names pem.py needs from
    serialization are the same objects either way."""
    import subprocess
    import sys
    code = ("import sys, tlswrapper.keys.process, tlswrapper.keys.local, tlswrapper.keys.service;"
            "print(sorted(m for m in ('dataclasses', 'inspect', "
            "'cryptography.hazmat.primitives.serialization') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.strip() == "[]"
    assert pem.Encoding is serialization.Encoding
    assert pem.PublicFormat is serialization.PublicFormat
    assert pem.load_der_private_key is serialization.load_der_private_key
