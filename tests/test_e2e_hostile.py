"""Hostile ClientHellos against a real `tlswrapper` under tcpserver (issue 12): hand-built
hellos over a plain socket, the in-test TLS 1.3 client over a socket, and openssl s_client.
Each refusal is the RFC's alert on the wire and a log line, and prog never runs; each large
but valid hello completes and carries data. The engine-level tests: test_hostile_hello.py."""

from __future__ import annotations

import socket
import time

import pytest
from testenv import our_command, run, which

import e2e
import hostile
from test_hostile_hello import _large_client, largest_tls12_hello
from tls12client import TLS12Client
from tls13client import TLS13Client
from tlswrapper.tls import messages as m
from tlswrapper.tls import suites as s

TIMEOUT = 20.0


@pytest.fixture
def server(pki, tmp_path):
    """tcpserver + tlswrapper -vv; prog appends "$SSL_TLS_SNI" to a file, then echoes."""
    marks = tmp_path / "prog-ran"
    prog = tmp_path / "prog.sh"
    prog.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$SSL_TLS_SNI\" >> {marks}\n"
                    "printf 'sni=%s\\n' \"$SSL_TLS_SNI\"\nexec cat\n")
    prog.chmod(0o755)
    with e2e.TcpServer([our_command(), "-vv", "-f", pki.ecdsa_p256.path, "--",
                        str(prog)]) as srv:
        srv.marks = marks
        yield srv


def read_records(sock: socket.socket, timeout: float = TIMEOUT) -> list[tuple[int, bytes]]:
    """Every record the server sends until it closes the connection."""
    sock.settimeout(timeout)
    data = bytearray()
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    out, pos = [], 0
    while pos + 5 <= len(data):
        length = int.from_bytes(data[pos + 3:pos + 5], "big")
        out.append((data[pos], bytes(data[pos + 5:pos + 5 + length])))
        pos += 5 + length
    return out


def talk(port: int, client: TLS13Client, until, timeout: float = TIMEOUT) -> socket.socket:
    """Run `client` over a socket until until(client) holds; returns the open socket."""
    if client.state == "start":
        client.start()
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    deadline = time.monotonic() + timeout
    while True:
        out = client.data_to_send()
        if out:
            sock.sendall(out)
        if until(client):
            return sock
        assert time.monotonic() < deadline, "no progress"
        data = sock.recv(65536)
        assert data, f"server closed; alerts {client.alerts}"
        client.receive(data)


REFUSED = {
    "sni_esc": (dict(sni=b"\x1b[31mred\x1b[0m.example"), s.ILLEGAL_PARAMETER),
    "sni_bel": (dict(sni=b"bell\x07.example"), s.ILLEGAL_PARAMETER),
    "sni_nul": (dict(sni=b"localhost\x00.evil"), s.ILLEGAL_PARAMETER),
    "sni_lf": (dict(sni=b"localhost\nSSL_CLIENT_VERIFY=SUCCESS"), s.ILLEGAL_PARAMETER),
    "sni_non_ascii": (dict(sni="b\u00fccher.example".encode()), s.ILLEGAL_PARAMETER),
    "sni_broken_list": (dict(sni=None, replace={s.EXT_SERVER_NAME: b"\x00\x10\x00"}),
                        s.DECODE_ERROR),
    "compression_without_null_tls12": (dict(tls13=False, compression=b"\x01"),
                                       s.ILLEGAL_PARAMETER),
    "compression_without_null_tls13": (dict(compression=b"\x01"), s.ILLEGAL_PARAMETER),
    "ems_with_body": (dict(tls13=False, extra=(
        m.Extension(s.EXT_EXTENDED_MASTER_SECRET, b"\x00"),)), s.DECODE_ERROR),
    "brainpool_share": (dict(groups=(hostile.BRAINPOOL_P256, s.X25519), shares=(
        (hostile.BRAINPOOL_P256, bytes(65)),)), s.ILLEGAL_PARAMETER),
    "x25519_share_31_bytes": (dict(shares=((s.X25519, bytes(31)),)), s.ILLEGAL_PARAMETER),
    "legacy_version_ssl3": (dict(legacy_version=0x0300), s.PROTOCOL_VERSION),
}


