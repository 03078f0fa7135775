"""The network process: client fds <-> TLS engine <-> prog's pipes, with the timeouts.

Rule: this process jails itself before it reads a byte from the client and never holds a
secret (every secret operation goes to the key process). All I/O is non-blocking and driven by
one poll loop; each buffer is bounded, so a slow side stops the reading of the other.
"""

from __future__ import annotations

import array
import fcntl
import os
import select
import socket
import stat
import termios
import time

from tlswrapper import jail, log
from tlswrapper.exits import EXIT_FAILURE
from tlswrapper.keys.files import KeyFiles
from tlswrapper.keys.process import start_key_process
from tlswrapper.net import certfiles, proxyproto, sslenv
from tlswrapper.net.keyproxy import KeyProcessDied
from tlswrapper.net.prog import ChildError, Prog, connection_addresses, drop_inherited, start_prog
from tlswrapper.net.sslenv import ClientIdentity
from tlswrapper.tls import suites
from tlswrapper.tls.events import (AlertReceived, ApplicationData, CertificateRefused,
                         ClientHelloReceived, ConnectionFailed, HandshakeComplete, PeerClosed)
from tlswrapper.tls.secrets import KeyServiceError, Unusable
from tlswrapper.tls.server import ServerConnection

READ_SIZE = 1 << 18         # bytes per read from the client or from prog
BUFFER_LIMIT = 1 << 20      # stop reading one side while this much waits for the other
HOLD_GRACE = 2.0           # -n: how long client bytes that look like TLS wait for the switch
ACK_GRACE = 1.0            # -n: how long the ack waits for prog to read the cleartext (_maybe_ack)
FLUSH_GRACE = 0.5          # at the end: how long the last alert waits for a non-reading client
FLUSH_LIMIT = 1 << 16      # at the end: at most this much of what is queued is still sent
PROG_GRACE = 2.0           # prog's time to end on its end of file after a failure, per signal
# prog closed its stdout: how long the client's bytes already read may take to reach prog
# before its stdin is closed anyway (the C version ends such a connection in under 4 s).
STDIN_CLOSE_GRACE = 2.0
TLS_HANDSHAKE_RECORD = 0x16
TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", 12)   # Linux: <netinet/tcp.h>


def _nonblocking(fd: int) -> None:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)


def _unread(fd: int) -> int:
    """Bytes written to a pipe and not yet read from it (FIONREAD works on either end)."""
    count = array.array("i", [0])
    try:
        fcntl.ioctl(fd, termios.FIONREAD, count)
    except OSError:
        return 0
    return count[0]


def _is_socket(fd: int) -> bool:
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False


def tls_environment(done: HandshakeComplete) -> dict[str, str]:
    """The SSL_* variables prog gets after a TLS handshake (mod_ssl's names and formats)."""
    identity = done.client_identity if isinstance(done.client_identity, ClientIdentity) \
        else None
    return sslenv.tls_environment(done.version, done.cipher_suite, done.sni, identity)


