"""Interop: the engine (with the in-process LocalKeyService, tests/support/harness.py) against real TLS
clients. Every test is a full handshake, then 1 MiB of seeded random data each way, compared by
sha256 on both ends, and the negotiated version / cipher suite / group asserted on the server
(HandshakeComplete) and, where the client prints them, on the client.

The matrix, per client:

openssl s_client (OpenSSL 3.0): the full matrix, 120 tests:
    {TLS 1.2, TLS 1.3} x {CHACHA20_POLY1305_SHA256, AES_256_GCM_SHA384, AES_128_GCM_SHA256}
    x {x25519, secp256r1, secp384r1, secp521r1} x {ecdsa-p256, ecdsa-p384, ecdsa-p521, rsa-2048,
    rsa-4096}. The client restricts version (-tls1_2/-tls1_3), suite (-cipher for 1.2, with the
    ECDSA and RSA variants so that the server's choice by key type is tested, -ciphersuites for
    1.3) and group (-groups); the server enables everything. Data flows both ways at once
    (stdin -> server while the server's 1 MiB arrives on stdout; -brief keeps stdout to the
    application data and prints the negotiated parameters on stderr; -ign_eof keeps the
    client reading after its stdin ends; the server closes once it has the client's 1 MiB).
    Plus 30 signature-scheme tests (-sigalgs with one scheme): each scheme that fits each
    certificate in each version (1.3: the curve-bound ECDSA scheme, rsa_pss_rsae_sha256/384/512;
    1.2: ecdsa_secp{256,384,521}r1_sha{256,384,512} with any curve, rsa_pkcs1_* and
    rsa_pss_rsae_*).
gnutls-cli (GnuTLS 3.7): 24 tests, version x suite x group (--priority restricts all three),
    the certificate rotating over the five so that each version meets each certificate. The
    client sends its 1 MiB from stdin and, at EOF, half-closes with close_notify while it keeps
    reading: this exercises the engine's PeerClosed + continue-sending path.
Python ssl (3.11, OpenSSL 3.0, an in-process client on a MemoryBIO with its own select loop):
    24 tests, version x suite x group with the certificate rotating. Python's ssl cannot
    restrict the TLS 1.3 suites nor the groups (no set_groups before 3.13), so those are
    restricted on the SERVER side (ServerConfig ciphers/groups) with the client left at its
    defaults; for groups other than x25519 the client's single key share (x25519) does not
    fit and the server must send a HelloRetryRequest, so these tests also cover HRR.
curl (7.88, OpenSSL 3.0 backend): 24 tests, version x suite x group (--tlsv1.x --tls-max,
    --ciphers / --tls13-ciphers, --curves), certificate rotating, over HTTP: a 1 MiB POST body
    and a 1 MiB response body. HTTP is request-then-response, so for curl the two megabytes
    flow one after the other, not at the same time. curl 7.88 does not print the group: the
    client side asserts version and suite only.

Not testable here with any of these clients: X25519MLKEM768 (OpenSSL 3.0, GnuTLS 3.7 and
Python's ssl do not implement it; it is covered by test_chromium.py with headless chromium,
TLS 1.3 only). The TLS 1.2 suites are negotiated with every client but the engine never offers
X25519MLKEM768 in 1.2 (RFC: hybrid groups are TLS 1.3 only). RSA-PSS certificates
(rsa_pss_pss_*) are not in the PKI and not tested.
"""

from __future__ import annotations

import re
import select
import socket
import ssl
import time

import pytest

from testenv import run, which
from harness import MiB, HarnessServer, payload, sha256
from tlswrapper.tls import suites
from tlswrapper.tls.config import ServerConfig

SIZE = MiB
CLIENT_SEED = 2          # the client's data: payload(SIZE, CLIENT_SEED)
SERVER_SEED = 1
TIMEOUT = 60

VERSIONS = ("1.2", "1.3")
CIPHERS = ("CHACHA20_POLY1305_SHA256", "AES_256_GCM_SHA384", "AES_128_GCM_SHA256")
GROUPS = ("x25519", "secp256r1", "secp384r1", "secp521r1")
CERTS = ("ecdsa-p256", "ecdsa-p384", "ecdsa-p521", "rsa-2048", "rsa-4096")
ALL_GROUPS = ("x25519mlkem768",) + GROUPS

VERSION_LABEL = {"1.2": "TLSv1.2", "1.3": "TLSv1.3"}

