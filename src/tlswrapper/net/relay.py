"""The network process's loop: client fds <-> TLS engine <-> prog's pipes, with the timeouts.
Setting the connection up is net/start.py; the -p and -n phases are net/phases.py.

Rule: this process jails itself before it reads a byte from the client and never holds a
secret (every secret operation goes to the key process). All I/O is non-blocking and driven by
one poll loop; each buffer is bounded, so a slow side stops the reading of the other.
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import stat
import time

from tlswrapper import log
from tlswrapper.exits import EXIT_FAILURE
from tlswrapper.net import certfiles, sslenv
from tlswrapper.net.keyproxy import KeyProcessDied
from tlswrapper.net.phases import HOLD_GRACE, Phases
from tlswrapper.net.sslenv import ClientIdentity
from tlswrapper.tls import suites
from tlswrapper.tls.events import (AlertReceived, ApplicationData, CertificateRefused,
                         ClientHelloReceived, ConnectionFailed, HandshakeComplete, PeerClosed)
from tlswrapper.tls.keyservice import Unusable

# typing is not imported at run time (each tcpserver-mode connection imports this module).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from tlswrapper.net.prog import Prog
    from tlswrapper.tls.server import ServerConnection

READ_SIZE = 1 << 18         # bytes per read from the client or from prog
BUFFER_LIMIT = 1 << 20      # stop reading one side while this much waits for the other
FLUSH_GRACE = 0.5          # at the end: how long the last alert waits for a non-reading client
FLUSH_LIMIT = 1 << 16      # at the end: at most this much of what is queued is still sent
PROG_GRACE = 2.0           # prog's time to end on its end of file after a failure, per signal
# prog closed its stdout: how long the client's bytes already read may take to reach prog
# before its stdin is closed anyway (the C version ends such a connection in under 4 s).
STDIN_CLOSE_GRACE = 2.0
TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", 12)   # Linux: <netinet/tcp.h>


def _nonblocking(fd: int) -> None:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)


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


class Relay(Phases):
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
        self.tls_up = False           # the handshake completed
        self.handshake_deadline = 0.0
        self._init_phases(options)
        self.quick_acks = True        # quick-ACK after each handshake flight (_quick_ack)
        self.key_process_died: str | None = None   # why, when the key process failed us
        self.last_progress = 0.0      # when a descriptor was last ready (the network timeout)

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
            self._cleartext_from_client(data)
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

    def _drain_prog_output(self) -> None:
        """All prog has written to its stdout so far, for the client: at the -n switch, the
        last cleartext goes out ahead of our first TLS byte (to_client is one ordered queue).
        At most a pipe-full can predate the switch; the cap stops a prog that keeps writing."""
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
        self._begin()
        while True:
            if self.ack_due:
                # -n: before the lists are made: the ack feeds the held ClientHello to the
                # engine, whose answer must be in to_client when the writers are chosen.
                self._maybe_ack()
            if self._over():
                break
            readers, writers = self._readers(), self._writers()
            now = time.monotonic()
            if self._hold_expired(now):
                continue
            deadline = self._deadline()
            if now >= deadline:
                self._timed_out(now)
                break
            if not readers and not writers:
                # Only prog's exit is awaited (its stdout closed, the client still open).
                time.sleep(min(0.05, deadline - now))
                continue
            # select(), not poll(): in the jail RLIMIT_NOFILE is 0, and Linux refuses a poll()
            # over more descriptors than that limit (EINVAL); select() has no such check.
            try:
                can_read, can_write, _ = select.select(readers, writers, [],
                                                       self._wait(now, deadline))
            except InterruptedError:
                continue
            if not can_read and not can_write:
                continue
            self.last_progress = time.monotonic()
            self._step(can_read, can_write)

    def _begin(self) -> None:
        """The deadlines start, every descriptor becomes non-blocking, and with -n (and no
        PROXY header to wait for) prog runs at once."""
        start = time.monotonic()
        # -p 1: the PROXY header is read within the handshake timeout; -n: the timeout
        # starts again at the switch.
        self.handshake_deadline = start + self.options.handshake_timeout
        self.last_progress = start
        for fd in (self.client_in, self.client_out, self.prog.stdin, self.prog.stdout,
                   self.prog.control_in):
            if fd is not None:
                _nonblocking(fd)
        if self.cleartext and self.proxy is None:
            self._start_cleartext()

    def _handshaking(self) -> bool:
        """Before the handshake completed (or the PROXY header was read): the handshake
        timeout applies, and the client's end of file ends the connection."""
        return self.proxy is not None or not (self.cleartext or self.tls_up)

    def _over(self) -> bool:
        """Whether the connection is over; on the way, the half-closes that lead there: the
        client's end of file reaches prog's stdin, prog's reaches the client."""
        if self.failed or self.client_gone:
            return True
        if self.client_ended and not self.to_prog:
            self._close_prog_stdin()
        if self.prog_out_ended and not self.to_client:
            self._shut_client_output()
            self._end_prog_input()
            if self.client_ended or self.prog.poll() is not None:
                return True
        return self._handshaking() and self.client_ended

    def _readers(self) -> list[int]:
        readers = []
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
        return readers

    def _writers(self) -> list[int]:
        writers = []
        if self.to_client and not self.out_shut:
            writers.append(self.client_out)
        if self.to_prog and not self.prog_in_closed \
                and (self.cleartext_left or not self.ack_due and self._tls_gate_open()):
            writers.append(self.prog.stdin)
        return writers

    def _deadline(self) -> float:
        deadline = self.last_progress + self.options.timeout
        if self._handshaking():
            deadline = min(deadline, self.handshake_deadline)
        return deadline

    def _timed_out(self, now: float) -> None:
        if self._handshaking() and now >= self.handshake_deadline:
            log.info("timeout reading the PROXY header" if self.proxy is not None
                     else "handshake timeout")
        else:
            log.info("network timeout")
        self.failed = True

    def _wait(self, now: float, deadline: float) -> float:
        """How long select() may sleep: until the deadline, or sooner for what no
        descriptor announces."""
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
        return wait

    def _step(self, can_read: list[int], can_write: list[int]) -> None:
        """One round's I/O on the descriptors select() found ready."""
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
