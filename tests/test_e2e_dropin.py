"""Ours as a drop-in for Debian's C tlswrapper (issue 13): what a user, a script or a companion
program notices, run side by side with the C version where that shows the behaviour matches.

Rule: real processes only (tlswrapper and its companions as subprocesses, real TLS clients);
a known difference is asserted as a difference, with the reason in a comment.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from testenv import debian_tlswrapper, free_port, needs_root, our_command, wait_for_port
from oneconn import BioTLS, OneConnection

import e2e

IMPLS = ["ours", "debian"]
USER_FD = 9          # what a user hands down with `tlswrapper ... prog 9>log`


def command(impl: str, name: str = "tlswrapper") -> str:
    return our_command(name) if impl == "ours" else debian_tlswrapper(name)


class Run:
    """A command with fd 0 and 1 on one end of a socketpair (the client holds the other) and
    extra descriptors handed down as given: {fd number in the child: our fd}."""

    def __init__(self, argv, fds: dict[int, int] | None = None, stdin=None, stdout=None,
                 stderr=None) -> None:
        self.client_sock, server = socket.socketpair()
        self._err = tempfile.TemporaryFile()
        fds = fds or {}
        ours = list(fds.items())

        def setup() -> None:
            # In the child: move every source above the targets first, so that no dup2
            # overwrites a source that is another target's number.
            high = [(t, fcntl.fcntl(src, fcntl.F_DUPFD_CLOEXEC, 100)) for t, src in ours]
            for t, src in high:
                os.dup2(src, t, inheritable=True)

        try:
            self.proc = subprocess.Popen(
                [os.fspath(a) for a in argv],
                stdin=server if stdin is None else stdin,
                stdout=server if stdout is None else stdout,
                stderr=self._err if stderr is None else stderr,
                preexec_fn=setup if ours else None, close_fds=not ours,
                start_new_session=True)
        finally:
            server.close()
        self.client_sock.settimeout(30)

    def tls(self, ca, version: str | None = None) -> ssl.SSLSocket:
        return e2e.client_context(ca, version).wrap_socket(self.client_sock,
                                                            server_hostname="localhost")

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout=timeout)

    def stderr(self) -> str:
        self._err.seek(0)
        return self._err.read().decode(errors="replace")

    def close(self) -> None:
        self.client_sock.close()
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 9)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
        self._err.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def fd_targets(pid: int) -> dict[int, str]:
    out = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            pass
    return out


# --------------------------------------------------------------------------- fd inheritance


@pytest.mark.parametrize("impl", IMPLS)
def test_prog_inherits_descriptors_beyond_stderr(pki, tmp_path, impl):
    """`tlswrapper ... prog 9>log`: prog writes to fd 9. Ours (safer than C, not asserted
    for C) keeps no copy of it in the jailed network process nor in the key process."""
    log_path = tmp_path / f"fd9-{impl}.log"
    logfd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    prog = ["sh", "-c", f"echo via-fd-9 >&{USER_FD} && echo ok && exec cat"]
    try:
        with Run([command(impl), "-f", pki.ecdsa_p256.path, "--", *prog],
                 fds={USER_FD: logfd}) as run:
            sock = run.tls(pki.ca_pem, "tls12")
            assert sock.recv(10) == b"ok\n", run.stderr()
            if impl == "ours":
                procs = e2e.split_children(run.proc.pid, "/var/lib/tlswrapper/empty")
                assert procs is not None
                holders = [pid for pid in (procs.network, procs.key, procs.prog)
                           if str(log_path) in fd_targets(pid).values()]
                assert holders == [procs.prog]
            sock.close()
            assert run.wait(20) == 0
    finally:
        os.close(logfd)
    assert log_path.read_bytes() == b"via-fd-9\n"


def test_smtp_server_inherits_descriptors_but_not_5_and_6(tmp_path):
    """tlswrapper-smtp hands fd 9 to the SMTP server it runs, but not its fd 5 and 6."""
    logfd = os.open(tmp_path / "fd9.log", os.O_WRONLY | os.O_CREAT, 0o600)
    c5_r, c5_w = os.pipe()
    c6_r, c6_w = os.pipe()
    server = ["sh", "-c", 'echo "220 fds $(ls /proc/$$/fd | tr "\\n" " ")"; '
              'while read -r line; do echo "221 bye"; exit 0; done']
    try:
        with Run([our_command("tlswrapper-smtp"), "--", *server],
                 fds={USER_FD: logfd, 5: c5_w, 6: c6_r}) as run:
            greeting = recv_line(run.client_sock)
            fds = {int(x) for x in greeting.split()[2:]}
            run.client_sock.sendall(b"QUIT\r\n")
            assert USER_FD in fds and 5 not in fds and 6 not in fds, greeting
            assert run.wait(20) == 0, run.stderr()
    finally:
        for fd in (logfd, c5_r, c5_w, c6_r, c6_w):
            os.close(fd)


def recv_line(sock: socket.socket, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf and time.monotonic() < deadline:
        chunk = sock.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf.decode(errors="replace").split("\n", 1)[0].strip()


# --------------------------------------------------------------------------- -n: fd 5 / fd 6


def delayed_argv(pki, script: str, *options: str) -> list[str]:
    return [our_command(), "-n", *options, "-f", str(pki.ecdsa_p256.path), "--",
            "sh", "-c", script]


@needs_root
def test_delayed_ack_comes_before_the_handshake(pki, tmp_path):
    """The zero byte on fd 6 is written as soon as prog's zero byte on fd 5 is read, before
    the client has sent its ClientHello (as the C version 20260501, so that its
    tlswrapper-smtp works with ours); what prog writes after it reaches the client inside
    TLS once the handshake completes."""
    mark = tmp_path / "acked"
    script = (f"printf '220 go\\r\\n'; printf '\\0' >&5; head -c 1 <&6 >{mark}.tmp; "
              f"mv {mark}.tmp {mark}; printf 'inside\\r\\n'; exec cat")
    with OneConnection(delayed_argv(pki, script)) as c:
        assert c.recv_until(b"\r\n") == b"220 go\r\n"
        deadline = time.monotonic() + 10
        while not mark.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert mark.read_bytes() == b"\0"          # acknowledged, no ClientHello sent yet
        tls = BioTLS(c.sock)
        tls.handshake()
        assert tls.recv_until(b"\r\n") == b"inside\r\n"
        tls.send(b"echo\r\n")
        assert tls.recv_until(b"\r\n") == b"echo\r\n"
        c.sock.shutdown(socket.SHUT_WR)
        result = c.finish()
    assert result.returncode == 0, result.stderr


@needs_root
@pytest.mark.parametrize("script,reason", [
    ("printf '\\0\\0' >&5; exec cat", "second byte"),
    ("exec 6<&-; printf '\\0' >&5; exec cat", "fd 6"),
    ("printf 'x' >&5; exec cat", "instead of a zero byte"),
], ids=["second-zero-byte", "fd6-closed-before-switch", "not-a-zero-byte"])
def test_delayed_switch_refused(pki, script, reason):
    """A second zero byte on fd 5, or fd 6 closed by prog before the switch (or a byte other
    than zero): the switch is refused with a log line (at the default verbosity) and exit 111;
    the client gets no TLS byte, only the end of the connection."""
    with OneConnection(delayed_argv(pki, "printf '220 go\\r\\n'; " + script)) as c:
        assert c.recv_until(b"\r\n") == b"220 go\r\n"
        rest = c.recv_all()
        result = c.finish()
    assert rest == b""
    assert result.returncode == 111
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tlswrapper: fatal:"), lines
    assert "delayed encryption refused" in lines[0] and reason in lines[0], lines


SMTP_SERVER = r'''
import sys
out = sys.stdout
out.write("220 mx ESMTP\r\n"); out.flush()
with open(sys.argv[1], "w") as log:
    for line in sys.stdin:
        log.write(line.strip() + "\n"); log.flush()
        cmd = line.strip().upper()
        out.write("221 bye\r\n" if cmd == "QUIT" else
                  "250-mx\r\n250 8BITMIME\r\n" if cmd.startswith("EHLO") else "250 ok\r\n")
        out.flush()
        if cmd == "QUIT":
            break
'''


@needs_root
def test_smtp_drops_cleartext_left_in_its_stdin_by_an_early_ack(tmp_path):
    """Our tlswrapper-smtp with a wrapper that acknowledges at once, before the client's
    pipelined cleartext has been read (what the C tlswrapper 20260501 may do: it acks as
    soon as it has relayed the cleartext into the pipe). The test plays that wrapper: the
    injected RCPT after STARTTLS is dropped, never reaches the SMTP server."""
    server = tmp_path / "server.py"
    server.write_text(SMTP_SERVER)
    seen = tmp_path / "seen.log"
    c5_r, c5_w = os.pipe()
    c6_r, c6_w = os.pipe()
    try:
        with Run([our_command("tlswrapper-smtp"), "--", sys.executable, str(server),
                  str(seen)], fds={5: c5_w, 6: c6_r}) as run:
            os.close(c5_w)
            os.close(c6_r)
            sock = run.client_sock
            assert recv_line(sock).startswith("220")
            sock.sendall(b"EHLO client\r\n")
            ehlo = b""
            while b"250 " not in ehlo:
                ehlo += sock.recv(4096)
            assert b"STARTTLS" in ehlo
            sock.sendall(b"STARTTLS\r\n")
            assert recv_line(sock).startswith("220")
            r, _, _ = select.select([c5_r], [], [], 20)
            assert r and os.read(c5_r, 1) == b"\0"
            # The cleartext and the ack, both waiting when tlswrapper-smtp next looks: it
            # is stopped while the wrapper relays the one and acknowledges.
            os.kill(run.proc.pid, signal.SIGSTOP)
            try:
                sock.sendall(b"RCPT TO:<injected@example.test>\r\n")
                time.sleep(0.2)
                os.write(c6_w, b"\0")             # the early ack
            finally:
                os.kill(run.proc.pid, signal.SIGCONT)
            time.sleep(0.3)
            # "Inside TLS" (this test is the wrapper: the session continues in the clear).
            sock.sendall(b"MAIL FROM:<a@example.test>\r\nQUIT\r\n")
            tail = b""
            while b"221" not in tail:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                tail += chunk
            assert run.wait(20) == 0, run.stderr()
    finally:
        for fd in (c5_r, c6_w):
            os.close(fd)
    commands = seen.read_text().split("\n")
    assert not any("injected" in line for line in commands), commands
    assert commands[-3:-1] == ["MAIL FROM:<a@example.test>", "QUIT"], commands
    assert "RSET" in commands


# --------------------------------------------------------------------------- prog closes stdout


def test_prog_closing_stdout_ends_an_idle_connection(pki):
    """prog closes its stdout and waits for input; the client stays idle. tlswrapper sends
    close_notify and closes prog's stdin, so prog ends and the connection with it: long
    before the -t 60 network timeout (each lingering connection holds two processes). The C
    version 20260501 does the same (the issue: under 4 s); Debian's 20230101 does not (it
    lingers until the timeout), so it is not run here."""
    prog = ["sh", "-c", "echo bye; exec >&-; read x; exit 7"]
    with Run([our_command(), "-t", "60", "-f", pki.ecdsa_p256.path, "--", *prog]) as run:
        sock = run.tls(pki.ca_pem, "tls12")
        assert e2e.recv_all(sock, 20) == b"bye\n"       # then close_notify
        assert run.wait(20) == 7, run.stderr()          # while the client's side is open
        sock.close()


# --------------------------------------------------------------------------- inetd: fd 2


@pytest.fixture
def syslog_socket():
    """A syslog daemon's socket at /dev/log for the test (None when one exists already: the
    lines then go there and only the client's stream is checked)."""
    path = "/dev/log"
    if os.path.lexists(path) or not os.access("/dev", os.W_OK):
        yield None
        return
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    try:
        yield sock
    finally:
        sock.close()
        os.unlink(path)


