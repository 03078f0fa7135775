"""Tests of net/prog.py (prog's side): prog waits for the go-ahead, gets its environment and account, and its
exit status becomes ours."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time

import pytest

from tlswrapper.net.prog import (ALLOWED_ENV, EXIT_FAILURE, ChildError, Prog, connection_addresses,
                              exit_code, inherited_fds, start_prog)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching accounts needs root")


def read_all(fd: int, timeout: float = 10.0) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while True:
        r, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not r:
            raise TimeoutError(out)
        chunk = os.read(fd, 65536)
        if not chunk:
            return out
        out += chunk


def finish(prog: Prog, data: bytes = b"") -> tuple[bytes, int]:
    """Feed prog's stdin, close it, collect its stdout and exit code."""
    if data:
        os.write(prog.stdin, data)
    os.close(prog.stdin)
    prog.stdin = -1
    out = read_all(prog.stdout)
    code = prog.wait()
    prog.close()
    return out, code


def sh(script: str) -> list[str]:
    return ["/bin/sh", "-c", script, "sh"]


def test_inherited_fds_3_to_9_all_reach_prog() -> None:
    """No fd of 3..9 is free for the shell waiter's go-ahead: the forked child is used, and
    prog still gets every one of them."""
    # The runner's own fds in 3..9 are set aside and put back as they were.
    saved = {fd: (os.dup(fd), os.get_inheritable(fd)) if _is_open(fd) else None
             for fd in range(3, 10)}
    r, w = os.pipe()
    try:
        for fd in range(3, 10):
            os.dup2(r, fd, inheritable=True)
        prog = start_prog(["ls", "/proc/self/fd"])
        prog.go()
        out, code = finish(prog)
    finally:
        for fd, kept in saved.items():
            if kept is None:
                os.close(fd)
            else:
                os.dup2(kept[0], fd, inheritable=kept[1])
                os.close(kept[0])
        os.close(r)
        os.close(w)
    assert code == 0
    assert set(range(3, 10)) <= {int(x) for x in out.split()}


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def test_prog_waits_until_go(tmp_path) -> None:
    marker = tmp_path / "ran"
    prog = start_prog(sh(f"touch {marker}; echo started"))
    time.sleep(0.3)
    assert not marker.exists()            # prog has not been exec'd before the go-ahead
    assert prog.poll() is None            # its child is alive, waiting
    prog.go()
    out, code = finish(prog)
    assert (out, code) == (b"started\n", 0) and marker.exists()


def test_prog_gets_env_args_and_stdin() -> None:
    prog = start_prog(sh('printf "%s|%s|%s|%s\\n" "$1" "$TCPREMOTEIP" "$SSL_CIPHER" "$SSL_TLS_SNI"; '
                         'cat') + ["arg one"])
    prog.go({"TCPREMOTEIP": "192.0.2.1", "SSL_CIPHER": "TLS_AES_128_GCM_SHA256",
             "SSL_TLS_SNI": "example.com"})
    out, code = finish(prog, b"hello from the client\n")
    assert out == b"arg one|192.0.2.1|TLS_AES_128_GCM_SHA256|example.com\nhello from the client\n"
    assert code == 0


def test_prog_environment_is_inherited_plus_extras(monkeypatch) -> None:
    monkeypatch.setenv("TLSWRAPPER_TEST_INHERITED", "yes")
    prog = start_prog(["env"])
    prog.go({"TCPLOCALPORT": "443"})
    out, _ = finish(prog)
    lines = out.decode().splitlines()
    assert "TLSWRAPPER_TEST_INHERITED=yes" in lines and "TCPLOCALPORT=443" in lines


@pytest.mark.parametrize("name", ["LD_PRELOAD", "PATH", "SSL_CERT_FILE", "TCPREMOTEIPX", ""])
def test_go_ahead_with_forbidden_env_is_refused(name: str, tmp_path) -> None:
    marker = tmp_path / "ran"
    prog = start_prog(sh(f"touch {marker}"))
    prog.go({name: "x"})
    out, code = finish(prog)
    assert code == EXIT_FAILURE and not marker.exists()


def test_allowed_env_names() -> None:
    assert {"TCPLOCALIP", "TCPLOCALPORT", "TCPREMOTEIP", "TCPREMOTEPORT", "SSL_PROTOCOL",
            "SSL_CIPHER", "SSL_TLS_SNI", "SSL_CLIENT_VERIFY", "SSL_CLIENT_S_DN",
            "SSL_CLIENT_S_DN_CN", "SSL_CLIENT_S_DN_Email", "SSL_CLIENT_M_SERIAL"} <= ALLOWED_ENV
    assert "LD_PRELOAD" not in ALLOWED_ENV


