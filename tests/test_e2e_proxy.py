"""-p 1, 2, 0: a PROXY protocol header (v1, v2, either) before the TLS handshake, end to end,
ours and Debian's (which reads v1 only).

The wrapper runs on one accepted TCP socket (tests/support/oneconn.py); the client writes the header
(whole, glued to its ClientHello, or in 1-byte pieces) and then speaks TLS with Python's ssl
on the same socket. prog prints the TCP* variables it was given.

Where Debian's tlswrapper 20230101 differs, the test says so and runs ours only:
- a malformed header: both end the connection without a handshake, with a log line; the C
  version exits 100 (its usage/configuration status), ours 111 (a failed connection: SPEC
  keeps 100 for usage and configuration errors);
- the C version takes a line ended by LF alone and ports with leading zeros; ours refuses
  both (the specification requires CRLF and plain decimal);
- the C version takes any line of up to 127 bytes (its 128-byte buffer); ours up to 116, the
  longest legal header (both take that one: TCP6 with two dotted-tail addresses).
"""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import pytest
from testenv import debian_tlswrapper, needs_root, our_command
from oneconn import BioTLS, OneConnection, clean_env

pytestmark = needs_root   # the jail needs root

IMPLS = ["ours", "debian"]

ENV_PROG = """#!/bin/sh
# prints the connection's addresses as prog sees them, then the marker
env | grep '^TCP' | sort
echo end-of-env
"""


def wrapper(impl: str) -> str:
    return our_command() if impl == "ours" else debian_tlswrapper()


@pytest.fixture
def env_prog(tmp_path: Path) -> Path:
    path = tmp_path / "env-prog"
    path.write_text(ENV_PROG)
    path.chmod(0o755)
    return path


@pytest.fixture
def marker_prog(tmp_path: Path) -> tuple[Path, Path]:
    """A prog that leaves a file behind when it runs (it must not, without a handshake)."""
    marker = tmp_path / "prog-ran"
    path = tmp_path / "marker-prog"
    path.write_text(f"#!/bin/sh\ntouch '{marker}'\n")
    path.chmod(0o755)
    return path, marker


def prog_env(output: bytes) -> dict[str, str]:
    text = output.decode()
    assert text.endswith("end-of-env\n"), text
    return dict(line.split("=", 1) for line in text.splitlines()[:-1])


def run_with_header(impl: str, pki, prog: Path, header: bytes, *, glue: bool = True,
                    piece: int = 0, extra: tuple[str, ...] = ("-vv",), version: str = "1"):
    argv = [wrapper(impl), *extra, "-p", version, "-f", pki.ecdsa_p256.path, str(prog)]
    with OneConnection(argv) as c:
        tls = BioTLS(c.sock)
        tls.handshake(header, glue=glue, piece=piece)
        data, _clean = tls.recv_all()
        client_port = c.sock.getsockname()[1]
        # Debian's tlswrapper waits for the client's end of file after prog's output ended.
        c.sock.shutdown(socket.SHUT_WR)
        result = c.finish()
    return tls, data, result, client_port


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("how", ["glued", "separate", "pieces"])
def test_tcp4(impl: str, how: str, pki, env_prog: Path) -> None:
    header = b"PROXY TCP4 192.0.2.7 198.51.100.9 40001 443\r\n"
    tls, data, result, _ = run_with_header(
        impl, pki, env_prog, header, glue=how != "separate", piece=1 if how == "pieces" else 0)
    assert tls.version is not None
    assert prog_env(data) == {"TCPREMOTEIP": "192.0.2.7", "TCPREMOTEPORT": "40001",
                              "TCPLOCALIP": "198.51.100.9", "TCPLOCALPORT": "443"}
    assert result.returncode == 0, result.stderr
    if impl == "ours":
        # The log lines carry the client address from the header, not the proxy's.
        assert "192.0.2.7:40001: handshake:" in result.stderr, result.stderr


