"""Starting prog before the handshake, holding it until the handshake is done, then running it.

Rule: the waiting child trusts nothing in the go-ahead beyond what the configuration allows
(the jailed network process sending it may be compromised): only allow-listed environment
names, an account only with -U, never uid or gid 0.

The go-ahead travels on a pipe created before the fork, so the network process can send it
after jailing itself (no new file, no new process). Message, network -> child:

    4 bytes big-endian length N (N <= MAX_MESSAGE), then N bytes:
    b"go" | b"abort", NUL, account name (empty for none), then NUL-separated b"NAME=value"

End of file before a complete message (the network process died) means abort. On abort the
child exits 111 without running prog, as the C version's child does when no handshake happens.

Without -u and -U (no account to switch to) the waiting child is not a fork of this Python
process but /bin/sh running WAITER, spawned with posix_spawn (vfork: no copy of our address
space, which costs about 2 ms of CPU per connection to copy, fault in and tear down at exec,
and 2 ms of latency between the go-ahead and prog's first byte). Its go-ahead is text lines,
network -> waiter:

    NAME=value\n ... go\n        (names from ALLOWED_ENV; values printable, see sslenv)
    abort\n                       (or end of file)

The shell checks each name against the same allow-list (any other line: exit 111, prog not
run) and exports the line as one word, never evaluated. prog's path is resolved here first, so
that a missing prog is reported as before (the forked child is used for it).
"""

from __future__ import annotations

import fcntl
import os
import pwd
import signal
import socket
import stat
import struct
import time

from tlswrapper import log
from tlswrapper.exits import EXIT_FAILURE

TYPE_CHECKING = False      # typing is imported by type checkers only (it costs milliseconds)
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

F_SETSIG = getattr(fcntl, "F_SETSIG", 10)   # Linux <fcntl.h>: the signal sent for O_ASYNC
MAX_MESSAGE = 65536
MAX_VALUE = 8192         # one environment value (a client DN is far shorter)

TCP_ENV = ("TCPLOCALIP", "TCPLOCALPORT", "TCPREMOTEIP", "TCPREMOTEPORT")
SSL_ENV = ("SSL_PROTOCOL", "SSL_CIPHER", "SSL_TLS_SNI", "SSL_CLIENT_VERIFY", "SSL_CLIENT_S_DN",
           "SSL_CLIENT_S_DN_CN", "SSL_CLIENT_S_DN_Email", "SSL_CLIENT_M_SERIAL",
           "SSL_CLIENT_I_DN", "SSL_CLIENT_V_START", "SSL_CLIENT_V_END")
# The only names the go-ahead may set: anything else (LD_PRELOAD, PATH, ...) in the hands of a
# compromised network process would run code in prog, which may run as root.
ALLOWED_ENV = frozenset(TCP_ENV + SSL_ENV + ("TCPLOCALHOST", "TCPREMOTEHOST", "TCPREMOTEINFO"))

# An account name from a client certificate (-U): conservative portable user-name characters,
# plus '@' for emailAddress; no leading '-' (it would read as an option to tools) or '.'.
_ACCOUNT_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_ACCOUNT_CHARS = _ACCOUNT_FIRST | frozenset(".@+-")
MAX_ACCOUNT = 256


def _account_ok(name: str) -> bool:
    return len(name) <= MAX_ACCOUNT and name[:1] in _ACCOUNT_FIRST \
        and _ACCOUNT_CHARS.issuperset(name)

# fds prog gets with -n (SPEC section 3): it writes its zero byte to 5, reads the ack from 6.
CONTROL_FD = 5
ACK_FD = 6

# The shell waiter (see the module docstring): reads the go-ahead on fd WAITER_FD, then execs
# prog ("$@", resolved to a path already) with that fd closed. /bin/sh is POSIX sh (dash on
# Debian), whose redirections take single-digit fds only: the waiter's fd is the lowest of
# 3..9 that is neither inherited (it belongs to prog, see inherited_fds) nor 5/6 with -n.
WAITER_SHELL = "/bin/sh"
WAITER_FD = 3
WAITER_FDS = range(3, 10)


def waiter_script(fd: int = WAITER_FD) -> str:
    return (
        f'while IFS= read -r line <&{fd}; do case $line in '
        f'go) exec "$@" {fd}<&-;; '
        'abort) exit 111;; '
        + "|".join(f"{name}=*" for name in sorted(ALLOWED_ENV)) + ') export "$line";; '
        '*) echo "tlswrapper: fatal: go-ahead refused" >&2; exit 111;; '
        'esac; done; exit 111')


