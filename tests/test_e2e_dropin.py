"""Ours as a drop-in for Debian's C tlswrapper (issue 13): what a user, a script or a companion
program notices, run side by side with the C version where that shows the behaviour matches.

Rule: real processes only (tlswrapper and its companions as subprocesses, real TLS clients);
a known difference is asserted as a difference, with the reason in a comment.
"""

from __future__ import annotations

import fcntl
import os
import socket
import ssl
import subprocess
import tempfile
import time

import pytest
from conftest import debian_tlswrapper, our_command

import e2e

IMPLS = ["ours", "debian"]
USER_FD = 9          # what a user hands down with `tlswrapper ... prog 9>log`


def command(impl: str, name: str = "tlswrapper") -> str:
    return our_command(name) if impl == "ours" else debian_tlswrapper(name)


class Run:
    """A command with fd 0 and 1 on one end of a socketpair (the client holds the other) and
    extra descriptors handed down as given: {fd number in the child: our fd}."""

    def __init__(self, argv, fds: dict[int, int] | None = None, stdin=None, stdout=None,
                 stderr=None) -> None:
        self.client_sock, server = socket.socketpair()
        self._err = tempfile.TemporaryFile()
        fds = fds or {}
        ours = list(fds.items())

        def setup() -> None:
            # In the child: move every source above the targets first, so that no dup2
            # overwrites a source that is another target's number.
            high = [(t, fcntl.fcntl(src, fcntl.F_DUPFD_CLOEXEC, 100)) for t, src in ours]
            for t, src in high:
                os.dup2(src, t, inheritable=True)

        try:
            self.proc = subprocess.Popen(
                [os.fspath(a) for a in argv],
                stdin=server if stdin is None else stdin,
                stdout=server if stdout is None else stdout,
                stderr=self._err if stderr is None else stderr,
                preexec_fn=setup if ours else None, close_fds=not ours,
                start_new_session=True)
        finally:
            server.close()
        self.client_sock.settimeout(30)

    def tls(self, ca, version: str | None = None) -> ssl.SSLSocket:
        return e2e.client_context(ca, version).wrap_socket(self.client_sock,
                                                            server_hostname="localhost")

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout=timeout)

    def stderr(self) -> str:
        self._err.seek(0)
        return self._err.read().decode(errors="replace")

    def close(self) -> None:
        self.client_sock.close()
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 9)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
        self._err.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def fd_targets(pid: int) -> dict[int, str]:
    out = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            pass
    return out


# --------------------------------------------------------------------------- fd inheritance


@pytest.mark.parametrize("impl", IMPLS)
def test_prog_inherits_descriptors_beyond_stderr(pki, tmp_path, impl):
    """`tlswrapper ... prog 9>log`: prog writes to fd 9. Ours (safer than C, not asserted
    for C) keeps no copy of it in the jailed network process nor in the key process."""
    log_path = tmp_path / f"fd9-{impl}.log"
    logfd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    prog = ["sh", "-c", f"echo via-fd-9 >&{USER_FD} && echo ok && exec cat"]
    try:
        with Run([command(impl), "-f", pki.ecdsa_p256.path, "--", *prog],
                 fds={USER_FD: logfd}) as run:
            sock = run.tls(pki.ca_pem, "tls12")
            assert sock.recv(10) == b"ok\n", run.stderr()
            if impl == "ours":
                procs = e2e.split_children(run.proc.pid, "/var/lib/tlswrapper/empty")
                assert procs is not None
                holders = [pid for pid in (procs.network, procs.key, procs.prog)
                           if str(log_path) in fd_targets(pid).values()]
                assert holders == [procs.prog]
            sock.close()
            assert run.wait(20) == 0
    finally:
        os.close(logfd)
    assert log_path.read_bytes() == b"via-fd-9\n"


def test_smtp_server_inherits_descriptors_but_not_5_and_6(tmp_path):
    """tlswrapper-smtp hands fd 9 to the SMTP server it runs, but not its fd 5 and 6."""
    logfd = os.open(tmp_path / "fd9.log", os.O_WRONLY | os.O_CREAT, 0o600)
    c5_r, c5_w = os.pipe()
    c6_r, c6_w = os.pipe()
    server = ["sh", "-c", 'echo "220 fds $(ls /proc/$$/fd | tr "\\n" " ")"; '
              'while read -r line; do echo "221 bye"; exit 0; done']
    try:
        with Run([our_command("tlswrapper-smtp"), "--", *server],
                 fds={USER_FD: logfd, 5: c5_w, 6: c6_r}) as run:
            greeting = recv_line(run.client_sock)
            fds = {int(x) for x in greeting.split()[2:]}
            run.client_sock.sendall(b"QUIT\r\n")
            assert USER_FD in fds and 5 not in fds and 6 not in fds, greeting
            assert run.wait(20) == 0, run.stderr()
    finally:
        for fd in (logfd, c5_r, c5_w, c6_r, c6_w):
            os.close(fd)


def recv_line(sock: socket.socket, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf and time.monotonic() < deadline:
        chunk = sock.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf.decode(errors="replace").split("\n", 1)[0].strip()
