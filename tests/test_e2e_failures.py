"""Failure paths end to end. Exit statuses are checked by running tlswrapper directly with fd 0
and 1 on a socketpair (e2e.Direct; tcpserver does not report them); process lifetimes through
tcpserver (e2e.TcpServer) by watching /proc. No timing assertion beyond generous "gone within"
limits. Bad command lines are covered by tests/test_cli.py.
"""

from __future__ import annotations

import socket
import ssl
import struct
import sys
import time
from pathlib import Path

import pytest
from testenv import our_command

import e2e

PYTHON = sys.executable
GONE = 10.0        # generous: "all processes gone" after the event that should end them


def direct(pki, prog, *opts, cert="ecdsa-p256"):
    return e2e.Direct([our_command(), *opts, "-f", pki[cert].path, "--", *prog])


def _handshake_and_read(d: e2e.Direct, pki, version="tls13") -> bytes:
    sock = d.tls(pki.ca_pem, version)
    try:
        return e2e.recv_all(sock, 20)
    finally:
        sock.close()


def _fatal_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("tlswrapper:")]


@pytest.mark.parametrize("version", ["tls12", "tls13"])
def test_prog_missing_exit_111_one_line(pki, version):
    with direct(pki, ["/nonexistent/prog"]) as d:
        assert _handshake_and_read(d, pki, version) == b""
        assert d.wait() == 111
        lines = _fatal_lines(d.stderr())
        assert len(lines) == 1, lines
        assert lines[0].startswith("tlswrapper: fatal: ") and "/nonexistent/prog" in lines[0]


@pytest.mark.parametrize("version", ["tls12", "tls13"])
def test_prog_exit_status_is_ours(pki, version):
    with direct(pki, ["sh", "-c", "echo bye; exit 3"]) as d:
        assert _handshake_and_read(d, pki, version) == b"bye\n"
        assert d.wait() == 3
        assert d.stderr() == ""


def test_prog_exit_0(pki):
    with direct(pki, ["sh", "-c", "exit 0"]) as d:
        assert _handshake_and_read(d, pki) == b""
        assert d.wait() == 0


def test_prog_exits_while_client_stays_silent(pki):
    """prog closes stdout and exits while the client keeps its side open and says nothing:
    tlswrapper sends close_notify and exits with prog's status (not after the -t timeout).
    This used to hang until the network timeout when prog exited just after closing stdout."""
    for _ in range(5):
        with direct(pki, ["sh", "-c", "exit 5"], "-t", "60") as d:
            sock = d.tls(pki.ca_pem, "tls13")
            assert e2e.recv_all(sock, 20) == b""     # close_notify arrived
            assert d.wait(timeout=GONE) == 5         # while sock is still open
            sock.close()


def test_prog_killed_by_signal_exit_111(pki):
    with direct(pki, ["sh", "-c", "kill -9 $$"]) as d:
        assert _handshake_and_read(d, pki) == b""
        assert d.wait() == 111


def test_prog_killed_by_sigterm_exit_111(pki):
    with direct(pki, ["sh", "-c", "echo x; kill -TERM $$; sleep 5"]) as d:
        assert _handshake_and_read(d, pki) == b"x\n"
        assert d.wait() == 111


def test_no_handshake_exit_111_prog_not_run(pki, tmp_path):
    """The client closes before any handshake: prog never runs, exit 111."""
    marker = tmp_path / "ran"
    with direct(pki, ["sh", "-c", f"touch {marker}"]) as d:
        d.client_sock.close()
        assert d.wait() == 111
    assert not marker.exists()


VANISH_PROG = r'''
import os, sys, threading
marker = sys.argv[1]
def writer():
    try:
        while True:
            os.write(1, b"d" * 65536)
    except OSError:
        pass
threading.Thread(target=writer, daemon=True).start()
while os.read(0, 65536):
    pass
open(marker, "w").write("eof")
'''


