"""`tlswrapper-smtp [options] prog`: STARTTLS for an SMTP server that has none (SPEC section 3).

Sits between `tlswrapper -n` (the client on fd 0/1, the control pipe on fd 5, the
acknowledgement pipe on fd 6) and prog, an inetd-style SMTP server started at once with
stdin/stdout on pipes (fd 5 and 6 are not passed on). The dialogue is relayed command by
command: one client line, then the server's whole reply.

Rule: the process jails itself (after starting prog, resolving the policy server in a separate
process and creating its sockets) before it reads a byte from the client; every line is
bounded; the DATA body is streamed through untouched; after STARTTLS nothing the client sent
in cleartext is kept. Exit status: prog's; 111 on our failure; 100 for a usage error.
"""

from __future__ import annotations

import os
import secrets
import select
import socket
import time

from tlswrapper import jail, log
from tlswrapper.commands.companion import (Address, Failure, connect_first, make_sockets,
                                           parse_jail_dir, parse_port, resolve, verbosity_of,
                                           warm_up)
from tlswrapper.commands.optscan import (OptionError, UsageError, check_account, parse_timeout,
                                         run_main, split_options)
from tlswrapper.exits import EXIT_FAILURE
# CONTROL_FD (5): we write the zero byte here; ACK_FD (6): tlswrapper answers with one there.
from tlswrapper.net.prog import (ACK_FD, CONTROL_FD, ChildError, Prog, connection_addresses,
                                 drop_inherited, start_prog)
from tlswrapper.tls.frozen import Frozen, init

# typing is not imported at run time (each connection starts this command anew).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import NoReturn

USAGE = "tlswrapper-smtp [options] prog [args...]"
DEFAULT_SESSION_TIMEOUT = 600     # -t
DEFAULT_IO_TIMEOUT = 15           # -T

# The C version's limits (20260501), each answered as RFC 5321 4.5.3.1 has it: a command line
# up to MAX_LINE bytes, CRLF included (RFC 5321's 512 is a minimum a server must accept:
# extensions such as SIZE=, AUTH= and SMTPUTF8 addresses make commands longer), else 500; a
# MAIL FROM or RCPT TO address up to MAX_ADDRESS, else 501 (4.5.3.1.10, path too long); at most
# MAX_RECIPIENTS recipients and MAX_RECIPIENT_BYTES of their addresses per transaction, else
# 452 (4.5.3.1.10: too many recipients, the client sends the rest in another transaction).
# A server reply line gets MAX_LINE too; a reply at most MAX_REPLY_LINES lines.
MAX_LINE = 4096
MAX_ADDRESS = 2048
MAX_RECIPIENTS = 256
MAX_RECIPIENT_BYTES = 64 * 1024
MAX_REPLY_LINES = 100
READ_SIZE = 1 << 16
BODY_BUFFER = 1 << 18             # DATA body bytes waiting for the server, at most
POLICY_REPLY_LIMIT = 8192
# Unconnected sockets kept for the policy server (in the jail no new ones can be made).
POLICY_SOCKETS = 4

# Extensions we take out of the server's EHLO reply: STARTTLS is ours to offer; CHUNKING
# (BDAT) sends binary chunks that a line relay cannot follow.
STRIP_EXTENSIONS = (b"STARTTLS", b"CHUNKING", b"BINARYMIME")


class Timeout(Failure):
    pass


class Ended(Exception):
    """A side closed; the session ends."""


class Options(Frozen):
    __slots__ = ("verbosity", "session_timeout", "io_timeout", "user", "greylist",
                 "fail_closed", "jail_dir", "jail_user", "prog")
    verbosity: int
    session_timeout: int
    io_timeout: int
    user: str | None
    greylist: tuple[str, int] | None
    fail_closed: bool
    jail_dir: str
    jail_user: str | None
    prog: tuple[str, ...]

    def __init__(self, verbosity: int = log.DEFAULT,
                 session_timeout: int = DEFAULT_SESSION_TIMEOUT,
                 io_timeout: int = DEFAULT_IO_TIMEOUT, user: str | None = None,
                 greylist: tuple[str, int] | None = None, fail_closed: bool = False,
                 jail_dir: str = jail.DEFAULT_JAIL_DIR, jail_user: str | None = None,
                 prog: tuple[str, ...] = ()) -> None:
        init(self, "verbosity", verbosity)
        init(self, "session_timeout", session_timeout)
        init(self, "io_timeout", io_timeout)
        init(self, "user", user)
        init(self, "greylist", greylist)
        init(self, "fail_closed", fail_closed)
        init(self, "jail_dir", jail_dir)
        init(self, "jail_user", jail_user)
        init(self, "prog", prog)


