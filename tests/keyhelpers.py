"""Test keys and certificates for the keys/ tests, made with cryptography.

Rule: helpers only, no tests; every key is generated fresh (RSA keys cached per size)."""

from __future__ import annotations

import datetime
import functools
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@functools.lru_cache(maxsize=None)
def rsa_key(bits: int = 2048, n: int = 0) -> rsa.RSAPrivateKey:
    """An RSA key of `bits` (the `n`-th one, to get distinct keys of one size)."""
    return rsa.generate_private_key(65537, bits)


def ec_key(curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(curve or ec.SECP256R1())


def certificate(subject_key: PrivateKey, cn: str = "example.org",
                issuer_key: PrivateKey | None = None, issuer_cn: str | None = None,
                ca: bool = False) -> x509.Certificate:
    """A certificate for `subject_key`, self-signed unless `issuer_key` is given."""
    now = datetime.datetime.now(datetime.timezone.utc)
    issuer_key = issuer_key or subject_key
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                          issuer_cn or cn)]))
               .public_key(subject_key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=1))
               .not_valid_after(now + datetime.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    return builder.sign(issuer_key, hashes.SHA256())


def key_pem(key: PrivateKey, fmt: str = "pkcs8", password: bytes | None = None) -> bytes:
    """`fmt`: 'pkcs8' (PRIVATE KEY), 'traditional' (RSA PRIVATE KEY / EC PRIVATE KEY)."""
    private_format = {"pkcs8": serialization.PrivateFormat.PKCS8,
                      "traditional": serialization.PrivateFormat.TraditionalOpenSSL}[fmt]
    encryption: serialization.KeySerializationEncryption = serialization.NoEncryption()
    if password is not None:
        encryption = serialization.BestAvailableEncryption(password)
    return key.private_bytes(serialization.Encoding.PEM, private_format, encryption)


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def write_pem(path: Path, key: PrivateKey, chain: list[x509.Certificate],
              fmt: str = "pkcs8", key_first: bool = True) -> Path:
    """A PEM file of `chain` (leaf first) and `key`, the key before or after the chain."""
    certs = b"".join(cert_pem(c) for c in chain)
    k = key_pem(key, fmt)
    path.write_bytes(k + certs if key_first else certs + k)
    return path


def der_chain(chain: list[x509.Certificate]) -> tuple[bytes, ...]:
    return tuple(c.public_bytes(serialization.Encoding.DER) for c in chain)
