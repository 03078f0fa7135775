"""tlswrapper-listen, the built-in listener, and systemd socket activation (LISTEN_FDS).

Each test starts the listener as a subprocess on a free port and drives it with Python's ssl
client; the connection's processes are found through /proc (children of the listener: one
network process per connection, whose children are its key process and prog; and the spares,
the same three processes started ahead of a connection: jailed, but no client socket).
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from testenv import free_port, needs_root, our_command, wait_for_port

pytestmark = [needs_root, pytest.mark.timeout(120)]

JAIL_DIR = "/var/lib/tlswrapper/empty"


# --------------------------------------------------------------------------- helpers

def _stat_fields(pid: int) -> list[bytes] | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return data[data.rindex(b")") + 2:].split()


def children(pid: int) -> list[int]:
    """Live (not zombie) children of pid."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = _stat_fields(int(entry))
            if f is not None and int(f[1]) == pid and f[0] != b"Z":
                out.append(int(entry))
    return sorted(out)


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


def root_of(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/root")


def client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def tls_connect(port: int, timeout: float = 10.0) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return client_context().wrap_socket(sock)


def read_line(conn: ssl.SSLSocket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def echo(conn: ssl.SSLSocket, line: bytes = b"hello\n") -> bytes:
    conn.sendall(line)
    return read_line(conn)


def wait_until(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Listener:
    """tlswrapper-listen [listener args] host port [tlswrapper args] as a subprocess."""

    def __init__(self, args: list[str], port: int | None = None, *, env: dict | None = None,
                 argv: list[str] | None = None, pass_fds: tuple[int, ...] = ()) -> None:
        self.port = port or free_port()
        cmd = argv or [our_command("tlswrapper-listen"), *args]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     env=env, pass_fds=pass_fds)

    def __enter__(self) -> Listener:
        wait_for_port(self.port, proc=self.proc)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stderr.close()

    def network_processes(self) -> list[int]:
        """The network processes serving a connection: the listener's children whose fd 0 is
        the client socket (its spares, waiting for a connection, have the listener's stdin)."""
        return [pid for pid in children(self.proc.pid) if _serving(pid)]

    def spares(self) -> list[int]:
        return [pid for pid in children(self.proc.pid) if not _serving(pid)]


def _serving(pid: int) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/fd/0").startswith("socket:")
    except OSError:
        return False


def listen_args(pem: Path, port: int, *prog: str, listener: tuple[str, ...] = (),
                tls: tuple[str, ...] = ()) -> list[str]:
    return [*listener, "127.0.0.1", str(port), *tls, "-f", str(pem), "--", *(prog or ("cat",))]


# --------------------------------------------------------------------------- tests

def test_serves_and_sets_tcpserver_environment(pki) -> None:
    port = free_port()
    with Listener(listen_args(pki.ecdsa_p256.path, port, "env"), port):
        with tls_connect(port) as conn:
            out = b""
            while chunk := conn.recv(65536):
                out += chunk
    env = dict(line.split("=", 1) for line in out.decode().splitlines() if "=" in line)
    assert env["PROTO"] == "TCP"
    assert env["TCPLOCALIP"] == "127.0.0.1"
    assert env["TCPLOCALPORT"] == str(port)
    assert env["TCPREMOTEIP"] == "127.0.0.1"
    assert int(env["TCPREMOTEPORT"]) > 0
    assert env["TCPLOCALHOST"] == "0"           # as tcpserver -HRDl0
    assert "TCPREMOTEHOST" not in env and "TCPREMOTEINFO" not in env
    assert env["SSL_PROTOCOL"] in ("TLSv1.2", "TLSv1.3")
    assert not any(k.startswith("LISTEN_") for k in env)


def test_many_concurrent_connections_each_jailed_with_its_own_uids(pki) -> None:
    port = free_port()
    count = 12
    with Listener(listen_args(pki.ecdsa_p256.path, port), port) as srv:
        conns = [tls_connect(port) for _ in range(count)]
        try:
            for i, conn in enumerate(conns):
                assert echo(conn, b"line %d\n" % i) == b"line %d\n" % i
            network = wait_until(lambda: len(srv.network_processes()) == count
                                 and srv.network_processes(), what="network processes")
            uids = []
            for pid in network:
                # the network process and its key process are jailed; prog (cat) is not
                assert uid_of(pid) != 0 and root_of(pid) == JAIL_DIR
                kids = children(pid)
                jailed = [k for k in kids if root_of(k) == JAIL_DIR]
                assert len(jailed) == 1, f"network process {pid}: one key process, got {kids}"
                assert uid_of(jailed[0]) != 0
                uids += [uid_of(pid), uid_of(jailed[0])]
            assert len(set(uids)) == 2 * count, "every jailed process has its own uid"
            assert uid_of(srv.proc.pid) == 0   # the listener itself is not jailed
        finally:
            for conn in conns:
                conn.close()
        wait_until(lambda: not srv.network_processes(), what="connections to end")


def test_concurrency_limit_keeps_extra_connections_in_the_backlog(pki) -> None:
    port = free_port()
    with Listener(listen_args(pki.ecdsa_p256.path, port, listener=("-c", "2")), port) as srv:
        first = [tls_connect(port) for _ in range(2)]
        for conn in first:
            assert echo(conn) == b"hello\n"
        results: dict[int, bytes] = {}

        def late(n: int) -> None:
            with tls_connect(port, timeout=30) as conn:
                results[n] = echo(conn)

        threads = [threading.Thread(target=late, args=(n,)) for n in range(2)]
        for t in threads:
            t.start()
        # The two late clients are connected (the kernel's backlog) but not served.
        time.sleep(1.5)
        assert len(srv.network_processes()) == 2
        assert results == {}
        first[0].close()
        # One slot is free: the late clients are served one after the other (each closes
        # at once, so both may be done by the time we look).
        wait_until(lambda: len(results) >= 1, what="a late client to be served")
        assert len(srv.network_processes()) <= 2
        first[1].close()
        for t in threads:
            t.join(30)
        assert results == {0: b"hello\n", 1: b"hello\n"}


def test_sigterm_stops_accepting_and_lets_open_connections_finish(pki) -> None:
    port = free_port()
    with Listener(listen_args(pki.ecdsa_p256.path, port, tls=("-v",)), port) as srv:
        conn = tls_connect(port)
        assert echo(conn) == b"hello\n"
        srv.proc.send_signal(signal.SIGTERM)

        def refused() -> bool:
            try:
                probe = socket.create_connection(("127.0.0.1", port), timeout=1)
            except ConnectionRefusedError:
                return True
            with probe:
                probe.settimeout(1.0)
                try:
                    probe.sendall(b"\x16\x03\x01\x00\x05hello")
                    # Queued in the backlog while the spares leave: reset, never served.
                    return probe.recv(1) == b""
                except (ConnectionResetError, TimeoutError, BrokenPipeError):
                    return isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError))
        wait_until(refused, what="new connections to be refused")
        assert srv.proc.poll() is None, "the listener waits for the open connection"
        assert echo(conn, b"still here\n") == b"still here\n"
        conn.close()
        assert srv.proc.wait(10) == 0