# the -c name -> (OpenSSL's TLS 1.2 name without the "ECDHE-<auth>-" prefix, TLS 1.3 name)
OPENSSL12 = {"CHACHA20_POLY1305_SHA256": "CHACHA20-POLY1305",
             "AES_256_GCM_SHA384": "AES256-GCM-SHA384",
             "AES_128_GCM_SHA256": "AES128-GCM-SHA256"}
GNUTLS_CIPHER = {"CHACHA20_POLY1305_SHA256": "CHACHA20-POLY1305",
                 "AES_256_GCM_SHA384": "AES-256-GCM",
                 "AES_128_GCM_SHA256": "AES-128-GCM"}
GNUTLS_GROUP = {"x25519": "X25519", "secp256r1": "SECP256R1", "secp384r1": "SECP384R1",
                "secp521r1": "SECP521R1"}
CURL_CURVE = {"x25519": "X25519", "secp256r1": "P-256", "secp384r1": "P-384",
              "secp521r1": "P-521"}
# what `openssl s_client -brief` prints as "Server Temp Key"
OPENSSL_TEMP_KEY = {"x25519": "X25519", "secp256r1": "ECDH, prime256v1",
                    "secp384r1": "ECDH, secp384r1", "secp521r1": "ECDH, secp521r1"}


def auth(cert: str) -> str:
    return "RSA" if cert.startswith("rsa") else "ECDSA"


def iana_name(version: str, cipher: str, cert: str) -> str:
    """The IANA suite name the engine reports (HandshakeComplete.cipher)."""
    if version == "1.3":
        return "TLS_" + cipher
    return f"TLS_ECDHE_{auth(cert)}_WITH_{cipher}"


def openssl_name(version: str, cipher: str, cert: str) -> str:
    if version == "1.3":
        return "TLS_" + cipher
    return f"ECDHE-{auth(cert)}-{OPENSSL12[cipher]}"


CERT_CURVE = {"ecdsa-p256": "secp256r1", "ecdsa-p384": "secp384r1", "ecdsa-p521": "secp521r1"}


def offered_groups(version: str, group: str, cert: str) -> list[str]:
    """The groups a restricting client offers: the tested one, plus in TLS 1.2 the curve of an
    ECDSA certificate (RFC 8422 5.1: supported_groups also constrains the certificate's curve
    in TLS 1.2, and a server must not use an ECDSA certificate on a curve the client did not
    list). The server prefers the tested group (server_groups), so it is the one negotiated."""
    out = [group]
    curve = CERT_CURVE.get(cert)
    if version == "1.2" and curve and curve != group:
        out.append(curve)
    return out


def server_groups(group: str) -> tuple[str, ...]:
    """Everything enabled, the tested group first (server preference decides)."""
    return (group,) + tuple(g for g in ALL_GROUPS if g != group)


def rotating(offset: int) -> list:
    """version x cipher x group, each with a certificate that rotates over CERTS."""
    out = []
    i = offset
    for v in VERSIONS:
        for c in CIPHERS:
            for g in GROUPS:
                out.append(pytest.param(v, c, g, CERTS[i % len(CERTS)],
                                        id=f"{v}-{c}-{g}-{CERTS[i % len(CERTS)]}"))
                i += 1
    return out


def server(pki, cert: str, group: str = "x25519", **kw) -> HarnessServer:
    config = kw.pop("config", None) or ServerConfig(groups=server_groups(group))
    kw.setdefault("send_size", SIZE)
    kw.setdefault("seed", SERVER_SEED)
    kw.setdefault("timeout", TIMEOUT)
    return HarnessServer(str(pki[cert].path), config=config, **kw)


def check_server(result, version: str, cipher: str, group: str, cert: str,
                 received_from_client: bool = True) -> None:
    assert result.error is None, result.error
    assert result.failure is None, result.summary()
    assert result.handshake is not None, result.summary()
    assert result.version == VERSION_LABEL[version]
    assert result.cipher == iana_name(version, cipher, cert)
    assert result.group == group
    if received_from_client:
        assert result.received == SIZE
        assert result.received_sha256 == sha256(payload(SIZE, CLIENT_SEED))
    assert result.sent == SIZE


def check_client_data(data: bytes) -> None:
    assert len(data) == SIZE, f"client received {len(data)} bytes, not {SIZE}"
    assert sha256(data) == sha256(payload(SIZE, SERVER_SEED))