class Relay:
    """One connection's loop. `client_in`/`client_out` are fd 0 and fd 1 (a socket or pipes)."""

    def __init__(self, conn: ServerConnection, keys, prog: Prog, options,
                 client_in: int = 0, client_out: int = 1) -> None:
        self.conn = conn
        self.keys = keys
        self.prog = prog
        self.options = options
        self.client_in = client_in
        self.client_out = client_out
        # Made before the jail: wrapping the fd needs no new descriptor, but we do it while
        # everything is still allowed. _finish() detaches it: fd 1 is closed by the exit.
        self.client_sock = socket.socket(fileno=client_out) if _is_socket(client_out) else None
        self.to_client = bytearray()
        self.to_prog = bytearray()
        self.client_ended = False     # no more bytes from the client
        self.client_gone = False      # the client cannot take our bytes any more
        self.prog_out_ended = False   # prog closed its stdout
        self.stdin_close_by = 0.0     # then prog's stdin is closed by this time at the latest
        self.prog_in_closed = False
        self.out_shut = False         # our write side to the client is shut
        self.started = False          # prog was told to run
        self.failed = False
        self.env: dict[str, str] = {}
        # -p 0/1/2: the PROXY header comes first (the reader is dropped once it is read).
        version = getattr(options, "proxy_protocol", None)
        self.proxy = proxyproto.ProxyReader(version) if version is not None else None
        # -n: cleartext both ways until prog's zero byte on fd 5 (SPEC section 3).
        self.cleartext = bool(getattr(options, "delayed_encryption", False))
        self.held = bytearray()       # -n: client bytes held back for the switch (see below)
        self.held_since = 0.0
        self.tls_up = False           # the handshake completed
        self.handshake_deadline = 0.0
        # -n: client cleartext received before the switch and not yet written to prog's
        # stdin. All of it reaches prog before the zero byte on fd 6 (the ack).
        self.cleartext_left = 0
        self.ack_due = False          # -n: prog asked for TLS; the ack is not written yet
        self.refused = False          # -n: the switch was refused (exit 111)
        self.ack_grace_until = 0.0    # -n: the ack goes out by then even if prog has not read
        # -n: the ack went out with cleartext still unread in prog's stdin pipe: nothing from
        # inside TLS joins it there until prog has read it all.
        self.tls_gate = False
        self.quick_acks = True        # quick-ACK after each handshake flight (_quick_ack)
        self.key_process_died: str | None = None   # why, when the key process failed us

    # ------------------------------------------------------------------ events
    def _handle(self, events: list) -> None:
        while events:
            event = events.pop(0)
            if isinstance(event, ClientHelloReceived):
                events.extend(self._choose_certificate(event))
            elif isinstance(event, ApplicationData):
                self.to_prog += event.data
            elif isinstance(event, HandshakeComplete):
                self._handshake_complete(event)
            elif isinstance(event, PeerClosed):
                self.client_ended = True
                if not event.clean:
                    log.info("connection truncated: the client closed without close_notify")
            elif isinstance(event, AlertReceived):
                name = suites.ALERT_NAMES.get(event.description, str(event.description))
                log.debug(f"received alert {name}")
            elif isinstance(event, CertificateRefused):
                # A broken file (e.g. its key does not match its certificate): the engine
                # goes on with the next fitting one; the reason names the file.
                log.warning(f"certificate file refused: {event.reason}")
            elif isinstance(event, ConnectionFailed):
                self._failed(event)

    def _choose_certificate(self, hello: ClientHelloReceived) -> list:
        if log.enabled(log.DEBUG):
            log.debug("client hello: sni=%s versions=%s suites=%s groups=%s schemes=%s" % (
                hello.sni, ",".join(suites.VERSION_LABELS.get(v, hex(v))
                                    for v in hello.versions),
                ",".join(f"{c:04x}" for c in hello.cipher_suites),
                ",".join(suites.GROUP_LABELS.get(g, str(g)) for g in hello.groups),
                ",".join(f"{s:04x}" for s in hello.signature_schemes)))
        paths = certfiles.candidate_paths(self.options.certs, hello.sni)
        candidates = self.keys.load(paths) if paths else []
        named = []
        for path, cand in zip(paths, candidates):
            reason = getattr(cand, "reason", None)
            if reason is not None:
                if getattr(cand, "missing", False):
                    log.debug(f"{path}: file does not exist")
                else:
                    log.warning(f"{path}: {reason}")
                if not reason.startswith(path):
                    # The engine's "no usable certificate (...)" line names each file, as
                    # the C version's PEM errors do.
                    cand = Unusable(f"{path}: {reason}", getattr(cand, "missing", False))
            named.append(cand)
        return self.conn.choose_certificate(named + list(candidates[len(paths):]))

    def _handshake_complete(self, done: HandshakeComplete) -> None:
        log.info(f"handshake: {done.version_name} {done.cipher} {done.group} "
                 f"sni={done.sni or '-'}")
        self.tls_up = True
        if self.started:
            # -n: prog runs already (so it cannot be given the SSL_* variables) and has had
            # its ack at the switch: its stdin and stdout are now inside TLS.
            return
        env = dict(self.env)
        env.update(tls_environment(done))
        identity = done.client_identity if isinstance(done.client_identity, ClientIdentity) \
            else None
        if identity is not None:
            log.info(f"client certificate: {log.escape(identity.subject_dn)} "
                     f"serial={identity.serial}")
        account = None
        field = self.options.user_from_cert
        if field is not None:
            # -U: the account named in the verified certificate; the child refuses a name
            # outside its safe characters, a missing account and uid/gid 0 (exit 111).
            account = identity.common_name if identity is not None and field == "commonName" \
                else identity.email if identity is not None else None
            if not account:
                log.error(f"unable to extract ASN.1 object {field} from the client "
                          f"certificate: object not found")
                self.failed = True
                self.conn.close()
                return
        self.prog.go(env, account)
        self.started = True

    def _failed(self, event: ConnectionFailed) -> None:
        self.failed = True
        what = f"TLS alert {suites.ALERT_NAMES.get(event.alert, event.alert)} sent: " \
            if event.alert is not None else ""
        if self.started:
            log.error(f"{what}{event.reason}")
        elif event.alert == suites.INTERNAL_ERROR:
            # Our side failed, not the client's input: no usable certificate file, a key that
            # does not match its certificate. A configuration problem, shown at the default
            # verbosity as the C version shows its PEM errors.
            log.fatal(f"{what}{event.reason}")
        else:
            log.debug(f"{what}{event.reason}")

    # ------------------------------------------------------------------ I/O steps
    def _read_client(self) -> None:
        try:
            # Before the PROXY header is complete, no byte past it (a v2 header's length is
            # known from its first 16 bytes): a malformed one leaves the rest unread.
            data = os.read(self.client_in,
                           READ_SIZE if self.proxy is None else self.proxy.wanted())
        except BlockingIOError:
            return
        except OSError as e:
            log.debug(f"reading from the client: {log.oserror_text(e)}")
            data = b""
        if not data:
            self.client_ended = True
        self._client_data(data)

    def _client_data(self, data: bytes) -> None:
        """Route what the client sent (b"" for its end of file): the PROXY header with -p,
        prog's stdin in the cleartext phase of -n, else the TLS engine."""
        if self.proxy is not None:
            rest = self._proxy_data(data)
            if rest is None:
                return
            data = rest
        if self.ack_due:
            self.held += data      # -n: the ClientHello, for the engine once the ack is out
            return
        if self.cleartext:
            if not data:
                return
            if self.held or data[0] == TLS_HANDSHAKE_RECORD:
                # The switch race: prog writes its last cleartext ("220 ready to start TLS")
                # to stdout, then the zero byte to fd 5. We may relay the former, and the
                # client may answer with its ClientHello, before prog's second write has
                # happened. A record header (0x16) never starts a line of a STARTTLS text
                # protocol, so such bytes wait here for the switch and go to the engine;
                # were the zero byte not to come within HOLD_GRACE, they go to prog after all.
                if not self.held:
                    self.held_since = time.monotonic()
                self.held += data
            else:
                self.to_prog += data
            return
        self._handle(self.conn.receive(data))
        self.to_client += self.conn.outgoing()

    def _write_client(self) -> None:
        try:
            n = os.write(self.client_out, self.to_client)
        except BlockingIOError:
            return
        except OSError as e:
            log.debug(f"writing to the client: {log.oserror_text(e)}")
            self.client_gone = True
            self.client_ended = True
            self.to_client.clear()
            return
        del self.to_client[:n]
        if not self.to_client and self.quick_acks and not self.cleartext \
                and self.client_sock is not None:
            # Written after the handshake completed: TLS 1.2's last flight (ChangeCipherSpec,
            # Finished) or, in TLS 1.3, our first application data. The last one.
            self.quick_acks = not self.tls_up
            self._quick_ack()

    def _quick_ack(self) -> None:
        """A handshake flight of ours is out: have the kernel acknowledge the client's next
        segment at once. Having answered the client's bytes at once, the socket is in Linux's
        delayed-ACK mode, so the acknowledgement of the client's next segment would wait for
        the 40 ms timer when we have nothing to send, and a client that leaves Nagle's
        algorithm on holds its next small write back until then. Measured with such clients:
        TLS 1.3, first application data after the client's Finished, 52 ms -> 8 ms to the first
        byte; TLS 1.2, a request written in two pieces after the handshake, 44 ms -> 3 ms
        (bench/real_clients.py, gnutls-cli-split; the C version takes the 44 ms)."""
        try:
            self.client_sock.setsockopt(socket.IPPROTO_TCP, TCP_QUICKACK, 1)
        except OSError:
            pass    # not TCP (a UNIX socket, say): nothing is delayed there

    def _read_prog(self) -> None:
        try:
            data = os.read(self.prog.stdout, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if self.cleartext:
            # -n, before the switch: prog's output goes to the client as it is.
            if data:
                self.to_client += data
            else:
                self.prog_out_ended = True
            return
        if data:
            self.conn.send(data)
        else:
            self.prog_out_ended = True
            self.conn.close()
        self.to_client += self.conn.outgoing()

    def _write_prog(self) -> None:
        # -n: nothing from inside TLS goes to prog before the acknowledgement on fd 6.
        if self.cleartext_left:
            data = self.to_prog[:self.cleartext_left]
        elif self.ack_due or self.refused or not self._tls_gate_open():
            return
        else:
            data = self.to_prog
        try:
            n = os.write(self.prog.stdin, data)
        except BlockingIOError:
            return
        except OSError:
            # prog stopped reading: what the client still sends has nowhere to go.
            self.to_prog.clear()
            self.cleartext_left = 0
            self._maybe_ack()
            self._close_prog_stdin()
            return
        del self.to_prog[:n]
        if self.cleartext_left:
            self.cleartext_left -= n
            self._maybe_ack()

    def _maybe_ack(self) -> None:
        """-n: the ack, as the C version: before the handshake, as soon as the cleartext the
        client sent before the switch has been relayed. Relayed means read by prog, not only
        written to its stdin pipe: prog reads two pipes, and only then does the zero byte on
        fd 6 mark the boundary exactly (every stdin byte before it is cleartext, every one
        after it from inside TLS), so that prog can drop pipelined cleartext (the STARTTLS
        command injection, CVE-2011-0411) without dropping TLS data. When the client sent
        nothing after its STARTTLS line (the usual case) that is at once; else within
        ACK_GRACE (see below)."""
        if not self.ack_due or self.cleartext_left:
            return
        unread = 0 if self.prog_in_closed else _unread(self.prog.stdin)
        if unread:
            # A prog that waits for the ack before it reads its stdin (as the C version's
            # ack, sent once the cleartext is in the pipe, allows) must not wait for ever:
            # after ACK_GRACE it gets the ack anyway, and TLS data waits (tls_gate) until
            # it has read the pipe empty, so what it can read at once after the ack is
            # still only cleartext.
            now = time.monotonic()
            if not self.ack_grace_until:
                self.ack_grace_until = now + ACK_GRACE
            if now < self.ack_grace_until:
                return   # checked again on the next round of the loop
            log.debug(f"delayed encryption: ack with {unread} bytes of cleartext unread")
        self.ack_due = False
        if not self._send_ack():
            return
        self.tls_gate = unread > 0
        # The client's bytes held since the switch are its ClientHello: the handshake starts.
        if self.held:
            data, self.held = bytes(self.held), bytearray()
            self._handle(self.conn.receive(data))
            self.to_client += self.conn.outgoing()

    def _tls_gate_open(self) -> bool:
        if self.tls_gate and (self.prog_in_closed or _unread(self.prog.stdin) == 0):
            self.tls_gate = False
        return not self.tls_gate

    def _refuse_switch(self, reason: str) -> None:
        """-n: prog broke the fd 5/6 protocol; as the C version: a log line and exit 111."""
        log.fatal(f"delayed encryption refused: {reason}")
        self.refused = True
        self.failed = True

    def _end_prog_input(self) -> None:
        """prog closed its stdout and its close_notify is out: as the C version, prog's stdin
        is closed too (what the client still sends is not read), so that a prog waiting for
        input ends and the connection with it, instead of holding two processes until the
        network timeout. What was read from the client before goes to prog first, within
        STDIN_CLOSE_GRACE."""
        if self.prog_in_closed:
            return
        now = time.monotonic()
        if not self.stdin_close_by:
            self.stdin_close_by = now + STDIN_CLOSE_GRACE
        if self.to_prog and now < self.stdin_close_by:
            return
        if self.to_prog:
            log.debug(f"prog closed its stdout: {len(self.to_prog)} bytes from the client "
                      f"not delivered")
            self.to_prog.clear()
            self.cleartext_left = 0
        self._close_prog_stdin()

    def _close_prog_stdin(self) -> None:
        if not self.prog_in_closed:
            self.prog_in_closed = True
            self.prog.close_stdin()

    def _shut_client_output(self) -> None:
        if self.out_shut:
            return
        self.out_shut = True
        try:
            if self.client_sock is not None:
                self.client_sock.shutdown(socket.SHUT_WR)
            else:
                os.close(self.client_out)
        except OSError:
            pass

    # ------------------------------------------------------------------ -p and -n
    def _proxy_data(self, data: bytes) -> bytes | None:
        """-p: feed the PROXY header reader. Returns the bytes after the header once it is
        complete (None while it is not, when nothing follows it, or on failure)."""
        if self.proxy is None:
            return data
        if not data:
            if self.proxy.started:
                log.fatal("unable to read the PROXY header (connection closed in the middle)")
            else:
                log.debug("connection closed before the PROXY header")
            self.failed = True
            return None
        try:
            header = self.proxy.feed(data)
        except proxyproto.ProxyError as e:
            # The C version's wording; like it, shown at the default verbosity: with -p 1
            # only the proxy connects, so a bad header is a configuration problem.
            log.fatal(f"unable to receive incoming proxy-protocol "
                      f"v{self.proxy.version or self.proxy.accepts} string ({e})")
            self.failed = True
            return None
        if header is None:
            return None
        rest, self.proxy = self.proxy.rest, None
        self.env.update(header.environment())
        if header.family == "LOCAL":
            log.debug("PROXY v2 LOCAL (the proxy's own connection): keeping the socket's "
                      "addresses")
        else:
            log.set_prefix(log.client_prefix(self.env["TCPREMOTEIP"],
                                             self.env["TCPREMOTEPORT"]))
            log.debug(f"PROXY {header.family}: client "
                      f"{log.client_prefix(self.env['TCPREMOTEIP'], self.env['TCPREMOTEPORT'])}"
                      f", server "
                      f"{log.client_prefix(self.env['TCPLOCALIP'], self.env['TCPLOCALPORT'])}")
        if self.cleartext:
            self._start_cleartext()
        return rest or None

    def _start_cleartext(self) -> None:
        """-n: prog runs at once, before any TLS, so it gets the connection's addresses but
        not the SSL_* variables (there has been no handshake yet)."""
        self.prog.go(dict(self.env))
        self.started = True

    def _read_control(self) -> None:
        """-n: prog's fd 5. One zero byte asks for TLS; end of file means it never will."""
        fd = self.prog.control_in
        if fd is None:
            return
        try:
            byte = os.read(fd, 1)
        except BlockingIOError:
            return
        except OSError:
            byte = b""
        if not byte:
            if self.cleartext:
                log.debug("prog closed fd 5: the connection stays in cleartext")
            os.close(fd)
            self.prog.control_in = None
            return
        if not self.cleartext:
            # fd 5 is read until prog closes it: a second byte is refused, not ignored.
            self._refuse_switch(f"prog wrote a second byte ({byte[0]:#04x}) on fd 5")
            return
        if byte != b"\0":
            self._refuse_switch(f"prog wrote byte {byte[0]:#04x} on fd 5 instead of a zero byte")
            return
        self._switch_to_tls()

    def _switch_to_tls(self) -> None:
        # prog wrote its last cleartext to stdout before the zero byte to fd 5, so it is all
        # in the stdout pipe by now: read it before anything else, so that it reaches the
        # client in cleartext ahead of our first TLS byte (to_client is one ordered queue).
        # At most a pipe-full can predate the signal; the cap stops a prog that keeps writing.
        drained = 0
        while self.prog.stdout >= 0 and not self.prog_out_ended and drained < BUFFER_LIMIT:
            try:
                data = os.read(self.prog.stdout, READ_SIZE)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                self.prog_out_ended = True
                break
            drained += len(data)
            self.to_client += data
        self.cleartext = False
        self.cleartext_left = len(self.to_prog)
        self.handshake_deadline = time.monotonic() + self.options.handshake_timeout
        log.debug("delayed encryption: prog asked for TLS, starting the handshake")
        # Bytes the client sent from here on are TLS; those held back already are too. They
        # reach the engine once the ack is out (_maybe_ack): a refused switch sends nothing.
        self.ack_due = True
        self._maybe_ack()

    def _send_ack(self) -> bool:
        """-n: the zero byte on prog's fd 6 (one byte into an empty pipe: it cannot block).
        False when prog has closed fd 6: the switch is refused."""
        fd, self.prog.ack_out = self.prog.ack_out, None
        if fd is None:
            self._refuse_switch("fd 6 is closed")
            return False
        try:
            os.write(fd, b"\0")
        except OSError as e:
            self._refuse_switch(f"unable to write the acknowledgement to fd 6 "
                                f"({log.oserror_text(e)}: prog closed it)")
            return False
        finally:
            os.close(fd)
        return True

    # ------------------------------------------------------------------ the loop
    def run(self) -> int:
        try:
            self._loop()
        except KeyProcessDied as e:
            # Nothing can be sealed or opened any more, not even an alert: the connection
            # ends here, and prog with it (_finish).
            self.failed = True
            self.key_process_died = str(e)
        return self._finish()

    def _loop(self) -> None:
        # select(), not poll(): in the jail RLIMIT_NOFILE is 0, and Linux refuses a poll()
        # over more descriptors than that limit (EINVAL); select() has no such check.
        opts = self.options
        start = time.monotonic()
        # -p 1: the PROXY header is read within the handshake timeout; -n: the timeout
        # starts again at the switch.
        self.handshake_deadline = start + opts.handshake_timeout
        last_progress = start
        for fd in (self.client_in, self.client_out, self.prog.stdin, self.prog.stdout,
                   self.prog.control_in):
            if fd is not None:
                _nonblocking(fd)
        if self.cleartext and self.proxy is None:
            self._start_cleartext()
        while True:
            if self.ack_due:
                # -n: before the lists are made: the ack feeds the held ClientHello to the
                # engine, whose answer must be in to_client when the writers are chosen.
                self._maybe_ack()
            if self.failed or self.client_gone:
                break
            handshaking = self.proxy is not None or not (self.cleartext or self.tls_up)
            if self.client_ended and not self.to_prog:
                self._close_prog_stdin()
            if self.prog_out_ended and not self.to_client:
                self._shut_client_output()
                self._end_prog_input()
                if self.client_ended or self.prog.poll() is not None:
                    break
            if handshaking and self.client_ended:
                break
            readers = []
            writers = []
            # Not while too much waits for either side: for prog, or for the client, since
            # what it sends makes output too (KeyUpdate answers, alerts), and a client that
            # never reads would otherwise grow this process without bound.
            if not self.client_ended and not self.prog_out_ended \
                    and len(self.to_prog) + len(self.held) < BUFFER_LIMIT \
                    and len(self.to_client) < BUFFER_LIMIT:
                readers.append(self.client_in)
            if self.started and (self.cleartext or self.tls_up) and not self.prog_out_ended \
                    and len(self.to_client) < BUFFER_LIMIT:
                readers.append(self.prog.stdout)
            if self.started and self.prog.control_in is not None:
                readers.append(self.prog.control_in)      # -n: also after the switch
            if self.to_client and not self.out_shut:
                writers.append(self.client_out)
            if self.to_prog and not self.prog_in_closed \
                    and (self.cleartext_left or not self.ack_due and self._tls_gate_open()):
                writers.append(self.prog.stdin)
            now = time.monotonic()
            if self.held and self.cleartext and now >= self.held_since + HOLD_GRACE:
                self.to_prog += self.held
                self.held.clear()
                continue
            deadline = last_progress + opts.timeout
            if handshaking:
                deadline = min(deadline, self.handshake_deadline)
            if now >= deadline:
                if handshaking and now >= self.handshake_deadline:
                    log.info("timeout reading the PROXY header" if self.proxy is not None
                             else "handshake timeout")
                else:
                    log.info("network timeout")
                self.failed = True
                break
            if not readers and not writers:
                # Only prog's exit is awaited (its stdout closed, the client still open).
                time.sleep(min(0.05, deadline - now))
                continue
            wait = deadline - now
            if self.held:
                wait = min(wait, max(0.0, self.held_since + HOLD_GRACE - now))
            if self.ack_due or self.tls_gate and self.to_prog:
                wait = min(wait, 0.01)   # -n: waiting for prog to read its stdin pipe
            if self.prog_out_ended:
                # prog's exit wakes no descriptor: poll for it, or a prog that exits just
                # after closing its stdout is noticed only when the client sends or the
                # network timeout expires.
                wait = min(wait, 0.05)
            try:
                can_read, can_write, _ = select.select(readers, writers, [], wait)
            except InterruptedError:
                continue
            if not can_read and not can_write:
                continue
            last_progress = time.monotonic()
            # -n: the control pipe first, so that client bytes read in the same round after
            # the zero byte go to the engine.
            if self.prog.control_in is not None and self.prog.control_in in can_read:
                self._read_control()
            if self.client_in in can_read:
                self._read_client()
            if self.client_out in can_write and self.to_client:
                self._write_client()
            if self.prog.stdout in can_read and (self.cleartext or self.tls_up):
                self._read_prog()
            if self.prog.stdin in can_write and self.to_prog:
                self._write_prog()

    def _close_keys(self) -> int | None:
        """The key process sees end of file and exits: reap it (else it is left to init, and
        its CPU time is counted nowhere under tcpserver or the listener). Its wait status,
        or None."""
        try:
            return self.keys.close()
        except (OSError, KeyProcessDied):
            return None

    def _flush_client(self) -> None:
        """Best effort: the alert or close_notify still queued goes out, waiting at most
        FLUSH_GRACE for a client that does not read (never a hang past it)."""
        if not self.to_client or self.client_gone or self.out_shut:
            return
        data = memoryview(self.to_client)[:FLUSH_LIMIT]
        deadline = time.monotonic() + FLUSH_GRACE
        try:
            while data:
                try:
                    data = data[os.write(self.client_out, data):]
                    continue
                except BlockingIOError:
                    pass
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                select.select([], [self.client_out], [], left)
        except (OSError, InterruptedError):
            pass
        finally:
            data.release()

    def _key_process_failure(self) -> None:
        """One line that says what became of the key process (killed, exited) and of the
        connection, instead of a bare pipe error."""
        status = self._close_keys()
        if status is None:
            how = "stopped answering"
        elif os.WIFSIGNALED(status):
            how = f"was killed by signal {os.WTERMSIG(status)}"
        else:
            how = f"exited with status {os.WEXITSTATUS(status)}"
        ending = "; ending prog" if self.started else ""
        log.fatal(f"key process {how} ({self.key_process_died}): connection closed{ending}")

    def _finish(self) -> int:
        self._flush_client()
        if self.client_sock is not None:
            self.client_sock.detach()     # the descriptor is closed below, not by the wrapper
            self.client_sock = None
        # The connection is closed now (after a fatal alert: right after it), not once prog
        # and the key process are gone: a strict peer waits for the close, and tcpserver's
        # or the listener's slot is freed sooner. Closed, not shut down: as at our exit, the
        # kernel answers with a reset if client bytes are left unread.
        for fd in {self.client_in, self.client_out}:
            try:
                os.close(fd)
            except OSError:
                pass
        self.client_gone = self.out_shut = True
        self._close_prog_stdin()
        self.prog.close_stdout()
        if self.key_process_died is not None:
            self._key_process_failure()
        if not self.started:
            self.prog.abort()
            self.prog.wait()
            self.prog.disarm()
            self._close_keys()
            return EXIT_FAILURE
        self.prog.close()   # -n: fd 5 and 6 too, so that a prog awaiting the ack sees EOF
        # After a failure nothing more reaches prog or comes from it: it has PROG_GRACE to
        # end on its end of file, then it is ended. Else it has the network timeout.
        status = self.prog.wait(timeout=PROG_GRACE if self.failed else self.options.timeout)
        if status is None:
            status = self.prog.end(PROG_GRACE)
        self.prog.disarm()
        self._close_keys()
        if self.refused or self.key_process_died is not None:
            return EXIT_FAILURE
        return status


class _KeyProcessJail:
    """The key process's jail, called by its first load() once the files are read. ahead()
    (in the key process, before its first request) works out the jail beforehand."""

    def __init__(self, account: jail.Account | None, jail_dir: str) -> None:
        self.account = account
        self.jail_dir = jail_dir
        self.plan: jail.Plan | None = None

    def ahead(self) -> None:
        try:
            self.plan = jail.plan(self.account, self.jail_dir)
        except jail.JailError:
            self.plan = None      # jail() finds the problem again and reports it

    def __call__(self) -> None:
        jail.jail(self.account, self.jail_dir, ahead=self.plan)


class StartError(Exception):
    """The connection's processes could not be started; one fatal line for the log."""


class Prepared:
    """A connection's processes started before its client is known: the key process (not yet
    jailed: it reads the certificate files after the SNI), prog waiting for the go-ahead, the
    engine. The built-in listener prepares these in a spare process ahead of time."""

    def __init__(self, options) -> None:
        self.options = options
        config = options.server_config()
        jail.prepare()
        if getattr(options, "proxy_protocol", None) is not None:
            # -p: what the PROXY header reader imports (ipaddress, proxyproto2), loaded now:
            # a listener's spare jails before its connection, and nothing loads in the jail.
            proxyproto.ProxyReader(options.proxy_protocol)
        self.account = jail.lookup_account(options.jail_user) if options.jail_user else None
        self.jail_dir = options.jail_dir
        # An OSError here becomes StartError in prepare(), as every other start failure.
        # The key process knows the -f/-d/-a files from these options (its own copy, taken
        # at fork): it opens only what they lead to, whatever the pipe asks (MUST 6).
        self.keys, _key_pid = start_key_process(_KeyProcessJail(self.account, self.jail_dir),
                                                KeyFiles.from_options(options))
        self.anchor_pem = None
        self.prog: Prog | None = None
        try:
            if options.anchor is not None:
                # -a: the key process reads the file while privileged (before it jails); we
                # parse it after our own jail, as the C version does. clientcert
                # (cryptography's X.509) is imported now: nothing can be loaded in the jail.
                from tlswrapper.net import clientcert  # noqa: F401
                self.anchor_pem = self.keys.read_anchor()
            self.prog = start_prog(options.prog, user=options.user,
                                         user_from_cert=options.user_from_cert is not None,
                                         delayed_encryption=options.delayed_encryption)
            # prog has its copies of what we inherited (`prog 9>log`); we need none of them.
            drop_inherited()
            # While we may: once jailed, only this lets us end prog (Relay._finish).
            self.prog.arm_end_signal()
        except (OSError, ChildError) as e:
            self.keys.close()
            raise StartError(f"unable to start: {e}") from None
        except (KeyServiceError, KeyProcessDied) as e:
            self.keys.close()
            raise StartError(str(e)) from None
        self.config = config
        self.conn = ServerConnection(config, self.keys)
        self.jailed = False

    def jail_ahead(self) -> None:
        """Jail now, before the client socket exists here, all but the last step: descriptors
        may still be made (the listener's spare accepts its connection); serve() then lowers
        RLIMIT_NOFILE to 0 before the first byte is read. Raises JailError."""
        try:
            highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        except (OSError, ValueError):
            highest = 1023
        # Room for two more: the spare's epoll descriptor and the connection it accepts.
        jail.jail(self.account, self.jail_dir, files=highest + 3)
        self.jailed = True

    def abandon(self) -> None:
        """No client came (the listener stopped): prog's child exits without running prog,
        the key process sees EOF and exits."""
        if self.prog is not None:
            self.prog.abort()
            self.prog.close()
        try:
            self.keys.close()
        except (OSError, KeyProcessDied):
            pass

    def serve(self, addresses: dict[str, str]) -> int:
        """Jail, then serve the client on fd 0/1; returns the exit status (prog's, or 111).
        `addresses` are the TCP* variables for prog."""
        options, prog = self.options, self.prog
        relay = Relay(self.conn, self.keys, prog, options)
        relay.env = addresses
        try:
            if self.jailed:
                jail.close_files()
            else:
                jail.jail(self.account, self.jail_dir)
        except jail.JailError as e:
            log.fatal(f"unable to create jail: {e}")
            prog.abort()
            return EXIT_FAILURE
        if self.anchor_pem is not None:
            from tlswrapper.net import clientcert
            try:
                verifier = clientcert.ClientCertificates.from_pem(self.anchor_pem)
            except clientcert.AnchorError as e:
                log.fatal(f"unable to parse anchor PEM file '{options.anchor_path}' ({e})")
                prog.abort()
                return EXIT_FAILURE
            relay.conn = ServerConnection(verifier.server_config(self.config), self.keys)
        return relay.run()      # a dead key process included (Relay.run, _finish)


def prepare(options) -> Prepared:
    """Start a connection's key process and prog (see Prepared). Raises StartError."""
    try:
        return Prepared(options)
    except (OSError, jail.JailError) as e:
        raise StartError(f"unable to start: {e}") from None
    except (KeyServiceError, KeyProcessDied) as e:
        raise StartError(str(e)) from None


def run(options) -> int:
    """Serve one connection on fd 0/1; returns the exit status (prog's, or 111)."""
    log.setup("tlswrapper", options.verbosity)
    addresses = connection_addresses()
    log.set_prefix(log.client_prefix(addresses.get("TCPREMOTEIP"),
                                     addresses.get("TCPREMOTEPORT")))
    try:
        prepared = prepare(options)
    except StartError as e:
        log.fatal(str(e))
        return EXIT_FAILURE
    return prepared.serve(addresses)