@pytest.mark.parametrize("impl", IMPLS)
def test_tcp6(impl: str, pki, env_prog: Path) -> None:
    header = b"PROXY TCP6 2001:db8::7 2001:db8:0:0:0:0:0:9 40001 443\r\n"
    _, data, result, _ = run_with_header(impl, pki, env_prog, header, piece=1)
    assert prog_env(data) == {"TCPREMOTEIP": "2001:db8::7", "TCPREMOTEPORT": "40001",
                              "TCPLOCALIP": "2001:db8::9", "TCPLOCALPORT": "443"}
    assert result.returncode == 0, result.stderr
    if impl == "ours":
        assert "[2001:db8::7]:40001: handshake:" in result.stderr, result.stderr


UNKNOWN_ENV = {"TCPREMOTEIP": "::", "TCPREMOTEPORT": "0", "TCPLOCALIP": "::",
               "TCPLOCALPORT": "0"}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("header", [b"PROXY UNKNOWN\r\n",
                                    b"PROXY UNKNOWN 192.0.2.7 198.51.100.9 40001 443\r\n"])
def test_unknown_sets_addresses_as_the_c_version(impl: str, header: bytes, pki,
                                                 env_prog: Path) -> None:
    """`::` and `0` for all four, as Debian's tlswrapper sets them: never the socket's, which
    are the proxy's own (a prog that trusts 127.0.0.1 must not trust a stranger behind it)."""
    _, data, result, _ = run_with_header(impl, pki, env_prog, header, piece=3)
    assert prog_env(data) == UNKNOWN_ENV
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("impl", IMPLS)
def test_tcp6_dotted_tails_longest_header(impl: str, pki, env_prog: Path) -> None:
    """116 bytes: both addresses in the 45-character form with a dotted IPv4 tail; longer
    than the specification's 107 and legal (the limit counts the longest legal header)."""
    full = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
    header = f"PROXY TCP6 {full} {full} 65535 65535\r\n".encode()
    assert len(header) == 116
    _, data, result, _ = run_with_header(impl, pki, env_prog, header)
    ip = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    assert prog_env(data) == {"TCPREMOTEIP": ip, "TCPREMOTEPORT": "65535", "TCPLOCALIP": ip,
                              "TCPLOCALPORT": "65535"}
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("impl", IMPLS)
def test_tcp6_ipv4_mapped_dotted_tail(impl: str, pki, env_prog: Path) -> None:
    header = b"PROXY TCP6 0:0:0:0:0:ffff:192.0.2.7 ::ffff:198.51.100.9 40001 443\r\n"
    _, data, result, _ = run_with_header(impl, pki, env_prog, header, piece=7)
    assert prog_env(data) == {"TCPREMOTEIP": "192.0.2.7", "TCPREMOTEPORT": "40001",
                              "TCPLOCALIP": "198.51.100.9", "TCPLOCALPORT": "443"}
    assert result.returncode == 0, result.stderr


def test_environment_from_tcpserver_replaced(pki, env_prog: Path) -> None:
    """tcpserver's variables name the proxy; the header's name the client and win."""
    argv = [our_command(), "-p", "1", "-f", pki.ecdsa_p256.path, str(env_prog)]
    env = clean_env({"TCPREMOTEIP": "10.0.0.1", "TCPREMOTEPORT": "1", "TCPLOCALIP": "10.0.0.2",
                     "TCPLOCALPORT": "2"})
    with OneConnection(argv, env=env) as c:
        tls = BioTLS(c.sock)
        tls.handshake(b"PROXY TCP4 192.0.2.7 198.51.100.9 40001 443\r\n")
        data, _ = tls.recv_all()
        c.finish()
    assert prog_env(data)["TCPREMOTEIP"] == "192.0.2.7"
    assert prog_env(data)["TCPLOCALPORT"] == "443"