@pytest.mark.parametrize("how", ["rst", "fin"])
def test_client_vanishes_mid_transfer(pki, tmp_path, how):
    """The client disappears (TCP reset, or a FIN without close_notify) while data flows both
    ways: prog sees EOF on stdin, and the network process, the key process and prog are all
    gone shortly after."""
    prog = tmp_path / "vanish.py"
    prog.write_text(VANISH_PROG)
    marker = tmp_path / "eof"
    with e2e.TcpServer([our_command(), "-v", "-f", pki.ecdsa_p256.path, "--",
                        PYTHON, str(prog), str(marker)]) as srv:
        sock = e2e.tls_connect(srv.port, pki.ca_pem, "tls13")
        sock.sendall(b"u" * 100000)
        got = 0
        while got < 1 << 20:
            got += len(sock.recv(65536))
        procs = srv.connection()
        pids = [procs.network, procs.key, procs.prog]
        raw = sock.detach()
        s = socket.socket(fileno=raw)
        if how == "rst":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        assert e2e.wait_gone(pids, GONE) == [], srv.log()
        assert marker.read_text() == "eof", "prog did not see EOF on its stdin"
        assert srv.wait_idle() == []


def test_handshake_timeout(pki):
    """-T 2: a client that connects and sends nothing is dropped; the processes are gone."""
    with e2e.TcpServer([our_command(), "-v", "-T", "2", "-f", pki.ecdsa_p256.path, "--",
                        "/bin/cat"]) as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=GONE + 5) as s:
            procs = srv.connection(need_jail=False)
            start = time.monotonic()
            assert s.recv(100) == b""            # the server closes the connection
            elapsed = time.monotonic() - start
            assert e2e.wait_gone([procs.network, procs.key, procs.prog], GONE) == []
        assert elapsed < GONE
        assert "handshake timeout" in srv.wait_log("handshake timeout")


def test_handshake_timeout_mid_handshake(pki):
    """-T 2 also bounds a handshake that started: half a ClientHello, then silence."""
    with e2e.TcpServer([our_command(), "-v", "-T", "2", "-f", pki.ecdsa_p256.path, "--",
                        "/bin/cat"]) as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=GONE + 5) as s:
            s.sendall(bytes.fromhex("160301020001"))      # a record header and 1 byte
            procs = srv.connection(need_jail=False)       # the key process waits unjailed
            data = s.recv(100)
            assert data == b"" or data[0] == 21          # closed, or an alert first
            assert e2e.wait_gone([procs.network, procs.key, procs.prog], GONE) == []
        assert "handshake timeout" in srv.wait_log("handshake timeout")


def test_idle_timeout_after_handshake(pki):
    """-t 2: after the handshake and one echo, silence on both sides ends the connection."""
    with e2e.TcpServer([our_command(), "-v", "-t", "2", "-f", pki.ecdsa_p256.path, "--",
                        "/bin/cat"]) as srv:
        with e2e.tls_connect(srv.port, pki.ca_pem, "tls13", timeout=GONE + 5) as s:
            s.sendall(b"hi\n")
            assert s.recv(10) == b"hi\n"
            procs = srv.connection()
            try:
                rest = s.recv(10)
            except (ssl.SSLError, ConnectionError):
                rest = b""
            assert rest == b""
            assert e2e.wait_gone([procs.network, procs.key, procs.prog], GONE) == []
        assert "network timeout" in srv.wait_log("network timeout")


def test_idle_timeout_is_reset_by_traffic(pki):
    """-t 2 counts silence, not connection age: traffic every 0.5 s for 4 s keeps it open."""
    with e2e.TcpServer([our_command(), "-t", "2", "-f", pki.ecdsa_p256.path, "--",
                        "/bin/cat"]) as srv:
        with e2e.tls_connect(srv.port, pki.ca_pem, "tls13") as s:
            for _ in range(8):
                s.sendall(b"ping")
                assert s.recv(10) == b"ping"
                time.sleep(0.5)


