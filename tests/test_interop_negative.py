"""Negative interop: real clients offering only what the server has disabled get the RFC's
alert, the client reports that alert, and the server records the matching ConnectionFailed.

Cases (openssl s_client unless noted; gnutls-cli and Python's ssl repeat the main ones):
- versions: server -M tls12 vs a TLS 1.3-only client; server -m tls13 vs a TLS 1.2-only
  client; a TLS 1.1 and a TLS 1.0 client vs the default server -> protocol_version (70)
- suites: server -c AES_128_GCM_SHA256 only vs a CHACHA20-only client, TLS 1.2 and 1.3
  -> handshake_failure (40)
- groups: server -e secp384r1 only vs an x25519-only client, TLS 1.2 and 1.3
  -> handshake_failure (40)
- TLS 1.2, an ECDSA P-384 certificate only, and a client whose supported_groups lacks P-384
  -> handshake_failure (RFC 8422 5.1: the certificate's curve must be one the client lists);
  with an RSA candidate after it, the server falls back to the RSA certificate
- TLS_FALLBACK_SCSV (RFC 7507): `-tls1_2 -fallback_scsv` vs a server with TLS 1.3 enabled
  -> inappropriate_fallback (86)
- HelloRetryRequest (positive, the same configuration as the groups case): the client
  supports secp384r1 but sends its only key share for x25519; the server must answer with a
  HelloRetryRequest (seen on the wire) and the handshake then succeeds on secp384r1.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass, field

import pytest

from testenv import run, which
from harness import HarnessServer, payload, sha256
from tlswrapper.tls import suites
from tlswrapper.tls.config import ServerConfig

TIMEOUT = 30

PROTOCOL_VERSION = suites.PROTOCOL_VERSION
HANDSHAKE_FAILURE = suites.HANDSHAKE_FAILURE
INAPPROPRIATE_FALLBACK = suites.INAPPROPRIATE_FALLBACK

# how each client names an alert it received
OPENSSL_ALERT = {
    PROTOCOL_VERSION: "alert protocol version",
    HANDSHAKE_FAILURE: "alert handshake failure",
    INAPPROPRIATE_FALLBACK: "alert inappropriate fallback",
}
PYTHON_ALERT = {
    PROTOCOL_VERSION: "TLSV1_ALERT_PROTOCOL_VERSION",
    HANDSHAKE_FAILURE: "SSLV3_ALERT_HANDSHAKE_FAILURE",
}


@dataclass
class Case:
    id: str
    config: dict
    client: list[str]          # client arguments (openssl s_client / gnutls-cli --priority)
    alert: int
    reason: str                # a piece of the server's ConnectionFailed reason
    certs: tuple[str, ...] = ("rsa-2048",)
    extra: dict = field(default_factory=dict)


OPENSSL_CASES = [
    Case("version-server-max-1.2-client-1.3", {"version_max": suites.TLS12}, ["-tls1_3"],
         PROTOCOL_VERSION, "no protocol version in common"),
    Case("version-server-min-1.3-client-1.2", {"version_min": suites.TLS13}, ["-tls1_2"],
         PROTOCOL_VERSION, "below the configured minimum"),
    # OpenSSL 3.0 refuses TLS 1.0/1.1 at its default security level 1: lower it client-side
    Case("version-client-1.1", {}, ["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"],
         PROTOCOL_VERSION, "below the configured minimum"),
    Case("version-client-1.0", {}, ["-tls1", "-cipher", "DEFAULT@SECLEVEL=0"],
         PROTOCOL_VERSION, "below the configured minimum"),
    Case("suite-1.2", {"ciphers": ("AES_128_GCM_SHA256",)},
         ["-tls1_2", "-cipher", "ECDHE-RSA-CHACHA20-POLY1305:ECDHE-ECDSA-CHACHA20-POLY1305"],
         HANDSHAKE_FAILURE, "cipher suite"),
    Case("suite-1.3", {"ciphers": ("AES_128_GCM_SHA256",)},
         ["-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"],
         HANDSHAKE_FAILURE, "no cipher suite in common"),
    Case("group-1.2", {"groups": ("secp384r1",)}, ["-tls1_2", "-groups", "x25519"],
         HANDSHAKE_FAILURE, "no elliptic curve in common"),
    Case("group-1.3", {"groups": ("secp384r1",)}, ["-tls1_3", "-groups", "x25519"],
         HANDSHAKE_FAILURE, "no key exchange group in common"),
    Case("cert-curve-not-offered-1.2", {}, ["-tls1_2", "-groups", "x25519:secp256r1"],
         HANDSHAKE_FAILURE, "no certificate", certs=("ecdsa-p384",)),
    Case("fallback-scsv", {}, ["-tls1_2", "-fallback_scsv"],
         INAPPROPRIATE_FALLBACK, "fell back"),
]


def check_refused(result, case: Case) -> None:
    assert result.error is None, result.error
    assert result.handshake is None, result.summary()
    assert result.failure is not None, result.summary()
    assert result.failure.alert == case.alert, result.summary()
    assert case.reason in result.failure.reason, result.summary()


def harness(pki, case: Case, **kw) -> HarnessServer:
    return HarnessServer([str(pki[c].path) for c in case.certs],
                         config=ServerConfig(**case.config), timeout=TIMEOUT, **kw)


def s_client(port: int, pki, args: list[str], data: bytes = b""):
    return run([which("openssl"), "s_client", "-connect", f"127.0.0.1:{port}",
                "-servername", "localhost", "-CAfile", str(pki.ca_pem), "-brief", "-ign_eof",
                *args], input=data, timeout=TIMEOUT)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in OPENSSL_CASES])
def test_openssl_refused(pki, case):
    with harness(pki, case, send_size=16, expect_size=0) as srv:
        proc = s_client(srv.port, pki, case.client)
        result = srv.wait()
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode != 0
    assert proc.stdout == b""
    assert OPENSSL_ALERT[case.alert] in err, err
    assert f"SSL alert number {case.alert}" in err, err
    check_refused(result, case)


def test_openssl_cert_curve_falls_back_to_rsa(pki):
    """TLS 1.2: the ECDSA P-384 candidate does not fit a client that lists no P-384, the
    next candidate (RSA) does."""
    with HarnessServer([str(pki["ecdsa-p384"].path), str(pki["rsa-2048"].path)],
                       send_size=16, expect_size=0, timeout=TIMEOUT) as srv:
        proc = s_client(srv.port, pki, ["-tls1_2", "-groups", "x25519:secp256r1"])
        result = srv.wait()
    assert proc.returncode == 0, proc.stderr[-1000:]
    assert result.handshake is not None, result.summary()
    assert result.cipher.startswith("TLS_ECDHE_RSA_")
    assert proc.stdout == payload(16)


def test_openssl_hello_retry_request(pki):
    """Server: secp384r1 only. Client: supports x25519 and secp384r1 but sends a key share for
    x25519 only (s_client shares the first -groups entry). The server must ask again
    (HelloRetryRequest) and the handshake completes on secp384r1, with data both ways."""
    size = 1 << 16
    config = ServerConfig(groups=("secp384r1",))
    with HarnessServer(str(pki["ecdsa-p256"].path), config=config, send_size=size,
                       expect_size=size, timeout=TIMEOUT) as srv:
        proc = s_client(srv.port, pki, ["-tls1_3", "-groups", "x25519:secp384r1",
                                        "-verify_return_error"], payload(size, 2))
        result = srv.wait()
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0, err
    hello = result.client_hello
    assert hello.key_share_groups == (suites.X25519,)
    assert suites.SECP384R1 in hello.groups
    assert result.hello_retry
    assert result.group == "secp384r1" and result.version == "TLSv1.3"
    assert "Server Temp Key: ECDH, secp384r1" in err, err
    assert sha256(proc.stdout) == sha256(payload(size))
    assert result.received_sha256 == sha256(payload(size, 2))


# ---------------------------------------------------------------------- gnutls-cli
GNUTLS_CASES = [
    Case("version-server-max-1.2-client-1.3", {"version_max": suites.TLS12},
         ["NORMAL:-VERS-ALL:+VERS-TLS1.3"], PROTOCOL_VERSION, "no protocol version in common"),
    Case("version-server-min-1.3-client-1.2", {"version_min": suites.TLS13},
         ["NORMAL:-VERS-ALL:+VERS-TLS1.2"], PROTOCOL_VERSION, "below the configured minimum"),
    Case("suite-1.3", {"ciphers": ("AES_128_GCM_SHA256",)},
         ["NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+CHACHA20-POLY1305"],
         HANDSHAKE_FAILURE, "no cipher suite in common"),
    Case("suite-1.2", {"ciphers": ("AES_128_GCM_SHA256",)},
         ["NORMAL:-VERS-ALL:+VERS-TLS1.2:-CIPHER-ALL:+CHACHA20-POLY1305"],
         HANDSHAKE_FAILURE, "cipher suite"),
    Case("group-1.3", {"groups": ("secp384r1",)},
         ["NORMAL:-VERS-ALL:+VERS-TLS1.3:-GROUP-ALL:+GROUP-X25519"],
         HANDSHAKE_FAILURE, "no key exchange group in common"),
    Case("group-1.2", {"groups": ("secp384r1",)},
         ["NORMAL:-VERS-ALL:+VERS-TLS1.2:-GROUP-ALL:+GROUP-X25519:-KX-ALL:+ECDHE-RSA"],
         HANDSHAKE_FAILURE, "no elliptic curve in common"),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in GNUTLS_CASES])
def test_gnutls_refused(pki, tmp_path, case):
    log = tmp_path / "gnutls.log"
    with harness(pki, case, send_size=16, expect_size=0) as srv:
        proc = run([which("gnutls-cli"), "127.0.0.1", "-p", str(srv.port),
                    "--x509cafile", str(pki.ca_pem), "--logfile", str(log),
                    "--priority", case.client[0]], input=b"", timeout=TIMEOUT)
        result = srv.wait()
    out = proc.stderr.decode("utf-8", "replace") + \
        (log.read_text(errors="replace") if log.exists() else "")
    assert proc.returncode != 0
    assert f"Received alert [{case.alert}]" in out, out[-1500:]
    check_refused(result, case)


# ---------------------------------------------------------------------- Python ssl
PYTHON_CASES = [
    Case("version-server-min-1.3-client-1.2", {"version_min": suites.TLS13}, ["1.2"],
         PROTOCOL_VERSION, "below the configured minimum"),
    Case("version-server-max-1.2-client-1.3", {"version_max": suites.TLS12}, ["1.3"],
         PROTOCOL_VERSION, "no protocol version in common"),
    Case("suite-1.2", {"ciphers": ("AES_128_GCM_SHA256",)}, ["1.2", "ECDHE+CHACHA20"],
         HANDSHAKE_FAILURE, "cipher suite"),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in PYTHON_CASES])
def test_python_ssl_refused(pki, case):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(pki.ca_pem))
    v = ssl.TLSVersion.TLSv1_3 if case.client[0] == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.minimum_version = ctx.maximum_version = v
    if len(case.client) > 1:
        ctx.set_ciphers(case.client[1])
    with harness(pki, case, send_size=16, expect_size=0) as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT) as sock:
            with pytest.raises(ssl.SSLError) as info:
                with ctx.wrap_socket(sock, server_hostname="localhost") as tls:
                    tls.recv(1)
        result = srv.wait()
    assert PYTHON_ALERT[case.alert] in str(info.value), str(info.value)
    check_refused(result, case)