# Refused by both implementations.
MALFORMED_BOTH = {
    "double space": b"PROXY TCP4 192.0.2.7  198.51.100.9 40001 443\r\n",
    "trailing space": b"PROXY TCP4 192.0.2.7 198.51.100.9 40001 443 \r\n",
    "v6 address in TCP4": b"PROXY TCP4 ::1 198.51.100.9 40001 443\r\n",
    "port 65536": b"PROXY TCP4 192.0.2.7 198.51.100.9 40001 65536\r\n",
    "port with sign": b"PROXY TCP4 192.0.2.7 198.51.100.9 +40001 443\r\n",
    "host name": b"PROXY TCP4 proxy.example 198.51.100.9 40001 443\r\n",
    "family": b"PROXY UDP4 192.0.2.7 198.51.100.9 40001 443\r\n",
    "missing field": b"PROXY TCP4 192.0.2.7 198.51.100.9 40001\r\n",
    "over-long": b"PROXY UNKNOWN " + b"9" * 140 + b"\r\n",
}
# Refused by ours, accepted by Debian's (see the module docstring).
MALFORMED_OURS = {
    "LF alone": b"PROXY TCP4 192.0.2.7 198.51.100.9 40001 443\n",
    "port leading zero": b"PROXY TCP4 192.0.2.7 198.51.100.9 040001 443\r\n",
    "NUL": b"PROXY UNKNOWN \x00\r\n",
    "v2 signature": b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c",
    "UNKNOWN of 120 bytes": b"PROXY UNKNOWN " + b"x" * 104 + b"\r\n",
}


def check_refused(impl: str, pki, marker_prog, header: bytes, piece: int = 0,
                  version: str = "1") -> str:
    prog, marker = marker_prog
    argv = [wrapper(impl), "-p", version, "-f", pki.ecdsa_p256.path, str(prog)]
    with OneConnection(argv) as c:
        if piece:
            c.send_pieces(header, piece)
        else:
            c.sock.sendall(header)
        started = time.monotonic()
        reply = c.recv_all()
        result = c.finish()
        elapsed = time.monotonic() - started
    # No handshake: not one byte back (no ServerHello, no alert), prog never ran.
    assert reply == b"", reply[:40]
    assert not marker.exists()
    # Refused at once, not at the handshake timeout (30 s) or when the client gives up.
    assert elapsed < 10
    assert "proxy-protocol" in result.stderr, result.stderr      # the log line, at -Q
    assert "Traceback" not in result.stderr
    assert result.returncode == (111 if impl == "ours" else 100), result.stderr
    return result.stderr


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", sorted(MALFORMED_BOTH))
def test_malformed(impl: str, name: str, pki, marker_prog) -> None:
    check_refused(impl, pki, marker_prog, MALFORMED_BOTH[name])


@pytest.mark.parametrize("name", sorted(MALFORMED_OURS))
def test_malformed_ours_strict(name: str, pki, marker_prog) -> None:
    check_refused("ours", pki, marker_prog, MALFORMED_OURS[name])


def test_malformed_in_pieces(pki, marker_prog) -> None:
    stderr = check_refused("ours", pki, marker_prog,
                           b"PROXY TCP4 192.0.2.7 198.51.100.9 40001 99999\r\n", piece=1)
    assert "bad destination port" in stderr


def test_clienthello_without_header(pki, marker_prog) -> None:
    """A client that does TLS straight away (the proxy forgot send-proxy): refused at its
    first byte, no handshake."""
    prog, marker = marker_prog
    argv = [our_command(), "-p", "1", "-f", pki.ecdsa_p256.path, str(prog)]
    with OneConnection(argv) as c:
        tls = BioTLS(c.sock)
        with pytest.raises((ssl.SSLError, OSError)):
            tls.handshake()
        result = c.finish()
    assert result.returncode == 111
    assert "no PROXY signature" in result.stderr
    assert not marker.exists()


