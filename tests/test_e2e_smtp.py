"""tlswrapper-smtp end to end, in front of a real SMTP server without STARTTLS.

    smtplib -> tcpserver -> tlswrapper -n -> tlswrapper-smtp -> exim4 -C CONF -bs

exim4 (Debian's exim4-daemon-light) runs inetd style with the test's own minimal config:
`tls_advertise_hosts =` (no STARTTLS of its own), every accepted message appended to one
mailbox file by an appendfile transport running as Debian-exim (exim gives up root for -C).
Greylisting runs against Debian's postgrey, started by the test with --delay=1.
"""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from testenv import (
    debian_tlswrapper,
    free_port,
    needs_root,
    our_command,
    wait_for_port,
    which,
)

pytestmark = [needs_root, pytest.mark.timeout(300)]

EXIM_CONF = """\
keep_environment =
primary_hostname = mx.test.example
spool_directory = {d}/spool
log_file_path = {d}/log/%slog
domainlist local_domains = example.test
tls_advertise_hosts =
acl_smtp_rcpt = acl_check_rcpt
begin acl
acl_check_rcpt:
  accept domains = +local_domains
  deny message = relay not permitted
begin routers
local:
  driver = accept
  domains = +local_domains
  transport = local_file
begin transports
local_file:
  driver = appendfile
  file = {d}/mail/inbox
  user = Debian-exim
  group = Debian-exim
  mode = 0666
"""


class Exim:
    def __init__(self):
        # Not under pytest's tmp_path: exim (as Debian-exim) must reach it, and /tmp/pytest-of-
        # root is mode 0700.
        self.dir = Path(tempfile.mkdtemp(prefix="e2e-exim-"))
        self.dir.chmod(0o755)
        for sub in ("spool", "log", "mail"):
            (self.dir / sub).mkdir()
        shutil.chown(self.dir / "spool", "Debian-exim", "Debian-exim")
        shutil.chown(self.dir / "log", "Debian-exim", "Debian-exim")
        (self.dir / "mail").chmod(0o1777)
        self.conf = self.dir / "exim.conf"
        self.conf.write_text(EXIM_CONF.format(d=self.dir))
        self.inbox = self.dir / "mail" / "inbox"
        self.argv = [which("exim4"), "-C", str(self.conf), "-bs"]

    def delivered(self, needle: str, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.inbox.exists() and needle in self.inbox.read_text(errors="replace"):
                return True
            time.sleep(0.1)
        return False

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)


class TcpServer:
    def __init__(self, argv, log_path: Path, env=None):
        self.port = free_port()
        self.log_path = log_path
        self.logf = open(log_path, "wb")  # noqa: SIM115 -- closed in stop()
        self.proc = subprocess.Popen([which("tcpserver"), "-HRDl0", "127.0.0.1", str(self.port),
                                      *argv], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self.logf,
                                     start_new_session=True, env=env)
        wait_for_port(self.port, proc=self.proc)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def children(self) -> list[int]:
        try:
            text = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return []
        return [int(x) for x in text.split()]

    def stop(self):
        pids = []
        todo = [self.proc.pid]
        while todo:                        # the whole tree, whatever uid it runs under
            pid = todo.pop()
            pids.append(pid)
            try:
                todo += [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children")
                         .read_text().split()]
            except OSError:
                pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)
        self.logf.close()


@pytest.fixture
def exim():
    e = Exim()
    yield e
    e.close()


@pytest.fixture
def certfile(pki, tmp_path):
    return str(pki.ecdsa_p256.path)


def ours(exim, certfile, tmp_path, *smtp_args):
    argv = [our_command("tlswrapper"), "-v", "-n", "-f", certfile,
            our_command("tlswrapper-smtp"), "-v", *smtp_args, *exim.argv]
    return TcpServer(argv, tmp_path / "tcpserver.log")


def tls_context(pki) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_pem))
    ctx.check_hostname = False
    return ctx


