"""A throw-away test PKI built with `cryptography`: CAs, server PEM files, client certificates;
and single keys and certificates made on the spot (rsa_key, ec_key, certificate, write_pem) for
the keys/ tests. The one certificate helper of the tests.

Rule: this file knows about X.509 and PEM, nothing about tlswrapper's code. Everything here is
generated once per test session (see the `pki` fixture in conftest.py); the slow part is the
RSA 4096 key, which is generated exactly once.

Layout written into the session directory:

    ca.pem                 root CA certificate (RSA 2048, self-signed) -- the trust anchor
    intermediate.pem       intermediate CA certificate (issued by the root)
    ecdsa-p256.pem ...     server files: private key (PKCS#8) then chain (leaf + intermediate)
    client-ca.pem          a separate CA for client certificates (for -a)
    client-rsa.pem ...     client files: key + certificate in one file, and .crt/.key apart
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

# name -> (kind, parameter); the names are the server file names without ".pem"
SERVER_KEY_TYPES: dict[str, tuple[str, object]] = {
    "ecdsa-p256": ("ec", ec.SECP256R1()),
    "ecdsa-p384": ("ec", ec.SECP384R1()),
    "ecdsa-p521": ("ec", ec.SECP521R1()),
    "rsa-2048": ("rsa", 2048),
    "rsa-4096": ("rsa", 4096),
}

DNS_NAMES = ("localhost", "example.com")
IP_ADDRESSES = ("127.0.0.1",)


def generate_key(key_type: str) -> PrivateKey:
    """A fresh private key for one of SERVER_KEY_TYPES' names (or "ecdsa"/"rsa" shorthands)."""
    key_type = {"ecdsa": "ecdsa-p256", "rsa": "rsa-2048"}.get(key_type, key_type)
    kind, param = SERVER_KEY_TYPES[key_type]
    if kind == "ec":
        return ec.generate_private_key(param)
    return rsa.generate_private_key(public_exponent=65537, key_size=param)