WAITER = waiter_script()


def inherited_fds(withhold: Sequence[int] = ()) -> list[int]:
    """The descriptors above 2 that we inherited and prog inherits in turn (a user's
    `tlswrapper ... prog 9>log` expects fd 9 in prog, as the C version passes it). Python
    makes every descriptor of its own close-on-exec (PEP 446), and the few we make
    inheritable are the child's dup2 targets, so the inheritable ones are the inherited
    ones. `withhold`: inherited ones prog must not get (tlswrapper-smtp's fd 5 and 6)."""
    return [fd for fd in _inheritable_fds() if fd > 2 and fd not in withhold]


def drop_inherited(withhold: Sequence[int] = ()) -> None:
    """Close the inherited descriptors in this process once prog has its copies: the jailed
    process that parses a client's bytes has no use for a user's log file or socket (the
    C version keeps them; dropping them is safer). `withhold`: ones this process still uses."""
    for fd in inherited_fds(withhold):
        try:
            os.close(fd)
        except OSError:
            pass


class ChildError(Exception):
    """prog could not be started or switched; one line for the log."""


def exit_code(status: int) -> int:
    """prog's wait status as our exit code: its exit code, or 111 when a signal killed it."""
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return EXIT_FAILURE


class Prog:
    """The network process's handle on prog. All fds are the parent's ends of the pipes."""

    def __init__(self, pid: int, argv: tuple[str, ...], stdin: int, stdout: int,
                 control: int | None, control_in: int | None = None,
                 ack_out: int | None = None, status: int | None = None,
                 waiter: bool = False) -> None:
        self.pid = pid
        self.argv = argv
        self.stdin = stdin           # write: cleartext for prog's stdin (-1 once closed)
        self.stdout = stdout         # read: prog's stdout (-1 once closed)
        self.control = control       # write: the go-ahead pipe; None once used
        self.control_in = control_in  # -n: read the zero byte prog writes on its fd 5
        self.ack_out = ack_out       # -n: write the zero byte prog reads on its fd 6
        self.status = status         # exit code once reaped
        self.waiter = waiter         # the child is the shell WAITER (text go-ahead, no account)
        # arm_end_signal(): (read end owned by prog, write end), see there; None if unarmed.
        self.end_switch: tuple[int, int] | None = None

    def parent_fds(self) -> tuple[int, ...]:
        """Every fd of ours tied to prog. Any other process forked from here (the key
        process) must close them all, or prog never sees EOF and never hears of an abort."""
        fds = (self.stdin, self.stdout, self.control, self.control_in, self.ack_out)
        return tuple(fd for fd in fds if fd is not None and fd >= 0)

    def go(self, env: Mapping[str, str] | None = None, account: str | None = None) -> None:
        """Let prog run, with these extra environment variables and (with -U) this account."""
        self._send(b"go", env or {}, account)

    def abort(self) -> None:
        """Tell prog's child to exit without running prog (no handshake, a failure)."""
        self._send(b"abort", {}, None)

    def _send(self, verb: bytes, env: Mapping[str, str], account: str | None) -> None:
        if self.control is None:
            raise ChildError("go-ahead already sent")
        if self.waiter:
            data = self._waiter_message(verb, env, account)
            fd, self.control = self.control, None
            try:
                _write_all(fd, data)
            except OSError as e:
                log.debug(f"unable to send the go-ahead to prog ({log.oserror_text(e)})")
            finally:
                os.close(fd)
            return
        fields = [verb, (account or "").encode()]
        fields += [f"{k}={v}".encode("utf-8", "surrogateescape") for k, v in env.items()]
        payload = b"\0".join(fields)
        if len(payload) > MAX_MESSAGE:
            raise ChildError("go-ahead message too long")
        data = struct.pack(">I", len(payload)) + payload
        fd, self.control = self.control, None
        try:
            while data:
                n = os.write(fd, data)
                data = data[n:]
        except OSError as e:
            # prog's child is gone (EPIPE): its exit status tells the rest.
            log.debug(f"unable to send the go-ahead to prog ({log.oserror_text(e)})")
        finally:
            os.close(fd)

    @staticmethod
    def _waiter_message(verb: bytes, env: Mapping[str, str], account: str | None) -> bytes:
        """The shell waiter's go-ahead; an abort for anything it must not be sent."""
        if verb != b"go":
            return b"abort\n"
        if account:
            log.fatal("go-ahead names an account but -U is not set, refused")
            return b"abort\n"
        lines = []
        for name, value in env.items():
            line = f"{name}={value}".encode("utf-8", "surrogateescape")
            if name not in ALLOWED_ENV or b"\n" in line or b"\0" in line \
                    or len(value) > MAX_VALUE:
                log.fatal(f"environment variable '{log.escape(name)}' refused")
                return b"abort\n"
            lines.append(line + b"\n")
        data = b"".join(lines) + b"go\n"
        return data if len(data) <= MAX_MESSAGE else b"abort\n"

    def poll(self) -> int | None:
        """prog's exit code if it has ended (reaping it), else None. Never blocks."""
        return self._wait(os.WNOHANG)

    def wait(self, timeout: float | None = None) -> int | None:
        """prog's exit code once it ends; with a timeout (seconds), None if it has not ended
        by then. Polls rather than blocking in waitpid, so that the deadline holds; in the
        jail there is no other way (no signalfd, no pidfd: both need a new fd)."""
        if timeout is None:
            while True:
                code = self._wait(0)
                if code is not None:
                    return code
        deadline = time.monotonic() + timeout
        delay = 0.001
        while True:
            code = self._wait(os.WNOHANG)
            if code is not None:
                return code
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            time.sleep(min(delay, left))
            delay = min(delay * 2, 0.05)

    def close_stdin(self) -> None:
        """Close prog's stdin (prog sees end of file)."""
        if self.stdin >= 0:
            os.close(self.stdin)
            self.stdin = -1

    def close_stdout(self) -> None:
        if self.stdout >= 0:
            os.close(self.stdout)
            self.stdout = -1

    def _wait(self, flags: int) -> int | None:
        if self.status is not None:
            return self.status
        while True:
            try:
                pid, status = os.waitpid(self.pid, flags)
            except ChildProcessError:
                # Reaped elsewhere (e.g. a SIGCHLD handler): the status is lost.
                self.status = EXIT_FAILURE
                return self.status
            except InterruptedError:
                continue
            if pid == 0:
                return None
            if os.WIFSIGNALED(status):
                # As the C version, at its level (fatal: shown by default): exit 111 alone
                # does not say that prog crashed or was killed.
                log.fatal(f"child process killed by signal {os.WTERMSIG(status)}")
            self.status = exit_code(status)
            return self.status

    def close(self) -> None:
        """Close every parent-side fd still open (the relay marks the ones it closed itself
        by setting them to -1 / None). The end switch stays (see end())."""
        for fd in self.parent_fds():
            try:
                os.close(fd)
            except OSError:
                pass
        self.stdin = self.stdout = -1
        self.control = self.control_in = self.ack_out = None

    # --- ending prog from the jail ---------------------------------------------------------
    def arm_end_signal(self) -> None:
        """Before our jail: make it possible to signal prog afterwards. Once jailed (another
        uid, no capability) kill(2) on prog, which runs as root or as -u's account, fails
        with EPERM. A pipe's read end is given prog as its owner (F_SETOWN) now: the kernel
        records our credentials with the owner and checks those when it sends the owner the
        pipe's SIGIO (sigio_perm), so a byte written to it later delivers the signal chosen
        with F_SETSIG. The owner is held as prog's struct pid, which a reused pid number
        does not match once prog is reaped, and changing it again (F_SETOWN) records the
        jailed credentials: so this reaches prog and nothing else. Raises OSError."""
        r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            fcntl.fcntl(r, fcntl.F_SETOWN, self.pid)
        except OSError:
            os.close(r)
            os.close(w)
            raise
        self.end_switch = (r, w)

    def _signal(self, sig: int) -> bool:
        """Send prog `sig` (through the end switch when armed); False if that is not
        possible (prog reaped, or no way to reach it)."""
        if self.status is not None:
            return False
        if self.end_switch is None:
            try:
                os.kill(self.pid, sig)
            except OSError:
                return False
            return True
        r, w = self.end_switch
        try:
            fcntl.fcntl(r, F_SETSIG, sig)
            fcntl.fcntl(r, fcntl.F_SETFL, fcntl.fcntl(r, fcntl.F_GETFL) | os.O_ASYNC)
            try:
                os.read(r, 64)        # empty it: each write then signals afresh
            except BlockingIOError:
                pass
            os.write(w, b"\0")
        except OSError:
            return False
        return True

    def end(self, grace: float) -> int:
        """prog must go (the connection is over without it): its stdin and stdout closed
        (it sees end of file, its writes fail), then SIGTERM if it has not exited after
        `grace` seconds, SIGKILL after another `grace`. Returns its exit code (111 if it
        could not be ended; it is then left to init)."""
        self.close()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            code = self.wait(timeout=grace)
            if code is not None:
                break
            if not self._signal(sig):
                code = self.wait(timeout=grace)
                break
        else:
            code = self.wait(timeout=grace)
        self.disarm()
        return EXIT_FAILURE if code is None else code

    def disarm(self) -> None:
        if self.end_switch is not None:
            for fd in self.end_switch:
                try:
                    os.close(fd)
                except OSError:
                    pass
            self.end_switch = None