def test_starttls_and_delivery_inside_tls(exim, certfile, pki, tmp_path):
    ts = ours(exim, certfile, tmp_path)
    try:
        with smtplib.SMTP("127.0.0.1", ts.port, timeout=20) as s:
            code, _ = s.ehlo("client.test")
            assert code == 250 and s.has_extn("starttls")
            assert not s.has_extn("chunking")
            code, msg = s.starttls(context=tls_context(pki))
            assert code == 220, msg
            assert isinstance(s.sock, ssl.SSLSocket)
            s.ehlo("client.test")
            assert not s.has_extn("starttls")          # offered once only
            code, _ = s.docmd("STARTTLS")
            assert code == 502
            s.sendmail("alice@sender.test", ["bob@example.test"],
                       "Subject: sent inside TLS\r\n\r\nhello\r\n")
        assert exim.delivered("Subject: sent inside TLS"), ts.log()
        assert "Traceback" not in ts.log()
    finally:
        ts.stop()


INJECTION = (b"STARTTLS\r\n"
             b"MAIL FROM:<mallory@evil.test>\r\n"
             b"RCPT TO:<bob@example.test>\r\n"
             b"DATA\r\n"
             b"Subject: injected in cleartext\r\n\r\nowned\r\n.\r\n")


def inject(port: int, pki) -> bytes:
    """A whole message pipelined in cleartext in the same write as STARTTLS, then TLS and
    QUIT. Returns what the client saw (the cleartext part)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    seen = b""
    try:
        def read_reply():
            nonlocal seen
            buf = b""
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    return buf
                buf += chunk
                lines = buf.split(b"\r\n")
                if len(lines) >= 2 and len(lines[-2]) >= 4 and lines[-2][3:4] == b" ":
                    seen += buf
                    return buf
        read_reply()                                   # greeting
        sock.sendall(b"EHLO client.test\r\n")
        read_reply()
        sock.sendall(INJECTION)
        read_reply()                                   # 220 ready to start TLS
        try:
            tls = tls_context(pki).wrap_socket(sock, server_hostname="localhost")
        except (ssl.SSLError, OSError):
            return seen
        try:
            tls.sendall(b"EHLO client.test\r\n")
            time.sleep(1)
            tls.sendall(b"QUIT\r\n")
            while tls.recv(4096):
                pass
        except (ssl.SSLError, OSError):
            pass
        return seen
    finally:
        sock.close()


def test_pipelined_cleartext_after_starttls_not_delivered(exim, certfile, pki, tmp_path):
    ts = ours(exim, certfile, tmp_path)
    try:
        seen = inject(ts.port, pki)
        assert b"250-STARTTLS" in seen or b"250 STARTTLS" in seen
        time.sleep(2)
        assert not exim.delivered("injected in cleartext", timeout=1)
        log = ts.log()
        assert "tlswrapper-smtp: info: 127.0.0.1:" in log and "dropped" in log, log
    finally:
        ts.stop()


def test_debian_tlswrapper_smtp_delivers_the_injection(exim, certfile, pki, tmp_path):
    """The comparison: Debian's 20230101 pair (its tlswrapper -n with its tlswrapper-smtp,
    which speak their own fd 5 protocol) delivers the injected message."""
    argv = [debian_tlswrapper("tlswrapper"), "-n", "-f", certfile,
            debian_tlswrapper("tlswrapper-smtp"), *exim.argv]
    ts = TcpServer(argv, tmp_path / "tcpserver-debian.log")
    try:
        inject(ts.port, pki)
        if not exim.delivered("injected in cleartext", timeout=10):
            pytest.fail("Debian's tlswrapper-smtp did not deliver the injected message "
                        f"(expected it to): {ts.log()}")
    finally:
        ts.stop()


class Postgrey:
    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="e2e-postgrey-"))
        shutil.chown(self.dir, "postgrey", "postgrey")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [which("postgrey"), f"--inet=127.0.0.1:{self.port}", "--delay=1",
             f"--dbdir={self.dir}", "--user=postgrey", "--group=postgrey",
             f"--pidfile={self.dir}/pid", "--whitelist-clients=/dev/null",
             "--whitelist-recipients=/dev/null"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True)
        wait_for_port(self.port, proc=self.proc, timeout=30)

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def postgrey():
    which("postgrey")
    p = Postgrey()
    yield p
    p.stop()


def send_plain(port: int, subject: str) -> tuple[int, bytes]:
    """MAIL/RCPT (without TLS); returns the RCPT reply; sends the message when accepted."""
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        s.ehlo("client.test")
        s.mail("alice@sender.test")
        code, msg = s.rcpt("bob@example.test")
        if code == 250:
            s.data(f"Subject: {subject}\r\n\r\nbody\r\n")
        return code, msg


def test_greylisting_with_postgrey(exim, certfile, postgrey, tmp_path):
    ts = ours(exim, certfile, tmp_path, "-g", f"127.0.0.1:{postgrey.port}")
    try:
        code, msg = send_plain(ts.port, "greylisted first")
        assert code == 450, msg
        assert not exim.delivered("greylisted first", timeout=1)
        time.sleep(2.5)                              # past --delay=1
        code, msg = send_plain(ts.port, "after the delay")
        assert code == 250, (msg, ts.log())
        assert exim.delivered("after the delay"), ts.log()
    finally:
        ts.stop()


def test_greylist_server_down_fail_open(exim, certfile, tmp_path):
    ts = ours(exim, certfile, tmp_path, "-C", "-g", f"127.0.0.1:{free_port()}")
    try:
        code, msg = send_plain(ts.port, "fail open")
        assert code == 250, msg
        assert exim.delivered("fail open")
        assert "fail-open" in ts.log()
    finally:
        ts.stop()


def test_greylist_server_down_fail_closed(exim, certfile, tmp_path):
    ts = ours(exim, certfile, tmp_path, "-c", "-g", f"127.0.0.1:{free_port()}")
    try:
        with pytest.raises(smtplib.SMTPException):
            send_plain(ts.port, "fail closed")
        assert not exim.delivered("fail closed", timeout=1)
        deadline = time.monotonic() + 10
        while "unable to ask the greylist server" not in ts.log():
            assert time.monotonic() < deadline, ts.log()
            time.sleep(0.1)
        assert "tlswrapper-smtp: fatal:" in ts.log()
    finally:
        ts.stop()


def _status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def _grandparent(pid: int) -> int | None:
    try:
        return int(_status(int(_status(pid)["PPid"]))["PPid"])
    except (OSError, KeyError, ValueError):
        return None


def _limit(pid: int, name: str) -> list[str]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith(name):
            return line[len(name):].split()[:2]
    raise AssertionError(name)


def test_tlswrapper_smtp_jailed_live(exim, certfile, pki, tmp_path):
    ts = ours(exim, certfile, tmp_path)
    try:
        with smtplib.SMTP("127.0.0.1", ts.port, timeout=20) as s:
            s.ehlo("client.test")
            # tlswrapper-smtp: tcpserver -> tlswrapper (network process) -> tlswrapper-smtp.
            # wait_for_port's probe connection made one too, which is on its way out: a
            # process that vanishes while we look is skipped.
            deadline = time.monotonic() + 10
            while True:
                assert time.monotonic() < deadline, "no live jailed tlswrapper-smtp found"
                checked = None
                for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
                    try:
                        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                        if not (any(c.endswith(b"tlswrapper-smtp") for c in cmd[:2]) and
                                _grandparent(pid) == ts.proc.pid):
                            continue
                        # Ours, not the probe connection's (which may be still starting,
                        # before its jail): tcpserver set TCPREMOTEPORT to our local port.
                        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                        if f"TCPREMOTEPORT={s.sock.getsockname()[1]}".encode() not in environ:
                            continue
                        checked = (pid, _status(pid), os.readlink(f"/proc/{pid}/root"),
                                   [_limit(pid, n) for n in ("Max open files", "Max processes",
                                                             "Max core file size")])
                        if not Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
                            checked = None    # the probe's, without its exim any more
                            continue
                        break
                    except (OSError, AssertionError):
                        checked = None
                if checked is not None:
                    break
                time.sleep(0.1)
            pid, st, root, limits = checked
            uids = set(st["Uid"].split())
            assert len(uids) == 1 and int(uids.pop()) >= 0x70000000
            assert root == "/var/lib/tlswrapper/empty"
            assert limits == [["0", "0"]] * 3
            # exim (its child) is not jailed and runs as root / Debian-exim
            s.quit()
    finally:
        ts.stop()
