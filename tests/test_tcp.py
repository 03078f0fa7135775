"""tlswrapper-tcp: options, and the program against small Python TCP servers (no tlswrapper).

The e2e tests (test_e2e_tcp.py) run it behind the real tlswrapper and in front of nginx.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from testenv import needs_root, our_command

from tlswrapper.commands import companion, tcp


def test_parse():
    o = tcp.parse(["127.0.0.1", "80"])
    assert (o.host, o.port, o.timeout, o.connect_timeout, o.proxy_in, o.proxy_out) == \
        ("127.0.0.1", 80, 3600, 10, None, None)
    o = tcp.parse(["-vvq", "-t5", "-T", "2", "-p1", "-P", "1", "-J/j", "--", "h", "1"])
    assert (o.timeout, o.connect_timeout, o.proxy_in, o.proxy_out, o.jail_dir) == \
        (5, 2, 1, 1, "/j")
    o = tcp.parse(["-p2", "-P2", "h", "1"])
    assert (o.proxy_in, o.proxy_out) == (2, 2)
    assert tcp.parse(["-p0", "h", "1"]).proxy_in == 0


@pytest.mark.parametrize("args", [[], ["h"], ["-x", "h", "1"], ["h", "1", "extra"], ["-t"]])
def test_usage_errors(args):
    with pytest.raises(tcp.UsageError):
        tcp.parse(args)


@pytest.mark.parametrize("args", [["h", "65536"], ["h", "x"], ["-t0", "h", "1"],
                                  ["-T", "86401", "h", "1"], ["-P3", "h", "1"], ["-P0", "h", "1"], ["-p3", "h", "1"],
                                  ["-j", "no-such-user-xyz", "h", "1"], ["-j", "root", "h", "1"],
                                  ["-t", "+-5", "h", "1"], ["-T", "\u0665", "h", "1"]])
def test_option_errors(args):
    with pytest.raises(tcp.OptionError):
        tcp.parse(args)


def test_resolver_reply_parsing():
    assert companion.parse_resolver_reply("h", 1, b"A 4 127.0.0.1\nA 6 ::1\nA 4 127.0.0.1\nX\n") == [
        companion.Address(socket.AF_INET, "127.0.0.1", 1), companion.Address(socket.AF_INET6, "::1", 1)]
    with pytest.raises(companion.Failure, match="name does not exist"):
        companion.parse_resolver_reply("h", 1, b"E name does not exist\n")
    with pytest.raises(companion.Failure, match="no address"):
        companion.parse_resolver_reply("h", 1, b"A 4 not-an-ip\n")


def test_resolve_in_a_child():
    addrs = companion.resolve("localhost", 7, 10)
    assert addrs and all(a.port == 7 for a in addrs)
    assert companion.resolve("::1", 7, 10) == [companion.Address(socket.AF_INET6, "::1", 7)]
    with pytest.raises(companion.Failure, match="unable to resolve host 'nonexistent.invalid'"):
        companion.resolve("nonexistent.invalid", 7, 10)


def test_usage_line_exit_100():
    p = subprocess.run([our_command("tlswrapper-tcp")], capture_output=True, timeout=30, check=False)
    assert p.returncode == 100 and p.stdout == b""
    assert p.stderr == (b"tlswrapper-tcp: fatal: no host given; usage: "
                        b"tlswrapper-tcp [options] host port\n")


# ---------------------------------------------------------------- the program, jailed

class Backend:
    """A one-connection TCP server: records what it receives (until EOF), sends `reply`,
    then half-closes (or not)."""

    def __init__(self, reply: bytes = b"", family=socket.AF_INET, host="127.0.0.1",
                 shut_after_eof=True):
        self.sock = socket.socket(family)
        self.sock.bind((host, 0))
        self.sock.listen(5)
        self.sock.settimeout(20)
        self.port = self.sock.getsockname()[1]
        self.received = b""
        self.reply = reply
        self.shut_after_eof = shut_after_eof
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(20)
            # reply first, half close, and keep reading: both half-closes are exercised
            conn.sendall(self.reply)
            conn.shutdown(socket.SHUT_WR)
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                self.received += data

    def close(self):
        # shutdown wakes a thread blocked in accept() (close alone does not, on Linux): a test
        # whose client never connects does not wait out the accept timeout.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(20)


def run_tcp(args, input_bytes=b"", timeout=30, env=None):
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([our_command("tlswrapper-tcp"), *args], input=input_bytes,
                          capture_output=True, timeout=timeout, env=full_env,
                          check=False)


@needs_root
def test_relay_both_half_closes():
    b = Backend(reply=b"from server " * 10000)
    try:
        p = run_tcp(["127.0.0.1", str(b.port)], b"from client " * 20000)
        b.thread.join(20)
        assert p.returncode == 0, p.stderr
        assert p.stdout == b"from server " * 10000
        assert b.received == b"from client " * 20000
    finally:
        b.close()


@needs_root
def test_refused_111():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    p = run_tcp(["127.0.0.1", str(port)])
    assert p.returncode == 111 and p.stdout == b""
    assert p.stderr == (f"tlswrapper-tcp: fatal: unable to connect to 127.0.0.1:{port} "
                        f"(connection refused)\n").encode()


@needs_root
def test_unresolvable_111():
    p = run_tcp(["nonexistent.invalid", "80"])
    assert p.returncode == 111
    assert p.stderr.startswith(b"tlswrapper-tcp: fatal: unable to resolve host "
                               b"'nonexistent.invalid'")


@needs_root
def test_connect_timeout_111():
    # A listener whose backlog is full drops further SYNs: the connect hangs.
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    port = lsock.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port), timeout=2)
    try:
        t = time.monotonic()
        p = run_tcp(["-T", "1", "127.0.0.1", str(port)])
        took = time.monotonic() - t
        assert p.returncode == 111, p.stderr
        assert b"connection timed out" in p.stderr or b"timed out" in p.stderr
        assert took < 10
    finally:
        filler.close()
        lsock.close()


@needs_root
def test_network_timeout_111():
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    port = lsock.getsockname()[1]
    try:
        proc = subprocess.Popen([our_command("tlswrapper-tcp"), "-t", "1", "127.0.0.1",
                                 str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            proc.wait(timeout=15)          # stdin stays open, nobody talks
            err = proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            proc.stdin.close()
            proc.stdout.close()
            proc.stderr.close()
        assert proc.returncode == 111 and b"network timeout" in err
    finally:
        lsock.close()


@needs_root
def test_proxy_out_from_env_and_proxy_in():
    b = Backend()
    try:
        env = {"TCPREMOTEIP": "192.0.2.1", "TCPREMOTEPORT": "5555", "TCPLOCALIP": "192.0.2.2",
               "TCPLOCALPORT": "443"}
        p = run_tcp(["-P", "1", "127.0.0.1", str(b.port)], b"payload", env=env)
        b.thread.join(20)
        assert p.returncode == 0, p.stderr
        assert b.received == b"PROXY TCP4 192.0.2.1 192.0.2.2 5555 443\r\npayload"
    finally:
        b.close()
    b = Backend()
    try:
        p = run_tcp(["-p", "1", "-P", "1", "127.0.0.1", str(b.port)],
                    b"PROXY TCP6 2001:db8::1 2001:db8::2 1000 2000\r\nrest")
        b.thread.join(20)
        assert p.returncode == 0, p.stderr
        assert b.received == b"PROXY TCP6 2001:db8::1 2001:db8::2 1000 2000\r\nrest"
    finally:
        b.close()
    # no addresses at all: UNKNOWN
    b = Backend()
    try:
        env = {k: "" for k in ("TCPREMOTEIP", "TCPREMOTEPORT", "TCPLOCALIP", "TCPLOCALPORT")}
        p = run_tcp(["-P1", "127.0.0.1", str(b.port)], b"x", env=env)
        b.thread.join(20)
        assert b.received == b"PROXY UNKNOWN\r\nx"
    finally:
        b.close()


@needs_root
def test_proxy_in_malformed_111():
    b = Backend()
    try:
        p = run_tcp(["-p", "1", "127.0.0.1", str(b.port)], b"GET / HTTP/1.0\r\n\r\n")
        assert p.returncode == 111
        assert b"PROXY protocol header" in p.stderr and b"Traceback" not in p.stderr
        assert b.received == b""
    finally:
        b.close()


@needs_root
def test_jailed_live_process():
    """uid, chroot and limits of the relay process while it relays."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    port = lsock.getsockname()[1]
    proc = subprocess.Popen([our_command("tlswrapper-tcp"), "127.0.0.1", str(port)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        conn, _ = lsock.accept()
        lsock.settimeout(10)
        status = Path(f"/proc/{proc.pid}/status").read_text()
        uids = [int(x) for x in status.split("Uid:")[1].split("\n")[0].split()]
        assert len(set(uids)) == 1 and uids[0] >= 0x70000000
        assert os.readlink(f"/proc/{proc.pid}/root") == "/var/lib/tlswrapper/empty"
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        for name in ("Max open files", "Max processes", "Max core file size"):
            line = next(ln for ln in limits.splitlines() if ln.startswith(name))
            assert line.split()[-3:-1] == ["0", "0"] or line.split()[-2:] == ["0", "0"] \
                or " 0 " in line, line
        assert len(os.listdir(f"/proc/{proc.pid}/fd")) <= 4    # 0, 1, 2 and the connection
        conn.close()
        proc.stdin.close()
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        lsock.close()


V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


@needs_root
@pytest.mark.parametrize("incoming", ["v1", "v2"])
def test_proxy_v2_out_passes_the_incoming_client_on(incoming):
    """-p 0 (either version in) -P 2: the backend gets the client's addresses in the binary
    header (as written by hand from the specification), then the bytes after the header."""
    v2_in = (V2_SIGNATURE + b"\x21\x21\x00\x24" + socket.inet_pton(socket.AF_INET6, "2001:db8::1")
             + socket.inet_pton(socket.AF_INET6, "2001:db8::2") + b"\x03\xe8\x07\xd0")
    header = v2_in if incoming == "v2" else b"PROXY TCP6 2001:db8::1 2001:db8::2 1000 2000\r\n"
    b = Backend()
    try:
        p = run_tcp(["-p", "0", "-P", "2", "127.0.0.1", str(b.port)], header + b"rest")
        b.thread.join(20)
        assert p.returncode == 0, p.stderr
        assert b.received == v2_in + b"rest"
    finally:
        b.close()


@needs_root
def test_proxy_v2_out_ipv4_and_unknown():
    b = Backend()
    try:
        env = {"TCPREMOTEIP": "192.0.2.1", "TCPREMOTEPORT": "5555", "TCPLOCALIP": "192.0.2.2",
               "TCPLOCALPORT": "443"}
        p = run_tcp(["-P", "2", "127.0.0.1", str(b.port)], b"payload", env=env)
        b.thread.join(20)
        assert p.returncode == 0, p.stderr
        assert b.received == (V2_SIGNATURE + b"\x21\x11\x00\x0c" + bytes([192, 0, 2, 1, 192, 0, 2, 2])
                              + (5555).to_bytes(2, "big") + (443).to_bytes(2, "big") + b"payload")
    finally:
        b.close()
    # An incoming UNKNOWN goes on as unknown (v2: PROXY over UNSPEC, no addresses), not as
    # the `::` and `0` tlswrapper gives prog for it.
    for args, expected in ((["-p1", "-P2"], V2_SIGNATURE + b"\x21\x00\x00\x00"),
                           (["-p1", "-P1"], b"PROXY UNKNOWN\r\n")):
        b = Backend()
        try:
            p = run_tcp([*args, "127.0.0.1", str(b.port)], b"PROXY UNKNOWN\r\nx")
            b.thread.join(20)
            assert p.returncode == 0, p.stderr
            assert b.received == expected + b"x"
        finally:
            b.close()


@needs_root
def test_proxy_v2_in_malformed_111():
    b = Backend()
    try:
        # version 1 in the version nibble
        p = run_tcp(["-p", "2", "127.0.0.1", str(b.port)], V2_SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12))
        assert p.returncode == 111
        assert b"PROXY protocol header (version 1 in a v2 header)" in p.stderr
        assert b"Traceback" not in p.stderr and b.received == b""
    finally:
        b.close()