def test_overlong_without_crlf_ends_at_116_bytes(pki, marker_prog) -> None:
    """The client keeps the connection open after 116 bytes (the longest legal header) with
    no CRLF: refused then, without waiting for more."""
    prog, _ = marker_prog
    argv = [our_command(), "-p", "1", "-f", pki.ecdsa_p256.path, str(prog)]
    with OneConnection(argv) as c:
        c.sock.sendall(b"PROXY UNKNOWN " + b"x" * 102)      # exactly 116 bytes
        result = c.finish(timeout=10)
        assert c.recv_all() == b""
    assert result.returncode == 111
    assert "no CRLF within 116 bytes" in result.stderr


def test_header_timeout(pki, marker_prog) -> None:
    """An incomplete header is subject to the handshake timeout (-T)."""
    prog, marker = marker_prog
    argv = [our_command(), "-v", "-T", "2", "-p", "1", "-f", pki.ecdsa_p256.path, str(prog)]
    with OneConnection(argv) as c:
        c.sock.sendall(b"PROXY TCP4 192.0.2.7 ")
        started = time.monotonic()
        result = c.finish(timeout=15)
        elapsed = time.monotonic() - started
    assert 1.0 < elapsed < 10
    assert result.returncode == 111
    assert "timeout reading the PROXY header" in result.stderr
    assert not marker.exists()


def test_silent_close_is_quiet(pki, marker_prog) -> None:
    """A connection closed before any byte (a TCP health check) is not a fatal line."""
    prog, marker = marker_prog
    argv = [our_command(), "-p", "1", "-f", pki.ecdsa_p256.path, str(prog)]
    with OneConnection(argv) as c:
        c.sock.shutdown(1)
        result = c.finish()
    assert result.returncode == 111
    assert result.stderr == ""
    assert not marker.exists()


def test_header_then_bulk(pki) -> None:
    """After the header the connection is an ordinary one: 1 MiB each way through cat."""
    argv = [our_command(), "-p", "1", "-f", pki.ecdsa_p256.path, "/bin/cat"]
    payload = bytes(range(256)) * 4096
    with OneConnection(argv) as c:
        tls = BioTLS(c.sock)
        tls.handshake(b"PROXY TCP4 192.0.2.7 198.51.100.9 40001 443\r\n", piece=5)
        got = b""
        for i in range(0, len(payload), 1 << 16):
            tls.send(payload[i:i + (1 << 16)])
            got += tls.recv_exactly(min(len(payload), i + (1 << 16)) - len(got))
        c.sock.shutdown(1)
        rest, _ = tls.recv_all()
        result = c.finish()
    assert got == payload and rest == b""
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------- version 2 (ours)
# Headers written by hand from HAProxy's specification (section 2.2); the haproxy test bed
# (tests/test_e2e_haproxy.py) checks the same against the real sender.

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v2(command: int, family: int, body: bytes) -> bytes:
    return V2_SIG + bytes([0x20 | command, family]) + len(body).to_bytes(2, "big") + body


V2_TCP4 = v2(1, 0x11, socket.inet_aton("192.0.2.7") + socket.inet_aton("198.51.100.9")
             + (40001).to_bytes(2, "big") + (443).to_bytes(2, "big")
             + b"\x01\x00\x02h2" + b"\xea\x00\x05vpce1")     # ALPN and an AWS VPC endpoint TLV
V2_TCP6 = v2(1, 0x21, socket.inet_pton(socket.AF_INET6, "2001:db8::7")
             + socket.inet_pton(socket.AF_INET6, "2001:db8::9")
             + (40001).to_bytes(2, "big") + (443).to_bytes(2, "big"))
TCP4_ENV = {"TCPREMOTEIP": "192.0.2.7", "TCPREMOTEPORT": "40001", "TCPLOCALIP": "198.51.100.9",
            "TCPLOCALPORT": "443"}