def start_prog(argv: Sequence[str], *, user: str | None = None, user_from_cert: bool = False,
               delayed_encryption: bool = False, withhold: Sequence[int] = ()) -> Prog:
    """Fork prog's child: stdin/stdout on pipes, stderr and the other inherited descriptors
    (inherited_fds) passed on, waiting for the go-ahead.

    `user` is -u (prog runs as that account); `user_from_cert` is -U (the go-ahead names the
    account, which wins over -u). With `delayed_encryption` (-n) prog also gets fd 5 and 6.
    `withhold`: inherited descriptors prog must not get."""
    if not argv:
        raise ChildError("no prog to run")
    passed = inherited_fds(withhold)
    if user is None and not user_from_cert:
        path = _resolve(argv[0])
        busy = set(passed) | ({CONTROL_FD, ACK_FD} if delayed_encryption else set())
        waiter_fd = next((fd for fd in WAITER_FDS if fd not in busy), None)
        if path is not None and waiter_fd is not None:
            return _spawn_waiter(path, tuple(argv), delayed_encryption, waiter_fd, withhold)
    child, ours, made = _prog_pipes(delayed_encryption)
    try:
        pid = os.fork()
    except OSError as e:
        for fd in made:
            os.close(fd)
        raise ChildError(f"unable to start prog ({log.oserror_text(e)})") from None
    if pid == 0:
        # Nothing may return from here: os._exit on every path, whatever happens.
        code = EXIT_FAILURE
        try:
            targets = {t: fd for t, fd in child.items() if t != _GO}
            code = _child(tuple(argv), targets, child[_GO], user, user_from_cert, passed)
        except BaseException as e:   # noqa: BLE001 -- the child must never unwind into the parent's code
            log.fatal(f"unable to run prog ({type(e).__name__}: {e})")
        os._exit(code)
    for fd in child.values():
        os.close(fd)
    return Prog(pid, tuple(argv), *ours)


