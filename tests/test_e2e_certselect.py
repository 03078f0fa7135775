"""Certificate selection end to end: which certificate does a real client (openssl s_client)
see through `tcpserver ... tlswrapper -d ... -f ... -- prog`?

The scenarios are a table (SCENARIOS) so that test_e2e_debian.py runs the same ones against
Debian's C tlswrapper. Each builds its -d/-f arguments from the session PKI and names the
server certificate the client must be shown (None: the handshake must fail with an alert).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
from testenv import our_command, which
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import e2e

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\n.*?-----END CERTIFICATE-----\n?", re.S)


@dataclass
class ClientResult:
    leaf: bytes | None        # DER of the leaf the server sent, None if the handshake failed
    returncode: int
    stdout: str
    stderr: str

    @property
    def alert(self) -> str | None:
        m = re.search(r"alert ([a-z ]+)", self.stderr)
        return m.group(1).strip() if m else None


def openssl_client(port: int, *, sni: str | None, version: str = "tls13",
                   sigalgs: str | None = None, cipher: str | None = None,
                   ciphersuites: str | None = None, timeout: float = 20) -> ClientResult:
    """openssl s_client with stdin at EOF: handshake, print the chain, close_notify, exit."""
    cmd = [which("openssl"), "s_client", "-connect", f"127.0.0.1:{port}", "-showcerts",
           {"tls12": "-tls1_2", "tls13": "-tls1_3"}[version]]
    cmd += ["-noservername"] if sni is None else ["-servername", sni]
    if sigalgs:
        cmd += ["-sigalgs", sigalgs]
    if cipher:
        cmd += ["-cipher", cipher]
    if ciphersuites:
        cmd += ["-ciphersuites", ciphersuites]
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    leaf = None
    blocks = _PEM.findall(proc.stdout)
    if blocks:
        leaf = x509.load_pem_x509_certificate(blocks[0]).public_bytes(
            serialization.Encoding.DER)
    return ClientResult(leaf, proc.returncode, proc.stdout.decode(errors="replace"),
                        proc.stderr.decode(errors="replace"))


@dataclass
class Scenario:
    name: str
    # (pki, tmp_path) -> the -d/-f arguments
    args: Callable[..., list[str]]
    sni: str | None
    expect: str | None                # server cert name the client sees; None: failure
    sigalgs: str | None = None
    cipher12: str | None = None       # TLS 1.2 -cipher (the suite picks the key type)
    versions: tuple[str, ...] = ("tls12", "tls13")
    note: str = ""
    extra: dict = field(default_factory=dict)


def _dir(pki, mapping):
    return str(pki.certdir(mapping))


def _escape_layout(pki, tmp_path) -> list[str]:
    """base/certs is the certdir (holding only `localhost` -> p384); next to it, and inside
    it under names an SNI must not reach, sit rsa-2048 files: served only on an escape."""
    base = Path(pki.certdir({}))
    certs = base / "certs"
    certs.mkdir()
    rsa = Path(pki.rsa_2048.path).read_bytes()
    (certs / "localhost").write_bytes(Path(pki.ecdsa_p384.path).read_bytes())
    (base / "etc").write_bytes(rsa)                 # certs/../etc
    (certs / ".hidden").write_bytes(rsa)            # a dot file
    (certs / "a").mkdir()
    (certs / "a" / "b").write_bytes(rsa)            # a/b
    return ["-d", str(certs), "-f", pki.ecdsa_p256.path]


SCENARIOS = [
    Scenario("sni-picks-certdir-file",
             lambda pki, t: ["-d", _dir(pki, {"localhost": "rsa-2048",
                                              "example.com": "ecdsa-p384"}),
                             "-f", pki.ecdsa_p256.path],
             sni="example.com", expect="ecdsa-p384"),
    Scenario("sni-picks-certdir-file-2",
             lambda pki, t: ["-d", _dir(pki, {"localhost": "rsa-2048",
                                              "example.com": "ecdsa-p384"}),
                             "-f", pki.ecdsa_p256.path],
             sni="localhost", expect="rsa-2048"),
    Scenario("no-sni-falls-to-f",
             lambda pki, t: ["-d", _dir(pki, {"localhost": "rsa-2048"}),
                             "-f", pki.ecdsa_p256.path],
             sni=None, expect="ecdsa-p256"),
    Scenario("unknown-sni-falls-to-f",
             lambda pki, t: ["-d", _dir(pki, {"localhost": "rsa-2048"}),
                             "-f", pki.ecdsa_p256.path],
             sni="unknown.example", expect="ecdsa-p256"),
    Scenario("unknown-sni-falls-to-next-dir",
             lambda pki, t: ["-d", _dir(pki, {"localhost": "rsa-2048"}),
                             "-d", _dir(pki, {"example.com": "ecdsa-p521"}),
                             "-f", pki.ecdsa_p256.path],
             sni="example.com", expect="ecdsa-p521"),
    Scenario("unknown-sni-no-fallback-fails",
             lambda pki, t: ["-d", _dir(pki, {"localhost": "rsa-2048"})],
             sni="unknown.example", expect=None),
    Scenario("ecdsa-first-default-client-gets-ecdsa",
             lambda pki, t: ["-f", pki.ecdsa_p256.path, "-f", pki.rsa_2048.path],
             sni="localhost", expect="ecdsa-p256"),
    Scenario("ecdsa-first-rsa-only-client-gets-rsa",
             lambda pki, t: ["-f", pki.ecdsa_p256.path, "-f", pki.rsa_2048.path],
             sni="localhost", expect="rsa-2048",
             sigalgs="RSA-PSS+SHA256:RSA+SHA256:RSA-PSS+SHA384",
             cipher12="ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-CHACHA20-POLY1305"),
    Scenario("rsa-only-client-ecdsa-only-server-fails",
             lambda pki, t: ["-f", pki.ecdsa_p256.path],
             sni="localhost", expect=None,
             sigalgs="RSA-PSS+SHA256:RSA+SHA256",
             cipher12="ECDHE-RSA-AES128-GCM-SHA256"),
    # A server_name that is not a host name (RFC 6066 3) is refused with illegal_parameter
    # in the ClientHello (issue 12): nothing is served for it, the -f fallback included.
    Scenario("sni-dotdot-does-not-escape",
             _escape_layout, sni="../etc", expect=None),
    Scenario("sni-hidden-file-not-served",
             _escape_layout, sni=".hidden", expect=None),
    Scenario("sni-slash-not-followed",
             _escape_layout, sni="a/b", expect=None),
    Scenario("sni-escape-layout-control",
             _escape_layout, sni="localhost", expect="ecdsa-p384",
             note="control: the layout works for a proper name"),
]


def run_scenario(command: str, sc: Scenario, pki, tmp_path, version: str,
                 extra_args=()) -> tuple[ClientResult, str]:
    args = sc.args(pki, tmp_path)
    with e2e.TcpServer([command, "-v", *extra_args, *args, "--", "/bin/cat"]) as srv:
        result = openssl_client(srv.port, sni=sc.sni, version=version,
                                sigalgs=sc.sigalgs,
                                cipher=sc.cipher12 if version == "tls12" else None)
        srv.wait_idle()
        log = srv.log()
    return result, log


def served_name(pki, result: ClientResult) -> str | None:
    if result.leaf is None:
        return None
    for name, sc in pki.servers.items():
        if sc.der == result.leaf:
            return name
    return "unknown certificate"


@pytest.mark.parametrize("version", ["tls12", "tls13"])
@pytest.mark.parametrize("sc", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_certificate_selection(pki, tmp_path, sc, version):
    if version not in sc.versions:
        pytest.skip(f"{sc.name} is not run with {version}")
    result, log = run_scenario(our_command(), sc, pki, tmp_path, version)
    assert served_name(pki, result) == sc.expect, (result.stderr, log)
    if sc.expect is None:
        assert result.returncode != 0
        assert result.alert, f"no alert reported by the client: {result.stderr}"
    elif sc.sni is not None:
        # The SNI really reached the server (else a fallback would pass vacuously).
        assert f"sni={sc.sni}" in log, log


def test_unknown_sni_log_and_alert(pki, tmp_path):
    """-d only, unknown SNI: the client gets an alert; -vv says which file was missing."""
    d = _dir(pki, {"localhost": "rsa-2048"})
    with e2e.TcpServer([our_command(), "-vv", "-d", d, "--", "/bin/cat"]) as srv:
        result = openssl_client(srv.port, sni="unknown.example")
        srv.wait_idle()
        log = srv.log()
    assert result.leaf is None and result.alert
    assert "unknown.example" in log, log