def syslog_lines(sock: socket.socket | None, until: str) -> list[str]:
    lines: list[str] = []
    while sock is not None and not any(until in line for line in lines):
        lines.append(sock.recv(4096).decode(errors="replace"))
    return lines


@needs_root
def test_inetd_log_goes_to_syslog_not_into_the_tls_stream(pki, syslog_socket):
    """inetd `nowait` gives the connection as fd 0, 1 and 2. At -vv (the ClientHello, the
    certificate path, the handshake) the client's stream carries TLS only: the lines go to
    syslog, facility daemon, tagged with our name and pid."""
    client, server = socket.socketpair()
    proc = subprocess.Popen([our_command(), "-vv", "-f", str(pki.ecdsa_p256.path), "--", "sh",
                             "-c", "echo to-stderr >&2; exec cat"],
                            stdin=server, stdout=server, stderr=server)
    server.close()
    try:
        client.settimeout(20)
        sock = e2e.client_context(pki.ca_pem, "tls13").wrap_socket(
            client, server_hostname="localhost")
        sock.sendall(b"ping\n")
        assert sock.recv(10) == b"ping\n"       # not prog's stderr, not a log line
        sock.close()
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    lines = syslog_lines(syslog_socket, "handshake:")
    if syslog_socket is not None:
        assert all(line.startswith(f"<{3 * 8 + 7}>tlswrapper[{proc.pid}]: debug: ")
                   or line.startswith(f"<{3 * 8 + 6}>tlswrapper[{proc.pid}]: info: ")
                   for line in lines), lines
        assert any("client hello: sni=localhost" in line for line in lines), lines


