"""Client certificates (-a): the anchors, chain verification, CertificateVerify signatures, and
the identity prog sees. Implements tls.config.ClientCertificateVerifier.

Rule: public data only (certificates and signatures), so this runs in the jailed network
process; the anchor file's bytes come from the key process, which reads it before it jails
(KeyService.read_anchor). Path validation is cryptography's (x509.verification), never ours.
Everything used later is imported here, at module import: after the jail nothing can be loaded.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Callable, Sequence

import cryptography.hazmat.backends.openssl.backend  # noqa: F401  (loaded before the jail)
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from tlswrapper.net.sslenv import ClientIdentity
from tlswrapper.tls import suites
from tlswrapper.tls.config import ServerConfig

MAX_CHAIN = 10                  # certificates we look at in a client's Certificate message
MAX_NAMES_BYTES = 0xFFFF - 2    # certificate_authorities must fit a 16-bit vector
MAX_REASON = 200

_HASHES = {"sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha384": hashes.SHA384,
           "sha512": hashes.SHA512}
_RSA_PKCS1 = frozenset({suites.RSA_PKCS1_SHA256, suites.RSA_PKCS1_SHA384,
                        suites.RSA_PKCS1_SHA512})
_RSA_PSS = frozenset({suites.RSA_PSS_RSAE_SHA256, suites.RSA_PSS_RSAE_SHA384,
                      suites.RSA_PSS_RSAE_SHA512})
_ECDSA_CURVE = {suites.ECDSA_SECP256R1_SHA256: ec.SECP256R1.name,
                suites.ECDSA_SECP384R1_SHA384: ec.SECP384R1.name,
                suites.ECDSA_SECP521R1_SHA512: ec.SECP521R1.name}

# OpenSSL's short names (XN_FLAG_FN_SN), as mod_ssl's SSL_CLIENT_S_DN shows them.
_SHORT_NAMES = {
    NameOID.COMMON_NAME: "CN", NameOID.COUNTRY_NAME: "C", NameOID.LOCALITY_NAME: "L",
    NameOID.STATE_OR_PROVINCE_NAME: "ST", NameOID.ORGANIZATION_NAME: "O",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU", NameOID.EMAIL_ADDRESS: "emailAddress",
    NameOID.SERIAL_NUMBER: "serialNumber", NameOID.STREET_ADDRESS: "street",
    NameOID.DOMAIN_COMPONENT: "DC", NameOID.USER_ID: "UID", NameOID.SURNAME: "SN",
    NameOID.GIVEN_NAME: "GN", NameOID.TITLE: "title", NameOID.INITIALS: "initials",
    NameOID.GENERATION_QUALIFIER: "generationQualifier", NameOID.DN_QUALIFIER: "dnQualifier",
    NameOID.PSEUDONYM: "pseudonym", NameOID.POSTAL_CODE: "postalCode",
    NameOID.BUSINESS_CATEGORY: "businessCategory",
    NameOID.ORGANIZATION_IDENTIFIER: "organizationIdentifier",
    NameOID.JURISDICTION_COUNTRY_NAME: "jurisdictionC",
    NameOID.JURISDICTION_STATE_OR_PROVINCE_NAME: "jurisdictionST",
    NameOID.JURISDICTION_LOCALITY_NAME: "jurisdictionL",
    NameOID.UNSTRUCTURED_NAME: "unstructuredName", NameOID.POSTAL_ADDRESS: "postalAddress",
}
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# RFC 2253 2.4: characters escaped with a backslash anywhere in a value.
_ESCAPE_2253 = frozenset(',+"\\<>;')


class AnchorError(Exception):
    """The anchor file cannot be used; one line for the log."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _reason(text: str) -> str:
    """A log-safe, bounded reason (cryptography's messages quote client-chosen names)."""
    text = "".join(c if " " <= c <= "~" else "?" for c in text)
    return text if len(text) <= MAX_REASON else text[:MAX_REASON] + "..."


# --- mod_ssl's formats ------------------------------------------------------------------------

def _escape_2253(value: str) -> str:
    out = []
    last = len(value) - 1
    for i, c in enumerate(value):
        if c in _ESCAPE_2253 or (i == 0 and c in "# ") or (i == last and c == " "):
            out.append("\\" + c)
        elif c < " " or c == "\x7f":
            out.append(f"\\{ord(c):02X}")
        else:
            out.append(c)     # non-ASCII stays UTF-8 (mod_ssl clears ASN1_STRFLGS_ESC_MSB)
    return "".join(out)