def short(b: bytes, n: int = 1500) -> str:
    """The tail of a client's text output, for assertion messages (never megabytes)."""
    return b[-n:].decode("utf-8", "replace")


# ---------------------------------------------------------------------- openssl s_client
def s_client(port: int, pki, version: str, extra: list[str], data: bytes):
    cmd = [which("openssl"), "s_client", "-connect", f"127.0.0.1:{port}",
           "-servername", "localhost", "-CAfile", str(pki.ca_pem), "-verify_return_error",
           "-brief", "-ign_eof", "-tls1_3" if version == "1.3" else "-tls1_2", *extra]
    return run(cmd, input=data, timeout=TIMEOUT)


def openssl_matrix() -> list:
    return [pytest.param(v, c, g, k, id=f"{v}-{c}-{g}-{k}")
            for v in VERSIONS for c in CIPHERS for g in GROUPS for k in CERTS]


@pytest.mark.parametrize("version,cipher,group,cert", openssl_matrix())
def test_openssl(pki, version, cipher, group, cert):
    if version == "1.3":
        suite_args = ["-ciphersuites", "TLS_" + cipher]
    else:
        suite_args = ["-cipher", f"ECDHE-ECDSA-{OPENSSL12[cipher]}:ECDHE-RSA-{OPENSSL12[cipher]}"]
    groups = ":".join(offered_groups(version, group, cert))
    with server(pki, cert, group, expect_size=SIZE) as srv:
        proc = s_client(srv.port, pki, version, [*suite_args, "-groups", groups],
                        payload(SIZE, CLIENT_SEED))
        result = srv.wait()
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0, short(proc.stderr)
    check_server(result, version, cipher, group, cert)
    assert result.client_hello.sni == "localhost"
    check_client_data(proc.stdout)
    assert f"Protocol version: {VERSION_LABEL[version]}" in err, err
    assert f"Ciphersuite: {openssl_name(version, cipher, cert)}\n" in err, err
    assert f"Server Temp Key: {OPENSSL_TEMP_KEY[group]}" in err, err
    assert "Verification: OK" in err, err
    scheme = result.handshake.signature_scheme
    sigtype = "RSA-PSS" if scheme >> 8 == 8 else "ECDSA" if scheme & 0xFF == 3 else "RSA"
    assert sigtype == ("ECDSA" if auth(cert) == "ECDSA" else
                       "RSA-PSS" if version == "1.3" else sigtype)
    assert f"Signature type: {sigtype}\n" in err, err


# (version, cert, scheme, what -brief prints as "Signature type", "Hash used")
SIGALGS: list[tuple[str, str, str, str, str]] = []
for _cert, _scheme in (("ecdsa-p256", "ecdsa_secp256r1_sha256"),
                       ("ecdsa-p384", "ecdsa_secp384r1_sha384"),
                       ("ecdsa-p521", "ecdsa_secp521r1_sha512")):
    SIGALGS.append(("1.3", _cert, _scheme, "ECDSA", "SHA" + _scheme[-3:]))
for _cert in ("rsa-2048", "rsa-4096"):
    for _h in ("256", "384", "512"):
        SIGALGS.append(("1.3", _cert, f"rsa_pss_rsae_sha{_h}", "RSA-PSS", "SHA" + _h))
for _cert in ("ecdsa-p256", "ecdsa-p384", "ecdsa-p521"):
    for _c, _h in (("256r1", "256"), ("384r1", "384"), ("521r1", "512")):
        # TLS 1.2: the scheme names only the hash; any curve goes with any hash.
        SIGALGS.append(("1.2", _cert, f"ecdsa_secp{_c}_sha{_h}", "ECDSA", "SHA" + _h))
for _cert in ("rsa-2048", "rsa-4096"):
    for _h in ("256", "384", "512"):
        SIGALGS.append(("1.2", _cert, f"rsa_pkcs1_sha{_h}", "RSA", "SHA" + _h))
        SIGALGS.append(("1.2", _cert, f"rsa_pss_rsae_sha{_h}", "RSA-PSS", "SHA" + _h))

SCHEME_CODES = {
    "ecdsa_secp256r1_sha256": 0x0403, "ecdsa_secp384r1_sha384": 0x0503,
    "ecdsa_secp521r1_sha512": 0x0603, "rsa_pkcs1_sha256": 0x0401, "rsa_pkcs1_sha384": 0x0501,
    "rsa_pkcs1_sha512": 0x0601, "rsa_pss_rsae_sha256": 0x0804, "rsa_pss_rsae_sha384": 0x0805,
    "rsa_pss_rsae_sha512": 0x0806,
}