# The key, in _prog_pipes' child ends, of the go-ahead pipe's read end.
_GO = -1


def _prog_pipes(delayed_encryption: bool) -> tuple[dict[int, int], tuple, list[int]]:
    """The pipes between us and prog's waiting child: (the child's ends, keyed by the fd
    number each becomes in prog, _GO for the go-ahead's read end; our ends as Prog takes them:
    prog's stdin, prog's stdout, the go-ahead, and with -n fd 5's reader and fd 6's writer
    (else None); every fd made). Raises ChildError, leaving nothing open."""
    made: list[int] = []
    try:
        for _ in range(5 if delayed_encryption else 3):
            made += os.pipe()
    except OSError as e:
        for fd in made:
            os.close(fd)
        raise ChildError(f"unable to start prog ({log.oserror_text(e)})") from None
    in_r, in_w, out_r, out_w, ctl_r, ctl_w = made[:6]
    child = {0: in_r, 1: out_w, _GO: ctl_r}
    if not delayed_encryption:
        return child, (in_w, out_r, ctl_w, None, None), made
    c5_r, c5_w, c6_r, c6_w = made[6:]
    child.update({CONTROL_FD: c5_w, ACK_FD: c6_r})
    return child, (in_w, out_r, ctl_w, c5_r, c6_w), made