def test_sigterm_serves_the_connections_already_queued(pki) -> None:
    """Connections the kernel completed but no spare has accepted yet when SIGTERM comes
    (a burst larger than the two spares) are served, not reset when the socket closes: a
    load balancer sent them and cannot retry them elsewhere. Six at once: two spares take
    two, the other four wait in the accept queue for spares made during the drain."""
    port = free_port()
    with Listener(listen_args(pki.ecdsa_p256.path, port), port) as srv:
        wait_until(lambda: len(srv.spares()) >= 2, what="two spares")
        socks = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(6)]
        srv.proc.send_signal(signal.SIGTERM)
        answers = []
        for sock in socks:
            with client_context().wrap_socket(sock) as conn:
                answers.append(echo(conn))
        assert answers == [b"hello\n"] * 6
        assert srv.proc.wait(20) == 0


def _activated(sock: socket.socket, pem: Path, address: list[str], listen_pid: str = "$$",
               prog: str = "cat") -> list[str]:
    """bash moves the socket to fd 3 and sets LISTEN_FDS/LISTEN_PID the way systemd does, then
    execs the listener (so that $$, the shell's pid, is the listener's pid)."""
    fd = sock.fileno()
    script = (f'exec 3<&{fd} {fd}<&-; LISTEN_FDS=1 LISTEN_PID={listen_pid} '
              f'LISTEN_FDNAMES=https exec "$@"')
    return ["bash", "-c", script, "bash", our_command("tlswrapper-listen"), *address,
            "-f", str(pem), "--", prog]


