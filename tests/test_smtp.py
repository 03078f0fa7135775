"""tlswrapper-smtp against a scripted SMTP server and fake fd 5/6 pipes (no tlswrapper).

The e2e tests (test_e2e_smtp.py) run it behind the real `tlswrapper -n` and in front of exim4.
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from testenv import needs_root, our_command

from tlswrapper.commands import smtp

FAKE_SERVER = r'''
import sys, os
w = sys.stdout.buffer
r = sys.stdin.buffer
log = open(sys.argv[1], "ab", buffering=0)
def out(s):
    w.write(s + b"\r\n"); w.flush()
out(b"220 fake ESMTP")
data = False
for line in r:
    log.write(line)
    if data:
        if line == b".\r\n":
            data = False; out(b"250 queued")
        continue
    v = line[:4].upper()
    if v == b"EHLO":
        out(b"250-fake hello"); out(b"250-PIPELINING"); out(b"250-CHUNKING"); out(b"250 8BITMIME")
    elif v == b"DATA":
        out(b"354 go"); data = True
    elif v == b"QUIT":
        out(b"221 bye"); break
    elif v == b"RSET":
        out(b"250 reset")
    else:
        out(b"250 ok")
'''


# ---------------------------------------------------------------- pure helpers

def test_parse_defaults_and_options():
    o = smtp.parse(["prog", "-x"])
    assert o.prog == ("prog", "-x") and o.session_timeout == 600 and o.io_timeout == 15
    assert o.greylist is None and not o.fail_closed
    o = smtp.parse(["-vv", "-t5", "-T", "3", "-g", "127.0.0.1:10023", "-c", "-J/x", "p"])
    assert (o.session_timeout, o.io_timeout, o.greylist, o.fail_closed, o.jail_dir) == \
        (5, 3, ("127.0.0.1", 10023), True, "/x")
    assert smtp.parse(["-c", "-C", "p"]).fail_closed is False
    assert smtp.parse(["-g", "[::1]:25", "p"]).greylist == ("::1", 25)


@pytest.mark.parametrize("args", [[], ["-x", "p"], ["-g"], ["-t"]])
def test_parse_usage_errors(args):
    with pytest.raises(smtp.UsageError):
        smtp.parse(args)


@pytest.mark.parametrize("args", [["-g", "foo", "p"], ["-g", "h:99999", "p"], ["-t", "0", "p"],
                                  ["-T", "x", "p"], ["-u", "no-such-user-xyz", "p"],
                                  ["-u", "root", "p"], ["-J", "", "p"], ["-t", "+-5", "p"]])
def test_parse_option_errors(args):
    with pytest.raises(smtp.OptionError):
        smtp.parse(args)


def test_rewrite_ehlo():
    reply = [b"250-hi\r\n", b"250-PIPELINING\r\n", b"250-CHUNKING\r\n", b"250 STARTTLS\r\n"]
    assert smtp.rewrite_ehlo(reply, True) == [b"250-hi\r\n", b"250-PIPELINING\r\n",
                                              b"250 STARTTLS\r\n"]
    assert smtp.rewrite_ehlo(reply, False) == [b"250-hi\r\n", b"250 PIPELINING\r\n"]
    assert smtp.rewrite_ehlo([b"250 hi\r\n"], True) == [b"250-hi\r\n", b"250 STARTTLS\r\n"]
    assert smtp.rewrite_ehlo([b"550 no\r\n"], True) == [b"550 no\r\n"]


def test_policy_verdict_and_request():
    assert smtp.policy_verdict("dunno") is None
    assert smtp.policy_verdict("DUNNO") is None
    assert smtp.policy_verdict("PREPEND X-Greylist: delayed 3 seconds") is None
    assert smtp.policy_verdict("reject").startswith(b"553")
    assert smtp.policy_verdict("550 go away").startswith(b"553")
    assert smtp.policy_verdict("DEFER_IF_PERMIT Greylisted").startswith(b"450")
    assert smtp.policy_verdict("").startswith(b"450")
    req = smtp.policy_request({"request": "smtpd_access_policy", "sender": "a\r\nb=c"})
    assert req == b"request=smtpd_access_policy\nsender=ab=c\n\n"


def test_angle_address():
    assert smtp.angle_address(b"MAIL FROM:<a@b> SIZE=10\r\n") == "a@b"
    assert smtp.angle_address(b"MAIL FROM:<>\r\n") == ""
    assert smtp.angle_address(b"RCPT TO:c@d\r\n") == "c@d"


# ---------------------------------------------------------------- the real program

class Run:
    """tlswrapper-smtp with the fake server; optionally fake fd 5 / fd 6 pipes."""

    def __init__(self, tmp: Path, args=(), tls: bool = True, env=None):
        self.server_log = tmp / "server.log"
        script = tmp / "fake_server.py"
        script.write_text(FAKE_SERVER)
        fds = []
        self.c5_r = self.c6_w = None
        pass_fds = ()
        if tls:
            c5_r, c5_w = os.pipe()
            c6_r, c6_w = os.pipe()
            # above 6, so that the shell's redirections below cannot clobber one another
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 20) for fd in (c5_w, c6_r)]
            os.close(c5_w)
            os.close(c6_r)
            c5_w, c6_r = high
            fds = [c5_w, c6_r]
            self.c5_r, self.c6_w = c5_r, c6_w
            pass_fds = (c5_w, c6_r)
            # a small exec wrapper puts the pipe ends on fd 5 and 6 (Popen keeps pass_fds)
            wrap = [sys.executable, "-c",
                    ("import os, sys\n"
                    f"os.dup2({c5_w}, 5); os.dup2({c6_r}, 6)\n"
                    f"os.close({c5_w}); os.close({c6_r})\n"
                    "os.execv(sys.argv[1], sys.argv[1:])")]
        else:
            wrap = []
        full_env = dict(os.environ, TCPREMOTEIP="192.0.2.7", TCPREMOTEPORT="4242",
                        TCPLOCALIP="127.0.0.1", TCPLOCALPORT="25")
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [*wrap, our_command("tlswrapper-smtp"), *args, sys.executable, str(script),
             str(self.server_log)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=pass_fds, env=full_env)
        for fd in fds:
            os.close(fd)
        self.out = b""

    def send(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def expect(self, needle: bytes, timeout: float = 10) -> bytes:
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while needle not in self.out:
            left = deadline - time.monotonic()
            assert left > 0, f"no {needle!r} in {self.out!r}"
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 65536)
                assert chunk, f"EOF, no {needle!r} in {self.out!r}"
                self.out += chunk
        return self.out

    def read_some(self, timeout: float) -> None:
        fd = self.proc.stdout.fileno()
        r, _, _ = select.select([fd], [], [], timeout)
        if r:
            self.out += os.read(fd, 65536)

    def finish(self, timeout: float = 15) -> tuple[int, bytes, str]:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate(timeout=5)
        for fd in (self.c5_r, self.c6_w):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.out += out
        return self.proc.returncode, self.out, err.decode(errors="replace")

    def server_saw(self) -> bytes:
        return self.server_log.read_bytes() if self.server_log.exists() else b""


@pytest.fixture
def runs():
    made = []
    yield made
    for r in made:
        if r.proc.poll() is None:
            r.proc.kill()
            r.proc.wait(timeout=5)


pytestmark = needs_root   # the program jails itself: root is needed to chroot


def test_no_fd56_no_starttls(tmp_path, runs):
    r = Run(tmp_path, tls=False)
    runs.append(r)
    r.expect(b"220 fake")
    r.send(b"EHLO x\r\n")
    out = r.expect(b"250 8BITMIME")
    assert b"STARTTLS" not in out and b"CHUNKING" not in out
    r.send(b"STARTTLS\r\n")
    r.expect(b"502 ")
    r.send(b"QUIT\r\n")
    code, out, err = r.finish()
    assert code == 0, err
    assert b"STARTTLS" not in r.server_saw()


def test_starttls_drops_pipelined_cleartext_and_sends_rset(tmp_path, runs):
    r = Run(tmp_path)
    runs.append(r)
    r.expect(b"220 fake")
    r.send(b"EHLO x\r\n")
    r.expect(b"250 STARTTLS\r\n")
    # The attack: commands in the same write as STARTTLS.
    r.send(b"STARTTLS\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\n")
    r.expect(b"220 2.0.0 ready to start TLS\r\n")
    ready, _, _ = select.select([r.c5_r], [], [], 10)
    assert ready and os.read(r.c5_r, 1) == b"\0"
    # More cleartext before the handshake completes: dropped as well.
    r.send(b"DATA\r\n")
    time.sleep(0.3)
    os.write(r.c6_w, b"\0")
    # The ack comes at the switch, before the handshake: what is inside TLS comes after the
    # handshake's round trips, not at once.
    time.sleep(0.3)
    r.send(b"EHLO y\r\n")
    out = r.expect(b"250 8BITMIME\r\n", 10)
    after = out.split(b"ready to start TLS\r\n", 1)[1]
    assert b"STARTTLS" not in after           # not offered a second time
    r.send(b"STARTTLS\r\n")
    r.expect(b"502 ")
    r.send(b"MAIL FROM:<good@x>\r\nQUIT\r\n")
    code, out, err = r.finish()
    assert code == 0, err
    seen = r.server_saw()
    assert b"evil" not in seen and b"victim" not in seen and b"DATA" not in seen
    assert seen.index(b"RSET\r\n") < seen.index(b"EHLO y")
    assert b"good@x" in seen
    # the RSET reply is swallowed
    assert b"250 reset" not in out


def test_handshake_failure_ends_session(tmp_path, runs):
    r = Run(tmp_path)
    runs.append(r)
    r.expect(b"220 fake")
    r.send(b"STARTTLS\r\n")
    r.expect(b"220 2.0.0")
    os.close(r.c6_w)
    r.c6_w = None
    code, _out, err = r.finish()
    assert code == 0 or code == 111
    assert "Traceback" not in err


def test_long_line_refused_session_continues(tmp_path, runs):
    r = Run(tmp_path, tls=False)
    runs.append(r)
    r.expect(b"220 fake")
    r.send(b"NOOP " + b"a" * 5000 + b"\r\n")
    r.expect(b"500 5.5.2 line too long")
    r.send(b"NOOP\r\nQUIT\r\n")
    code, out, _err = r.finish()
    assert code == 0 and out.endswith(b"221 bye\r\n")
    assert b"aaaa" not in r.server_saw()


def test_endless_line_bounded(tmp_path, runs):
    """A client that never sends LF: refused, not buffered (memory stays flat)."""
    r = Run(tmp_path, tls=False)
    runs.append(r)
    r.expect(b"220 fake")
    for _ in range(64):
        r.send(b"x" * 65536)              # 4 MiB without a newline
    r.send(b"\r\nQUIT\r\n")
    r.expect(b"221 bye")
    code, out, _err = r.finish()
    assert code == 0
    assert out.count(b"500 5.5.2") == 1


def test_data_body_untouched(tmp_path, runs):
    r = Run(tmp_path, tls=False)
    runs.append(r)
    r.expect(b"220 fake")
    body = (b"Subject: x\r\n\r\n..dot stuffed\r\n" + b"L" * 5000 + b"\r\n"
            + b"STARTTLS\r\nQUIT\r\n" + b"\r\n.\r\n")
    r.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n")
    r.expect(b"354 go")
    for i in range(0, len(body), 7):        # terminator split across writes
        r.send(body[i:i + 7])
    r.expect(b"250 queued")
    r.send(b"QUIT\r\n")
    code, _out, err = r.finish()
    assert code == 0, err
    assert body in r.server_saw()


class PolicyServer:
    """A scripted postfix policy server: answers each request with the next action."""

    def __init__(self, actions):
        self.actions = list(actions)
        self.requests: list[dict[str, str]] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(5)
        self.sock.settimeout(15)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        conn.settimeout(15)
        buf = b""
        try:
            while self.actions:
                while b"\n\n" not in buf:
                    data = conn.recv(4096)
                    if not data:
                        return
                    buf += data
                req, buf = buf.split(b"\n\n", 1)
                self.requests.append(dict(line.split("=", 1)
                                          for line in req.decode().split("\n") if line))
                conn.sendall(f"action={self.actions.pop(0)}\n\n".encode())
        finally:
            conn.close()

    def close(self):
        self.sock.close()
        self.thread.join(5)


def test_greylist_actions(tmp_path, runs):
    ps = PolicyServer(["DEFER_IF_PERMIT Greylisted", "reject", "dunno",
                       "PREPEND X-Greylist: delayed"])
    try:
        r = Run(tmp_path, args=("-g", f"127.0.0.1:{ps.port}"), tls=False)
        runs.append(r)
        r.expect(b"220 fake")
        r.send(b"EHLO client.example\r\nMAIL FROM:<s@a>\r\n")
        r.expect(b"250 ok")
        for rcpt, want in ((b"r1@b", b"450 "), (b"r2@b", b"553 "), (b"r3@b", b"250 ok"),
                           (b"r4@b", b"250 ok")):
            before = len(r.out)
            r.send(b"RCPT TO:<" + rcpt + b">\r\n")
            deadline = time.monotonic() + 10
            while want not in r.out[before:]:
                assert time.monotonic() < deadline, (rcpt, r.out[before:], r.proc.poll())
                r.read_some(0.2)
        r.send(b"QUIT\r\n")
        code, _out, err = r.finish()
        assert code == 0, err
        seen = r.server_saw()
        assert b"r1@b" not in seen and b"r2@b" not in seen
        assert b"r3@b" in seen and b"r4@b" in seen
        req = ps.requests[0]
        assert req["request"] == "smtpd_access_policy" and req["protocol_state"] == "RCPT"
        assert req["client_address"] == "192.0.2.7" and req["sender"] == "s@a"
        assert req["recipient"] == "r1@b" and req["helo_name"] == "client.example"
    finally:
        ps.close()


def _dead_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_greylist_fail_open(tmp_path, runs):
    r = Run(tmp_path, args=("-v", "-g", f"127.0.0.1:{_dead_port()}"), tls=False)
    runs.append(r)
    r.expect(b"220 fake")
    r.send(b"MAIL FROM:<s@a>\r\nRCPT TO:<r@b>\r\nQUIT\r\n")
    code, out, err = r.finish()
    assert code == 0 and b"221 bye" in out
    assert b"r@b" in r.server_saw()
    assert "fail-open" in err


def test_greylist_fail_closed(tmp_path, runs):
    r = Run(tmp_path, args=("-c", "-g", f"127.0.0.1:{_dead_port()}"), tls=False)
    runs.append(r)
    r.expect(b"220 fake")
    r.send(b"MAIL FROM:<s@a>\r\nRCPT TO:<r@b>\r\n")
    code, out, err = r.finish()
    assert code == 111
    assert b"421 " in out and b"r@b" not in r.server_saw()
    assert "tlswrapper-smtp: fatal: 192.0.2.7:4242: unable to ask the greylist server" in err


def test_greylist_unresolvable_fail_closed(tmp_path, runs):
    r = Run(tmp_path, args=("-c", "-g", "nonexistent.invalid:10023"), tls=False)
    runs.append(r)
    code, _out, err = r.finish()
    assert code == 111 and "unable to resolve host 'nonexistent.invalid'" in err


def test_io_timeout(tmp_path, runs):
    r = Run(tmp_path, args=("-T", "1"), tls=False)
    runs.append(r)
    r.expect(b"220 fake")
    t = time.monotonic()
    r.proc.wait(timeout=15)            # stdin stays open but silent
    code, out, _err = r.finish(timeout=15)
    assert code == 111 and b"421 4.4.2" in out and time.monotonic() - t < 10


def test_usage_exit_codes():
    p = subprocess.run([our_command("tlswrapper-smtp")], capture_output=True, timeout=30, check=False)
    assert p.returncode == 100
    assert p.stderr.decode().startswith("tlswrapper-smtp: fatal: no prog given; usage: "
                                        "tlswrapper-smtp [options] prog")
    p = subprocess.run([our_command("tlswrapper-smtp"), "-t", "x", "cat"], capture_output=True,
                       timeout=30, check=False)
    assert p.returncode == 100 and b"Traceback" not in p.stderr