def test_exit_status_is_progs() -> None:
    prog = start_prog(sh("exit 3"))
    prog.go()
    assert finish(prog)[1] == 3


def test_killed_prog_gives_111() -> None:
    prog = start_prog(sh("kill -9 $$"))
    prog.go()
    assert finish(prog)[1] == 111


def test_sigpipe_is_default_in_prog() -> None:
    # Python ignores SIGPIPE; prog must get the default (die on a closed pipe), like `yes`.
    prog = start_prog(["yes"])
    prog.go()
    os.close(prog.stdout)
    prog.stdout = -1
    assert prog.wait() == 111         # killed by SIGPIPE
    prog.close()


def test_exec_failure(capfd) -> None:
    prog = start_prog(["/nonexistent/prog"])
    prog.go()
    out, code = finish(prog)
    assert code == 111 and out == b""
    err = capfd.readouterr().err
    assert "tlswrapper: fatal: unable to run prog '/nonexistent/prog' (file does not exist)" in err


def test_abort_does_not_run_prog(tmp_path) -> None:
    marker = tmp_path / "ran"
    prog = start_prog(sh(f"touch {marker}"))
    prog.abort()
    out, code = finish(prog)
    assert code == 111 and not marker.exists()


def test_network_process_gone_means_abort(tmp_path) -> None:
    marker = tmp_path / "ran"
    prog = start_prog(sh(f"touch {marker}"))
    os.close(prog.control)            # as if the network process had died
    prog.control = None
    assert finish(prog)[1] == 111 and not marker.exists()


def test_go_twice_is_an_error() -> None:
    prog = start_prog(["true"])
    prog.go()
    with pytest.raises(ChildError):
        prog.go()
    assert finish(prog)[1] == 0


@pytest.mark.parametrize("user", [None, "nobody"], ids=["waiter", "forked"])
def test_prog_gets_inherited_fds_but_none_of_ours(user) -> None:
    # An inherited (inheritable) fd reaches prog, as in the C version (`prog 9>log`); one of
    # ours (close-on-exec, as Python makes them) does not; a withheld one does not either.
    if user is not None and os.geteuid() != 0:
        pytest.skip("needs root")
    inherited = set(inherited_fds())
    r, w = os.pipe()
    os.set_inheritable(r, True)
    withheld, w2 = os.pipe()
    os.set_inheritable(withheld, True)
    try:
        prog = start_prog(["ls", "/proc/self/fd"], user=user, withhold=(withheld,))
        prog.go()
        out, _ = finish(prog)
    finally:
        for fd in (r, w, withheld, w2):
            os.close(fd)
    fds = {int(x) for x in out.split()}
    assert r in fds and w not in fds and withheld not in fds and w2 not in fds
    # Beyond those: 0, 1, 2, what the test runner itself inherited, and ls's directory fd.
    assert len(fds - {0, 1, 2, r} - inherited) <= 1, (fds, inherited)


def test_delayed_encryption_fds() -> None:
    prog = start_prog(sh("printf 'x' >&5; head -c 1 <&6 >/dev/null; echo acked"),
                      delayed_encryption=True)
    assert prog.control_in is not None and prog.ack_out is not None
    prog.go()
    assert os.read(prog.control_in, 1) == b"x"
    os.write(prog.ack_out, b"\0")
    out, code = finish(prog)
    assert (out, code) == (b"acked\n", 0)


def test_wait_with_timeout() -> None:
    prog = start_prog(["sleep", "0.5"])
    prog.go()
    t = time.monotonic()
    assert prog.wait(timeout=0.1) is None and time.monotonic() - t < 0.4
    assert prog.wait(timeout=10) == 0
    prog.close_stdin()
    prog.close_stdout()
    assert prog.parent_fds() == ()


def test_exit_code_mapping() -> None:
    assert exit_code(0) == 0
    assert exit_code(3 << 8) == 3
    assert exit_code(signal.SIGKILL) == 111


@needs_root
def test_user_switch() -> None:
    prog = start_prog(sh("id -u; id -g; id -G"), user="nobody")
    prog.go()
    out, code = finish(prog)
    assert code == 0
    uid, gid, groups = out.decode().splitlines()
    assert (uid, gid) == ("65534", "65534") and "0" not in groups.split()