def _resolve(name: str) -> str | None:
    """prog's path as execvp would find it (PATH, else the default path); None if there is
    no executable regular file of that name (the forked child then reports why)."""
    if "/" in name:
        candidates = [name]
    else:
        path = os.environ.get("PATH") or os.defpath
        candidates = [os.path.join(d or ".", name) for d in path.split(os.pathsep)]
    for candidate in candidates:
        try:
            st = os.stat(candidate)
        except (OSError, ValueError):
            continue
        if stat.S_ISREG(st.st_mode) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def _spawn_waiter(path: str, argv: tuple[str, ...], delayed_encryption: bool,
                  waiter_fd: int = WAITER_FD, withhold: Sequence[int] = ()) -> Prog:
    """prog's waiting child as the shell WAITER, spawned without copying this process."""
    child, ours, made = _prog_pipes(delayed_encryption)
    targets = {waiter_fd if t == _GO else t: fd for t, fd in child.items()}
    high: list[int] = []
    try:
        # Sources above every target (close-on-exec), so that no dup2 overwrites a source that
        # is itself one of the targets' numbers; dup2 clears close-on-exec on the targets.
        actions: list[tuple] = []
        for t, src in targets.items():
            high.append(fcntl.fcntl(src, fcntl.F_DUPFD_CLOEXEC, 10))
            actions.append((os.POSIX_SPAWN_DUP2, high[-1], t))
        # Our own descriptors are all close-on-exec; inherited ones reach prog (see
        # inherited_fds) except those withheld.
        actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in withhold
                    if fd not in targets and fd in _inheritable_fds()]
        pid = os.posix_spawn(
            WAITER_SHELL, ["sh", "-c", waiter_script(waiter_fd), "sh", path, *argv[1:]],
            os.environ,
            file_actions=actions,
            # Python ignores SIGPIPE and SIGXFSZ, and an ignored signal stays ignored across
            # exec: give prog the default behaviour it expects (`cat` dying on a closed pipe).
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD), setsigmask=())
    except OSError as e:
        for fd in made + high:
            os.close(fd)
        raise ChildError(f"unable to start prog ({log.oserror_text(e)})") from None
    for fd in [*child.values(), *high]:
        os.close(fd)
    return Prog(pid, argv, *ours, waiter=True)


def _inheritable_fds() -> list[int]:
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return []
    out = []
    for name in names:
        fd = int(name)
        try:
            if os.get_inheritable(fd):
                out.append(fd)
        except OSError:
            pass       # the directory's own fd, closed already
    return out


def _child(argv: tuple[str, ...], targets: dict[int, int], ctl: int, user: str | None,
           user_from_cert: bool, passed: Sequence[int] = ()) -> int:
    """In the forked child: set up fds, wait for the go-ahead, switch account, exec."""
    # The parent's Python signal handlers and wakeup fd belong to the relay, not to us.
    signal.set_wakeup_fd(-1)
    for sig in signal.valid_signals():
        try:
            if callable(signal.getsignal(sig)):
                signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError, RuntimeError):
            pass
    # Move every pipe end (and the control fd) above the targets before dup2, so that no
    # dup2 overwrites a source that is itself one of the targets' numbers.
    ctl = fcntl.fcntl(ctl, fcntl.F_DUPFD_CLOEXEC, 10)
    high = {t: fcntl.fcntl(src, fcntl.F_DUPFD_CLOEXEC, 10) for t, src in targets.items()}
    for t, src in high.items():
        os.dup2(src, t, inheritable=True)
    # Only 0, 1, 2, (5, 6), the control pipe and what we inherited (inherited_fds) survive:
    # prog must not inherit the key process's pipes or anything else of ours.
    keep = sorted(set(targets) | {0, 1, 2, ctl} | set(passed))
    lo = 0
    for fd in keep:
        if fd > lo:
            os.closerange(lo, fd)
        lo = fd + 1
    os.closerange(lo, 1 << 20)

    msg = _read_message(ctl)
    os.close(ctl)
    if msg is None:
        return EXIT_FAILURE
    verb, account, env = msg
    if verb != "go":
        return EXIT_FAILURE
    if env.get("TCPREMOTEIP"):
        # The client's address as the network process knows it (a listener's spare started
        # this child before its connection existed).
        log.set_prefix(log.client_prefix(env.get("TCPREMOTEIP"), env.get("TCPREMOTEPORT")))
    if account and not user_from_cert:
        log.fatal("go-ahead names an account but -U is not set, refused")
        return EXIT_FAILURE
    if user_from_cert and not account:
        log.fatal("no account name from the client certificate")
        return EXIT_FAILURE
    target = account if user_from_cert else user
    if target is not None:
        try:
            switch_account(target)
        except ChildError as e:
            log.fatal(str(e))
            return EXIT_FAILURE

    environ = dict(os.environ)
    environ.update(env)
    # Python ignores SIGPIPE and SIGXFSZ, and an ignored signal stays ignored across exec:
    # give prog the default behaviour it expects (e.g. `cat` dying on a closed pipe).
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    try:
        os.execvpe(argv[0], list(argv), environ)
    except (OSError, ValueError) as e:
        reason = log.oserror_text(e) if isinstance(e, OSError) else str(e)
        log.fatal(f"unable to run prog '{argv[0]}' ({reason})")
    return EXIT_FAILURE


