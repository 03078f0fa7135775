"""End to end: -a, -U, -u and the SSL_* variables, with the real tlswrapper command (key process,
jails) on one TCP connection, against openssl s_client -cert/-key and Python's ssl.

Each test accepts one connection itself and runs tlswrapper on it (stdin/stdout = the socket),
so that it sees the exit status and the log as well as what the client got. prog prints its
SSL_* environment and its uid/gid.
"""

from __future__ import annotations

import os
import pwd
import secrets
import socket
import ssl
import subprocess
import threading
from dataclasses import dataclass, field

import certs
import pytest
from testenv import debian_tlswrapper, needs_root, our_command, which

PROG = ["/bin/sh", "-c", 'env | grep "^SSL_" | sort; echo "UID=$(id -u)"; echo "GID=$(id -g)"']
TIMEOUT = 30


@dataclass
class Served:
    returncode: int | None = None
    stderr: str = ""
    done: threading.Event = field(default_factory=threading.Event)


class OneConnection:
    """Listen on 127.0.0.1, run `tlswrapper args... prog` on the first connection accepted."""

    def __init__(self, args: list[str], prog: list[str] = PROG, command: str | None = None) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.port = self.listener.getsockname()[1]
        self.argv = [command or our_command(), "-vv", *map(str, args), "--", *prog]
        self.served = Served()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(TIMEOUT)
        try:
            conn, _ = self.listener.accept()
        except OSError:
            self.served.done.set()
            return
        with conn:
            env = {k: v for k, v in os.environ.items() if not k.startswith("SSL_")}
            try:
                proc = subprocess.run(self.argv, stdin=conn, stdout=conn,
                                      stderr=subprocess.PIPE, timeout=TIMEOUT, env=env,
                                      check=False)
                self.served.returncode = proc.returncode
                self.served.stderr = proc.stderr.decode(errors="replace")
            except subprocess.TimeoutExpired as e:
                self.served.stderr = f"timeout: {e.stderr!r}"
        self.served.done.set()

    def result(self) -> Served:
        self.served.done.wait(TIMEOUT + 5)
        self.listener.close()
        return self.served