@pytest.mark.parametrize("version,cert,scheme,sigtype,hashname",
                         [pytest.param(*s, id=f"{s[0]}-{s[1]}-{s[2]}") for s in SIGALGS])
def test_openssl_sigalgs(pki, version, cert, scheme, sigtype, hashname):
    cipher, group = "AES_128_GCM_SHA256", "x25519"
    if version == "1.3":
        suite_args = ["-ciphersuites", "TLS_" + cipher]
    else:
        suite_args = ["-cipher", f"ECDHE-{auth(cert)}-{OPENSSL12[cipher]}"]
    with server(pki, cert, expect_size=SIZE) as srv:
        proc = s_client(srv.port, pki, version,
                        [*suite_args, "-groups", ":".join(offered_groups(version, group, cert)),
                         "-sigalgs", scheme],
                        payload(SIZE, CLIENT_SEED))
        result = srv.wait()
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0, short(proc.stderr)
    check_server(result, version, cipher, group, cert)
    assert result.handshake.signature_scheme == SCHEME_CODES[scheme]
    check_client_data(proc.stdout)
    assert f"Signature type: {sigtype}\n" in err, err
    assert f"Hash used: {hashname}\n" in err, err


# ---------------------------------------------------------------------- gnutls-cli
@pytest.mark.parametrize("version,cipher,group,cert", rotating(0))
def test_gnutls(pki, tmp_path, version, cipher, group, cert):
    priority = (f"NORMAL:-VERS-ALL:+VERS-TLS{version}:-CIPHER-ALL:+{GNUTLS_CIPHER[cipher]}"
                ":-GROUP-ALL" + "".join(f":+GROUP-{GNUTLS_GROUP[g]}"
                                        for g in offered_groups(version, group, cert)))
    if version == "1.2":
        priority += ":-KX-ALL:+ECDHE-ECDSA:+ECDHE-RSA"
    log = tmp_path / "gnutls.log"
    # no expect_size: the server reads until gnutls-cli's close_notify (sent at stdin EOF)
    with server(pki, cert, group) as srv:
        proc = run([which("gnutls-cli"), "127.0.0.1", "-p", str(srv.port),
                    "--x509cafile", str(pki.ca_pem), "--logfile", str(log),
                    "--priority", priority], input=payload(SIZE, CLIENT_SEED), timeout=TIMEOUT)
        result = srv.wait()
    info = log.read_text(errors="replace") if log.exists() else ""
    assert proc.returncode == 0, short(proc.stderr) + info[-1500:]
    check_server(result, version, cipher, group, cert)
    assert result.peer_closed is not None and result.peer_closed.clean
    check_client_data(proc.stdout)
    m = re.search(r"- Description: \((TLS1\.[23])-X\.509\)-\(ECDHE-([A-Z0-9]+)\)-\(([^)]*)\)"
                  r"-\(([^)]*)\)", info)
    assert m, info[-1500:]
    assert m.group(1) == f"TLS{version}"
    assert m.group(2) == GNUTLS_GROUP[group]
    assert m.group(4) == GNUTLS_CIPHER[cipher]
    assert "The certificate is trusted" in info


# ---------------------------------------------------------------------- Python ssl
def python_client(port: int, ctx: ssl.SSLContext, data: bytes) -> tuple[str, str, bytes]:
    """A TLS client on a MemoryBIO with its own select loop, so that it sends `data` while it
    receives: returns (version, cipher, everything received before the server's
    close_notify). Raises on a handshake failure, a truncation or the timeout."""
    deadline = time.monotonic() + TIMEOUT
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.setblocking(False)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(incoming, outgoing, server_side=False, server_hostname="localhost")
        handshaken = closed = eof = False
        pos = 0
        received = bytearray()
        outbuf = bytearray()
        while True:
            if not handshaken:
                try:
                    tls.do_handshake()
                    handshaken = True
                except ssl.SSLWantReadError:
                    pass
            if handshaken and not closed:
                while pos < len(data) and len(outbuf) + outgoing.pending < (1 << 18):
                    pos += tls.write(data[pos:pos + (1 << 14)])
                while True:
                    try:
                        chunk = tls.read(1 << 16)
                    except ssl.SSLWantReadError:
                        break
                    except ssl.SSLZeroReturnError:
                        closed = True
                        break
                    if not chunk:
                        closed = True
                        break
                    received += chunk
            outbuf += outgoing.read()
            if closed and not outbuf:
                return tls.version(), tls.cipher()[0], bytes(received)
            if time.monotonic() > deadline:
                raise TimeoutError(f"python client: received {len(received)}, sent {pos}")
            if eof and not outbuf:
                raise ConnectionError("server closed the TCP connection without close_notify")
            readable, writable, _ = select.select([] if eof else [sock],
                                                  [sock] if outbuf else [], [], 0.5)
            if writable:
                try:
                    n = sock.send(outbuf)
                    del outbuf[:n]
                except BlockingIOError:
                    pass
            if readable:
                try:
                    chunk = sock.recv(1 << 16)
                except BlockingIOError:
                    continue
                if chunk:
                    incoming.write(chunk)
                else:
                    eof = True
                    incoming.write_eof()
    finally:
        sock.close()