@pytest.mark.parametrize("version", ["tls12", "tls13"])
def test_broken_pem_alert_and_log(pki, version):
    bad = pki.write_raw(b"-----BEGIN GARBAGE-----\nnot base64\n-----END GARBAGE-----\n")
    with e2e.Direct([our_command(), "-v", "-f", bad, "--", "/bin/cat"]) as d:
        with pytest.raises(ssl.SSLError, match="ALERT"):
            d.tls(pki.ca_pem, version)
        assert d.wait() == 111
        log = d.stderr()
    assert str(bad) in log and "no certificate" in log, log
    # At the default verbosity the reason shows too (a configuration error, like the C
    # version's "unable to obtain certificate(s) from the PEM file").
    with e2e.Direct([our_command(), "-f", bad, "--", "/bin/cat"]) as d:
        with pytest.raises(ssl.SSLError, match="ALERT"):
            d.tls(pki.ca_pem, version)
        assert d.wait() == 111
        lines = _fatal_lines(d.stderr())
    assert len(lines) == 1 and "fatal" in lines[0] and "no certificate" in lines[0], lines


def test_pem_with_certificate_only(pki):
    only_chain = pki.write_raw(pki.ecdsa_p256.chain_pem, "chain-only.pem")
    with e2e.Direct([our_command(), "-v", "-f", only_chain, "--", "/bin/cat"]) as d:
        with pytest.raises(ssl.SSLError, match="ALERT"):
            d.tls(pki.ca_pem)
        assert d.wait() == 111
        log = d.stderr()
    assert "no private key" in log, log


@pytest.mark.parametrize("version", ["tls12", "tls13"])
def test_key_not_matching_alert_and_log(pki, version):
    """Logged at the default verbosity, with the file name."""
    mismatched = pki.write_mismatched()
    with e2e.Direct([our_command(), "-f", mismatched, "--", "/bin/cat"]) as d:
        with pytest.raises(ssl.SSLError, match="ALERT"):
            d.tls(pki.ca_pem, version)
        assert d.wait() == 111
        log = d.stderr()
    assert f"fatal: TLS alert internal_error sent: no usable certificate ({mismatched}: key " \
        "does not match certificate)" in log, log


@pytest.mark.parametrize("version", ["tls12", "tls13"])
def test_key_not_matching_falls_back_to_the_next_file(pki, version):
    """-f broken.pem -f rsa.pem: the key of the first file does not match its certificate
    (found when it is parsed, right before the first signature); the next file serves, and
    -v logs why the first was refused."""
    mismatched = pki.write_mismatched()
    argv = [our_command(), "-v", "-f", mismatched, "-f", pki.rsa_2048.path, "--", "/bin/cat"]
    with e2e.Direct(argv) as d:
        with d.tls(pki.ca_pem, version) as s:
            assert s.getpeercert(binary_form=True) == pki.rsa_2048.der
            s.sendall(b"ping\n")
            assert s.recv(5) == b"ping\n"
            s.unwrap()           # close_notify: prog's stdin ends, cat exits 0
        assert d.wait() == 0
        log = d.stderr()
    assert f"warning: certificate file refused: {mismatched}: key does not match certificate" \
        in log, log


def test_pem_missing_in_certdir_alert(pki):
    """The PEM file for the SNI is missing and nothing follows: an alert, logged at -vv."""
    d_ = pki.certdir({"example.com": "ecdsa-p256"})
    with e2e.Direct([our_command(), "-vv", "-d", d_, "--", "/bin/cat"]) as d:
        with pytest.raises(ssl.SSLError, match="ALERT"):
            d.tls(pki.ca_pem, "tls13", sni="localhost")
        assert d.wait() == 111
        log = d.stderr()
    assert str(Path(d_) / "localhost") in log and "does not exist" in log, log


def test_pem_removed_after_start(pki, tmp_path):
    """-f file deleted while tcpserver runs: each new connection fails (exit 100 from the
    option check, before any TLS): the client sees the connection closed."""
    pem = tmp_path / "server.pem"
    pem.write_bytes(Path(pki.ecdsa_p256.path).read_bytes())
    with e2e.TcpServer([our_command(), "-f", pem, "--", "/bin/cat"]) as srv:
        with e2e.tls_connect(srv.port, pki.ca_pem) as s:
            s.sendall(b"a")
            assert s.recv(1) == b"a"
        pem.unlink()
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            e2e.tls_connect(srv.port, pki.ca_pem).close()
        assert str(pem) in srv.wait_log("fatal")