def _der_value(attr: x509.NameAttribute) -> bytes:
    """The attribute value's DER (for an attribute OpenSSL has no name for: #hex)."""
    value = attr.value
    if isinstance(value, bytes):
        body, tag = value, 3
    else:
        tag = getattr(getattr(attr, "_type", None), "value", 12)
        codec = {30: "utf-16-be", 28: "utf-32-be"}.get(tag, "utf-8")
        body = value.encode(codec, "surrogatepass")
    n = len(body)
    length = bytes((n,)) if n < 0x80 else (
        bytes((0x80 | ((n.bit_length() + 7) // 8),)) + n.to_bytes((n.bit_length() + 7) // 8, "big"))
    return bytes((tag,)) + length + body


def format_dn(name: x509.Name) -> str:
    """The DN as mod_ssl's SSL_CLIENT_S_DN: OpenSSL's XN_FLAG_RFC2253 without ESC_MSB (the
    last RDN first, short names, ',' between RDNs and '+' inside one, RFC 2253 escapes)."""
    rdns = []
    for rdn in reversed(list(name.rdns)):
        parts = []
        for attr in reversed(list(rdn)):
            short = _SHORT_NAMES.get(attr.oid)
            if short is None:
                parts.append(f"{attr.oid.dotted_string}=#{_der_value(attr).hex().upper()}")
            elif isinstance(attr.value, bytes):
                parts.append(f"{short}=#{_der_value(attr).hex().upper()}")
            else:
                parts.append(f"{short}={_escape_2253(attr.value)}")
        rdns.append("+".join(parts))
    return ",".join(rdns)


def format_serial(serial: int) -> str:
    """As OpenSSL's i2a_ASN1_INTEGER (mod_ssl's SSL_CLIENT_M_SERIAL): two upper-case hex
    digits per byte of the magnitude, '-' for a negative number."""
    sign = "-" if serial < 0 else ""
    magnitude = abs(serial)
    return sign + magnitude.to_bytes(max(1, (magnitude.bit_length() + 7) // 8), "big").hex().upper()


def format_time(when: datetime.datetime) -> str:
    """As OpenSSL's ASN1_TIME_print (mod_ssl's SSL_CLIENT_V_START/_END)."""
    return (f"{_MONTHS[when.month - 1]} {when.day:2d} {when.hour:02d}:{when.minute:02d}:"
            f"{when.second:02d} {when.year} GMT")


def _first(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    for attr in name.get_attributes_for_oid(oid):
        if isinstance(attr.value, str):
            return attr.value
    return None


def identity(cert: x509.Certificate) -> ClientIdentity:
    return ClientIdentity(
        subject_dn=format_dn(cert.subject), issuer_dn=format_dn(cert.issuer),
        serial=format_serial(cert.serial_number),
        not_before=format_time(cert.not_valid_before_utc),
        not_after=format_time(cert.not_valid_after_utc),
        common_name=_first(cert.subject, NameOID.COMMON_NAME),
        email=_first(cert.subject, NameOID.EMAIL_ADDRESS))


# --- the verifier -----------------------------------------------------------------------------

def _ca_key_usage(_policy: object, _cert: x509.Certificate,
                  key_usage: x509.ExtensionType | None) -> None:
    """A CA's keyUsage, when it has one, must allow keyCertSign (RFC 5280 4.2.1.3); a CA
    without the extension may sign certificates, as in BearSSL and OpenSSL."""
    if isinstance(key_usage, x509.KeyUsage) and not key_usage.key_cert_sign:
        raise ValueError("CA keyUsage does not allow keyCertSign")


class ClientCertificates:
    """The -a policy: a client chain must lead to one of `anchors`: cryptography's WebPKI client
    policy, relaxed where private CAs differ from the web's and BearSSL (which the C version
    uses) and OpenSSL accept them: a leaf needs no subjectAltName and no
    authorityKeyIdentifier (client certificates from private CAs often have neither), and a
    CA needs no keyUsage (what `openssl req -x509` makes with Debian's configuration), but when
    it has one it must allow keyCertSign (_ca_key_usage)."""

    def __init__(self, anchors: Sequence[x509.Certificate],
                 clock: Callable[[], datetime.datetime] = _now) -> None:
        if not anchors:
            raise AnchorError("no certificate in the anchor file")
        self._anchors = list(anchors)
        self._store = Store(self._anchors)
        self._clock = clock
        self._ee_policy = ExtensionPolicy.webpki_defaults_ee().may_be_present(
            x509.SubjectAlternativeName, Criticality.AGNOSTIC, None).may_be_present(
            x509.AuthorityKeyIdentifier, Criticality.AGNOSTIC, None)
        self._ca_policy = ExtensionPolicy.webpki_defaults_ca().may_be_present(
            x509.KeyUsage, Criticality.AGNOSTIC, _ca_key_usage)
        names: list[bytes] = []
        size = 0
        for cert in self._anchors:
            der = cert.subject.public_bytes()
            if der in names:
                continue
            size += 2 + len(der)
            if size > MAX_NAMES_BYTES:
                break
            names.append(der)
        self.names: tuple[bytes, ...] = tuple(names)

    @classmethod
    def from_pem(cls, data: bytes, clock: Callable[[], datetime.datetime] = _now,
                 ) -> ClientCertificates:
        """Parse the anchor file (one or more PEM CERTIFICATE blocks). Raises AnchorError."""
        try:
            anchors = x509.load_pem_x509_certificates(data)
        except ValueError as e:
            raise AnchorError(_reason(str(e) or "no PEM certificate")) from None
        return cls(anchors, clock)

    def server_config(self, config: ServerConfig) -> ServerConfig:
        """`config` asking for client certificates with this verifier and our anchors' names."""
        return config.replace(request_client_certificate=True,  # type: ignore[return-value]
                              client_ca_names=self.names, client_verifier=self)

    # --- tls.config.ClientCertificateVerifier ----------------------------------------------
    def verify_chain(self, chain: Sequence[bytes]) -> tuple[int | None, str, object]:
        if not chain:
            return suites.CERTIFICATE_REQUIRED, "no client certificate", None
        if len(chain) > MAX_CHAIN:
            return suites.BAD_CERTIFICATE, f"more than {MAX_CHAIN} certificates", None
        try:
            certs = [x509.load_der_x509_certificate(der) for der in chain]
        except ValueError as e:
            return suites.BAD_CERTIFICATE, _reason(f"malformed certificate: {e}"), None
        now = self._clock()
        verifier = (PolicyBuilder().store(self._store).time(now)
                    .extension_policies(ca_policy=self._ca_policy, ee_policy=self._ee_policy)
                    .build_client_verifier())
        try:
            verifier.verify(certs[0], certs[1:])
        except (VerificationError, UnsupportedAlgorithm, ValueError) as e:
            return self._classify(certs, now, str(e)), _reason(str(e)), None
        return None, "", identity(certs[0])

    @staticmethod
    def _classify(certs: list[x509.Certificate], now: datetime.datetime, message: str) -> int:
        """The alert for a chain that failed (RFC 8446 6.2). Only a choice of alert: the
        verdict itself is cryptography's."""
        for cert in certs:
            if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
                return suites.CERTIFICATE_EXPIRED
        if "candidates exhausted" in message:
            return suites.UNKNOWN_CA     # no path from the chain to an anchor
        return suites.BAD_CERTIFICATE

    def verify_signature(self, leaf: bytes, scheme: int | None, data: bytes, signature: bytes,
                         tls13: bool) -> bool:
        """Whether `signature` over `data` verifies with the leaf's public key under
        `scheme`. scheme None is TLS 1.0/1.1 (RSA over MD5||SHA-1, or ECDSA over SHA-1).
        In TLS 1.3 an ECDSA scheme must name the key's curve (RFC 8446 4.2.3)."""
        try:
            public = x509.load_der_x509_certificate(leaf).public_key()
            if isinstance(public, rsa.RSAPublicKey):
                if scheme is None:
                    digest = hashlib.md5(data).digest() + hashlib.sha1(data).digest()
                    recovered = public.recover_data_from_signature(
                        signature, padding.PKCS1v15(), None)
                    return recovered == digest
                if scheme in _RSA_PSS:
                    algorithm = _HASHES[suites.SIGNATURE_SCHEME_HASH[scheme]]()
                    public.verify(signature, data, padding.PSS(
                        mgf=padding.MGF1(algorithm), salt_length=algorithm.digest_size),
                        algorithm)
                    return True
                if scheme in _RSA_PKCS1 and not tls13:
                    algorithm = _HASHES[suites.SIGNATURE_SCHEME_HASH[scheme]]()
                    public.verify(signature, data, padding.PKCS1v15(), algorithm)
                    return True
                return False
            if isinstance(public, ec.EllipticCurvePublicKey):
                if scheme is None:
                    public.verify(signature, data, ec.ECDSA(hashes.SHA1()))
                    return True
                if scheme not in _ECDSA_CURVE:
                    return False
                if tls13 and _ECDSA_CURVE[scheme] != public.curve.name:
                    return False
                algorithm = _HASHES[suites.SIGNATURE_SCHEME_HASH[scheme]]()
                public.verify(signature, data, ec.ECDSA(algorithm))
                return True
        except (InvalidSignature, ValueError, UnsupportedAlgorithm, TypeError):
            return False
        return False