@needs_root
def test_user_from_cert() -> None:
    prog = start_prog(sh("id -u"), user="root", user_from_cert=True)  # -U wins over -u
    prog.go(account="nobody")
    assert finish(prog) == (b"65534\n", 0)


@needs_root
@pytest.mark.parametrize("account", ["root", "no-such-user-xyz", "-rf", "../x", "a b"])
def test_user_from_cert_refused(account: str, tmp_path) -> None:
    marker = tmp_path / "ran"
    prog = start_prog(sh(f"touch {marker}"), user_from_cert=True)
    prog.go(account=account)
    assert finish(prog)[1] == 111 and not marker.exists()


def test_account_in_go_without_U_is_refused(tmp_path) -> None:
    marker = tmp_path / "ran"
    prog = start_prog(sh(f"touch {marker}"))
    prog.go(account="nobody")
    assert finish(prog)[1] == 111 and not marker.exists()


@needs_root
def test_u_root_refused(capfd) -> None:
    prog = start_prog(["true"], user="root")
    prog.go()
    assert finish(prog)[1] == 111
    assert "uid or gid 0" in capfd.readouterr().err


def test_connection_addresses_from_environment() -> None:
    env = {"TCPLOCALIP": "10.0.0.1", "TCPLOCALPORT": "443", "TCPREMOTEIP": "10.0.0.2",
           "TCPREMOTEPORT": "5555", "OTHER": "x"}
    assert connection_addresses(0, env) == {k: v for k, v in env.items() if k != "OTHER"}


def test_connection_addresses_from_socket() -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    cli = socket.create_connection(srv.getsockname())
    conn, peer = srv.accept()
    try:
        got = connection_addresses(conn.fileno(), {})
        assert got == {"TCPLOCALIP": "127.0.0.1", "TCPLOCALPORT": str(srv.getsockname()[1]),
                       "TCPREMOTEIP": "127.0.0.1", "TCPREMOTEPORT": str(peer[1])}
        conn.getsockname()            # the socket (and its fd) is still open
        # environment values win over the socket's
        assert connection_addresses(conn.fileno(), {"TCPREMOTEIP": "192.0.2.9"})[
            "TCPREMOTEIP"] == "192.0.2.9"
    finally:
        for s in (cli, conn, srv):
            s.close()


def test_connection_addresses_v4_mapped() -> None:
    srv = socket.create_server(("::", 0), family=socket.AF_INET6, dualstack_ipv6=True)
    cli = socket.create_connection(("127.0.0.1", srv.getsockname()[1]))
    conn, _ = srv.accept()
    try:
        got = connection_addresses(conn.fileno(), {})
        assert got["TCPREMOTEIP"] == "127.0.0.1" and got["TCPLOCALIP"] == "127.0.0.1"
    finally:
        for s in (cli, conn, srv):
            s.close()


def test_connection_addresses_from_pipe() -> None:
    r, w = os.pipe()
    try:
        assert connection_addresses(r, {}) == {}
    finally:
        os.close(r)
        os.close(w)