@needs_root
def test_inetd_fatal_alert_not_preceded_by_log_text(pki, tmp_path, syslog_socket):
    """An unknown SNI with no fallback: "no usable certificate" is logged at the default
    verbosity; under inetd the client gets the TLS alert as the first bytes (not the log
    line in cleartext), and syslog gets the line, at severity err."""
    certdir = pki.certdir({"known.example": "ecdsa-p256"})
    client, server = socket.socketpair()
    proc = subprocess.Popen([our_command(), "-d", str(certdir), "--", "cat"],
                            stdin=server, stdout=server, stderr=server)
    server.close()
    try:
        client.settimeout(20)
        ctx = e2e.client_context(pki.ca_pem, "tls12")
        ctx.check_hostname = False
        with pytest.raises(ssl.SSLError, match="ALERT"):
            ctx.wrap_socket(client, server_hostname="unknown.example")
        assert proc.wait(20) == 111
    finally:
        client.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    lines = syslog_lines(syslog_socket, "fatal:")
    if syslog_socket is not None:
        assert any(line.startswith(f"<{3 * 8 + 3}>tlswrapper[{proc.pid}]: fatal: ")
                   for line in lines), lines


# --------------------------------------------------------------------------- -a: client CAs

RECIPES = Path(__file__).parent / "support" / "client_ca_recipes.sh"


