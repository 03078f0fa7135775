"""The network process: client fds <-> TLS engine <-> prog's pipes, with the timeouts.

Rule: this process jails itself before it reads a byte from the client and never holds a
secret (every secret operation goes to the key process). All I/O is non-blocking and driven by
one poll loop; each buffer is bounded, so a slow side stops the reading of the other.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import socket
import stat
import time

from . import certfiles, child, jail, log, sslenv
from .keyclient import KeyProcessDied, start_key_process
from .sslenv import ClientIdentity
from .tls import suites
from .tls.events import (AlertReceived, ApplicationData, ClientHelloReceived, ConnectionFailed,
                         HandshakeComplete, PeerClosed)
from .tls.secrets import KeyServiceError
from .tls.server import ServerConnection

EXIT_FATAL = 111
READ_SIZE = 1 << 18         # bytes per read from the client or from prog
BUFFER_LIMIT = 1 << 20      # stop reading one side while this much waits for the other


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


class Relay:
    """One connection's loop. `client_in`/`client_out` are fd 0 and fd 1 (a socket or pipes)."""

    def __init__(self, conn: ServerConnection, keys, prog: child.Prog, options,
                 client_in: int = 0, client_out: int = 1) -> None:
        self.conn = conn
        self.keys = keys
        self.prog = prog
        self.options = options
        self.client_in = client_in
        self.client_out = client_out
        # Made before the jail: wrapping the fd needs no new descriptor, but we do it while
        # everything is still allowed. detach() at the end leaves fd 1 to the process exit.
        self.client_sock = socket.socket(fileno=client_out) if _is_socket(client_out) else None
        self.to_client = bytearray()
        self.to_prog = bytearray()
        self.client_ended = False     # no more bytes from the client
        self.client_gone = False      # the client cannot take our bytes any more
        self.prog_out_ended = False   # prog closed its stdout
        self.prog_in_closed = False
        self.out_shut = False         # our write side to the client is shut
        self.started = False          # prog was told to run
        self.failed = False
        self.env: dict[str, str] = {}
        self._registered: set[int] = set()

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
        for path, cand in zip(paths, candidates):
            reason = getattr(cand, "reason", None)
            if reason is not None:
                if getattr(cand, "missing", False):
                    log.debug(f"{path}: file does not exist")
                else:
                    log.warning(f"{path}: {reason}")
        return self.conn.choose_certificate(candidates)

    def _handshake_complete(self, done: HandshakeComplete) -> None:
        log.info(f"handshake: {done.version_name} {done.cipher} {done.group} "
                 f"sni={done.sni or '-'}")
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
            data = os.read(self.client_in, READ_SIZE)
        except BlockingIOError:
            return
        except OSError as e:
            log.debug(f"reading from the client: {log.oserror_text(e)}")
            data = b""
        if not data:
            self.client_ended = True
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

    def _read_prog(self) -> None:
        try:
            data = os.read(self.prog.stdout, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.conn.send(data)
        else:
            self.prog_out_ended = True
            self.conn.close()
        self.to_client += self.conn.outgoing()

    def _write_prog(self) -> None:
        try:
            n = os.write(self.prog.stdin, self.to_prog)
        except BlockingIOError:
            return
        except OSError:
            # prog stopped reading: what the client still sends has nowhere to go.
            self.to_prog.clear()
            self._close_prog_stdin()
            return
        del self.to_prog[:n]

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
        # select(), not poll(): in the jail RLIMIT_NOFILE is 0, and Linux refuses a poll()
        # over more descriptors than that limit (EINVAL); select() has no such check.
        opts = self.options
        start = time.monotonic()
        handshake_deadline = start + opts.handshake_timeout
        last_progress = start
        for fd in (self.client_in, self.client_out, self.prog.stdin, self.prog.stdout):
            _nonblocking(fd)
        while True:
            if self.failed or self.client_gone:
                break
            handshaking = not self.started
            if self.client_ended and not self.to_prog:
                self._close_prog_stdin()
            if self.prog_out_ended and not self.to_client:
                self._shut_client_output()
                if self.client_ended or self.prog.poll() is not None:
                    break
            if handshaking and self.client_ended:
                break
            readers = []
            writers = []
            if not self.client_ended and len(self.to_prog) < BUFFER_LIMIT:
                readers.append(self.client_in)
            if self.started and not self.prog_out_ended and len(self.to_client) < BUFFER_LIMIT:
                readers.append(self.prog.stdout)
            if self.to_client and not self.out_shut:
                writers.append(self.client_out)
            if self.to_prog and not self.prog_in_closed:
                writers.append(self.prog.stdin)
            now = time.monotonic()
            deadline = last_progress + opts.timeout
            if handshaking:
                deadline = min(deadline, handshake_deadline)
            if now >= deadline:
                log.info("handshake timeout" if handshaking and now >= handshake_deadline
                         else "network timeout")
                self.failed = True
                break
            if not readers and not writers:
                # Only prog's exit is awaited (its stdout closed, the client still open).
                time.sleep(min(0.05, deadline - now))
                continue
            wait = deadline - now
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
            if self.client_in in can_read:
                self._read_client()
            if self.client_out in can_write and self.to_client:
                self._write_client()
            if self.prog.stdout in can_read:
                self._read_prog()
            if self.prog.stdin in can_write and self.to_prog:
                self._write_prog()
        return self._finish()

    def _finish(self) -> int:
        # Best effort: the alert or close_notify still queued goes out, without waiting long.
        if self.to_client and not self.client_gone and not self.out_shut:
            try:
                fcntl.fcntl(self.client_out, fcntl.F_SETFL,
                            fcntl.fcntl(self.client_out, fcntl.F_GETFL) & ~os.O_NONBLOCK)
                os.write(self.client_out, self.to_client[:1 << 16])
            except OSError:
                pass
        self._close_prog_stdin()
        self.prog.close_stdout()
        if not self.started:
            self.prog.abort()
            self.prog.wait()
            return EXIT_FATAL
        status = self.prog.wait(timeout=self.options.timeout)
        if self.failed and status is None:
            return EXIT_FATAL
        return EXIT_FATAL if status is None else status


def run(options) -> int:
    """Serve one connection on fd 0/1; returns the exit status (prog's, or 111)."""
    log.setup("tlswrapper", options.verbosity)
    addresses = child.connection_addresses()
    log.set_prefix(log.client_prefix(addresses.get("TCPREMOTEIP"),
                                     addresses.get("TCPREMOTEPORT")))
    try:
        config = options.server_config()
        jail.prepare()
        account = jail.lookup_account(options.jail_user) if options.jail_user else None
        jail_dir = options.jail_dir

        def jail_key_process() -> None:
            jail.jail(account, jail_dir)

        keys, _key_pid = start_key_process(jail_key_process)
        anchor_pem = None
        if options.anchor is not None:
            # -a: the key process reads the file while privileged (before it jails); we parse
            # it after our own jail, as the C version does. clientcert (cryptography's X.509)
            # is imported now: nothing can be loaded in the jail.
            from . import clientcert
            anchor_pem = keys.read_anchor(options.anchor_path)
        prog = child.start_prog(options.prog, user=options.user,
                                user_from_cert=options.user_from_cert is not None)
    except (OSError, jail.JailError, child.ChildError) as e:
        log.fatal(f"unable to start: {e}")
        return EXIT_FATAL
    except (KeyServiceError, KeyProcessDied) as e:
        log.fatal(str(e))
        return EXIT_FATAL
    relay = Relay(ServerConnection(config, keys), keys, prog, options)
    relay.env = addresses
    try:
        jail.jail(account, jail_dir)
    except jail.JailError as e:
        log.fatal(f"unable to create jail: {e}")
        prog.abort()
        return EXIT_FATAL
    if anchor_pem is not None:
        try:
            verifier = clientcert.ClientCertificates.from_pem(anchor_pem)
        except clientcert.AnchorError as e:
            log.fatal(f"unable to parse anchor PEM file '{options.anchor_path}' ({e})")
            prog.abort()
            return EXIT_FATAL
        relay.conn = ServerConnection(verifier.server_config(config), keys)
    try:
        return relay.run()
    except KeyProcessDied as e:
        log.fatal(f"key process: {e}")
        prog.abort()
        return EXIT_FATAL