def test_prog_after_network_process_jails(tmp_path) -> None:
    """The go-ahead needs no new fd or process on the network side: send it from a process
    with RLIMIT_NOFILE and RLIMIT_NPROC at 0."""
    code = """
import os, resource, sys
from tlswrapper.net.prog import start_prog
prog = start_prog(["/bin/sh", "-c", "echo ran:$TCPREMOTEIP"])
resource.setrlimit(resource.RLIMIT_NOFILE, (0, 0))
resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
prog.go({"TCPREMOTEIP": "192.0.2.7"})
os.close(prog.stdin)
data = b""
while chunk := os.read(prog.stdout, 100):
    data += chunk
os.write(1, data)
sys.exit(prog.wait())
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    assert (res.returncode, res.stdout) == (0, b"ran:192.0.2.7\n"), res.stderr


# --------------------------------------------------------------------------- the shell waiter

def test_without_an_account_the_waiting_child_is_the_shell_waiter() -> None:
    prog = start_prog(["cat"])
    assert prog.waiter
    deadline = time.monotonic() + 10
    while True:
        with open(f"/proc/{prog.pid}/cmdline", "rb") as f:
            cmdline = f.read().split(b"\0")
        if cmdline != [b""] or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert cmdline[:2] == [b"sh", b"-c"] and cmdline[-2].endswith(b"/cat")
    prog.go({"TCPREMOTEIP": "192.0.2.1"})
    assert finish(prog, b"data\n") == (b"data\n", 0)
    if os.geteuid() == 0:
        other = start_prog(["true"], user="nobody")    # an account: the forked child
        assert not other.waiter
        other.abort()
        assert finish(other)[1] == 111


@pytest.mark.parametrize("raw", [
    b"LD_PRELOAD=/tmp/evil.so\ngo\n",
    b"PATH=/tmp\ngo\n",
    b"TCPREMOTEIP\ngo\n",                      # no '='
    b"x; touch /tmp/pwned\ngo\n",
    b"TCPREMOTEIP=1.2.3.4\ngo",               # no newline after go: incomplete
    b"TCPREMOTEIP=1.2.3.4\n",                 # end of file before go
    b"abort\n",
])
def test_shell_waiter_refuses_anything_but_allowed_names(raw: bytes, tmp_path) -> None:
    """A compromised network process writes whatever it likes on the control pipe."""
    marker = tmp_path / "ran"
    prog = start_prog(sh(f"touch {marker}"))
    assert prog.waiter
    os.write(prog.control, raw)
    os.close(prog.control)
    prog.control = None
    assert finish(prog)[1] == 111 and not marker.exists()


def test_shell_waiter_values_are_not_evaluated(tmp_path) -> None:
    marker = tmp_path / "ran"
    value = f"$(touch {marker}) `touch {marker}` * ; \\ \" ' $HOME"
    prog = start_prog(["printenv", "SSL_CLIENT_S_DN"])
    prog.go({"SSL_CLIENT_S_DN": value})
    out, code = finish(prog)
    assert (out, code) == (value.encode() + b"\n", 0) and not marker.exists()


def test_shell_waiter_refuses_a_value_with_a_newline(tmp_path, capfd) -> None:
    marker = tmp_path / "ran"
    prog = start_prog(sh(f"touch {marker}"))
    prog.go({"SSL_CLIENT_S_DN": "CN=x\nLD_PRELOAD=/tmp/evil.so"})
    assert finish(prog)[1] == 111 and not marker.exists()
    assert "refused" in capfd.readouterr().err


@needs_root
def test_delayed_encryption_fds_in_the_forked_child() -> None:
    """-n with -u: the forked Python child (not the shell waiter) gives prog fd 5 and 6 too."""
    prog = start_prog(sh("printf 'x' >&5; head -c 1 <&6 >/dev/null; id -u"), user="nobody",
                      delayed_encryption=True)
    assert not prog.waiter and prog.control_in is not None and prog.ack_out is not None
    prog.go()
    assert os.read(prog.control_in, 1) == b"x"
    os.write(prog.ack_out, b"\0")
    assert finish(prog) == (b"65534\n", 0)


def _live(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@needs_root
def test_end_switch_reaches_prog_from_the_jail_and_nothing_else():
    """Prog.arm_end_signal, made as root before the jail, lets the jailed process (another
    uid: kill(2) on prog fails) end prog. An attacker holding that process tries the same
    switch on another root process (F_SETOWN to its pid, SIGKILL, a byte written): the kernel
    records the jailed credentials with the new owner and the victim lives; kill(2) on it
    fails too."""
    prog = subprocess.Popen(["sleep", "60"])
    victim = subprocess.Popen(["sleep", "60"])
    handle = Prog(prog.pid, ("sleep",), -1, -1, None)
    try:
        handle.arm_end_signal()
        jailed = os.fork()
        if jailed == 0:
            code = 1
            try:
                os.setgroups([])
                os.setresgid(65534, 65534, 65534)
                os.setresuid(65534, 65534, 65534)
                try:
                    os.kill(prog.pid, signal.SIGTERM)
                    code = 2              # the jail would not need the switch
                except PermissionError:
                    if handle._signal(signal.SIGKILL):
                        r, w = handle.end_switch
                        import fcntl
                        fcntl.fcntl(r, fcntl.F_SETOWN, victim.pid)      # the attacker's move
                        fcntl.fcntl(r, 10, signal.SIGKILL)              # F_SETSIG
                        os.write(w, b"\0")
                        try:
                            os.kill(victim.pid, signal.SIGKILL)
                        except PermissionError:
                            code = 0
            finally:
                os._exit(code)
        assert os.waitpid(jailed, 0)[1] == 0
        assert prog.wait(10) == -signal.SIGKILL, "prog ended through the switch"
        time.sleep(0.2)
        assert _live(victim.pid), "the switch reached another process"
    finally:
        for p in (prog, victim):
            if p.poll() is None:
                p.kill()
                p.wait()
        handle.disarm()
