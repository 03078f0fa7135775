"""A small TLS test server: the engine (tls.server.ServerConnection) with the in-process
LocalKeyService on one end of a real TCP socket on 127.0.0.1.

Rule: this is test plumbing, not the relay. It owns the socket I/O the sans-IO engine leaves to
its caller, nothing more: one thread accepts, one thread per connection runs a select() loop
so that both directions flow at the same time (a client may push its 1 MiB while we push
ours), and every result the tests assert on is recorded in a ConnResult.

Modes:
    "bulk"  after the handshake send `send_size` bytes of seeded pseudo-random data (see
            payload()), and read what the client sends until it has sent `expect_size`
            bytes or closes; record the sha256 of what arrived; then close_notify.
    "http"  read one HTTP/1.x request (headers, then a Content-Length body), answer 200 with
            either a small HTML page naming the negotiated version/group/cipher or
            `send_size` bytes of payload(), then close_notify.

    with HarnessServer(pki["ecdsa-p256"].path, mode="bulk", send_size=N, expect_size=N,
                       config=ServerConfig(...)) as srv:
        ... run a client against srv.port ...
        result = srv.wait()          # the first connection's ConnResult

`python -m tests.harness --cert FILE [--mode http] [--port P] [-c CIPHER] [-e GROUP]` runs one
by hand (until ^C), printing each connection's result.
"""

from __future__ import annotations

import hashlib
import os
import random
import select
import socket
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Sequence

from tlswrapper.tls import suites
from tlswrapper.tls.config import ServerConfig
from tlswrapper.tls.events import (AlertReceived, ApplicationData, ClientHelloReceived,
                                   ConnectionFailed, HandshakeComplete, PeerClosed)
from tlswrapper.tls.server import ServerConnection

MiB = 1 << 20
RECV_SIZE = 1 << 16
SEND_CHUNK = 1 << 16          # application data handed to conn.send() at a time
MAX_OUTBUF = 1 << 18          # stop feeding conn.send() while this much is unsent
MAX_HTTP_HEADER = 1 << 16
DEFAULT_TIMEOUT = 60.0
LINGER = 5.0                  # after our close: how long we wait for the client's EOF


def payload(size: int, seed: int = 1) -> bytes:
    """`size` bytes of deterministic pseudo-random data (the same for the same seed)."""
    return random.Random(seed).randbytes(size)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def new_key_service():
    """The in-process KeyService (imported late: tests/ must not fail to import without it)."""
    from tlswrapper.keys.local import LocalKeyService
    return LocalKeyService()


@dataclass
class ConnResult:
    """What one connection did, as the server saw it."""

    client_hello: ClientHelloReceived | None = None
    handshake: HandshakeComplete | None = None
    failure: ConnectionFailed | None = None
    alerts: list[AlertReceived] = field(default_factory=list)
    peer_closed: PeerClosed | None = None
    received: int = 0                   # application data bytes from the client
    received_sha256: str = ""
    sent: int = 0                       # application data bytes queued to the client
    http_request: bytes = b""           # http mode: request line + headers
    hello_retry: bool = False           # our first flight was a HelloRetryRequest (seen on the wire)
    error: str | None = None            # an exception in the harness itself (a test bug/engine raise)
    done: threading.Event = field(default_factory=threading.Event)

    # convenience for asserts
    @property
    def version(self) -> str | None:
        return self.handshake.version_name if self.handshake else None

    @property
    def cipher(self) -> str | None:
        return self.handshake.cipher if self.handshake else None

    @property
    def group(self) -> str | None:
        return self.handshake.group if self.handshake else None

    @property
    def alert(self) -> int | None:
        return self.failure.alert if self.failure else None

    def summary(self) -> str:
        if self.error:
            return f"harness error: {self.error}"
        if self.failure:
            name = suites.ALERT_NAMES.get(self.failure.alert, self.failure.alert)
            return f"failed: alert={name} reason={self.failure.reason!r}"
        if self.handshake:
            return (f"{self.version} {self.cipher} {self.group} "
                    f"scheme={self.handshake.signature_scheme:#06x} "
                    f"received={self.received} sent={self.sent}")
        return "no handshake"


