"""Helpers for the end-to-end tests: `tcpserver ... tlswrapper ...` on a free port, the live
processes of one connection found through /proc, memory scans, and small TLS clients.

Rule: nothing here imports tlswrapper's code; the product is a black box behind a port (or
behind a socketpair, for the tests that need its exit status).

    with TcpServer([our_command(), "-f", pem, "--", "/bin/cat"]) as srv:
        ... connect to srv.port ...
        procs = srv.connection()        # ConnectionProcs(network, key, prog) of the one live conn
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from testenv import free_port, which

TCPSERVER_FLAGS = ("-HRDl0",)


# --------------------------------------------------------------------------- /proc


def ppid_of(pid: int) -> int | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # comm may hold spaces and parentheses: the fields start after the last ')'.
    rest = data[data.rindex(b")") + 2:].split()
    return int(rest[1])


def state_of(pid: int) -> str | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return data[data.rindex(b")") + 2:].split()[0].decode()


def alive(pid: int) -> bool:
    """True while pid exists and is not a zombie."""
    st = state_of(pid)
    return st is not None and st != "Z"


def children_of(pid: int) -> list[int]:
    """Live (non-zombie) children of pid, in pid order."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            child = int(entry)
            if ppid_of(child) == pid and alive(child):
                found.append(child)
    return sorted(found)