@pytest.mark.parametrize("version", ["2", "0"])
@pytest.mark.parametrize("how", ["glued", "pieces"])
def test_v2_tcp4_with_tlvs(version: str, how: str, pki, env_prog: Path) -> None:
    tls, data, result, _ = run_with_header("ours", pki, env_prog, V2_TCP4, version=version,
                                           piece=1 if how == "pieces" else 0)
    assert tls.version is not None
    assert prog_env(data) == TCP4_ENV
    assert result.returncode == 0, result.stderr
    assert "192.0.2.7:40001: handshake:" in result.stderr, result.stderr


def test_v2_tcp6(pki, env_prog: Path) -> None:
    _, data, result, _ = run_with_header("ours", pki, env_prog, V2_TCP6, version="2",
                                         glue=False)
    assert prog_env(data) == {"TCPREMOTEIP": "2001:db8::7", "TCPREMOTEPORT": "40001",
                              "TCPLOCALIP": "2001:db8::9", "TCPLOCALPORT": "443"}
    assert result.returncode == 0, result.stderr


def test_v2_local_keeps_socket_addresses(pki, env_prog: Path) -> None:
    """LOCAL: the proxy's own connection (its health check): prog sees the socket's."""
    _, data, result, client_port = run_with_header(
        "ours", pki, env_prog, v2(0, 0x11, bytes(12)), version="2")
    env = prog_env(data)
    assert env["TCPREMOTEIP"] == env["TCPLOCALIP"] == "127.0.0.1"
    assert env["TCPREMOTEPORT"] == str(client_port)
    assert result.returncode == 0, result.stderr


def test_v2_unspec_as_unknown(pki, env_prog: Path) -> None:
    _, data, result, _ = run_with_header("ours", pki, env_prog, v2(1, 0x00, b""), version="2")
    assert prog_env(data) == UNKNOWN_ENV
    assert result.returncode == 0, result.stderr


def test_either_version_v1_line(pki, env_prog: Path) -> None:
    _, data, result, _ = run_with_header(
        "ours", pki, env_prog, b"PROXY TCP4 192.0.2.7 198.51.100.9 40001 443\r\n", version="0")
    assert prog_env(data) == TCP4_ENV
    assert result.returncode == 0, result.stderr


MALFORMED_V2 = {
    "version 1 nibble": V2_SIG + b"\x11\x11\x00\x0c" + bytes(12),
    "UDP": v2(1, 0x12, bytes(12)),
    "TLV past the end": v2(1, 0x11, bytes(12) + b"\x01\x00\x09h2"),
    "short addresses": v2(1, 0x21, bytes(12)),
    "v1 line under -p 2": b"PROXY TCP4 192.0.2.7 198.51.100.9 40001 443\r\n",
    "TLS without header": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
}


@pytest.mark.parametrize("name", sorted(MALFORMED_V2))
def test_v2_malformed(name: str, pki, marker_prog) -> None:
    stderr = check_refused("ours", pki, marker_prog, MALFORMED_V2[name], version="2")
    assert "proxy-protocol v2" in stderr


def test_v2_malformed_nothing_read_past_the_header(pki, marker_prog) -> None:
    """A v2 header whose TLV runs past its end, then 64 KiB more: the wrapper refuses it
    having read the header's 16 + 15 bytes and nothing after them (the rest is still in its
    socket when it exits, so the kernel answers the client with a reset, not a FIN)."""
    prog, marker = marker_prog
    header = v2(1, 0x11, bytes(12) + b"\x01\x00\x09h2")
    argv = [our_command(), "-p", "2", "-f", pki.ecdsa_p256.path, str(prog)]
    with OneConnection(argv) as c:
        c.sock.sendall(header + b"\x16" * 65536)
        result = c.finish()
        with pytest.raises(ConnectionResetError):
            while c.sock.recv(65536):
                pass
    assert result.returncode == 111
    assert "TLV 0x01 runs past the header" in result.stderr
    assert not marker.exists()