@pytest.fixture(scope="module")
def client_cas(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("client-cas")
    subprocess.run(["bash", str(RECIPES)], cwd=d, check=True, capture_output=True, timeout=60)
    return d


def client_cert_session(impl: str, pki, cas: Path, n: int) -> tuple[bytes | None, int, str]:
    """Present leaf n (with the intermediate for 3 and 5) to -a caN.pem; what prog printed
    (None: the handshake or the first read failed), the exit status, the log."""
    anchor = cas / f"ca{3 if n == 5 else n}.pem"
    chain = cas / f"chain{n}.pem"
    chain.write_bytes((cas / f"l{n}.pem").read_bytes()
                      + ((cas / "i3.pem").read_bytes() if n in (3, 5) else b""))
    with Run([command(impl), "-v", "-a", anchor, "-f", pki.ecdsa_p256.path, "--",
              "sh", "-c", "echo verified"]) as run:
        ctx = e2e.client_context(pki.ca_pem, "tls12")
        ctx.load_cert_chain(chain, cas / f"l{n}.key")
        try:
            with ctx.wrap_socket(run.client_sock, server_hostname="localhost") as sock:
                got: bytes | None = e2e.recv_all(sock, 20)
        except (ssl.SSLError, OSError):
            got = None
        return got, run.wait(20), run.stderr()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("n", [1, 2, 3], ids=["req-x509-no-keyusage-leaf-no-san-no-aki",
                                             "openssl-ca-leaf", "pathlen-nameconstraints"])
def test_client_certificate_from_common_ca_recipes_accepted(pki, client_cas, impl, n):
    got, status, log = client_cert_session(impl, pki, client_cas, n)
    assert (got, status) == (b"verified\n", 0), log


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("n", [4, 5], ids=["ca-keyusage-without-keycertsign",
                                           "outside-name-constraints"])
def test_client_certificate_refused(pki, client_cas, impl, n):
    """Ours refuses both (RFC 5280 4.2.1.3, 4.2.1.10). Known difference, ours safer: the C
    version (BearSSL) accepts both, as it takes a trust anchor as a name and a key only and
    checks neither the anchor's keyUsage nor its name constraints."""
    got, status, log = client_cert_session(impl, pki, client_cas, n)
    if impl == "ours":
        assert got is None and status == 111, log
    else:
        assert (got, status) == (b"verified\n", 0), log


# --------------------------------------------------------------------------- prog killed


@pytest.mark.parametrize("impl", IMPLS)
def test_prog_killed_by_signal_is_logged(pki, impl):
    """Exit 111 and one fatal line (shown at the default verbosity), as the C version."""
    with Run([command(impl), "-f", pki.ecdsa_p256.path, "--",
              "sh", "-c", "kill -TERM $$"]) as run:
        with run.tls(pki.ca_pem, "tls12") as sock:
            assert e2e.recv_all(sock, 20) == b""
        assert run.wait(20) == 111
        lines = run.stderr().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("tlswrapper: fatal: ")
    assert "child process killed by signal 15" in lines[0], lines


# --------------------------------------------------------------------------- bad PEM files


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("option", ["-f", "-a"])
@pytest.mark.parametrize("kind,reason", [
    ("missing", "file does not exist"),
    ("directory", "not a regular file"),
    ("fifo", "not a regular file"),
], ids=["missing", "directory", "fifo"])
def test_bad_file_at_start_one_line_exit_100(pki, tmp_path, impl, option, kind, reason):
    """At start-up (before any client): one fatal line naming the file and the reason, exit
    100, never a hang (a FIFO is not opened for reading)."""
    path = tmp_path / f"bad-{kind}"
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    args = [option, str(path)] + (["-f", str(pki.ecdsa_p256.path)] if option == "-a" else [])
    res = subprocess.run([command(impl), *args, "true"], stdin=subprocess.DEVNULL,
                         capture_output=True, timeout=20, check=False)
    lines = res.stderr.decode().splitlines()
    assert res.returncode == 100, lines
    assert len(lines) == 1 and lines[0].startswith("tlswrapper: fatal: "), lines
    assert f"'{path}'" in lines[0] and reason in lines[0], lines


def _bad_pem(pki, tmp_path: Path, kind: str) -> Path:
    def openssl(*args: str) -> bytes:
        return subprocess.run(["openssl", *args], capture_output=True, check=True,
                              timeout=60).stdout
    server = pki.ecdsa_p256
    if kind == "empty":
        return pki.write_raw(b"", "empty.pem")
    if kind == "key-only":
        return pki.write_raw(server.key_pem(), "key-only.pem")
    if kind == "certificate-only":
        return pki.write_raw(server.chain_pem, "cert-only.pem")
    if kind == "key-not-matching":
        return pki.write_mismatched()
    algorithm = ["-algorithm", "ed25519"] if kind == "ed25519" else \
        ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"]
    key = tmp_path / f"{kind}.key"
    key.write_bytes(openssl("genpkey", *algorithm))
    cert = openssl("req", "-x509", "-key", str(key), "-subj", "/CN=localhost", "-days", "2")
    return pki.write_raw(key.read_bytes() + cert, f"{kind}.pem")


@pytest.mark.parametrize("kind,reason", [
    ("empty", "no certificate"),
    ("key-only", "no certificate"),
    ("certificate-only", "no private key"),
    ("key-not-matching", "key does not match certificate"),
    ("ed25519", "not supported"),
    ("rsa-1024", "1024 bits"),
])
def test_bad_pem_at_handshake_one_line_naming_file(pki, tmp_path, kind, reason):
    """The contents are read per connection, once the SNI is known: the client gets an
    alert, the log one fatal line (default verbosity) naming the file and the reason. The C
    version names the file too for the first five (as 'unable to obtain ... from the PEM file');
    it does not check a key against its certificate nor refuse RSA 1024."""
    pem = _bad_pem(pki, tmp_path, kind)
    with Run([our_command(), "-f", pem, "--", "true"]) as run:
        with pytest.raises(ssl.SSLError, match="INTERNAL_ERROR"):
            run.tls(pki.ca_pem, "tls12")
        assert run.wait(20) == 111
        lines = run.stderr().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tlswrapper: fatal: "), lines
    assert f"{pem}: " in lines[0] and reason in lines[0], lines


# --------------------------------------------------------------------------- tlswrapper-smtp


class SmtpClient:
    """tlswrapper-smtp (ours or C) in front of SMTP_SERVER, the client on a socketpair, fd 5/6
    as pipes held by the test (the wrapper's side)."""

    def __init__(self, impl: str, tmp_path: Path) -> None:
        server = tmp_path / "server.py"
        server.write_text(SMTP_SERVER)
        self.seen = tmp_path / "seen.log"
        self.c5_r, c5_w = os.pipe()
        c6_r, self.c6_w = os.pipe()
        self.run = Run([command(impl, "tlswrapper-smtp"), "--", sys.executable, str(server),
                        str(self.seen)], fds={5: c5_w, 6: c6_r})
        os.close(c5_w)
        os.close(c6_r)
        self.file = self.run.client_sock.makefile("rb")

    def reply(self) -> bytes:
        lines = []
        while True:
            line = self.file.readline()
            lines.append(line)
            if line[3:4] != b"-":
                return b"".join(lines)

    def command(self, line: bytes) -> bytes:
        self.run.client_sock.sendall(line + b"\r\n")
        return self.reply()

    def server_saw(self) -> list[str]:
        return self.seen.read_text().splitlines() if self.seen.exists() else []

    def close(self) -> None:
        self.file.close()
        self.run.close()
        for fd in (self.c5_r, self.c6_w):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def smtp_client(tmp_path):
    made: list[SmtpClient] = []

    def make(impl: str = "ours") -> SmtpClient:
        made.append(SmtpClient(impl, tmp_path / impl))
        return made[-1]
    for impl in IMPLS:
        (tmp_path / impl).mkdir()
    yield make
    for c in made:
        c.close()


def test_smtp_limits_with_rfc5321_replies(smtp_client):
    """The C version 20260501's limits: a line up to 4096 bytes (500 beyond), an address up
    to 2048 (501), at most 256 recipients and 64 KiB of recipients per transaction (452).
    Nothing refused reaches the server. (Debian's 20230101 has no limits: not compared.)"""
    c = smtp_client()
    assert c.reply().startswith(b"220")
    assert c.command(b"EHLO client").startswith(b"250")
    assert c.command(b"NOOP " + b"a" * 4000).startswith(b"250")          # 4007 bytes: fine
    assert c.command(b"NOOP " + b"b" * 4100).startswith(b"500 5.5.2")
    assert c.command(b"MAIL FROM:<" + b"c" * 2100 + b"@x.test>").startswith(b"501 5.1.3")
    assert c.command(b"MAIL FROM:<sender@x.test>").startswith(b"250")
    for i in range(256):
        assert c.command(b"RCPT TO:<r%d@x.test>" % i).startswith(b"250")
    assert c.command(b"RCPT TO:<over@x.test>").startswith(b"452 4.5.3")
    assert c.command(b"RSET").startswith(b"250")                 # a new transaction
    assert c.command(b"MAIL FROM:<sender@x.test>").startswith(b"250")
    accepted, size = 0, 0

    def address(i: int) -> bytes:
        return b"d" * 1000 + b"%d@x.test" % i
    while (r := c.command(b"RCPT TO:<" + address(accepted) + b">"))[:3] == b"250":
        size += len(address(accepted))
        accepted += 1
        assert accepted <= 70
    assert r.startswith(b"452 4.5.3"), r
    assert size <= 65536 < size + len(address(accepted)), (accepted, size)
    assert c.command(b"QUIT").startswith(b"221")
    assert c.run.wait(20) == 0, c.run.stderr()
    saw = c.server_saw()
    assert not any("b" * 100 in x or "c" * 100 in x or "over@" in x for x in saw)
    assert len([x for x in saw if x.startswith("RCPT")]) == 256 + accepted


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("how", ["quit", "leaves", "leaves-after-starttls"])
def test_smtp_session_exit_status_same_as_c(smtp_client, impl, how):
    """The server's status (0 here) after QUIT; 111 when the client leaves without it, also
    right after STARTTLS (the handshake never came), as the C version."""
    c = smtp_client(impl)
    assert c.reply().startswith(b"220")
    assert c.command(b"EHLO client").startswith(b"250")
    if how == "quit":
        assert c.command(b"QUIT").startswith(b"221")
    elif how == "leaves-after-starttls":
        c.run.client_sock.sendall(b"STARTTLS\r\n")
        r, _, _ = select.select([c.c5_r], [], [], 20)
        assert r                                  # our zero byte, or C's 220 line (older -n)
        os.read(c.c5_r, 4096)
        os.close(c.c6_w)                          # the wrapper gives up: no handshake
    c.run.client_sock.shutdown(socket.SHUT_RDWR)
    assert c.run.wait(20) == (0 if how == "quit" else 111), c.run.stderr()


# --------------------------------------------------------------------------- tlswrapper-listen


def test_listen_logs_every_connection_with_its_client_address(pki):
    """Clients that send the start of a ClientHello and reset the connection at once: each
    connection's log lines carry the client address, taken from accept() (getpeername()
    fails once the client has reset)."""
    port = free_port()
    proc = subprocess.Popen(
        [our_command("tlswrapper-listen"), "127.0.0.1", str(port), "-vv", "-f",
         str(pki.ecdsa_p256.path), "--", "cat"],
        stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, proc=proc)
        ports = []
        for _ in range(10):
            s = socket.create_connection(("127.0.0.1", port))
            ports.append(s.getsockname()[1])
            # A whole handshake record whose ClientHello is malformed: the relay answers it
            # with an alert and a log line, after the client is gone.
            s.sendall(b"\x16\x03\x01\x00\x08\x01\x00\x00\x04\x03\x03\x00\x00")
            if len(ports) % 2:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()                                       # half of them with a reset
        time.sleep(1.0)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    lines = [ln for ln in err.decode(errors="replace").splitlines()
             if ln.startswith("tlswrapper: ")]          # the connections' (not the listener's)
    assert lines, err
    assert all(ln.split(": ", 2)[2].startswith("127.0.0.1:") for ln in lines), lines
    logged = {int(ln.split(": ", 2)[2].split(":", 2)[1]) for ln in lines}
    assert logged <= set(ports), (logged, ports)


@needs_root
def test_delayed_ack_reaches_a_prog_that_waits_for_it_before_reading(pki):
    """The client pipelines cleartext after prog's last line; prog waits for the ack on fd 6
    before it reads its stdin (as a prog written for the C version may). It gets the ack
    (within a second, not at the -T timeout), and the cleartext comes first on its stdin,
    before anything from inside TLS."""
    script = ("printf '220 go\\r\\n'; sleep 0.5; printf '\\0' >&5; head -c 1 <&6 >/dev/null; "
              "exec cat")
    with OneConnection(delayed_argv(pki, script, "-T", "20")) as c:
        assert c.recv_until(b"\r\n") == b"220 go\r\n"
        c.sock.sendall(b"PIPELINED cleartext\r\n")
        time.sleep(0.8)                               # past prog's zero byte
        tls = BioTLS(c.sock)
        tls.handshake()
        tls.send(b"inside\r\n")
        got = tls.recv_until(b"inside\r\n")
        c.sock.shutdown(socket.SHUT_WR)
        result = c.finish()
    assert got == b"PIPELINED cleartext\r\ninside\r\n"   # prog chose to echo it, inside TLS
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_certdir_entry_not_a_regular_file_one_line_naming_it(pki, tmp_path, impl, kind):
    """-d: the file for the SNI is a directory or a FIFO: an alert, exit 111, one fatal line
    naming the file (both versions), never a hang on the FIFO."""
    certdir = tmp_path / "certdir"
    certdir.mkdir()
    entry = certdir / "localhost"
    if kind == "directory":
        entry.mkdir()
    else:
        os.mkfifo(entry)
    with Run([command(impl), "-d", certdir, "--", "true"]) as run:
        with pytest.raises(ssl.SSLError, match="ALERT"):
            run.tls(pki.ca_pem, "tls12")
        assert run.wait(20) == 111
        lines = run.stderr().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tlswrapper: fatal: "), lines
    assert str(entry) in lines[0], lines
