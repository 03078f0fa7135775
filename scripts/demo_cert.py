"""Write a demo certificate for `make demo`: a self-signed ECDSA P-256 certificate for
localhost and 127.0.0.1, with its private key, in one PEM file (the layout tlswrapper reads).

usage: python scripts/demo_cert.py demo/localhost.pem
For demonstrations only: clients must be told to skip verification (curl -k).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def demo_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ) + cert.public_bytes(serialization.Encoding.PEM)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: demo_cert.py OUTPUT.pem", file=sys.stderr)
        return 100
    out = Path(argv[1])
    out.parent.mkdir(parents=True, exist_ok=True)
    # the file holds a private key: create it readable by its owner only
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(demo_pem())
    print(f"wrote {out} (self-signed ECDSA P-256 for localhost, 127.0.0.1)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