def _read_exact(fd: int, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        try:
            chunk = os.read(fd, n - len(buf))
        except InterruptedError:
            continue
        except OSError:
            return None
        if not chunk:
            return None
        buf += chunk
    return buf


def _read_message(fd: int) -> tuple[str, str, dict[str, str]] | None:
    """Read and check the go-ahead; None (abort) for EOF or anything malformed."""
    head = _read_exact(fd, 4)
    if head is None:
        return None
    (n,) = struct.unpack(">I", head)
    if n > MAX_MESSAGE:
        log.fatal("go-ahead message too long, refused")
        return None
    payload = _read_exact(fd, n)
    if payload is None:
        return None
    fields = payload.split(b"\0")
    if len(fields) < 2:
        log.fatal("malformed go-ahead message")
        return None
    try:
        verb = fields[0].decode("ascii")
        account = fields[1].decode("ascii")
    except UnicodeDecodeError:
        log.fatal("malformed go-ahead message")
        return None
    if account and not _account_ok(account):
        log.fatal(f"account name '{log.escape(account)}' refused")
        return None
    env: dict[str, str] = {}
    for item in fields[2:]:
        name, sep, value = item.partition(b"=")
        key = name.decode("ascii", "replace")
        if not sep or key not in ALLOWED_ENV or len(value) > MAX_VALUE:
            log.fatal(f"environment variable '{log.escape(key)}' refused")
            return None
        env[key] = value.decode("utf-8", "surrogateescape")
    return verb, account, env


def switch_account(name: str) -> None:
    """Become `name`: its supplementary groups, gid and uid (real, effective, saved).

    uid 0 and gid 0 are refused, so that neither -u nor a client certificate can give prog
    root. Raises ChildError."""
    try:
        pw = pwd.getpwnam(name)
    except (KeyError, ValueError, UnicodeError):
        raise ChildError(f"unable to find account '{log.escape(name)}' (no such user)") from None
    if pw.pw_uid == 0 or pw.pw_gid == 0:
        raise ChildError(f"account '{name}' has uid or gid 0, refused")
    try:
        os.initgroups(pw.pw_name, pw.pw_gid)
        os.setresgid(pw.pw_gid, pw.pw_gid, pw.pw_gid)
        os.setresuid(pw.pw_uid, pw.pw_uid, pw.pw_uid)
    except OSError as e:
        raise ChildError(f"unable to drop privileges to '{name}' ({log.oserror_text(e)})") from None
    if os.getresuid() != (pw.pw_uid,) * 3 or os.getresgid() != (pw.pw_gid,) * 3:
        raise ChildError(f"unable to drop privileges to '{name}' (ids did not change)")


def _plain_ip(host: str) -> str:
    """An address as tcpserver writes it: IPv4-mapped IPv6 shown as plain IPv4."""
    import ipaddress   # only when the address comes from the socket (not under tcpserver)
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return host


def connection_addresses(fd: int = 0, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """TCPLOCALIP/TCPLOCALPORT/TCPREMOTEIP/TCPREMOTEPORT: from the environment (tcpserver and
    tcpsvd set them), else from fd `fd` when it is a TCP socket; missing ones are left out."""
    env = os.environ if environ is None else environ
    out = {k: env[k] for k in TCP_ENV if env.get(k)}
    if len(out) == len(TCP_ENV):
        return out
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return out
        sock = socket.socket(fileno=fd)
    except OSError:
        return out
    try:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            for prefix, getter in (("TCPLOCAL", sock.getsockname), ("TCPREMOTE", sock.getpeername)):
                try:
                    addr = getter()
                except OSError:
                    continue
                out.setdefault(prefix + "IP", _plain_ip(addr[0]))
                out.setdefault(prefix + "PORT", str(addr[1]))
    finally:
        sock.detach()         # the socket object must not close fd 0
    return {k: out[k] for k in TCP_ENV if k in out}