def _socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


def test_listen_fds_socket_is_used(pki) -> None:
    with _socket() as sock:
        port = sock.getsockname()[1]
        other = free_port()
        # The address given is not bound: the socket from "systemd" wins.
        argv = _activated(sock, pki.ecdsa_p256.path, ["127.0.0.1", str(other)], prog="env")
        with Listener([], port, argv=argv, pass_fds=(sock.fileno(),)):
            with tls_connect(port) as conn:
                out = b""
                while chunk := conn.recv(65536):
                    out += chunk
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", other), timeout=2)
    env = dict(line.split("=", 1) for line in out.decode().splitlines() if "=" in line)
    assert env["TCPLOCALPORT"] == str(port)
    assert not any(k.startswith("LISTEN_") for k in env), "prog must not see LISTEN_*"


def test_listen_fds_with_dash_address(pki) -> None:
    with _socket() as sock:
        port = sock.getsockname()[1]
        argv = _activated(sock, pki.ecdsa_p256.path, ["-"])
        with Listener([], port, argv=argv, pass_fds=(sock.fileno(),)):
            with tls_connect(port) as conn:
                assert echo(conn) == b"hello\n"


def test_listen_fds_for_another_pid_is_ignored(pki) -> None:
    with _socket() as sock:
        inherited_port = sock.getsockname()[1]
        port = free_port()
        argv = _activated(sock, pki.ecdsa_p256.path, ["127.0.0.1", str(port)], listen_pid="1")
        with Listener([], port, argv=argv, pass_fds=(sock.fileno(),)):
            with tls_connect(port) as conn:          # bound its own address
                assert echo(conn) == b"hello\n"
            # The inherited socket is left alone: nobody accepts on it.
            probe = socket.create_connection(("127.0.0.1", inherited_port), timeout=2)
            probe.settimeout(1.0)
            probe.sendall(b"\x16\x03\x01\x00\x05hello")
            with pytest.raises(TimeoutError):
                probe.recv(1)
            probe.close()


def test_dash_without_systemd_socket_is_a_usage_error(pki) -> None:
    with _socket() as sock:
        argv = _activated(sock, pki.ecdsa_p256.path, ["-"], listen_pid="1")
        proc = subprocess.run(argv, pass_fds=(sock.fileno(),), capture_output=True, timeout=30)
    assert proc.returncode == 100
    assert b"tlswrapper-listen: fatal: " in proc.stderr and b"LISTEN_FDS" in proc.stderr
    assert b"Traceback" not in proc.stderr


@pytest.mark.parametrize("args, message", [
    ([], b"no host and port"),
    (["-c", "0", "127.0.0.1", "1"], b"limit must be"),
    (["-w", "0", "127.0.0.1", "1"], b"wait must be"),
    (["-C", "x", "127.0.0.1", "1"], b"per-address limit must be"),
    (["-x", "127.0.0.1", "1"], b"unknown option -x"),
    (["127.0.0.1", "99999", "-f", "/nonexistent", "cat"], b"port must be"),
    (["127.0.0.1", "4433", "-f", "/nonexistent", "cat"], b"certfile"),
    (["127.0.0.1", "4433", "-f", "/etc/hostname"], b"no prog"),
])
def test_usage_errors(args: list[str], message: bytes) -> None:
    proc = subprocess.run([our_command("tlswrapper-listen"), *args], capture_output=True,
                          timeout=30)
    assert proc.returncode == 100
    assert message in proc.stderr
    assert b"Traceback" not in proc.stderr


def test_bind_failure_is_fatal(pki) -> None:
    with _socket() as sock:
        port = sock.getsockname()[1]
        proc = subprocess.run([our_command("tlswrapper-listen"), "127.0.0.1", str(port),
                               "-f", str(pki.ecdsa_p256.path), "cat"],
                              capture_output=True, timeout=30)
    assert proc.returncode == 111
    assert b"tlswrapper-listen: fatal: unable to bind" in proc.stderr


# --------------------------------------------------------------------------- spares

def _socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out


TCP_LISTEN = "0A"


def _tcp_inodes(listening: bool = False) -> set[str]:
    """Inodes of TCP sockets: connections, or (`listening`) listening sockets."""
    out = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 9 and (f[3] == TCP_LISTEN) == listening:
                out.add(f[9])
    return out


