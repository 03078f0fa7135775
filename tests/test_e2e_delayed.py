"""-n: delayed encryption (STARTTLS) with the fd 5 / fd 6 protocol of SPEC section 3.

prog is a small SMTP server written for the test (SMTP_PROG below): it greets in cleartext,
offers STARTTLS, answers it with `220 ready to start TLS`, writes the zero byte on fd 5, waits
for the zero byte on fd 6 and then speaks SMTP inside TLS. Clients: `openssl s_client
-starttls smtp`, and a raw socket with Python's ssl over MemoryBIOs (tests/support/oneconn.py) where
the test must control every byte.

Debian's tlswrapper 20230101 implements an older -n protocol (prog writes its last cleartext
line itself to fd 5 and closes it; there is no fd 6), so it is not compared here.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from testenv import needs_root, our_command, which
from oneconn import BioTLS, OneConnection, clean_env

pytestmark = needs_root   # the jail needs root

SMTP_PROG = r'''
import os, sys, time
mode = sys.argv[1] if len(sys.argv) > 1 else "normal"
BIG = 300000

def out(text):
    data = text.encode() if isinstance(text, str) else text
    while data:
        data = data[os.write(1, data):]

def readline():
    buf = b""
    while not buf.endswith(b"\n"):
        c = os.read(0, 1)
        if not c:
            return None
        buf += c
    return buf.decode("latin1")

out("220 test ESMTP\r\n")
tls = False
while True:
    line = readline()
    if line is None:
        sys.exit(0)
    cmd = line.strip().upper()
    if cmd.startswith("EHLO"):
        if tls:
            out("250-test %s %s\r\n250 SSL_PROTOCOL=%s\r\n" % (
                os.environ.get("TCPREMOTEIP", "-"), os.environ.get("TCPREMOTEPORT", "-"),
                os.environ.get("SSL_PROTOCOL", "unset")))
        else:
            out("250-test\r\n250 STARTTLS\r\n")
    elif cmd == "STARTTLS" and not tls:
        if mode == "big":
            # More cleartext than a pipe holds, all of it written before the signal.
            line = b"220-" + b"x" * 95 + b"\r\n"
            out(line * (BIG // len(line)))
        out("220 ready to start TLS\r\n")
        if mode == "slow":
            time.sleep(0.7)   # the client answers the 220 before the zero byte exists
        if mode == "inject":
            time.sleep(0.5)   # the relay has read all the client's pipelined cleartext
        os.write(5, b"x" if mode == "badbyte" else b"\0")
        if mode == "inject":
            # Read stdin and fd 6 together, as tlswrapper-smtp does: everything read from
            # stdin before the zero byte on fd 6 is cleartext the client sent before the
            # switch; it must all come first, and nothing from inside TLS may.
            import select
            before = 0
            while True:
                ready, _, _ = select.select([0, 6], [], [])
                if 6 in ready:
                    break
                chunk = os.read(0, 16384)
                if not chunk:
                    sys.exit(4)
                before += len(chunk)
                time.sleep(0.01)   # a slow reader: the handshake ends before it is done
            if os.read(6, 1) != b"\0":
                sys.exit(3)
            tls = True
            line = readline()
            out("250 before=%d after=%s\r\n" % (before, line.strip()))
            continue
        ack = os.read(6, 1)
        if ack != b"\0":
            sys.stderr.write("smtp-prog: no ack on fd 6: %r\n" % ack)
            sys.exit(3)
        tls = True
    elif cmd == "QUIT":
        out("221 bye\r\n")
        sys.exit(0)
    else:
        out("500 what\r\n")
'''


@pytest.fixture
def smtp_prog(tmp_path: Path) -> list[str]:
    path = tmp_path / "smtp-prog.py"
    path.write_text(SMTP_PROG)
    return [sys.executable, str(path)]


def wrapper_argv(pki, prog: list[str], *options: str) -> list[str]:
    return [our_command(), "-vv", "-n", *options, "-f", str(pki.ecdsa_p256.path), "--", *prog]


def smtp_starttls(c: OneConnection) -> None:
    """The cleartext part of the dialogue, up to the 220 for STARTTLS."""
    assert c.recv_until(b"\r\n") == b"220 test ESMTP\r\n"
    c.sock.sendall(b"EHLO client.example\r\n")
    assert c.recv_until(b"250 STARTTLS\r\n") == b"250-test\r\n250 STARTTLS\r\n"
    c.sock.sendall(b"STARTTLS\r\n")


# --------------------------------------------------------------------------- openssl s_client


@pytest.mark.parametrize("version", ["-tls1_3", "-tls1_2"])
def test_openssl_starttls_smtp(version: str, pki, smtp_prog) -> None:
    openssl = which("openssl")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(15)
    port = listener.getsockname()[1]
    client = subprocess.Popen(
        [openssl, "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{port}",
         "-servername", "localhost", "-CAfile", str(pki.ca_pem), "-verify_return_error",
         version, "-ign_eof"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        conn, _ = listener.accept()
        listener.close()
        server = subprocess.Popen(wrapper_argv(pki, smtp_prog), stdin=conn, stdout=conn,
                                  stderr=subprocess.PIPE, env=clean_env())
        conn.close()
        out, _ = client.communicate(b"EHLO client.example\r\nQUIT\r\n", timeout=20)
        _, log = server.communicate(timeout=20)
    finally:
        for p in (client, locals().get("server")):
            if p is not None and p.poll() is None:
                p.kill()
                p.communicate(timeout=10)
    text = out.decode(errors="replace")
    log_text = log.decode(errors="replace")
    assert "Verify return code: 0 (ok)" in text, text
    expected = "TLSv1.3" if version == "-tls1_3" else "TLSv1.2"
    assert f"Protocol  : {expected}" in text or f"New, {expected}" in text, text
    # The replies from inside TLS: prog's post-STARTTLS EHLO and QUIT answers.
    assert "250-test 127.0.0.1" in text and "221 bye" in text, text
    # No SSL_* for a prog that started before the handshake.
    assert "250 SSL_PROTOCOL=unset" in text
    assert server.returncode == 0, log_text
    assert "delayed encryption: prog asked for TLS" in log_text
    assert f"handshake: {expected}" in log_text
    assert "Traceback" not in log_text


# --------------------------------------------------------------------------- raw client


def starttls_session(pki, smtp_prog, mode: str = "normal", options: tuple[str, ...] = (),
                     prefix: bytes = b"") -> tuple[bytes, str, int]:
    prog = [*smtp_prog, mode]
    with OneConnection(wrapper_argv(pki, prog, *options)) as c:
        if prefix:
            c.send_pieces(prefix, 1)
        smtp_starttls(c)
        cleartext = c.recv_until(b"220 ready to start TLS\r\n")
        tls = BioTLS(c.sock)
        tls.handshake()
        assert tls.version in ("TLSv1.3", "TLSv1.2")
        tls.send(b"EHLO client.example\r\n")
        reply = tls.recv_until(b"250 SSL_PROTOCOL")
        tls.send(b"QUIT\r\n")
        rest, _ = tls.recv_all()
        result = c.finish()
    assert b"221 bye\r\n" in rest
    return cleartext, reply.decode() + result.stderr, result.returncode


def test_raw_client(pki, smtp_prog) -> None:
    cleartext, text, status = starttls_session(pki, smtp_prog)
    assert cleartext == b"220 ready to start TLS\r\n"
    assert "250-test 127.0.0.1 " in text
    assert status == 0, text


def test_cleartext_before_signal_comes_first(pki, smtp_prog) -> None:
    """300 kB of cleartext (more than a pipe holds) written before the zero byte all reach
    the client before the handshake; none of it is lost or sent inside TLS."""
    cleartext, text, status = starttls_session(pki, smtp_prog, "big")
    line = b"220-" + b"x" * 95 + b"\r\n"
    assert cleartext == line * (300000 // len(line)) + b"220 ready to start TLS\r\n"
    assert status == 0, text


def test_client_hello_before_signal(pki, smtp_prog) -> None:
    """The switch race: the client sends its ClientHello as soon as it has the 220, while
    prog has not written the zero byte yet (it sleeps 0.7 s in between). The ClientHello must
    wait for the switch and reach the TLS engine, not prog's stdin."""
    cleartext, text, status = starttls_session(pki, smtp_prog, "slow")
    assert cleartext == b"220 ready to start TLS\r\n"
    assert status == 0, text