PY_CIPHER = {"1.2": lambda c, cert: openssl_name("1.2", c, cert),
             "1.3": lambda c, cert: "TLS_" + c}


@pytest.mark.parametrize("version,cipher,group,cert", rotating(2))
def test_python_ssl(pki, version, cipher, group, cert):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(pki.ca_pem))
    v = ssl.TLSVersion.TLSv1_3 if version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.minimum_version = ctx.maximum_version = v
    if version == "1.2":
        ctx.set_ciphers(f"ECDHE-ECDSA-{OPENSSL12[cipher]}:ECDHE-RSA-{OPENSSL12[cipher]}")
    # TLS 1.3 suites and the groups cannot be set in Python 3.11's ssl: restrict the server.
    config = ServerConfig(ciphers=(cipher,), groups=(group,))
    with server(pki, cert, config=config, expect_size=SIZE) as srv:
        got_version, got_cipher, data = python_client(srv.port, ctx, payload(SIZE, CLIENT_SEED))
        result = srv.wait()
    check_server(result, version, cipher, group, cert)
    check_client_data(data)
    assert got_version == VERSION_LABEL[version]
    assert got_cipher == PY_CIPHER[version](cipher, cert)
    hello = result.client_hello
    code = suites.GROUP_NAMES[group]
    assert code in hello.groups
    if version == "1.3" and code not in hello.key_share_groups:
        # the client's key share did not fit: the handshake went through a HelloRetryRequest
        assert result.hello_retry
    else:
        assert not result.hello_retry


# ---------------------------------------------------------------------- curl
@pytest.mark.parametrize("version,cipher,group,cert", rotating(4))
def test_curl(pki, tmp_path, version, cipher, group, cert):
    body = tmp_path / "body"
    body.write_bytes(payload(SIZE, CLIENT_SEED))
    out = tmp_path / "out"
    if version == "1.3":
        vargs = ["--tlsv1.3", "--tls13-ciphers", "TLS_" + cipher]
    else:
        vargs = ["--tlsv1.2", "--tls-max", "1.2",
                 "--ciphers", f"ECDHE-ECDSA-{OPENSSL12[cipher]}:ECDHE-RSA-{OPENSSL12[cipher]}"]
    with server(pki, cert, group, mode="http") as srv:
        url = f"https://localhost:{srv.port}/upload"
        proc = run([which("curl"), "-sS", "-v", "--max-time", str(TIMEOUT), "--fail",
                    "--cacert", str(pki.ca_pem),
                    "--resolve", f"localhost:{srv.port}:127.0.0.1", *vargs,
                    "--curves", ":".join(CURL_CURVE[g] for g in offered_groups(version, group, cert)),
                    "-H", "Expect:",
                    "-H", "Content-Type: application/octet-stream",
                    "--data-binary", f"@{body}", "-o", str(out), "-D", str(tmp_path / "head"),
                    url], timeout=TIMEOUT + 10)
        result = srv.wait()
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0, short(proc.stderr)
    check_server(result, version, cipher, group, cert)
    assert result.http_request.startswith(b"POST /upload HTTP/1.1\r\n")
    assert result.client_hello.sni == "localhost"
    check_client_data(out.read_bytes())
    head = (tmp_path / "head").read_text(errors="replace")
    assert f"X-TLS-Group: {group}" in head
    m = re.search(r"SSL connection using (TLSv1\.[23]) / (\S+)", err)
    assert m, short(proc.stderr)
    assert m.group(1) == VERSION_LABEL[version]
    assert m.group(2) == openssl_name(version, cipher, cert)