def _ready_spares(srv: Listener, count: int) -> list[int] | None:
    """The spares once there are `count` of them, all jailed (at start the listener's
    short-lived warm-up helper is a child too)."""
    spares = srv.spares()
    if len(spares) != count:
        return None
    for pid in spares:
        try:
            if root_of(pid) != JAIL_DIR:
                return None
        except OSError:
            return None
    return spares


def _limits(pid: int) -> dict[str, tuple[str, str]]:
    out = {}
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]:
        parts = line[26:].split()
        out[line[:26].strip()] = (parts[0], parts[1])
    return out


def test_spares_wait_jailed_without_any_client_socket(pki) -> None:
    """The spares hold a key process and prog's waiting child each, and nothing of a client
    (no TCP connection, not even the listening socket: connections are handed to them) until
    the listener hands one its connection. They wait jailed, but for RLIMIT_NOFILE (receiving
    the connection needs a descriptor), which drops to 0 once it has."""
    port = free_port()
    with Listener(listen_args(pki.ecdsa_p256.path, port), port) as srv:
        spares = wait_until(lambda: _ready_spares(srv, 2), what="2 jailed spares")
        tcp = _tcp_inodes()
        for pid in spares:
            assert uid_of(pid) != 0 and root_of(pid) == JAIL_DIR
            limits = _limits(pid)
            assert limits["Max processes"] == ("0", "0") and limits["Max core file size"] == (
                "0", "0")
            assert int(limits["Max open files"][0]) > 0
            assert not _socket_inodes(pid) & tcp, "a spare holds no TCP connection"
            assert not _socket_inodes(pid) & _tcp_inodes(listening=True), \
                "a spare does not hold the listening socket"
            assert len(children(pid)) == 2       # its key process and prog's child
        with tls_connect(port) as conn:
            assert echo(conn) == b"hello\n"
            (serving,) = srv.network_processes()
            assert serving in spares, "a spare started before it took the connection"
            assert uid_of(serving) != 0
            assert _limits(serving)["Max open files"] == ("0", "0")
            assert not _socket_inodes(serving) & _tcp_inodes(listening=True), \
                "the listening socket is closed before the first client byte"
            # The spare used is replaced.
            wait_until(lambda: len(srv.spares()) == 2, what="the spare to be replaced")
        wait_until(lambda: not srv.network_processes(), what="the connection to end")


def test_spares_end_without_running_prog_on_sigterm(pki, tmp_path) -> None:
    marker = tmp_path / "ran"
    port = free_port()
    prog = ("sh", "-c", f"echo ran >> {marker}; exec cat")
    with Listener(listen_args(pki.ecdsa_p256.path, port, *prog), port) as srv:
        spares = wait_until(lambda: _ready_spares(srv, 2), what="2 jailed spares")
        family = spares + [k for pid in spares for k in children(pid)]
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(10) == 0
        wait_until(lambda: not any(Path(f"/proc/{pid}").exists() and _stat_fields(pid)
                                   and _stat_fields(pid)[0] != b"Z" for pid in family),
                   what="the spares and their processes to exit")
        err = srv.proc.stderr.read()
    assert not marker.exists(), "prog never ran for a spare"
    assert b"Traceback" not in err and b"fatal" not in err


def test_a_spare_that_dies_is_replaced(pki) -> None:
    port = free_port()
    with Listener(listen_args(pki.ecdsa_p256.path, port, tls=("-v",)), port) as srv:
        spares = wait_until(lambda: _ready_spares(srv, 2), what="2 jailed spares")
        os.kill(spares[0], signal.SIGKILL)
        wait_until(lambda: len(srv.spares()) == 2 and spares[0] not in srv.spares(),
                   what="a new spare")
        with tls_connect(port) as conn:
            assert echo(conn) == b"hello\n"
        srv.proc.send_signal(signal.SIGTERM)
        srv.proc.wait(10)
        assert b"spare connection process exited" in srv.proc.stderr.read()


def test_limit_one_keeps_at_most_one_spare(pki) -> None:
    port = free_port()
    with Listener(listen_args(pki.ecdsa_p256.path, port, listener=("-c", "1")), port) as srv:
        wait_until(lambda: len(srv.spares()) == 1, what="1 spare")
        time.sleep(0.5)
        assert len(srv.spares()) == 1
        with tls_connect(port) as conn:
            assert echo(conn) == b"hello\n"
            time.sleep(0.5)
            assert srv.spares() == [], "no spare while the limit is reached"
        wait_until(lambda: len(srv.spares()) == 1, what="the spare after the connection")