class HarnessServer:
    """Listens on 127.0.0.1 (an ephemeral port, `self.port`) and serves up to `connections`
    connections, each in its own thread (chromium may open a spare one in parallel)."""

    def __init__(self, cert_paths: str | os.PathLike | Sequence[str | os.PathLike], *,
                 config: ServerConfig | None = None, mode: str = "bulk",
                 send_size: int = 0, expect_size: int | None = None, seed: int = 1,
                 connections: int = 1, timeout: float = DEFAULT_TIMEOUT) -> None:
        if isinstance(cert_paths, (str, os.PathLike)):
            cert_paths = [cert_paths]
        self.cert_paths = [os.fspath(p) for p in cert_paths]
        self.config = config or ServerConfig()
        if mode not in ("bulk", "http"):
            raise ValueError(mode)
        self.mode = mode
        self.send_size = send_size
        self.expect_size = expect_size
        self.seed = seed
        self.max_connections = connections
        self.timeout = timeout
        self.results: list[ConnResult] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self.port: int = self._listener.getsockname()[1]
        self._data = payload(send_size, seed) if send_size else b""
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True,
                                          name=f"harness-accept-{self.port}")

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "HarnessServer":
        self._acceptor.start()
        return self

    def __enter__(self) -> "HarnessServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        try:
            self._listener.close()
        except OSError:
            pass
        self._acceptor.join(timeout=5)
        for t in list(self._threads):
            t.join(timeout=LINGER + 1)

    def wait(self, timeout: float | None = None, index: int = 0) -> ConnResult:
        """The result of connection `index` once it has finished (AssertionError on timeout
        or when no such connection arrived)."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while True:
            with self._lock:
                result = self.results[index] if len(self.results) > index else None
            if result is not None:
                left = deadline - time.monotonic()
                if not result.done.wait(max(left, 0)):
                    raise AssertionError(f"connection {index} still running after the timeout")
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"no connection {index} arrived on port {self.port}")
            time.sleep(0.02)

    def finished(self) -> list[ConnResult]:
        """Results of the connections that have ended so far."""
        with self._lock:
            return [r for r in self.results if r.done.is_set()]

    # ------------------------------------------------------------------ accept
    def _accept_loop(self) -> None:
        accepted = 0
        while not self._stop.is_set() and accepted < self.max_connections:
            try:
                ready, _, _ = select.select([self._listener], [], [], 0.2)
            except (OSError, ValueError):
                return
            if not ready:
                continue
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            accepted += 1
            result = ConnResult()
            with self._lock:
                self.results.append(result)
            t = threading.Thread(target=self._serve, args=(sock, result), daemon=True,
                                 name=f"harness-conn-{self.port}-{accepted}")
            self._threads.append(t)
            t.start()

    def _serve(self, sock: socket.socket, result: ConnResult) -> None:
        try:
            _Connection(self, sock, result).run()
        except Exception:  # noqa: BLE001 -- reported to the test, never lost in a thread
            result.error = traceback.format_exc(limit=8)
        finally:
            try:
                sock.close()
            except OSError:
                pass
            result.done.set()


class _Connection:
    """One client: the select() loop between the socket and the engine."""

    def __init__(self, server: HarnessServer, sock: socket.socket, result: ConnResult) -> None:
        self.server = server
        self.sock = sock
        self.result = result
        self.keys = new_key_service()
        self.conn = ServerConnection(server.config, self.keys)
        self.outbuf = bytearray()
        self.hash = hashlib.sha256()
        self.to_send = memoryview(b"")   # application data not yet given to conn.send()
        self.app_done = False            # the application has nothing more to send: close
        self.eof = False                 # the socket read side ended
        self.http_buf = bytearray()
        self.http_body_left: int | None = None
        self.first_flight = True

    # ------------------------------------------------------------------ loop
    def run(self) -> None:
        sock, conn = self.sock, self.conn
        sock.setblocking(False)
        deadline = time.monotonic() + self.server.timeout
        while True:
            self._feed_sender()
            out = conn.outgoing()
            if out and self.first_flight:
                self.first_flight = False
                # record(5) handshake header(4) legacy_version(2) random(32)
                self.result.hello_retry = out[0] == suites.HANDSHAKE and out[5] == \
                    suites.HS_SERVER_HELLO and out[11:43] == suites.HRR_RANDOM
            self.outbuf += out
            finished = conn.failed or conn.local_closed
            if finished and not self.outbuf:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"connection still busy after {self.server.timeout}s: "
                                   f"{self.result.summary()}")
            want_read = not self.eof and not conn.failed
            rlist = [sock] if want_read else []
            wlist = [sock] if self.outbuf else []
            if not rlist and not wlist:
                break
            readable, writable, _ = select.select(rlist, wlist, [], 0.5)
            if writable:
                try:
                    n = sock.send(self.outbuf)
                except (BlockingIOError, InterruptedError):
                    n = 0
                except OSError:      # the client went away: nothing more can be sent
                    self.outbuf.clear()
                    if conn.failed or conn.local_closed:
                        break
                    n = 0
                    self.eof = True
                    self._handle(conn.receive(b""))
                del self.outbuf[:n]
            if readable:
                try:
                    data = sock.recv(RECV_SIZE)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    self.eof = True
                self._handle(conn.receive(data))
        self._linger()

    def _linger(self) -> None:
        """Our last bytes are written: half-close and wait (bounded) for the client's EOF, so
        that closing does not reset a connection whose data the client has not read yet."""
        sock = self.sock
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return
        deadline = time.monotonic() + LINGER
        while not self.eof and time.monotonic() < deadline:
            readable, _, _ = select.select([sock], [], [], 0.2)
            if not readable:
                continue
            try:
                data = sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                return
            if not data:
                return
            if not self.conn.failed:
                self._handle(self.conn.receive(data))

    def _feed_sender(self) -> None:
        """Give the engine the next chunk of application data while the socket keeps up."""
        conn = self.conn
        if conn.failed or conn.local_closed or not conn.handshake_done:
            return
        while self.to_send and len(self.outbuf) < MAX_OUTBUF:
            chunk = bytes(self.to_send[:SEND_CHUNK])
            self.to_send = self.to_send[SEND_CHUNK:]
            conn.send(chunk)
            self.result.sent += len(chunk)
            self.outbuf += conn.outgoing()
        if not self.to_send and self.app_done:
            conn.close()

    # ------------------------------------------------------------------ events
    def _handle(self, events: list) -> None:
        pending = list(events)
        while pending:
            ev = pending.pop(0)
            if isinstance(ev, ClientHelloReceived):
                self.result.client_hello = ev
                candidates = self.keys.load(self.server.cert_paths)
                pending.extend(self.conn.choose_certificate(candidates))
            elif isinstance(ev, HandshakeComplete):
                self.result.handshake = ev
                if self.server.mode == "bulk":
                    self.to_send = memoryview(self.server._data)
                    self._check_bulk_done()
            elif isinstance(ev, ApplicationData):
                if self.server.mode == "bulk":
                    self.result.received += len(ev.data)
                    self.hash.update(ev.data)
                    self.result.received_sha256 = self.hash.hexdigest()
                    self._check_bulk_done()
                else:
                    self._http_data(ev.data)
            elif isinstance(ev, PeerClosed):
                self.result.peer_closed = ev
                self.result.received_sha256 = self.hash.hexdigest()
                self.app_done = True
            elif isinstance(ev, AlertReceived):
                self.result.alerts.append(ev)
            elif isinstance(ev, ConnectionFailed):
                self.result.failure = ev

    def _check_bulk_done(self) -> None:
        expect = self.server.expect_size
        if expect is not None and self.result.received >= expect:
            self.app_done = True

    # ------------------------------------------------------------------ http
    def _http_data(self, data: bytes) -> None:
        if self.http_body_left is None:
            self.http_buf += data
            end = self.http_buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.http_buf) > MAX_HTTP_HEADER:
                    raise ValueError("HTTP request header too long")
                return
            header = bytes(self.http_buf[:end])
            body = bytes(self.http_buf[end + 4:])
            self.http_buf.clear()
            self.result.http_request = header
            length = 0
            for line in header.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            self.http_body_left = length
            data = body
        take = data[:self.http_body_left]
        self.hash.update(take)
        self.result.received += len(take)
        self.result.received_sha256 = self.hash.hexdigest()
        self.http_body_left -= len(take)
        if self.http_body_left == 0 and not self.app_done:
            self._http_respond()

    def _http_respond(self) -> None:
        hs = self.result.handshake
        if self.server.send_size:
            body = self.server._data
            ctype = b"application/octet-stream"
        else:
            text = (f"<!DOCTYPE html><html><head><title>tlswrapper harness</title></head>"
                    f"<body><p id=\"tls\">tlswrapper-harness version={hs.version_name} "
                    f"cipher={hs.cipher} group={hs.group}</p></body></html>\n")
            body = text.encode()
            ctype = b"text/html; charset=utf-8"
        head = (b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype
                + b"\r\nContent-Length: " + str(len(body)).encode()
                + b"\r\nX-TLS-Version: " + hs.version_name.encode()
                + b"\r\nX-TLS-Cipher: " + hs.cipher.encode()
                + b"\r\nX-TLS-Group: " + hs.group.encode()
                + b"\r\nConnection: close\r\n\r\n")
        self.to_send = memoryview(head + body)
        self.result.sent -= len(head)      # count the body only
        self.app_done = True


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cert", action="append", required=True)
    p.add_argument("--mode", choices=("bulk", "http"), default="http")
    p.add_argument("--send-size", type=int, default=0)
    p.add_argument("--expect-size", type=int)
    p.add_argument("-c", dest="ciphers", action="append")
    p.add_argument("-e", dest="groups", action="append")
    p.add_argument("-m", dest="version_min", default="tls12")
    p.add_argument("-M", dest="version_max", default="tls13")
    p.add_argument("--connections", type=int, default=1000)
    a = p.parse_args(argv)
    kw: dict = {"version_min": suites.VERSION_NAMES[a.version_min],
                "version_max": suites.VERSION_NAMES[a.version_max]}
    if a.ciphers:
        kw["ciphers"] = tuple(a.ciphers)
    if a.groups:
        kw["groups"] = tuple(a.groups)
    srv = HarnessServer(a.cert, config=ServerConfig(**kw), mode=a.mode,
                        send_size=a.send_size, expect_size=a.expect_size,
                        connections=a.connections, timeout=3600).start()
    print(f"listening on 127.0.0.1:{srv.port}", flush=True)
    seen = 0
    try:
        while True:
            done = srv.finished()
            for r in done[seen:]:
                print(r.summary(), flush=True)
            seen = len(done)
            time.sleep(0.2)
    except KeyboardInterrupt:
        srv.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