def key_pem(key: PrivateKey, key_format: str = "pkcs8", password: bytes | None = None) -> bytes:
    """The private key as PEM. key_format: "pkcs8" (BEGIN PRIVATE KEY) or "traditional"
    (PKCS#1 "BEGIN RSA PRIVATE KEY" for RSA, SEC1 "BEGIN EC PRIVATE KEY" for EC); with
    `password`, encrypted (BEGIN ENCRYPTED PRIVATE KEY for PKCS#8)."""
    fmt = {
        "pkcs8": serialization.PrivateFormat.PKCS8,
        "traditional": serialization.PrivateFormat.TraditionalOpenSSL,
        "pkcs1": serialization.PrivateFormat.TraditionalOpenSSL,
        "sec1": serialization.PrivateFormat.TraditionalOpenSSL,
    }[key_format]
    if key_format == "pkcs1" and not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("pkcs1 is for RSA keys")
    if key_format == "sec1" and not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("sec1 is for EC keys")
    encryption: serialization.KeySerializationEncryption = serialization.NoEncryption()
    if password is not None:
        encryption = serialization.BestAvailableEncryption(password)
    return key.private_bytes(serialization.Encoding.PEM, fmt, encryption)


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def secret_numbers(key: PrivateKey) -> dict[str, bytes]:
    """The private key's secret integers as big-endian bytes, for memory searches:
    EC: {"scalar"}; RSA: {"p", "q", "d"}. Also each value's little-endian form is useful
    (some bignum libraries store limbs little-endian); see secret_patterns()."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        size = (key.curve.key_size + 7) // 8
        return {"scalar": key.private_numbers().private_value.to_bytes(size, "big")}
    nums = key.private_numbers()
    out = {}
    for name, value in (("p", nums.p), ("q", nums.q), ("d", nums.d)):
        out[name] = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return out


def secret_patterns(key: PrivateKey) -> dict[str, bytes]:
    """secret_numbers() in big- and little-endian form, e.g. {"scalar": ..., "scalar-le": ...}."""
    out = {}
    for name, value in secret_numbers(key).items():
        out[name] = value
        out[name + "-le"] = value[::-1]
    return out


def _name(common_name: str, email: str | None = None) -> x509.Name:
    attrs = [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tlswrapper tests"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ]
    if email:
        attrs.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, email))
    return x509.Name(attrs)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass
class Authority:
    """A CA: its certificate, key and the path of its certificate PEM file."""

    cert: x509.Certificate
    key: PrivateKey
    path: Path

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)


def make_ca(common_name: str, path: Path, issuer: Authority | None = None,
            key: PrivateKey | None = None, path_length: int | None = None) -> Authority:
    """A CA certificate (self-signed root when issuer is None), written to path as PEM."""
    key = key or generate_key("rsa-2048")
    subject = _name(common_name)
    issuer_name = issuer.cert.subject if issuer else subject
    signing_key = issuer.key if issuer else key
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    cert = builder.sign(signing_key, hashes.SHA256())
    path.write_bytes(cert_pem(cert))
    return Authority(cert=cert, key=key, path=path)


def issue_leaf(issuer: Authority, key: PrivateKey, common_name: str, *,
               dns_names: tuple[str, ...] = (), ip_addresses: tuple[str, ...] = (),
               emails: tuple[str, ...] = (), subject_email: str | None = None,
               server: bool = True,
               not_before: datetime.datetime | None = None,
               not_after: datetime.datetime | None = None) -> x509.Certificate:
    """An end-entity certificate for key, signed by issuer (serverAuth or clientAuth)."""
    now = _now()
    not_before = not_before or now - datetime.timedelta(days=1)
    not_after = not_after or now + datetime.timedelta(days=365)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, subject_email))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False,
                key_encipherment=isinstance(key, rsa.RSAPrivateKey), data_encipherment=False,
                key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    )
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    sans += [x509.RFC822Name(e) for e in emails]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer.key, hashes.SHA256())


@dataclass
class ServerCert:
    """One server PEM file: key + chain (leaf, then intermediate)."""

    name: str                       # e.g. "ecdsa-p256"
    path: Path                      # the PEM file: key then chain, unless a variant says otherwise
    key: PrivateKey
    cert: x509.Certificate          # the leaf
    chain: list[x509.Certificate]   # leaf first, then the intermediate(s)

    @property
    def kind(self) -> str:
        """"ec" or "rsa"."""
        return "ec" if isinstance(self.key, ec.EllipticCurvePrivateKey) else "rsa"

    @property
    def der(self) -> bytes:
        """The leaf certificate, DER (what goes in the Certificate message)."""
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def chain_der(self) -> list[bytes]:
        return [c.public_bytes(serialization.Encoding.DER) for c in self.chain]

    @property
    def chain_pem(self) -> bytes:
        return b"".join(cert_pem(c) for c in self.chain)

    def key_pem(self, key_format: str = "pkcs8") -> bytes:
        return key_pem(self.key, key_format)

    @property
    def secrets(self) -> dict[str, bytes]:
        """Big-endian secret integers of the key (EC scalar; RSA p, q, d)."""
        return secret_numbers(self.key)

    @property
    def secret_patterns(self) -> dict[str, bytes]:
        """secrets in big- and little-endian form."""
        return secret_patterns(self.key)


@dataclass
class ClientCert:
    """A client certificate (issued by the client CA unless made untrusted)."""

    name: str
    common_name: str
    email: str | None
    key: PrivateKey
    cert: x509.Certificate
    path: Path          # key + certificate in one PEM file
    cert_path: Path     # certificate alone (curl --cert, openssl -cert, gnutls --x509certfile)
    key_path: Path      # key alone (curl --key, openssl -key, gnutls --x509keyfile)

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def serial_hex(self) -> str:
        """The serial number in upper-case hex, as mod_ssl's SSL_CLIENT_M_SERIAL prints it
        (OpenSSL's i2a_ASN1_INTEGER: two digits per byte, so a leading zero digit is kept)."""
        n = self.cert.serial_number
        return n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big").hex().upper()


def _write_private(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


@dataclass
class PKI:
    """The session's test PKI. Build it with PKI.create(directory)."""

    dir: Path
    ca: Authority                   # root; ca.path is ca.pem (the trust anchor for clients)
    intermediate: Authority         # issues every server leaf
    client_ca: Authority            # issues client certificates; client_ca.path for -a
    servers: dict[str, ServerCert]  # ecdsa-p256, ecdsa-p384, ecdsa-p521, rsa-2048, rsa-4096
    clients: dict[str, ClientCert] = field(default_factory=dict)  # "rsa", "ecdsa"
    _counter: int = 0

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def create(cls, directory: Path) -> PKI:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        ca = make_ca("tlswrapper test root CA", directory / "ca.pem", path_length=1)
        intermediate = make_ca("tlswrapper test intermediate CA", directory / "intermediate.pem",
                               issuer=ca, path_length=0)
        client_ca = make_ca("tlswrapper test client CA", directory / "client-ca.pem")
        pki = cls(dir=directory, ca=ca, intermediate=intermediate, client_ca=client_ca, servers={})
        for name in SERVER_KEY_TYPES:
            pki.servers[name] = pki.issue_server(name, directory / f"{name}.pem")
        pki.clients["rsa"] = pki.issue_client("tlswrapper-client-rsa", "client-rsa@example.com",
                                              key_type="rsa-2048", name="client-rsa")
        pki.clients["ecdsa"] = pki.issue_client("tlswrapper-client-ecdsa",
                                                "client-ecdsa@example.com",
                                                key_type="ecdsa-p256", name="client-ecdsa")
        return pki

    # -- access -----------------------------------------------------------------------------

    def __getitem__(self, name: str) -> ServerCert:
        return self.servers[name]

    @property
    def ca_pem(self) -> Path:
        """Path of ca.pem (the root certificate that clients trust)."""
        return self.ca.path

    @property
    def ecdsa_p256(self) -> ServerCert:
        return self.servers["ecdsa-p256"]

    @property
    def ecdsa_p384(self) -> ServerCert:
        return self.servers["ecdsa-p384"]

    @property
    def ecdsa_p521(self) -> ServerCert:
        return self.servers["ecdsa-p521"]

    @property
    def rsa_2048(self) -> ServerCert:
        return self.servers["rsa-2048"]

    @property
    def rsa_4096(self) -> ServerCert:
        return self.servers["rsa-4096"]

    # -- helpers that write new files -------------------------------------------------------

    def _fresh(self, stem: str) -> Path:
        """A new file name in a per-call subdirectory of the PKI dir (never overwrites)."""
        self._counter += 1
        sub = self.dir / "variants" / f"v{self._counter}"
        sub.mkdir(parents=True, exist_ok=True)
        return sub / stem

    def issue_server(self, key_type: str, path: Path | None = None, *,
                     key: PrivateKey | None = None,
                     dns_names: tuple[str, ...] = DNS_NAMES,
                     ip_addresses: tuple[str, ...] = IP_ADDRESSES,
                     not_before: datetime.datetime | None = None,
                     not_after: datetime.datetime | None = None) -> ServerCert:
        """A new server PEM file (key, then leaf + intermediate) issued by the intermediate.
        key_type is one of SERVER_KEY_TYPES; a given key is reused (no new RSA generation)."""
        key = key or generate_key(key_type)
        cert = issue_leaf(self.intermediate, key, dns_names[0] if dns_names else "server",
                          dns_names=dns_names, ip_addresses=ip_addresses,
                          not_before=not_before, not_after=not_after)
        sc = ServerCert(name=key_type, path=path or self._fresh(f"{key_type}.pem"), key=key,
                        cert=cert, chain=[cert, self.intermediate.cert])
        _write_private(sc.path, sc.key_pem() + sc.chain_pem)
        return sc

    def write_variant(self, name: str = "ecdsa-p256", *, key_first: bool = True,
                      key_format: str = "pkcs8", with_intermediate: bool = True,
                      path: Path | None = None) -> Path:
        """Write server `name`'s key and chain in another layout and return the path.
        key_first=False puts the key after the chain; key_format is "pkcs8", "traditional",
        "pkcs1" (RSA only) or "sec1" (EC only); with_intermediate=False writes the leaf alone."""
        sc = self.servers[name]
        chain = sc.chain_pem if with_intermediate else cert_pem(sc.cert)
        key = sc.key_pem(key_format)
        data = key + chain if key_first else chain + key
        return _write_private(path or self._fresh(f"{name}.pem"), data)

    def write_mismatched(self, key_of: str = "ecdsa-p256", cert_of: str = "ecdsa-p256",
                         path: Path | None = None) -> Path:
        """A PEM file whose key does not match its certificate: the chain of `cert_of` with
        the key of `key_of` (a fresh key of the same type when both names are equal)."""
        key = self.servers[key_of].key if key_of != cert_of else generate_key(key_of)
        data = key_pem(key) + self.servers[cert_of].chain_pem
        return _write_private(path or self._fresh(f"mismatched-{key_of}-{cert_of}.pem"), data)

    def write_expired(self, name: str = "ecdsa-p256", path: Path | None = None) -> ServerCert:
        """A server file whose leaf expired yesterday (same key as server `name`)."""
        now = _now()
        return self.issue_server(name, path or self._fresh(f"expired-{name}.pem"),
                                 key=self.servers[name].key,
                                 not_before=now - datetime.timedelta(days=30),
                                 not_after=now - datetime.timedelta(days=1))

    def write_raw(self, data: bytes, stem: str = "raw.pem") -> Path:
        """Write arbitrary bytes (a broken PEM, an empty file...) to a fresh path."""
        return _write_private(self._fresh(stem), data)

    def certdir(self, mapping: dict[str, str | Path]) -> Path:
        """A new directory for -d: file name (usually an SNI host name) -> server name
        (e.g. "rsa-2048") or a path whose content is copied. Returns the directory."""
        self._counter += 1
        d = self.dir / "certdirs" / f"d{self._counter}"
        d.mkdir(parents=True)
        for filename, source in mapping.items():
            if isinstance(source, Path):
                data = source.read_bytes()
            else:
                data = Path(self.servers[source].path).read_bytes()
            _write_private(d / filename, data)
        return d

    def issue_client(self, common_name: str, email: str | None = None, *,
                     key_type: str = "ecdsa-p256", name: str | None = None,
                     untrusted: bool = False, expired: bool = False) -> ClientCert:
        """A client certificate with that commonName (and emailAddress in the subject and as an
        rfc822Name SAN), issued by client_ca; untrusted=True signs it with a throw-away CA
        that nothing trusts. Files: <name>.pem (key + cert), <name>.crt, <name>.key."""
        self._counter += 1
        name = name or f"client{self._counter}"
        out = self.dir / "clients"
        out.mkdir(exist_ok=True)
        issuer = self.client_ca
        if untrusted:
            issuer = make_ca("untrusted CA", out / f"{name}-untrusted-ca.pem",
                             key=generate_key("ecdsa-p256"))
        now = _now()
        key = generate_key(key_type)
        cert = issue_leaf(issuer, key, common_name,
                          emails=(email,) if email else (), subject_email=email, server=False,
                          not_before=now - datetime.timedelta(days=30) if expired else None,
                          not_after=now - datetime.timedelta(days=1) if expired else None)
        cc = ClientCert(name=name, common_name=common_name, email=email, key=key, cert=cert,
                        path=out / f"{name}.pem", cert_path=out / f"{name}.crt",
                        key_path=out / f"{name}.key")
        _write_private(cc.key_path, key_pem(key))
        cc.cert_path.write_bytes(cert_pem(cert))
        _write_private(cc.path, key_pem(key) + cert_pem(cert))
        return cc


# --------------------------------------------------------------------------- single keys

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


def write_pem(path: Path, key: PrivateKey, chain: list[x509.Certificate],
              fmt: str = "pkcs8", key_first: bool = True) -> Path:
    """A PEM file of `chain` (leaf first) and `key`, the key before or after the chain."""
    certs = b"".join(cert_pem(c) for c in chain)
    k = key_pem(key, fmt)
    path.write_bytes(k + certs if key_first else certs + k)
    return path


def der_chain(chain: list[x509.Certificate]) -> tuple[bytes, ...]:
    return tuple(c.public_bytes(serialization.Encoding.DER) for c in chain)