def _memfds(pid: int) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/memfd:tlswrapper-warm-up"):
                out.append(f"/proc/{pid}/fd/{fd}")
        except OSError:
            pass
    return out


def test_warm_up_key_is_in_no_listener_or_network_process_memory(pki) -> None:
    """MUST 1 for the warm-up's throw-away key too: the helper made it and ran the recorded
    handshakes; the listener holds only the memfd (never its content), a spare (a network
    process) closes it once its key process is forked; the key process replays the calls."""
    from e2e import read_memory

    port = free_port()
    with Listener(listen_args(pki.ecdsa_p256.path, port), port) as srv:
        spares = wait_until(lambda: _ready_spares(srv, 2), what="2 jailed spares")
        (path,) = _memfds(srv.proc.pid)
        pem = Path(path).read_bytes()
        body = pem.split(b"-----BEGIN PRIVATE KEY-----")[1].split(b"-----END")[0]
        lines = [line for line in body.split() if len(line) >= 32]
        der = base64.b64decode(b"".join(body.split()))
        assert lines and len(der) > 100
        wait_until(lambda: all(not _memfds(pid) for pid in spares), what="spares to drop it")
        for pid in [srv.proc.pid, *spares]:
            memory = read_memory(pid)
            assert der not in memory and not any(line in memory for line in lines), pid
        with tls_connect(port) as conn:        # and the spares still serve
            assert echo(conn) == b"hello\n"


