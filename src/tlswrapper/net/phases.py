"""The phases before TLS: the PROXY header (-p) and delayed encryption's cleartext (-n)
up to prog's switch (its zero byte on fd 5, our ack on fd 6).

Rule: no byte crosses a phase boundary out of order: nothing past the PROXY header is read
before the header is complete, and nothing from inside TLS reaches prog before the cleartext
the client sent ahead of the switch (the STARTTLS command injection, CVE-2011-0411).

Phases is a base class of Relay (net/relay.py): its methods share the connection's state
(prog, env, to_prog, to_client, conn, started, failed, cleartext, prog_in_closed, ...) and
call Relay's _handle and _drain_prog_output.
"""

from __future__ import annotations

import array
import fcntl
import os
import termios
import time

from tlswrapper import log
from tlswrapper.net import proxyproto

HOLD_GRACE = 2.0           # -n: how long client bytes that look like TLS wait for the switch
ACK_GRACE = 1.0            # -n: how long the ack waits for prog to read the cleartext (_maybe_ack)
TLS_HANDSHAKE_RECORD = 0x16


def unread(fd: int) -> int:
    """Bytes written to a pipe or socket and not yet read from it, counted without reading
    (FIONREAD; on a pipe it works on either end)."""
    count = array.array("i", [0])
    try:
        fcntl.ioctl(fd, termios.FIONREAD, count)
    except OSError:
        return 0
    return count[0]


class Phases:
    """The -p and -n steps of one connection's loop (see the module's docstring)."""

    def _init_phases(self, options) -> None:
        # -p 0/1/2: the PROXY header comes first (the reader is dropped once it is read).
        version = getattr(options, "proxy_protocol", None)
        self.proxy = proxyproto.ProxyReader(version) if version is not None else None
        # -n: cleartext both ways until prog's zero byte on fd 5 (SPEC section 3).
        self.cleartext = bool(getattr(options, "delayed_encryption", False))
        self.held = bytearray()       # -n: client bytes held back for the switch (see below)
        self.held_since = 0.0
        # -n: client cleartext received before the switch and not yet written to prog's
        # stdin. All of it reaches prog before the zero byte on fd 6 (the ack).
        self.cleartext_left = 0
        self.ack_due = False          # -n: prog asked for TLS; the ack is not written yet
        self.refused = False          # -n: the switch was refused (exit 111)
        self.ack_grace_until = 0.0    # -n: the ack goes out by then even if prog has not read
        # -n: the ack went out with cleartext still unread in prog's stdin pipe: nothing from
        # inside TLS joins it there until prog has read it all.
        self.tls_gate = False

    # ------------------------------------------------------------------ -p
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

    # ------------------------------------------------------------------ -n
    def _cleartext_from_client(self, data: bytes) -> None:
        """-n, before the switch: the client's bytes go to prog's stdin as they are."""
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

    def _hold_expired(self, now: float) -> bool:
        """-n: held bytes whose switch did not come within HOLD_GRACE go to prog after all
        (True: they were moved, the loop starts its round again)."""
        if self.held and self.cleartext and now >= self.held_since + HOLD_GRACE:
            self.to_prog += self.held
            self.held.clear()
            return True
        return False

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
        self._drain_prog_output()
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
        waiting = 0 if self.prog_in_closed else unread(self.prog.stdin)
        if waiting:
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
            log.debug(f"delayed encryption: ack with {waiting} bytes of cleartext unread")
        self.ack_due = False
        if not self._send_ack():
            return
        self.tls_gate = waiting > 0
        # The client's bytes held since the switch are its ClientHello: the handshake starts.
        if self.held:
            data, self.held = bytes(self.held), bytearray()
            self._handle(self.conn.receive(data))
            self.to_client += self.conn.outgoing()

    def _tls_gate_open(self) -> bool:
        if self.tls_gate and (self.prog_in_closed or unread(self.prog.stdin) == 0):
            self.tls_gate = False
        return not self.tls_gate

    def _refuse_switch(self, reason: str) -> None:
        """-n: prog broke the fd 5/6 protocol; as the C version: a log line and exit 111."""
        log.fatal(f"delayed encryption refused: {reason}")
        self.refused = True
        self.failed = True