def parse_hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port:
        raise OptionError(f"unable to parse greylist host:port from the string: "
                          f"'{log.escape(value)}'")
    try:
        return host, parse_port(port)
    except OptionError:
        raise OptionError(f"unable to parse greylist host:port from the string: "
                          f"'{log.escape(value)}'") from None


def parse(args: Sequence[str]) -> Options:
    opts, rest = split_options(args, "qQvcC", "tTugJj")
    verbosity = verbosity_of(opts)
    log.setup(verbosity=verbosity)
    kw: dict[str, object] = {}
    for letter, value in opts:
        if value is None:
            if letter in "cC":
                kw["fail_closed"] = letter == "c"
            continue
        if letter == "t":
            kw["session_timeout"] = parse_timeout("timeout", value)
        elif letter == "T":
            kw["io_timeout"] = parse_timeout("read/write timeout", value)
        elif letter == "u":
            kw["user"] = check_account("u", value)
        elif letter == "g":
            kw["greylist"] = parse_hostport(value)
        elif letter == "J":
            kw["jail_dir"] = parse_jail_dir(value)
        elif letter == "j":
            kw["jail_user"] = check_account("j", value)
    if not rest:
        raise UsageError("no prog given")
    return Options(verbosity=verbosity, prog=tuple(rest), **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- SMTP helpers

def verb_of(line: bytes) -> bytes:
    return line.split(None, 1)[0].upper() if line.strip() else b""


def angle_address(line: bytes) -> str:
    """The address in `MAIL FROM:<a@b> ...` / `RCPT TO:<a@b>`; '' for <> or none."""
    start = line.find(b"<")
    end = line.find(b">", start + 1)
    if start < 0 or end < 0:
        _, _, arg = line.partition(b":")
        parts = arg.split()
        raw = parts[0] if parts else b""
    else:
        raw = line[start + 1:end]
    return raw.decode("utf-8", "replace").strip()


def is_last_reply_line(line: bytes) -> bool:
    return not (len(line) > 3 and line[3:4] == b"-")


def rewrite_ehlo(lines: list[bytes], offer_starttls: bool) -> list[bytes]:
    """The server's EHLO reply with our extensions: STARTTLS added (when we can do it), the
    ones a line relay cannot carry taken out. Anything but a 250 reply is left alone."""
    if not lines or not lines[0].startswith(b"250"):
        return lines
    body = [ln.rstrip(b"\r\n")[4:] for ln in lines]
    head, ext = body[0], body[1:]
    ext = [e for e in ext if e.split(None, 1)[0].upper() not in STRIP_EXTENSIONS
           if e.strip()]
    if offer_starttls:
        ext.append(b"STARTTLS")
    items = [head] + ext
    return [b"250" + (b" " if i == len(items) - 1 else b"-") + item + b"\r\n"
            for i, item in enumerate(items)]


def policy_request(attrs: dict[str, str]) -> bytes:
    out = bytearray()
    for k, v in attrs.items():
        clean = "".join(ch for ch in v if ch not in "\r\n\0")[:512]
        out += f"{k}={clean}\n".encode("utf-8", "replace")
    return bytes(out + b"\n")


def policy_verdict(action: str) -> bytes | None:
    """None to pass the RCPT on; else the reply line to give the client.

    dunno/ok (and postgrey's `prepend X-Greylist: ...`, its first pass after the delay) pass;
    reject or a 5xx code gives 553; anything else (defer_if_permit, defer, 4xx) 450."""
    word = action.split(None, 1)[0].lower() if action.strip() else ""
    if word in ("dunno", "ok", "prepend"):
        return None
    if word == "reject" or (len(word) == 3 and word.startswith("5") and word.isdigit()):
        return b"553 5.7.1 recipient rejected by policy\r\n"
    return b"450 4.2.0 greylisted, try again later\r\n"


# --------------------------------------------------------------------------- the session

class Session:
    def __init__(self, options: Options, prog: Prog, *, client_in: int = 0,
                 client_out: int = 1, control: int | None = None, ack: int | None = None,
                 policy: list[tuple[Address, socket.socket]] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.o = options
        self.prog = prog
        self.cin, self.cout = client_in, client_out
        self.control, self.ack = control, ack
        self.policy_candidates = list(policy or [])
        self.policy_sock: socket.socket | None = None
        self.env = env or {}
        self.cbuf = bytearray()          # client bytes not yet handled
        self.sbuf = bytearray()          # server bytes not yet handled
        self.client_eof = False
        self.tls = False
        self.helo = ""
        self.sender = ""
        self.instance = ""
        self.recipients = 0              # accepted in this transaction (MAX_RECIPIENTS)
        self.recipient_bytes = 0         # their addresses' bytes (MAX_RECIPIENT_BYTES)
        self.quit = False                # the client said QUIT (else exit 111, as the C version)
        self.deadline = time.monotonic() + options.session_timeout

    # ---- low-level I/O with timeouts
    def _wait(self, rfds: list[int], wfds: list[int]) -> tuple[list[int], list[int]]:
        now = time.monotonic()
        if now >= self.deadline:
            raise Timeout("session timeout")
        left = min(self.o.io_timeout, self.deadline - now)
        while True:
            try:
                r, w, _ = select.select(rfds, wfds, [], left)
                break
            except InterruptedError:
                continue
        if not r and not w:
            raise Timeout("session timeout" if time.monotonic() >= self.deadline
                          else "read/write timeout")
        return r, w

    def _write(self, fd: int, data: bytes, who: str) -> None:
        view = memoryview(data)
        while view:
            self._wait([], [fd])
            try:
                n = os.write(fd, view)
            except BlockingIOError:
                continue
            except OSError as e:
                raise Ended(f"{who} closed ({log.oserror_text(e)})") from None
            view = view[n:]

    def to_client(self, data: bytes) -> None:
        self._write(self.cout, data, "client")

    def to_server(self, data: bytes) -> None:
        self._write(self.prog.stdin, data, "server")

    @staticmethod
    def _read(fd: int) -> bytes | None:
        """Bytes read, b"" at end of input (or a read error), None when nothing is ready."""
        try:
            return os.read(fd, READ_SIZE)
        except BlockingIOError:
            return None
        except OSError:
            return b""

    def client_line(self) -> bytes | None:
        """The next client line (to its LF, at most MAX_LINE bytes); None at end of input.
        An over-long line is answered with 500 and skipped without being buffered."""
        skipping = False
        while True:
            nl = self.cbuf.find(b"\n")
            if nl >= 0:
                line = bytes(self.cbuf[:nl + 1])
                del self.cbuf[:nl + 1]
                if skipping or len(line) > MAX_LINE:
                    log.info("client line too long, refused")
                    self.to_client(b"500 5.5.2 line too long\r\n")
                    skipping = False
                    continue
                return line
            if len(self.cbuf) >= MAX_LINE:
                skipping = True
                self.cbuf.clear()
            if self.client_eof:
                return None
            r, _ = self._wait([self.cin, self.prog.stdout], [])
            if self.prog.stdout in r:
                # Unsolicited server output (a 421 before it hangs up): pass it on.
                data = self._read(self.prog.stdout)
                if data is None:
                    pass
                elif not data:
                    raise Ended("server closed its output")
                else:
                    self.to_client(data)
            if self.cin in r:
                data = self._read(self.cin)
                if data is None:
                    continue
                if not data:
                    self.client_eof = True
                    if self.cbuf and not skipping:
                        log.debug("client ended in the middle of a line")
                    return None
                self.cbuf += data

    def server_reply(self) -> list[bytes]:
        """The server's next complete reply, as lines."""
        lines: list[bytes] = []
        while True:
            nl = self.sbuf.find(b"\n")
            if nl >= 0:
                line = bytes(self.sbuf[:nl + 1])
                del self.sbuf[:nl + 1]
                if len(line) > MAX_LINE:
                    raise Failure("server reply line too long")
                lines.append(line)
                if is_last_reply_line(line):
                    return lines
                if len(lines) >= MAX_REPLY_LINES:
                    raise Failure("server reply has too many lines")
                continue
            if len(self.sbuf) >= MAX_LINE:
                raise Failure("server reply line too long")
            self._wait([self.prog.stdout], [])
            data = self._read(self.prog.stdout)
            if data is None:
                continue
            if not data:
                raise Ended("server closed its output")
            self.sbuf += data

    def relay_reply(self) -> list[bytes]:
        lines = self.server_reply()
        self.to_client(b"".join(lines))
        return lines

    # ---- the dialogue
    def run(self) -> None:
        self.relay_reply()                     # the greeting
        while True:
            line = self.client_line()
            if line is None:
                return
            verb = verb_of(line)
            if verb in (b"MAIL", b"RCPT") and len(angle_address(line).encode()) > MAX_ADDRESS:
                log.info(f"{verb.decode().lower()}: address too long, refused")
                self.to_client(b"501 5.1.3 address too long\r\n")
                continue
            if verb in (b"EHLO", b"HELO", b"MAIL", b"RSET", b"DATA"):
                # A new transaction, or the end of one (RFC 5321 4.1.4): the recipient
                # limits count afresh.
                self.recipients = self.recipient_bytes = 0
            if verb in (b"EHLO", b"HELO"):
                self.helo = line.split(None, 1)[1].strip().decode("utf-8", "replace") \
                    if len(line.split(None, 1)) > 1 else ""
                self.to_server(line)
                reply = self.server_reply()
                if verb == b"EHLO":
                    reply = rewrite_ehlo(reply, self.can_starttls())
                self.to_client(b"".join(reply))
            elif verb == b"STARTTLS":
                self.starttls(line)
            elif verb == b"BDAT":
                self.to_client(b"502 5.5.1 BDAT not available\r\n")
            elif verb == b"RCPT":
                recipient = angle_address(line)
                size = len(recipient.encode())
                if self.recipients >= MAX_RECIPIENTS \
                        or self.recipient_bytes + size > MAX_RECIPIENT_BYTES:
                    log.info(f"rcpt {recipient}: too many recipients, refused")
                    self.to_client(b"452 4.5.3 too many recipients\r\n")
                    continue
                refusal = self.check_policy(recipient) if self.o.greylist else None
                if refusal is not None:
                    log.info(f"rcpt {recipient}: {refusal.decode().strip()}")
                    self.to_client(refusal)
                    continue
                self.to_server(line)
                reply = self.relay_reply()
                if reply[-1][:1] == b"2":
                    self.recipients += 1
                    self.recipient_bytes += size
                log.info(f"rcpt {recipient}: {reply[-1][:3].decode('ascii', 'replace')}")
            elif verb == b"MAIL":
                self.sender = angle_address(line)
                self.instance = secrets.token_hex(8)
                self.to_server(line)
                reply = self.relay_reply()
                log.info(f"mail from {self.sender}: {reply[-1][:3].decode('ascii', 'replace')}")
            elif verb == b"DATA":
                self.to_server(line)
                reply = self.relay_reply()
                if reply[-1].startswith(b"354"):
                    self.body()
                    reply = self.relay_reply()
                    log.info(f"data: {reply[-1][:3].decode('ascii', 'replace')}")
            elif verb == b"QUIT":
                self.quit = True
                self.to_server(line)
                self.relay_reply()
                return
            else:
                if verb == b"RSET":
                    self.sender = ""
                self.to_server(line)
                self.relay_reply()

    def body(self) -> None:
        """Stream the DATA body to the server untouched, up to and including CRLF.CRLF."""
        # The body starts at a line start: the window is "\r\n" + what has passed, so that
        # the terminator is found across read boundaries.
        tail = b"\r\n"
        while True:
            if self.cbuf:
                data = bytes(self.cbuf)
                self.cbuf.clear()
                window = tail + data
                end = window.find(b"\r\n.\r\n")
                if end >= 0:
                    cut = end + 5 - len(tail)
                    self.to_server(data[:cut])
                    self.cbuf[:0] = data[cut:]
                    return
                self.to_server(data)
                tail = window[-4:]
                continue
            if self.client_eof:
                raise Ended("client closed in the middle of DATA")
            self._wait([self.cin], [])
            data = self._read(self.cin)
            if data is None:
                continue
            if not data:
                self.client_eof = True
                continue
            self.cbuf += data[:BODY_BUFFER]

    def can_starttls(self) -> bool:
        return not self.tls and self.control is not None and self.ack is not None

    def starttls(self, line: bytes) -> None:
        if not self.can_starttls():
            self.to_client(b"502 5.5.1 STARTTLS not available\r\n")
            return
        if line.strip().upper() != b"STARTTLS":
            self.to_client(b"501 5.5.4 STARTTLS takes no parameters\r\n")
            return
        # The client's cleartext after the STARTTLS line must not survive into the TLS
        # session (CVE-2011-0411 class): what we have read is dropped now, what arrives
        # before tlswrapper's acknowledgement is dropped below.
        if self.cbuf:
            log.info(f"dropped {len(self.cbuf)} bytes pipelined after STARTTLS")
            self.cbuf.clear()
        self.to_client(b"220 2.0.0 ready to start TLS\r\n")
        control, ack = self.control, self.ack
        self.control = None
        if control is None or ack is None:      # can_starttls() checked both
            raise Failure("internal error: no control pipe")
        self._write(control, b"\0", "tlswrapper control pipe")
        dropped = 0
        while True:
            r, _ = self._wait([ack, self.cin], [])
            if ack in r:
                # Checked first: once the acknowledgement is there, what follows on stdin
                # is the TLS session's.
                try:
                    b = os.read(ack, 1)
                except BlockingIOError:
                    continue
                except OSError:
                    b = b""
                if b != b"\0":
                    raise Ended("TLS handshake failed (no acknowledgement from tlswrapper)")
                # tlswrapper acknowledges once the client's cleartext is in our stdin pipe,
                # before the handshake, and writes nothing from inside TLS there until we
                # have read all of it: what is readable now is cleartext, dropped too.
                while (data := self._read(self.cin)) is not None:
                    if not data:
                        raise Ended("client closed before the TLS handshake")
                    dropped += len(data)
                break
            data = self._read(self.cin)
            if data is None:
                continue
            if not data:
                raise Ended("client closed before the TLS handshake")
            dropped += len(data)
        if dropped:
            log.info(f"dropped {dropped} bytes of cleartext sent before the TLS handshake")
        self.tls = True
        self.ack = None
        log.info("TLS started")
        # A clean start inside TLS: the server forgets any transaction begun in cleartext.
        self.sender = self.helo = ""
        self.recipients = self.recipient_bytes = 0
        self.to_server(b"RSET\r\n")
        self.server_reply()

    # ---- greylisting
    def check_policy(self, recipient: str) -> bytes | None:
        try:
            action = self.ask_policy(recipient)
        except (Failure, OSError) as e:
            reason = str(e) if isinstance(e, Failure) else log.oserror_text(e)
            if self.o.fail_closed:
                log.fatal(f"unable to ask the greylist server: {reason}")
                raise PolicyUnavailable(reason) from None
            log.warning(f"unable to ask the greylist server: {reason} (fail-open: accepted)")
            return None
        log.debug(f"greylist server: action={action}")
        return policy_verdict(action)

    def ask_policy(self, recipient: str) -> str:
        attrs = {
            "request": "smtpd_access_policy",
            "protocol_state": "RCPT",
            "protocol_name": "ESMTP" if self.helo else "SMTP",
            "client_address": self.env.get("TCPREMOTEIP", ""),
            "client_name": self.env.get("TCPREMOTEHOST") or "unknown",
            "reverse_client_name": self.env.get("TCPREMOTEHOST") or "unknown",
            "helo_name": self.helo,
            "sender": self.sender,
            "recipient": recipient,
            "instance": self.instance or secrets.token_hex(8),
            "encryption_protocol": "TLS" if self.tls else "",
        }
        request = policy_request(attrs)
        for attempt in range(2):       # a kept connection may have been closed meanwhile
            if self.policy_sock is None:
                if not self.policy_candidates:
                    raise Failure("no socket left for the greylist server")
                _addr, sock = connect_first(self.policy_candidates[:1], self.o.io_timeout)
                self.policy_candidates = self.policy_candidates[1:]
                self.policy_sock = sock
            try:
                return self._policy_exchange(request)
            except (Failure, OSError):
                self.policy_sock.close()
                self.policy_sock = None
                if attempt or not self.policy_candidates:
                    raise
        raise Failure("greylist server unavailable")

    def _policy_exchange(self, request: bytes) -> str:
        if self.policy_sock is None:
            raise Failure("no connection to the greylist server")
        fd = self.policy_sock.fileno()
        self._write(fd, request, "greylist server")
        buf = bytearray()
        while b"\n\n" not in buf:
            if len(buf) > POLICY_REPLY_LIMIT:
                raise Failure("greylist answer too long")
            self._wait([fd], [])
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                continue
            if not data:
                raise Failure("greylist server closed the connection")
            buf += data
        for raw in bytes(buf).split(b"\n"):
            if raw.startswith(b"action="):
                return raw[7:].decode("utf-8", "replace").strip()
        raise Failure("no action in the greylist answer")


class PolicyUnavailable(Failure):
    pass


def fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def run(options: Options) -> int:
    log.setup("tlswrapper-smtp", options.verbosity)
    env = connection_addresses(0)
    log.set_prefix(log.client_prefix(env.get("TCPREMOTEIP"), env.get("TCPREMOTEPORT")))
    have_tls = fd_open(CONTROL_FD) and fd_open(ACK_FD)
    prog = None
    try:
        warm_up()
        account = jail.lookup_account(options.jail_user) if options.jail_user else None
        policy: list[tuple[Address, socket.socket]] = []
        if options.greylist is not None:
            host, port = options.greylist
            try:
                addrs = resolve(host, port, options.io_timeout, account)
            except Failure as e:
                if options.fail_closed:
                    raise
                log.warning(f"{e} (fail-open: no greylisting)")
                addrs = []
            for _ in range(POLICY_SOCKETS):
                policy += make_sockets(addrs[:1]) if addrs else []
        try:
            # Inherited descriptors reach the server, except fd 5 and 6 (ours, SPEC section 3).
            prog = start_prog(options.prog, user=options.user,
                                    withhold=(CONTROL_FD, ACK_FD))
            drop_inherited(withhold=(CONTROL_FD, ACK_FD))
        except ChildError as e:
            raise Failure(str(e)) from None
        prog.go({})
        for fd in (0, 1, prog.stdin, prog.stdout) + ((CONTROL_FD, ACK_FD) if have_tls else ()):
            os.set_blocking(fd, False)
        try:
            jail.jail(account, options.jail_dir)
        except jail.JailError as e:
            raise Failure(f"unable to create jail: {e}") from None
    except Failure as e:
        log.fatal(str(e))
        if prog is not None:
            prog.close()
            prog.wait(timeout=options.io_timeout)
        return EXIT_FAILURE
    session = Session(options, prog, control=CONTROL_FD if have_tls else None,
                      ack=ACK_FD if have_tls else None, policy=policy, env=env)
    failed = False
    try:
        session.run()
    except PolicyUnavailable:
        failed = True
        try:
            session.to_client(b"421 4.3.0 greylist service unavailable, closing\r\n")
        except (Failure, Ended):
            pass
    except Timeout as e:
        log.info(str(e))
        failed = True
        try:
            os.write(1, b"421 4.4.2 timeout, closing\r\n")
        except OSError:
            pass
    except Failure as e:
        log.fatal(str(e))
        failed = True
    except Ended as e:
        log.debug(str(e))
    if not session.quit and not failed:
        # As the C version: a client that leaves without QUIT (after STARTTLS, say, or
        # when the handshake failed) ends the session with 111, whatever the server says.
        log.info("client left without QUIT")
        failed = True
    # The server sees end of input; what it still says goes to the client, briefly.
    prog.close_stdin()
    _drain(prog.stdout, session, min(options.io_timeout, 5))
    prog.close_stdout()
    status = prog.wait(timeout=options.io_timeout)
    if status is None:
        try:
            os.kill(prog.pid, 9)
        except OSError:
            pass
        prog.wait(timeout=5)
        return EXIT_FAILURE
    return EXIT_FAILURE if failed else status


def _drain(fd: int, session: Session, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    out = bytearray(session.sbuf)
    while time.monotonic() < deadline:
        try:
            r, _, _ = select.select([fd], [], [], deadline - time.monotonic())
        except InterruptedError:
            continue
        if not r:
            break
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            continue
        except OSError:
            break
        if not data:
            break
        out += data
    if out:
        try:
            os.set_blocking(1, True)
            os.write(1, bytes(out[:1 << 16]))
        except OSError:
            pass


def main(argv: Sequence[str] | None = None) -> NoReturn:
    run_main("tlswrapper-smtp", USAGE, parse, run, argv)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