def _zombies(pid: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = _stat_fields(int(entry))
            if f is not None and int(f[1]) == pid and f[0] == b"Z":
                count += 1
    return count


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        out += kids
        todo += kids
    return out


def test_many_good_and_bad_connections_leave_the_listener_as_it_was(pki) -> None:
    """A long-running listener must not leak: after full handshakes, clients that hang up at
    once, clients that send garbage and clients that stop halfway through the handshake, the
    listener holds as many descriptors as before, has only its spares as children (no zombie),
    and every connection's processes are gone. The garbage is answered with an alert and a
    log line (-vv), as under tcpserver."""
    port = free_port()
    with Listener(listen_args(pki.ecdsa_p256.path, port, tls=("-vv",)), port) as srv:
        # -vv logs several lines per connection: read them as they come, or the pipe fills.
        chunks: list[bytes] = []
        reader = threading.Thread(target=lambda: chunks.extend(iter(
            lambda: srv.proc.stderr.read1(65536), b"")))
        reader.start()
        pid = srv.proc.pid
        wait_until(lambda: _ready_spares(srv, 2), what="2 jailed spares")
        fds_before = len(os.listdir(f"/proc/{pid}/fd"))
        hello = _client_hello()
        alerts = 0
        for i in range(40):
            with tls_connect(port) as conn:                     # a full connection
                assert echo(conn, b"%d\n" % i) == b"%d\n" % i
            socket.create_connection(("127.0.0.1", port)).close()   # hangs up at once
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                raw.sendall(b"GET / HTTP/1.0\r\n\r\n")         # not TLS
                answer = raw.recv(64)
                alerts += answer[:1] == b"\x15"
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                raw.sendall(hello)                              # ClientHello, then gone
                raw.recv(1)
        assert alerts == 40, "every non-TLS client is answered with an alert record"
        wait_until(lambda: not srv.network_processes(), what="every connection to end")
        wait_until(lambda: len(children(pid)) == 2 and _zombies(pid) == 0,
                   what="only the 2 spares left, no zombie")
        wait_until(lambda: len(_descendants(pid)) == 6,
                   what="2 spares with a key process and prog's child each, nothing else")
        assert len(os.listdir(f"/proc/{pid}/fd")) == fds_before
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(10) == 0
        reader.join(10)
        log = b"".join(chunks)
    assert log.count(b"TLS alert unexpected_message sent: record of unknown content type") \
        == 40, log.decode(errors="replace")
    assert b"Traceback" not in log and b"internal error" not in log


def _client_hello() -> bytes:
    """The first flight of Python's ssl client (a ClientHello record), made in memory."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def _socket_of(pid: int, fd: int) -> socket.socket:
    """A duplicate of another process's descriptor (pidfd_getfd(2), Linux 5.6; root)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        got = libc.syscall(438, pidfd, fd, 0)      # SYS_pidfd_getfd on x86-64
        if got < 0:
            err = ctypes.get_errno()
            pytest.skip(f"pidfd_getfd: {os.strerror(err)}")
    finally:
        os.close(pidfd)
    return socket.socket(fileno=got)


def test_connections_are_served_with_tcp_nodelay(pki) -> None:
    """As under tcpserver -D: the relay writes whole batches of records, which must not wait
    for the client's ACK of the previous one (Nagle's algorithm)."""
    if os.uname().machine != "x86_64":
        pytest.skip("the syscall number used is x86-64's")
    port = free_port()
    with Listener(listen_args(pki.ecdsa_p256.path, port), port) as srv:
        with tls_connect(port) as conn:
            assert echo(conn) == b"hello\n"
            (serving,) = srv.network_processes()
            with _socket_of(serving, 1) as sock:
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


# --------------------------------------------------------------------------- the pool

def test_silent_connections_cost_no_process_and_do_not_hold_the_door(pki) -> None:
    """Slot exhaustion: 20 clients connect and send nothing, against a limit of 4. They wait in
    the listener's pool (no network process, no key process for any of them) and a real
    client is served at once. Before, the first four held every slot and the real client
    waited for their handshake timeout (30 s)."""
    port = free_port()
    with Listener(listen_args(pki.ecdsa_p256.path, port, listener=("-c", "4")), port) as srv:
        wait_until(lambda: _ready_spares(srv, 2), what="2 jailed spares")
        silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
        try:
            with tls_connect(port, timeout=10) as conn:
                assert echo(conn) == b"hello\n"
                assert len(srv.network_processes()) == 1
            assert srv.network_processes() == [] or wait_until(
                lambda: not srv.network_processes(), what="the real client's end")
            # The spare that served the real client is being replaced: for a moment the
            # listener has it (exiting, not yet reaped) and its successor as well.
            wait_until(lambda: len(children(srv.proc.pid)) == 2,
                       what="only the spares: no silent one forked")
        finally:
            for sock in silent:
                sock.close()


def test_connection_without_a_record_header_is_closed_after_the_wait_unread(pki) -> None:
    """-w 1: a client that sends 3 bytes (less than a record header) and stops is closed after
    the wait, without a process, and its bytes were never read: the kernel resets the
    connection because they are still queued."""
    port = free_port()
    with Listener(listen_args(pki.ecdsa_p256.path, port, listener=("-w", "1")), port) as srv:
        wait_until(lambda: _ready_spares(srv, 2), what="2 jailed spares")
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(b"\x16\x03\x01")
            with pytest.raises(ConnectionResetError):
                sock.recv(1)
        assert srv.network_processes() == []
        with tls_connect(port) as conn:     # the two bytes more make it a record header
            assert echo(conn) == b"hello\n"


def test_per_address_limit_closes_connections_over_it(pki) -> None:
    """-C 1: a second connection from the same address while one is served is closed (no
    process for it); once the first has ended, the address is served again."""
    port = free_port()
    with Listener(listen_args(pki.ecdsa_p256.path, port, listener=("-C", "1")), port) as srv:
        with tls_connect(port) as first:
            assert echo(first) == b"hello\n"
            with pytest.raises((ConnectionResetError, ssl.SSLError, OSError)):
                with tls_connect(port, timeout=10) as second:
                    echo(second)
            assert len(srv.network_processes()) == 1

        def served() -> bool:
            # The first connection's process may still be exiting (and not yet reaped by the
            # listener, which counts it until then): the address is at its limit till then.
            try:
                with tls_connect(port) as third:
                    return echo(third) == b"hello\n"
            except (ConnectionResetError, ssl.SSLError):
                return False
        wait_until(served, what="the address to be served again")


def test_delayed_encryption_is_handed_over_before_the_client_speaks(pki) -> None:
    """-n: prog speaks first (a STARTTLS banner) and the client waits for it: no record header
    is awaited, the connection goes to a spare at once."""
    port = free_port()
    args = listen_args(pki.ecdsa_p256.path, port, "sh", "-c", "echo banner", tls=("-n",))
    with Listener(args, port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            assert sock.recv(64) == b"banner\n"