@pytest.mark.parametrize("kw, alert", REFUSED.values(), ids=REFUSED.keys())
def test_hostile_client_hello_gets_its_alert_and_prog_never_runs(server, kw, alert):
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(hostile.records(hostile.client_hello(**kw)))
        got = read_records(sock)
    assert got == [(s.ALERT, bytes((2, alert)))], got
    log = server.wait_log(f"TLS alert {s.ALERT_NAMES[alert]} sent")
    assert f"TLS alert {s.ALERT_NAMES[alert]} sent" in log, log
    assert "Traceback" not in log
    assert server.wait_idle() == []
    assert not server.marks.exists(), server.marks.read_text()


@pytest.mark.parametrize("name", ["\x1b[31mred", "bell\x07.example"], ids=["esc", "bel"])
def test_openssl_s_client_with_control_characters_in_sni_is_refused(server, pki, name):
    proc = run([which("openssl"), "s_client", "-connect", f"127.0.0.1:{server.port}",
                "-servername", name, "-CAfile", str(pki.ca_pem), "-brief"],
               input=b"", timeout=TIMEOUT)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode != 0
    assert "SSL alert number 47" in err, err
    assert server.wait_idle() == []
    assert not server.marks.exists()


def test_valid_unknown_sni_reaches_prog(server):
    # The positive control of the test above: a valid name we have no file for goes on.
    client = TLS13Client(sni="Unknown.Example")
    sock = talk(server.port, client, lambda c: c.connected and b"\n" in c.app_data)
    sock.close()
    assert bytes(client.app_data) == b"sni=unknown.example\n"
    assert server.marks.read_text() == "unknown.example\n"


@pytest.mark.parametrize("kind", ["everything", "extensions16k", "groups_and_shares"])
def test_large_valid_client_hello_is_served_end_to_end(server, kind):
    client = _large_client(kind)
    client.start()
    sock = talk(server.port, client, lambda c: c.connected and b"\n" in c.app_data)
    with sock:
        payload = b"after a large hello\n"
        client.send(payload)
        sock.sendall(client.data_to_send())
        deadline = time.monotonic() + TIMEOUT
        while len(client.app_data) < len(b"sni=localhost\n") + len(payload):
            assert time.monotonic() < deadline
            data = sock.recv(65536)
            assert data, client.alerts
            client.receive(data)
    assert bytes(client.app_data) == b"sni=localhost\n" + payload
    assert server.wait_idle() == []


def test_largest_tls12_client_hello_is_served_end_to_end(server):
    """131 KB: every vector of a TLS 1.2 ClientHello at its maximum, in 9 records."""
    client = TLS12Client(largest_tls12_hello())
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(hostile.records(client.hello))
        deadline = time.monotonic() + TIMEOUT
        sent = False
        while b"ping" not in client.app_data:
            assert time.monotonic() < deadline
            out = client.data_to_send()
            if out:
                sock.sendall(out)
            if client.connected and not sent:
                client.send(b"ping")
                sent = True
                continue
            data = sock.recv(65536)
            assert data, client.alerts
            client.receive(data)
    assert bytes(client.app_data) == b"sni=localhost\nping"
    assert server.wait_idle() == []


def test_tls13_empty_alert_is_unexpected_message_end_to_end(server):
    client = TLS13Client()
    sock = talk(server.port, client, lambda c: c.connected and b"\n" in c.app_data)
    with sock:
        client.send_protected(s.ALERT, b"")
        sock.sendall(client.data_to_send())
        got = read_records(sock)
    assert got and got[0][0] == s.APPLICATION_DATA
    assert [client.read.open(bytes((t, 3, 3)) + len(b).to_bytes(2, "big") + b)
            for t, b in got] == [(s.ALERT, bytes((2, s.UNEXPECTED_MESSAGE)))]
    assert "TLS alert unexpected_message sent: empty alert record" in \
        server.wait_log("empty alert record")


def test_bad_sni_in_one_byte_records_is_refused_after_the_whole_hello(server):
    # A hello in 1-byte records: the engine buffers and parses it as one; the refusal of a
    # bad name still comes after the whole hello, never part way.
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(hostile.records(hostile.client_hello(sni=b"a\x1bb"), 1))
        assert read_records(sock) == [(s.ALERT, bytes((2, s.ILLEGAL_PARAMETER)))]
    assert not server.marks.exists()

