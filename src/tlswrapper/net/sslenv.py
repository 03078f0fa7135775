"""The SSL_* environment prog gets after the handshake, in mod_ssl's names and formats.

Rule: plain data in, plain strings out; no X.509 parsing here (clientcert.py does that, and only
with -a), so that the network process pays for no import it does not need.

Formats (mod_ssl 2.4 with OpenSSL, which is what scripts written for Apache expect):

    SSL_PROTOCOL           TLSv1, TLSv1.1, TLSv1.2, TLSv1.3
    SSL_CIPHER             OpenSSL's name: ECDHE-RSA-AES256-GCM-SHA384, TLS_AES_256_GCM_SHA384
    SSL_TLS_SNI            the host name the client sent (absent without SNI)
    SSL_CLIENT_VERIFY      SUCCESS (only set when a client certificate was verified)
    SSL_CLIENT_S_DN        subject DN, RFC 2253 order and escaping as OpenSSL's
                           XN_FLAG_RFC2253 without ASN1_STRFLGS_ESC_MSB (mod_ssl's default):
                           emailAddress=alice@example.com,CN=alice,O=Example
    SSL_CLIENT_S_DN_CN     the subject's first commonName
    SSL_CLIENT_S_DN_Email  the subject's first emailAddress
    SSL_CLIENT_M_SERIAL    serial number, upper-case hex, two digits per byte (i2a_ASN1_INTEGER)
    SSL_CLIENT_I_DN        issuer DN, same format as SSL_CLIENT_S_DN
    SSL_CLIENT_V_START     notBefore as ASN1_TIME_print: "Mar  1 12:00:00 2025 GMT"
    SSL_CLIENT_V_END       notAfter, same format
"""

from __future__ import annotations

from tlswrapper.tls import suites
from tlswrapper.tls.frozen import Frozen, init

MAX_VALUE = 8192    # net/prog.py MAX_VALUE: the longest environment value the go-ahead may carry

# OpenSSL's names of our cipher suites (what mod_ssl puts in SSL_CIPHER).
OPENSSL_CIPHER_NAMES: dict[int, str] = {
    0x1301: "TLS_AES_128_GCM_SHA256",
    0x1302: "TLS_AES_256_GCM_SHA384",
    0x1303: "TLS_CHACHA20_POLY1305_SHA256",
    0xCCA9: "ECDHE-ECDSA-CHACHA20-POLY1305",
    0xCCA8: "ECDHE-RSA-CHACHA20-POLY1305",
    0xC02C: "ECDHE-ECDSA-AES256-GCM-SHA384",
    0xC030: "ECDHE-RSA-AES256-GCM-SHA384",
    0xC02B: "ECDHE-ECDSA-AES128-GCM-SHA256",
    0xC02F: "ECDHE-RSA-AES128-GCM-SHA256",
    0xC024: "ECDHE-ECDSA-AES256-SHA384",
    0xC028: "ECDHE-RSA-AES256-SHA384",
    0xC023: "ECDHE-ECDSA-AES128-SHA256",
    0xC027: "ECDHE-RSA-AES128-SHA256",
    0xC00A: "ECDHE-ECDSA-AES256-SHA",
    0xC014: "ECDHE-RSA-AES256-SHA",
    0xC009: "ECDHE-ECDSA-AES128-SHA",
    0xC013: "ECDHE-RSA-AES128-SHA",
}
if set(OPENSSL_CIPHER_NAMES) != set(suites.SUITES):
    raise ImportError("sslenv: OPENSSL_CIPHER_NAMES does not cover suites.SUITES")


class ClientIdentity(Frozen):
    """A verified client certificate, already formatted for prog (see the module comment).
    `common_name` and `email` are the raw values (None when the subject has none); -U takes
    the account name from them."""

    __slots__ = ("subject_dn", "issuer_dn", "serial", "not_before", "not_after", "common_name",
                 "email")
    subject_dn: str
    issuer_dn: str
    serial: str
    not_before: str
    not_after: str
    common_name: str | None
    email: str | None

    def __init__(self, subject_dn: str, issuer_dn: str, serial: str, not_before: str,
                 not_after: str, common_name: str | None, email: str | None) -> None:
        init(self, "subject_dn", subject_dn)
        init(self, "issuer_dn", issuer_dn)
        init(self, "serial", serial)
        init(self, "not_before", not_before)
        init(self, "not_after", not_after)
        init(self, "common_name", common_name)
        init(self, "email", email)


def escape_value(value: str) -> str:
    """A value for the environment: control characters (which cannot travel in an environment
    string, NUL above all) as \\XX, as OpenSSL's ASN1_STRFLGS_ESC_CTRL writes them."""
    if all(" " <= c != "\x7f" for c in value):
        return value
    return "".join(c if " " <= c != "\x7f" else f"\\{ord(c):02X}" for c in value)


def tls_environment(version: int, cipher_suite: int, sni: str | None,
                    client: ClientIdentity | None = None) -> dict[str, str]:
    """The SSL_* variables for one connection."""
    env = {
        "SSL_PROTOCOL": suites.VERSION_LABELS.get(version, ""),
        "SSL_CIPHER": OPENSSL_CIPHER_NAMES.get(cipher_suite, ""),
    }
    if sni:
        env["SSL_TLS_SNI"] = sni
    if client is not None:
        env["SSL_CLIENT_VERIFY"] = "SUCCESS"
        env["SSL_CLIENT_S_DN"] = client.subject_dn
        env["SSL_CLIENT_I_DN"] = client.issuer_dn
        env["SSL_CLIENT_M_SERIAL"] = client.serial
        env["SSL_CLIENT_V_START"] = client.not_before
        env["SSL_CLIENT_V_END"] = client.not_after
        if client.common_name is not None:
            env["SSL_CLIENT_S_DN_CN"] = escape_value(client.common_name)
        if client.email is not None:
            env["SSL_CLIENT_S_DN_Email"] = escape_value(client.email)
    # A value the child would refuse (net/prog.py's MAX_VALUE) is left out rather than losing prog.
    return {k: v for k, v in env.items() if len(v.encode("utf-8", "surrogateescape")) <= MAX_VALUE}