def status_fields(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def uids(pid: int) -> tuple[int, ...]:
    return tuple(int(x) for x in status_fields(pid)["Uid"].split())


def gids(pid: int) -> tuple[int, ...]:
    return tuple(int(x) for x in status_fields(pid)["Gid"].split())


def rss_kib(pid: int) -> int:
    return int(status_fields(pid)["VmRSS"].split()[0])


def limits(pid: int) -> dict[str, tuple[str, str]]:
    """/proc/PID/limits as {name: (soft, hard)}."""
    out = {}
    lines = Path(f"/proc/{pid}/limits").read_text().splitlines()
    for line in lines[1:]:
        name = line[:26].strip()
        fields = line[26:].split()
        out[name] = (fields[0], fields[1])
    return out


def proc_root(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/root")


def exe_name(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def wait_gone(pids: Iterable[int], timeout: float = 5.0) -> list[int]:
    """Wait until none of pids is alive (zombies count as gone); returns those still alive."""
    pids = list(pids)
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in pids if alive(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.02)


def read_memory(pid: int) -> bytes:
    """Every readable mapping of pid (via /proc/PID/maps and /proc/PID/mem), concatenated
    with a separator. Needs root (or ptrace rights) for a non-dumpable process."""
    chunks = []
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            perms = fields[1]
            name = fields[5] if len(fields) > 5 else ""
            if not perms.startswith("r") or name == "[vvar]" or name == "[vsyscall]":
                continue
            try:
                mem.seek(start)
                chunks.append(mem.read(end - start))
            except (OSError, ValueError, OverflowError):
                continue
    return b"\0<region>\0".join(chunks)


def find_secrets(memory: bytes, secrets: dict[str, bytes]) -> list[str]:
    """Names of the secrets found in memory."""
    return [name for name, value in secrets.items() if value and value in memory]


# --------------------------------------------------------------------------- processes


@dataclass
class ConnectionProcs:
    network: int      # tlswrapper, the child of tcpserver
    key: int          # the key process (child of the network process, jailed)
    prog: int         # prog's child (before exec: a fork of tlswrapper; after: prog)


def split_children(network: int, jail_dir: str) -> ConnectionProcs | None:
    """The key process and prog among network's children: the key process is the one forked
    first (start_key_process runs before start_prog); once jailed its root is jail_dir."""
    kids = children_of(network)
    if len(kids) < 2:
        return None
    jailed = [k for k in kids if _root_or_none(k) == jail_dir]
    others = [k for k in kids if k not in jailed]
    if len(jailed) == 1 and len(others) == 1:
        return ConnectionProcs(network, jailed[0], others[0])
    return ConnectionProcs(network, kids[0], kids[1])


def _root_or_none(pid: int) -> str | None:
    try:
        return proc_root(pid)
    except OSError:
        return None


class TcpServer:
    """`tcpserver -HRDl0 127.0.0.1 PORT argv...` in its own process group, stderr (the log of
    every connection) collected in a file. Use as a context manager or call stop()."""

    def __init__(self, argv: Sequence[str], *, env: dict[str, str] | None = None,
                 jail_dir: str = "/var/lib/tlswrapper/empty", tcpserver_flags=TCPSERVER_FLAGS):
        self.argv = [os.fspath(a) for a in argv]
        self.jail_dir = jail_dir
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="e2e-tcpserver-", suffix=".log")
        self._flags = list(tcpserver_flags)
        self._env = env

    def start(self) -> TcpServer:
        tcpserver = which("tcpserver")
        for _attempt in range(5):
            self.port = free_port()
            self.proc = subprocess.Popen(
                [tcpserver, *self._flags, "127.0.0.1", str(self.port), *self.argv],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log,
                start_new_session=True, env=self._env)
            if self._wait_listening():
                return self
            self._kill()
        raise RuntimeError(f"tcpserver did not start: {self.log()}")

    def _wait_listening(self, timeout: float = 10.0) -> bool:
        # Look at the listening sockets instead of connecting: a probe connection would run
        # tlswrapper once and leave a line in the log.
        deadline = time.monotonic() + timeout
        hexport = f":{self.port:04X} "
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[1].endswith(hexport.strip()) and fields[1].startswith("0100007F") \
                        and fields[3] == "0A":
                    return True
            time.sleep(0.02)
        return False

    def log(self) -> str:
        self._log.flush()
        return Path(self._log.name).read_text(errors="replace")

    def wait_log(self, needle: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.log()
            if needle in text or time.monotonic() > deadline:
                return text
            time.sleep(0.05)

    def connections(self) -> list[int]:
        """pids of the network processes (tcpserver's live children)."""
        return children_of(self.proc.pid) if self.proc else []

    def connection(self, timeout: float = 10.0, count: int = 1,
                   need_jail: bool = True) -> ConnectionProcs:
        """The processes of the one live connection, once the network process exists, has its
        two children, and (need_jail) both jailed processes are in the jail."""
        found = self.all_connections(count, timeout, need_jail)
        return found[0]

    def all_connections(self, count: int, timeout: float = 10.0,
                        need_jail: bool = True) -> list[ConnectionProcs]:
        deadline = time.monotonic() + timeout
        while True:
            result = []
            for net in self.connections():
                procs = split_children(net, self.jail_dir)
                if procs is None:
                    break
                if need_jail and not (_root_or_none(net) == self.jail_dir and
                                      _root_or_none(procs.key) == self.jail_dir):
                    break
                result.append(procs)
            if len(result) == count and len(self.connections()) == count:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"wanted {count} connection(s), found {result}: {self.log()}")
            time.sleep(0.02)

    def wait_idle(self, timeout: float = 10.0) -> list[int]:
        """Wait until no connection process is left; returns the pids still alive."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.connections():
                return []
            time.sleep(0.02)
        return self.connections()

    def _kill(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def stop(self) -> None:
        """Kill tcpserver and every process of its group (the connections' processes, which
        may run under other uids but stay in the group)."""
        pids = []
        if self.proc is not None and self.proc.poll() is None:
            pids = [self.proc.pid]
            for net in children_of(self.proc.pid):
                pids.append(net)
                pids.extend(children_of(net))
        self._kill()
        for pid in pids:          # anything that left the group (setsid) is killed by pid
            if alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.proc = None

    def close(self) -> None:
        self.stop()
        self._log.close()

    def __enter__(self) -> TcpServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- clients


def client_context(ca: os.PathLike | str, version: str | None = None,
                   keylog: str | None = None) -> ssl.SSLContext:
    """A verifying Python ssl client context; version "tls12"/"tls13" pins it."""
    ctx = ssl.create_default_context(cafile=os.fspath(ca))
    if version == "tls12":
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    elif version == "tls13":
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    if keylog:
        ctx.keylog_filename = keylog
    return ctx


def tls_connect(port: int, ca, version: str | None = None, sni: str | None = "localhost",
                keylog: str | None = None, timeout: float = 20.0,
                check_hostname: bool = True) -> ssl.SSLSocket:
    ctx = client_context(ca, version, keylog)
    if not check_hostname or sni is None:
        ctx.check_hostname = False
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        return ctx.wrap_socket(sock, server_hostname=sni)
    except BaseException:
        sock.close()
        raise


def served_certificate(port: int, ca, sni: str | None, version: str | None = None) -> bytes:
    """The DER of the leaf certificate the server shows for this SNI (no hostname check)."""
    with tls_connect(port, ca, version, sni=sni, check_hostname=False) as s:
        return s.getpeercert(binary_form=True)


def parse_keylog(path: str) -> dict[str, bytes]:
    """SSLKEYLOGFILE lines -> {"LABEL#n": secret bytes}, and the client randoms under
    "random#n" (they are not secret: a positive control for memory scans)."""
    out: dict[str, bytes] = {}
    for n, line in enumerate(Path(path).read_text().splitlines()):
        parts = line.split()
        if len(parts) != 3 or line.startswith("#"):
            continue
        label, client_random, secret = parts
        out[f"{label}#{n}"] = bytes.fromhex(secret)
        out[f"random#{n}"] = bytes.fromhex(client_random)
    return out


def recv_all(sock: socket.socket, timeout: float = 20.0) -> bytes:
    sock.settimeout(timeout)
    buf = bytearray()
    while True:
        try:
            chunk = sock.recv(1 << 16)
        except ssl.SSLZeroReturnError:
            break
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


# --------------------------------------------------------------------------- transfer prog

# prog for the transfer tests, run as `python3 PROG MODE SIZE SEED [EXPECT]`:
#   stream: writes SIZE bytes of data(SEED) to stdout while reading stdin (until EOF, or until
#           EXPECT bytes when EXPECT >= 0), then writes the sha256 hex of what it read + "\n"
#           and, when it reached EOF, "eof\n" (so the hash line proves that its output after
#           the client's half-close still arrived).
#   http:   an HTTP/1.1 responder: reads the request head, then the Content-Length body while
#           writing "200" with a body of data(SEED) (SIZE bytes) followed by the 64-hex sha256
#           of the request body.
TRANSFER_PROG = r'''
import hashlib, os, random, sys, threading

CHUNK = 1 << 20

def data(size, seed):
    rng = random.Random(seed)
    while size > 0:
        n = min(CHUNK, size)
        yield rng.randbytes(n)
        size -= n

def write_all(fd, buf):
    view = memoryview(buf)
    while view:
        n = os.write(fd, view)
        view = view[n:]

def writer(size, seed):
    for chunk in data(size, seed):
        write_all(1, chunk)

def read_hash(limit, pre=b""):
    h = hashlib.sha256(pre)
    got = len(pre)
    eof = False
    while limit < 0 or got < limit:
        chunk = os.read(0, CHUNK if limit < 0 else min(CHUNK, limit - got))
        if not chunk:
            eof = True
            break
        h.update(chunk)
        got += len(chunk)
    return h.hexdigest(), got, eof

mode, size, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if mode == "stream":
    expect = int(sys.argv[4]) if len(sys.argv) > 4 else -1
    t = threading.Thread(target=writer, args=(size, seed))
    t.start()
    digest, got, eof = read_hash(expect)
    t.join()
    write_all(1, (digest + "\n" + ("eof\n" if eof else "")).encode())
elif mode == "http":
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = os.read(0, 65536)
        if not chunk:
            sys.exit(2)
        head += chunk
    head, _, rest = head.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    write_all(1, b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
              b"Connection: close\r\nContent-Length: %d\r\n\r\n" % (size + 64))
    t = threading.Thread(target=writer, args=(size, seed))
    t.start()
    digest, got, eof = read_hash(length, rest)
    t.join()
    write_all(1, digest.encode())
'''


def data_chunks(size: int, seed: int):
    """The same data as TRANSFER_PROG's data(size, seed)."""
    import random
    rng = random.Random(seed)
    while size > 0:
        n = min(1 << 20, size)
        yield rng.randbytes(n)
        size -= n


def data_sha256(size: int, seed: int) -> str:
    import hashlib
    h = hashlib.sha256()
    for chunk in data_chunks(size, seed):
        h.update(chunk)
    return h.hexdigest()


def write_data_file(path: os.PathLike | str, size: int, seed: int) -> str:
    """Write data(size, seed) to path; returns its sha256 hex."""
    import hashlib
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for chunk in data_chunks(size, seed):
            f.write(chunk)
            h.update(chunk)
    return h.hexdigest()


def write_prog(directory: os.PathLike | str) -> str:
    path = Path(directory) / "transfer_prog.py"
    path.write_text(TRANSFER_PROG)
    return str(path)


class DuplexClient:
    """A Python ssl client over MemoryBIOs on a non-blocking socket: it sends and receives
    at the same time in one select loop, and can half-close with close_notify (unwrap) or a
    TCP shutdown, then keep reading."""

    def __init__(self, port: int, ctx: ssl.SSLContext, sni: str | None = "localhost",
                 timeout: float = 60.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setblocking(False)
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_side=False,
                                server_hostname=sni)
        self.timeout = timeout
        self.peer_closed = False      # close_notify or EOF from the server
        self.clean_close = False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> DuplexClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _flush(self, block: bool = False) -> None:
        pending = self.outgoing.read()
        if pending:
            self._wire_out += pending

    def handshake(self) -> None:
        self._wire_out = bytearray()
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                self.obj.do_handshake()
                self._wire_out += self.outgoing.read()
                self._push(deadline, wait_all=True)
                return
            except ssl.SSLWantReadError:
                self._wire_out += self.outgoing.read()
                self._push(deadline, wait_all=True)
                self._pull(deadline)

    def _push(self, deadline: float, wait_all: bool) -> None:
        import select
        while self._wire_out:
            try:
                n = self.sock.send(self._wire_out)
                del self._wire_out[:n]
            except BlockingIOError:
                if not wait_all:
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("send timed out") from None
                select.select([], [self.sock], [], left)

    def _pull(self, deadline: float) -> None:
        import select
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("receive timed out")
        r, _, _ = select.select([self.sock], [], [], left)
        if not r:
            raise TimeoutError("receive timed out")
        data = self.sock.recv(1 << 18)
        if data:
            self.incoming.write(data)
        else:
            self.incoming.write_eof()

    def exchange(self, upload: Iterable[bytes], sink, *, half_close: str = "close_notify",
                 until_closed: bool = True) -> None:
        """Send every chunk of upload while passing everything received to sink(bytes), then
        half-close ("close_notify", "shutdown" = TCP SHUT_WR, or "none") and keep receiving
        until the server closes (until_closed)."""
        import select
        deadline = time.monotonic() + self.timeout
        chunks = iter(upload)
        pending = memoryview(b"")
        uploading = True
        self._wire_out = bytearray()
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError("transfer timed out")
            # Encrypt more only while the wire buffer is small (bounded memory here too).
            while uploading and len(self._wire_out) < (1 << 20):
                if not pending:
                    nxt = next(chunks, None)
                    if nxt is None:
                        uploading = False
                        self._half_close(half_close)
                        break
                    pending = memoryview(nxt)
                n = self.obj.write(pending[:1 << 16])
                pending = pending[n:]
                self._wire_out += self.outgoing.read()
            want_write = bool(self._wire_out)
            if self.peer_closed and not want_write and (not uploading):
                return
            if not until_closed and not uploading and not want_write:
                return
            r, w, _ = select.select([self.sock] if not self.peer_closed else [],
                                    [self.sock] if want_write else [], [], 1.0)
            if w:
                self._push(deadline, wait_all=False)
            if r:
                data = self.sock.recv(1 << 18)
                if data:
                    self.incoming.write(data)
                else:
                    self.incoming.write_eof()
                self._drain(sink)

    def _half_close(self, how: str) -> None:
        if how == "close_notify":
            try:
                self.obj.unwrap()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
            self._wire_out += self.outgoing.read()
            self._after_wire = "flush"
        elif how == "shutdown":
            # TCP half-close once what is queued is sent.
            self._push(time.monotonic() + self.timeout, wait_all=True)
            self.sock.shutdown(socket.SHUT_WR)

    def _drain(self, sink) -> None:
        while True:
            try:
                data = self.obj.read(1 << 17)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLZeroReturnError:
                self.peer_closed = True
                self.clean_close = True
                return
            except ssl.SSLEOFError:
                self.peer_closed = True
                return
            if not data:
                self.peer_closed = True
                self.clean_close = True
                return
            sink(data)


class Direct:
    """tlswrapper run directly (no tcpserver) with fd 0 and 1 on one end of a socketpair, so
    that its exit status is ours to see; `client_sock` is the other end."""

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.client_sock, server = socket.socketpair()
        self._err = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen([os.fspath(a) for a in argv], stdin=server,
                                         stdout=server, stderr=self._err, env=env,
                                         start_new_session=True)
        finally:
            server.close()
        self.client_sock.settimeout(30)

    def tls(self, ca, version: str | None = None, sni: str | None = "localhost"
            ) -> ssl.SSLSocket:
        ctx = client_context(ca, version)
        if sni is None:
            ctx.check_hostname = False
        return ctx.wrap_socket(self.client_sock, server_hostname=sni)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout=timeout)

    def stderr(self) -> str:
        self._err.seek(0)
        return self._err.read().decode(errors="replace")

    def close(self) -> None:
        self.client_sock.close()
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
        self._err.close()

    def __enter__(self) -> Direct:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