def test_with_proxy_header(pki, smtp_prog) -> None:
    """-p 1 -n: the PROXY header, then cleartext SMTP, then TLS; prog, started right after
    the header, has the header's addresses."""
    cleartext, text, status = starttls_session(
        pki, smtp_prog, options=("-p", "1"),
        prefix=b"PROXY TCP4 192.0.2.7 198.51.100.9 40001 25\r\n")
    assert "250-test 192.0.2.7 40001" in text
    assert "192.0.2.7:40001: handshake:" in text
    assert status == 0, text


def test_cleartext_pipelined_before_switch_reaches_prog_before_the_ack(pki, smtp_prog) -> None:
    """A client pipelines 512 KiB of cleartext right after STARTTLS (more than a pipe holds,
    so most of it still waits in the relay at the switch). All of it reaches prog before the
    zero byte on fd 6, and the first line from inside TLS after it: the boundary is exact.
    (Cleartext the relay has not read from the socket at the switch is taken as TLS: the
    handshake then fails; prog's sleep before its zero byte avoids that here.)"""
    injected = (b"RCPT TO:<injected@example.com>\r\n" * 32768)[:1 << 19]
    with OneConnection(wrapper_argv(pki, [*smtp_prog, "inject"])) as c:
        assert c.recv_until(b"\r\n") == b"220 test ESMTP\r\n"
        c.sock.sendall(b"STARTTLS\r\n" + injected)
        c.recv_until(b"220 ready to start TLS\r\n")
        tls = BioTLS(c.sock)
        tls.handshake()
        tls.send(b"NOOP inside\r\n")
        reply = tls.recv_until(b"\r\n")
        tls.send(b"QUIT\r\n")
        tls.recv_all()
        result = c.finish()
    assert reply == b"250 before=%d after=NOOP inside\r\n" % len(injected), reply
    assert result.returncode == 0, result.stderr