def parse_output(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def openssl_client(port: int, pki, version: str, cert=None, key=None, chain=None,
                   quiet: bool = True) -> subprocess.CompletedProcess:
    cmd = [which("openssl"), "s_client", "-connect", f"127.0.0.1:{port}",
           "-servername", "localhost", f"-{version}", "-CAfile", str(pki.ca_pem), "-ign_eof"]
    if quiet:
        cmd.append("-quiet")
    if cert is not None:
        cmd += ["-cert", str(cert), "-key", str(key)]
    if chain is not None:
        cmd += ["-cert_chain", str(chain)]
    return subprocess.run(cmd, input=b"", capture_output=True, timeout=TIMEOUT, check=False)


def python_client(port: int, pki, version: str, certfile=None, keyfile=None) -> bytes:
    ctx = ssl.create_default_context(cafile=str(pki.ca_pem))
    ctx.minimum_version = ctx.maximum_version = {
        "tls1_2": ssl.TLSVersion.TLSv1_2, "tls1_3": ssl.TLSVersion.TLSv1_3}[version]
    if certfile is not None:
        ctx.load_cert_chain(str(certfile), str(keyfile))
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        out = b""
        while True:
            chunk = tls.recv(65536)
            if not chunk:
                return out
            out += chunk


def openssl_x509(path, *fields: str) -> dict[str, str]:
    out = subprocess.run([which("openssl"), "x509", "-in", str(path), "-noout", *fields,
                          "-nameopt", "RFC2253"], capture_output=True, text=True, check=True)
    return parse_output(out.stdout)


def server_args(pki, *extra) -> list:
    return ["-f", pki.ecdsa_p256.path, "-f", pki.rsa_2048.path, "-a", pki.client_ca.path, *extra]


def expected_env(pki, client) -> dict[str, str]:
    x = openssl_x509(client.cert_path, "-subject", "-issuer", "-serial", "-startdate", "-enddate")
    return {"SSL_CLIENT_VERIFY": "SUCCESS", "SSL_CLIENT_S_DN": x["subject"],
            "SSL_CLIENT_I_DN": x["issuer"], "SSL_CLIENT_M_SERIAL": x["serial"],
            "SSL_CLIENT_V_START": x["notBefore"], "SSL_CLIENT_V_END": x["notAfter"],
            "SSL_CLIENT_S_DN_CN": client.common_name, "SSL_CLIENT_S_DN_Email": client.email,
            "SSL_TLS_SNI": "localhost"}


@pytest.fixture(scope="module")
def chained(pki, tmp_path_factory):
    """A client leaf under an intermediate of the client CA: leaf, intermediate, key files."""
    d = tmp_path_factory.mktemp("e2e-chain")
    inter = certs.make_ca("e2e client intermediate", d / "inter.pem", issuer=pki.client_ca,
                          path_length=0)
    key = certs.generate_key("rsa-2048")
    leaf = certs.issue_leaf(inter, key, "e2e-chained", emails=("chained@example.com",),
                            subject_email="chained@example.com", server=False)
    (d / "leaf.crt").write_bytes(certs.cert_pem(leaf))
    (d / "both.crt").write_bytes(certs.cert_pem(leaf) + certs.cert_pem(inter.cert))
    (d / "leaf.key").write_bytes(certs.key_pem(key))
    return d


def make_account(name: str) -> pwd.struct_passwd:
    subprocess.run(["useradd", "-M", "-N", "-s", "/usr/sbin/nologin", "--badname", name],
                   check=True, capture_output=True)
    return pwd.getpwnam(name)


@pytest.fixture
def account():
    """A fresh test account (removed afterwards)."""
    made: list[str] = []

    def create(name: str | None = None) -> pwd.struct_passwd:
        name = name or f"twcc{secrets.token_hex(3)}"
        made.append(name)
        return make_account(name)
    yield create
    for name in made:
        subprocess.run(["userdel", name], capture_output=True, check=False)


# --- good certificates ----------------------------------------------------------------------------

@needs_root
@pytest.mark.parametrize("version, protocol", [("tls1_2", "TLSv1.2"), ("tls1_3", "TLSv1.3")])
@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
def test_openssl_client_certificate_and_ssl_environment(pki, version, protocol, kind):
    client = pki.clients[kind]
    srv = OneConnection(server_args(pki))
    got = openssl_client(srv.port, pki, version, client.cert_path, client.key_path)
    served = srv.result()
    assert served.returncode == 0, served.stderr
    env = parse_output(got.stdout.decode())
    for name, value in expected_env(pki, client).items():
        assert env.get(name) == value, (name, env)
    assert env["SSL_PROTOCOL"] == protocol
    assert env["SSL_CIPHER"] in ("TLS_CHACHA20_POLY1305_SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305")
    assert env["UID"] == "0"      # no -u/-U: prog runs as invoked
    assert "client certificate: " + env["SSL_CLIENT_S_DN"] in served.stderr


@needs_root
@pytest.mark.parametrize("version", ["tls1_2", "tls1_3"])
@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
def test_python_client_certificate(pki, version, kind):
    client = pki.clients[kind]
    srv = OneConnection(server_args(pki))
    out = python_client(srv.port, pki, version, client.cert_path, client.key_path)
    served = srv.result()
    assert served.returncode == 0, served.stderr
    env = parse_output(out.decode())
    assert env["SSL_CLIENT_VERIFY"] == "SUCCESS"
    assert env["SSL_CLIENT_S_DN_CN"] == client.common_name
    assert env["SSL_CLIENT_M_SERIAL"] == openssl_x509(client.cert_path, "-serial")["serial"]


@needs_root
def test_openssl_sees_the_anchor_in_the_certificate_request(pki):
    client = pki.clients["ecdsa"]
    srv = OneConnection(server_args(pki))
    got = openssl_client(srv.port, pki, "tls1_3", client.cert_path, client.key_path, quiet=False)
    srv.result()
    text = got.stdout.decode(errors="replace")
    assert "Acceptable client certificate CA names" in text
    assert "CN=tlswrapper test client CA" in text.split("Acceptable client certificate CA names")[1]


@needs_root
@pytest.mark.parametrize("version", ["tls1_2", "tls1_3"])
def test_intermediate_in_the_client_chain(pki, chained, version):
    srv = OneConnection(server_args(pki))
    got = openssl_client(srv.port, pki, version, chained / "leaf.crt", chained / "leaf.key",
                         chain=chained / "inter.pem")
    served = srv.result()
    assert served.returncode == 0, served.stderr
    assert parse_output(got.stdout.decode())["SSL_CLIENT_S_DN_CN"] == "e2e-chained"
    # Python's ssl sends the chain from one file.
    srv = OneConnection(server_args(pki))
    out = python_client(srv.port, pki, version, chained / "both.crt", chained / "leaf.key")
    assert srv.result().returncode == 0
    assert parse_output(out.decode())["SSL_CLIENT_I_DN"] == \
        "CN=e2e client intermediate,O=tlswrapper tests"


@needs_root
def test_no_ssl_client_variables_without_anchor(pki):
    srv = OneConnection(["-f", pki.ecdsa_p256.path])
    got = openssl_client(srv.port, pki, "tls1_3")
    assert srv.result().returncode == 0
    env = parse_output(got.stdout.decode())
    assert env["SSL_PROTOCOL"] == "TLSv1.3" and "SSL_CLIENT_VERIFY" not in env


# --- refusals ---------------------------------------------------------------------------------------

REFUSALS = [
    ("none", "tls1_3", "certificate required"),
    ("none", "tls1_2", "handshake failure"),
    ("untrusted", "tls1_3", "unknown ca"),
    ("untrusted", "tls1_2", "unknown ca"),
    ("expired", "tls1_3", "certificate expired"),
    ("expired", "tls1_2", "certificate expired"),
    ("leaf-without-intermediate", "tls1_3", "unknown ca"),
]


@needs_root
@pytest.mark.parametrize("case, version, alert", REFUSALS)
def test_refused_client_certificates(pki, chained, case, version, alert):
    if case == "none":
        cert = key = None
    elif case == "leaf-without-intermediate":
        cert, key = chained / "leaf.crt", chained / "leaf.key"
    else:
        c = pki.issue_client(f"{case}-e2e", f"{case}@example.com", **{case: True})
        cert, key = c.cert_path, c.key_path
    srv = OneConnection(server_args(pki))
    got = openssl_client(srv.port, pki, version, cert, key)
    served = srv.result()
    assert alert in got.stderr.decode(errors="replace").lower()
    assert b"UID=" not in got.stdout                     # prog never ran
    assert served.returncode == 111
    assert alert.replace(" ", "_") in served.stderr       # -vv logs the alert sent


@needs_root
@pytest.mark.parametrize("version", ["tls1_2", "tls1_3"])
def test_python_client_without_certificate_is_refused(pki, version):
    srv = OneConnection(server_args(pki))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        python_client(srv.port, pki, version)
    assert srv.result().returncode == 111


@needs_root
def test_unparsable_anchor_file_is_fatal(pki, tmp_path):
    bad = tmp_path / "anchor.pem"
    bad.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    srv = OneConnection(["-f", pki.ecdsa_p256.path, "-a", bad])
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        python_client(srv.port, pki, "tls1_3", pki.clients["rsa"].cert_path,
                      pki.clients["rsa"].key_path)
    served = srv.result()
    assert served.returncode == 111
    assert "unable to parse anchor PEM file" in served.stderr


# --- accounts -----------------------------------------------------------------------------------------

@needs_root
@pytest.mark.parametrize("version", ["tls1_2", "tls1_3"])
def test_U_common_name_runs_prog_as_that_account(pki, account, version):
    user = account()
    client = pki.issue_client(user.pw_name, f"{user.pw_name}@example.com")
    srv = OneConnection(server_args(pki, "-U", "commonName"))
    got = openssl_client(srv.port, pki, version, client.cert_path, client.key_path)
    served = srv.result()
    assert served.returncode == 0, served.stderr
    env = parse_output(got.stdout.decode())
    assert env["UID"] == str(user.pw_uid) and env["GID"] == str(user.pw_gid)
    assert env["SSL_CLIENT_S_DN_CN"] == user.pw_name


@needs_root
def test_U_email_address_runs_prog_as_that_account(pki, account):
    user = account(f"twcc{secrets.token_hex(3)}@example.com")
    client = pki.issue_client("someone", user.pw_name, key_type="rsa-2048")
    srv = OneConnection(server_args(pki, "-U", "emailAddress"))
    out = python_client(srv.port, pki, "tls1_3", client.cert_path, client.key_path)
    served = srv.result()
    assert served.returncode == 0, served.stderr
    assert parse_output(out.decode())["UID"] == str(user.pw_uid)


@needs_root
def test_U_wins_over_u(pki, account):
    cert_user, other = account(), account()
    client = pki.issue_client(cert_user.pw_name)
    srv = OneConnection(server_args(pki, "-u", other.pw_name, "-U", "commonName"))
    got = openssl_client(srv.port, pki, "tls1_3", client.cert_path, client.key_path)
    assert srv.result().returncode == 0
    assert parse_output(got.stdout.decode())["UID"] == str(cert_user.pw_uid)


@needs_root
@pytest.mark.parametrize("version", ["tls1_2", "tls1_3"])
def test_u_runs_prog_as_that_account(pki, account, version):
    user = account()
    client = pki.clients["ecdsa"]
    srv = OneConnection(server_args(pki, "-u", user.pw_name))
    got = openssl_client(srv.port, pki, version, client.cert_path, client.key_path)
    served = srv.result()
    assert served.returncode == 0, served.stderr
    env = parse_output(got.stdout.decode())
    assert env["UID"] == str(user.pw_uid)
    assert env["SSL_CLIENT_VERIFY"] == "SUCCESS"


@needs_root
def test_u_without_anchor(pki, account):
    user = account()
    srv = OneConnection(["-f", pki.ecdsa_p256.path, "-u", user.pw_name])
    got = openssl_client(srv.port, pki, "tls1_2")
    assert srv.result().returncode == 0
    assert parse_output(got.stdout.decode())["UID"] == str(user.pw_uid)


@needs_root
@pytest.mark.parametrize("name, why", [
    ("twcc-no-such-account", "unable to find account"),
    ("root", "uid or gid 0"),
    ("-rf", "refused"),
    ("a b", "refused"),
])
def test_U_account_refused(pki, name, why):
    client = pki.issue_client(name, None)
    srv = OneConnection(server_args(pki, "-U", "commonName"))
    got = openssl_client(srv.port, pki, "tls1_3", client.cert_path, client.key_path)
    served = srv.result()
    assert served.returncode == 111
    assert why in served.stderr
    assert b"UID=" not in got.stdout


@needs_root
def test_U_field_missing_from_the_certificate(pki):
    client = pki.issue_client("no-email-here", None)
    srv = OneConnection(server_args(pki, "-U", "emailAddress"))
    got = openssl_client(srv.port, pki, "tls1_3", client.cert_path, client.key_path)
    served = srv.result()
    assert served.returncode == 111
    assert "unable to extract ASN.1 object emailAddress" in served.stderr
    assert b"UID=" not in got.stdout


def test_U_needs_a_and_excludes_n(pki):
    base = [our_command(), "-f", str(pki.ecdsa_p256.path)]
    r = subprocess.run([*base, "-U", "commonName", "true"], capture_output=True, check=False)
    assert r.returncode == 100
    r = subprocess.run([*base, "-a", str(pki.client_ca.path), "-n", "-U", "commonName", "true"],
                       capture_output=True, check=False)
    assert r.returncode == 100


@needs_root
@pytest.mark.parametrize("version, protocol", [("tls1", "TLSv1"), ("tls1_1", "TLSv1.1")])
@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
def test_legacy_versions_client_certificate(pki, version, protocol, kind):
    """TLS 1.0/1.1: CertificateRequest without signature algorithms; the CertificateVerify
    is RSA over MD5||SHA-1 or ECDSA over SHA-1, by the client's key type."""
    client = pki.clients[kind]
    srv = OneConnection(server_args(pki, "-m", "tls10", "-c", "AES_128_CBC_SHA"))
    cmd = [which("openssl"), "s_client", "-connect", f"127.0.0.1:{srv.port}", f"-{version}",
           "-cipher", "DEFAULT@SECLEVEL=0", "-CAfile", str(pki.ca_pem), "-ign_eof", "-quiet",
           "-cert", str(client.cert_path), "-key", str(client.key_path)]
    got = subprocess.run(cmd, input=b"", capture_output=True, timeout=TIMEOUT, check=False)
    served = srv.result()
    assert served.returncode == 0, served.stderr + got.stderr.decode(errors="replace")
    env = parse_output(got.stdout.decode())
    assert env["SSL_PROTOCOL"] == protocol
    assert env["SSL_CIPHER"] == "ECDHE-ECDSA-AES128-SHA"
    assert env["SSL_CLIENT_S_DN_CN"] == client.common_name


# --- against Debian's C tlswrapper ---------------------------------------------------------------
# The C version (BearSSL, TLS 1.2 at most) agrees on what is accepted and who prog runs as; it
# sets no SSL_* variables (ours adds them, SPEC section 5) and ends a refused handshake without
# the RFC's alert (the client sees a reset), so only the outcome is compared.

@needs_root
@pytest.mark.parametrize("case", ["good", "none", "untrusted", "expired", "chained"])
def test_same_verdict_as_debian_tlswrapper(pki, chained, case):
    chain = None
    if case == "good":
        cert, key = pki.clients["rsa"].cert_path, pki.clients["rsa"].key_path
    elif case == "none":
        cert = key = None
    elif case == "chained":
        cert, key, chain = chained / "leaf.crt", chained / "leaf.key", chained / "inter.pem"
    else:
        c = pki.issue_client(f"{case}-cmp", f"{case}@example.com", key_type="rsa-2048",
                             **{case: True})
        cert, key = c.cert_path, c.key_path
    ran = {}
    for name, command in (("ours", our_command()), ("debian", debian_tlswrapper())):
        srv = OneConnection(["-f", pki.rsa_2048.path, "-a", pki.client_ca.path],
                            command=command)
        got = openssl_client(srv.port, pki, "tls1_2", cert, key, chain=chain)
        srv.result()
        ran[name] = b"UID=0" in got.stdout
    assert ran["ours"] == ran["debian"] == (case in ("good", "chained")), ran


@needs_root
def test_U_same_account_as_debian_tlswrapper(pki, account):
    user = account()
    client = pki.issue_client(user.pw_name, key_type="rsa-2048")
    uids = {}
    for name, command in (("ours", our_command()), ("debian", debian_tlswrapper())):
        srv = OneConnection(["-f", pki.rsa_2048.path, "-a", pki.client_ca.path,
                             "-U", "commonName"], command=command)
        got = openssl_client(srv.port, pki, "tls1_2", client.cert_path, client.key_path)
        srv.result()
        uids[name] = parse_output(got.stdout.decode()).get("UID")
    assert uids["ours"] == uids["debian"] == str(user.pw_uid), uids
