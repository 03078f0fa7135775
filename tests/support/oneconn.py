"""One connection to a tlswrapper run directly (no tcpserver), for tests that need its exit
status and log: the test connects a TCP socket, the accepted end becomes the wrapper's fd 0
and 1. Plus a TLS client on Python's ssl over MemoryBIOs, so that bytes can be sent before
the ClientHello (a PROXY header, an SMTP dialogue) on the same socket, in any pieces.

Rule: nothing here imports tlswrapper's code; every wait has a timeout.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pytest

TIMEOUT = 20.0


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ without tcpserver's TCP* variables (so the socket's addresses are used)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TCP")}
    env.update(extra or {})
    return env


@dataclass
class Result:
    returncode: int
    stderr: str


class OneConnection:
    """`with OneConnection(argv) as c:` -- c.sock is the client's socket; c.finish() waits
    for the wrapper (killing it after the timeout) and returns its Result."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str] | None = None,
                 timeout: float = TIMEOUT) -> None:
        self.argv = [os.fspath(a) for a in argv]
        self.env = clean_env() if env is None else dict(env)
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.result: Result | None = None

    def __enter__(self) -> OneConnection:
        listener = socket.socket()
        try:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            self.sock = socket.create_connection(listener.getsockname(), timeout=self.timeout)
            server, _ = listener.accept()
        finally:
            listener.close()
        try:
            self.proc = subprocess.Popen(self.argv, stdin=server, stdout=server,
                                         stderr=subprocess.PIPE, env=self.env)
        finally:
            server.close()
        return self

    def finish(self, timeout: float | None = None) -> Result:
        assert self.proc is not None
        if self.result is None:
            try:
                _, err = self.proc.communicate(timeout=timeout or self.timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                _, err = self.proc.communicate(timeout=10)
                pytest.fail(f"{self.argv[0]} did not end in time; log: {err.decode(errors='replace')}")
            self.result = Result(self.proc.returncode, err.decode("utf-8", "replace"))
        return self.result

    def __exit__(self, *exc: object) -> None:
        if self.sock is not None:
            self.sock.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=10)

    # -- plain helpers ----------------------------------------------------------------------

    def send_pieces(self, data: bytes, piece: int = 1, pause: float = 0.005) -> None:
        assert self.sock is not None
        for i in range(0, len(data), piece):
            self.sock.sendall(data[i:i + piece])
            time.sleep(pause)

    def recv_until(self, marker: bytes, limit: int = 1 << 22) -> bytes:
        """Cleartext read until `marker` has arrived (fails on EOF or more than limit)."""
        assert self.sock is not None
        buf = b""
        while marker not in buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                pytest.fail(f"EOF before {marker!r}; got {buf[-200:]!r}")
            buf += chunk
            assert len(buf) <= limit
        return buf

    def recv_all(self) -> bytes:
        """Everything until EOF (a reset counts as EOF)."""
        assert self.sock is not None
        buf = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return buf
            if not chunk:
                return buf
            buf += chunk


def client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class BioTLS:
    """A TLS client over `sock` driven by hand: handshake(prefix) sends `prefix` (in pieces
    if asked) glued to the ClientHello, or, with glue=False, before it."""

    def __init__(self, sock: socket.socket, server_hostname: str = "localhost",
                 context: ssl.SSLContext | None = None) -> None:
        self.sock = sock
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = (context or client_context()).wrap_bio(
            self.incoming, self.outgoing, server_hostname=server_hostname)

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            self.incoming.write_eof()
        else:
            self.incoming.write(chunk)

    def handshake(self, prefix: bytes = b"", glue: bool = True, piece: int = 0) -> None:
        first = True
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            if first:
                first = False
                hello = self.outgoing.read()
                if piece:
                    data = prefix + hello if glue else prefix
                    for i in range(0, len(data), piece):
                        self.sock.sendall(data[i:i + piece])
                        time.sleep(0.002)
                    if not glue:
                        self.sock.sendall(hello)
                else:
                    self.sock.sendall(prefix + hello)
            else:
                self._flush()
            self._fill()
        self._flush()

    @property
    def version(self) -> str | None:
        return self.obj.version()

    def send(self, data: bytes) -> None:
        self.obj.write(data)
        self._flush()

    def recv_until(self, marker: bytes, limit: int = 1 << 22) -> bytes:
        buf = b""
        while marker not in buf:
            try:
                buf += self.obj.read(65536)
                continue
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                pytest.fail(f"close_notify before {marker!r}; got {buf[-200:]!r}")
            self._flush()
            self._fill()
            assert len(buf) <= limit
        return buf

    def recv_exactly(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            try:
                buf += self.obj.read(n - len(buf))
                continue
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                pytest.fail(f"close_notify after {len(buf)} of {n} bytes")
            self._flush()
            self._fill()
        return buf

    def recv_all(self) -> tuple[bytes, bool]:
        """Application data until the end; returns (data, ended with close_notify)."""
        buf = b""
        while True:
            try:
                data = self.obj.read(65536)
                if not data:
                    return buf, False
                buf += data
                continue
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                return buf, True
            except (ssl.SSLEOFError, ssl.SSLSyscallError):
                return buf, False
            self._flush()
            try:
                self._fill()
            except ConnectionResetError:
                self.incoming.write_eof()