def test_ack_before_handshake_then_end_of_input_when_it_fails(pki, smtp_prog) -> None:
    """The ack comes at the switch, before the handshake (as the C version 20260501 sends
    it). The client then sends cleartext instead of a ClientHello: the handshake fails with
    an alert, prog (acknowledged already) reads end of file on its stdin and exits 0 here."""
    with OneConnection(wrapper_argv(pki, [*smtp_prog, "normal"])) as c:
        smtp_starttls(c)
        c.recv_until(b"220 ready to start TLS\r\n")
        time.sleep(0.2)          # past the switch: these bytes go to the TLS engine
        c.sock.sendall(b"RCPT TO:<injected@example.com>\r\n")
        reply = c.recv_all()
        result = c.finish()
    assert reply[:1] == b"\x15", reply          # a TLS alert record, no more SMTP
    assert "smtp-prog: no ack" not in result.stderr
    assert result.returncode == 0, result.stderr


def test_bad_control_byte(pki, smtp_prog) -> None:
    with OneConnection(wrapper_argv(pki, [*smtp_prog, "badbyte"])) as c:
        smtp_starttls(c)
        data = c.recv_all()
        result = c.finish()
    assert data == b"220 ready to start TLS\r\n"
    assert "instead of a zero byte" in result.stderr
    assert "Traceback" not in result.stderr


def test_cleartext_only(pki) -> None:
    """prog never asks for TLS: cleartext both ways, the client's end of file reaches prog,
    prog's exit status is ours."""
    with OneConnection(wrapper_argv(pki, ["/bin/cat"])) as c:
        for i in range(50):
            line = b"line %d\r\n" % i
            c.sock.sendall(line)
            assert c.recv_until(b"\n") == line
        big = os.urandom(1 << 20)
        c.sock.sendall(big)
        assert len(c.recv_until(big[-64:])) == len(big)
        c.sock.shutdown(socket.SHUT_WR)
        assert c.recv_all() == b""
        result = c.finish()
    assert result.returncode == 0, result.stderr


def test_tls_looking_bytes_go_to_prog_after_grace(pki) -> None:
    """Bytes that start like a TLS record wait for a switch that never comes (cat never
    signals), then go to prog anyway, after a short grace period."""
    with OneConnection(wrapper_argv(pki, ["/bin/cat"])) as c:
        started = time.monotonic()
        c.sock.sendall(b"\x16\x03\x01 not really\r\n")
        echoed = c.recv_until(b"\r\n")
        elapsed = time.monotonic() - started
        c.sock.shutdown(socket.SHUT_WR)
        c.recv_all()
        result = c.finish()
    assert echoed == b"\x16\x03\x01 not really\r\n"
    assert 1.0 < elapsed < 10
    assert result.returncode == 0, result.stderr


def test_handshake_timeout_after_switch(pki, smtp_prog) -> None:
    """-T counts from the switch: a client that never sends its ClientHello is dropped."""
    with OneConnection(wrapper_argv(pki, [*smtp_prog, "normal"], "-T", "2")) as c:
        smtp_starttls(c)
        c.recv_until(b"220 ready to start TLS\r\n")
        started = time.monotonic()
        result = c.finish(timeout=15)
        elapsed = time.monotonic() - started
    assert 1.0 < elapsed < 10
    assert "handshake timeout" in result.stderr
    assert result.returncode == 0       # acknowledged at the switch, then end of input


def test_debian_older_protocol() -> None:
    pytest.skip("Debian's tlswrapper 20230101 has the older -n protocol (prog writes its "
                "last cleartext to fd 5 and closes it, no fd 6): not comparable")
