"""The network process's side of the key process: start it, and a KeyService over its pipes.

Rule: every answer is checked before use, and a key process that dies or misbehaves raises
KeyProcessDied (fatal for the connection, exit 111), never a hang or a KeyServiceError.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import sys
import time

from tlswrapper import ipc
from tlswrapper.keys import service as key_service
from tlswrapper.keys.files import KeyFiles
from tlswrapper.keys.order import CallOrder
from tlswrapper.tls import suites
from tlswrapper.tls.secrets import Candidate, KeyRefused, KeyServiceError, Unusable

# typing is not imported at run time (each tcpserver-mode connection imports this module).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

PR_SET_PDEATHSIG = 1
# How long close() waits for the key process to exit after EOF before killing it.
CLOSE_GRACE = 1.0
EXIT_OK = 0
EXIT_FATAL = 111


class KeyProcessDied(Exception):
    """The key process exited, was killed, or broke the protocol. Not a KeyServiceError on
    purpose: no alert can be computed without it, the connection is simply over."""


# --- answer checks: the shape each method must answer with ------------------------------------

def _none(v: Any) -> None:
    if v is not None:
        raise ipc.IpcError("expected no result")


def _bytes(v: Any) -> bytes:
    if type(v) is not bytes:
        raise ipc.IpcError("expected bytes")
    return v


def _candidates(v: Any) -> list[Candidate | Unusable]:
    if type(v) is not list:
        raise ipc.IpcError("expected a list")
    return [ipc.candidate_from_wire(x) for x in v]


def _opened(v: Any) -> tuple[list[tuple[int, bytes]], int, str]:
    if type(v) is tuple and len(v) == 3 and type(v[0]) is list and type(v[1]) is int \
            and type(v[2]) is str:
        for r in v[0]:
            if type(r) is not tuple or len(r) != 2 or type(r[0]) is not int \
                    or type(r[1]) is not bytes:
                break
        else:
            return v
    raise ipc.IpcError("malformed open() answer")


def _records(records: Sequence[Any]) -> list | tuple:
    # The encoder takes lists and tuples; any other Sequence is copied into a list.
    return records if type(records) is list or type(records) is tuple else list(records)


def _pair(v: Any) -> tuple[bytes, bytes]:
    if type(v) is tuple and len(v) == 2 and type(v[0]) is bytes and type(v[1]) is bytes:
        return v
    raise ipc.IpcError("expected two bytes values")


def _flight13(v: Any) -> tuple[bytes, bytes, bytes, bytes, bytes]:
    if type(v) is tuple and len(v) == 5 and all(type(x) is bytes for x in v):
        return v
    raise ipc.IpcError("malformed server_flight13() answer")


class PipeKeyService:
    """The KeyService of the engine in production: each call that answers something is one
    request/answer round trip to the key process; select(), activate() and key_update() are
    deferred and sent in the same write as the next call (secrets.py: "Round trips"): a failed
    select is raised by that call as KeyRefused. Not thread-safe (one connection, one
    thread)."""

    def __init__(self, rfd: int, wfd: int, pid: int | None = None) -> None:
        self.rfd = rfd          # answers from the key process
        self.wfd = wfd          # requests to the key process
        self.pid = pid
        self._reader = ipc.FrameReader(rfd)
        self._dead: str | None = None
        self._closed = False
        # Deferred calls: (name, frame buffers), sent before the next call's request.
        self._deferred: list[tuple[str, list[Any]]] = []

    # --- transport -----------------------------------------------------------------------------
    def _usable(self) -> None:
        if self._dead is not None:
            raise KeyProcessDied(self._dead)
        if self._closed:
            raise KeyProcessDied("key service closed")

    def _encode(self, name: str, args: tuple) -> list[Any]:
        try:
            return ipc.encode_parts(ipc.OPCODES[name], args)
        except ipc.IpcError as e:
            # The engine passed something the pipe cannot carry: an engine bug, not a dead
            # key process; the pipe is still in sync, nothing was written.
            raise KeyServiceError(suites.INTERNAL_ERROR, f"cannot send {name}: {e}") from None

    def _defer(self, name: str, args: tuple) -> None:
        self._usable()
        self._deferred.append((name, self._encode(name, args)))

    def _call(self, name: str, args: tuple) -> Any:
        self._usable()
        parts = self._encode(name, args)
        deferred = self._deferred
        if deferred:
            self._deferred = []
            parts = [p for _, frame in deferred for p in frame] + parts
        try:
            ipc.write_parts(self.wfd, parts)
            # The deferred calls' answers first, in order; the first error among them is
            # raised once every answer is read (the pipes stay in step). A failed select is
            # KeyRefused: the call sent with it failed for want of a key (or, from a key side
            # that kept one, answered with a key the engine did not choose): dropped.
            error: KeyServiceError | None = None
            for deferred_name, _ in deferred:
                value = self._answer(deferred_name)
                if isinstance(value, KeyServiceError):
                    if error is None:
                        error = KeyRefused(value.alert, value.reason) \
                            if deferred_name == "select" else value
                elif value is not None:
                    raise self._die(f"key process answered {deferred_name} with a value")
            value = self._answer(name)
        except (OSError, ipc.IpcError) as e:
            raise self._die(f"key process pipe failed in {name}: {e}") from None
        if error is not None:
            raise error
        if isinstance(value, KeyServiceError):
            raise value
        return value

    def _answer(self, name: str) -> Any:
        """The next answer: its value, or the KeyServiceError it carries (not raised)."""
        frame = self._reader.read()
        if frame is None:
            raise self._die(f"key process exited during {name}")
        opcode, value = frame
        if opcode == ipc.OP_OK:
            return value
        if opcode == ipc.OP_ERR and type(value) is tuple and len(value) == 2 \
                and type(value[0]) is int and type(value[1]) is str:
            return KeyServiceError(value[0], value[1])
        raise self._die(f"key process answered {name} with opcode {opcode}")

    def _die(self, reason: str) -> KeyProcessDied:
        # After a failure in the middle of a round trip the pipes are out of step for good.
        self._dead = reason
        return KeyProcessDied(reason)

    def _check(self, name: str, value: Any, check: Callable[[Any], Any]) -> Any:
        try:
            return check(value)
        except ipc.IpcError as e:
            raise self._die(f"key process answered {name} wrongly: {e}") from None

    # --- KeyService ---------------------------------------------------------------------------
    def load(self, paths: Sequence[str]) -> list[Candidate | Unusable]:
        return self._check("load", self._call("load", (list(paths),)), _candidates)

    def read_anchor(self) -> bytes:
        return self._check("read_anchor", self._call("read_anchor", ()), _bytes)

    def ready(self) -> None:
        """Wait until the key process serves requests (its start-up and warm-up are over).
        Not part of the KeyService interface: the engine never calls it."""
        self._check("ready", self._call("ready", ()), _none)

    def select(self, index: int) -> None:
        # Deferred: it goes with the server flight call that signs (one round trip fewer).
        self._defer("select", (index,))

    def server_key_exchange12(self, group: int, scheme: int, client_random: bytes,
                              server_random: bytes) -> tuple[bytes, bytes]:
        args = (group, scheme, client_random, server_random)
        return self._check("server_key_exchange12",
                           self._call("server_key_exchange12", args), _pair)

    def seal_finished12(self, handshake_hash: bytes) -> bytes:
        return self._check("seal_finished12",
                           self._call("seal_finished12", (handshake_hash,)), _bytes)

    def derive12(self, version: int, suite: int, peer_share: bytes, client_random: bytes,
                 server_random: bytes, session_hash: bytes | None,
                 encrypt_then_mac: bool = False) -> None:
        args = (version, suite, peer_share, client_random, server_random, session_hash,
                bool(encrypt_then_mac))
        self._check("derive12", self._call("derive12", args), _none)

    def derive12_finished(self, version: int, suite: int, peer_share: bytes,
                          client_random: bytes, server_random: bytes,
                          transcript: Sequence[bytes], extended_master_secret: bool,
                          encrypt_then_mac: bool) -> tuple[bytes, bytes]:
        args = (version, suite, peer_share, client_random, server_random,
                _records(transcript), bool(extended_master_secret), bool(encrypt_then_mac))
        return self._check("derive12_finished", self._call("derive12_finished", args), _pair)

    def server_flight13(self, group: int, peer_share: bytes, suite: int, scheme: int,
                        transcript: Sequence[bytes], hello_head: bytes,
                        flight: Sequence[bytes], client_auth: bool,
                        ) -> tuple[bytes, bytes, bytes, bytes, bytes]:
        args = (group, peer_share, suite, scheme, _records(transcript), hello_head,
                _records(flight), bool(client_auth))
        return self._check("server_flight13", self._call("server_flight13", args),
                           _flight13)

    def finished12(self, sender: int, handshake_hash: bytes) -> bytes:
        return self._check("finished12", self._call("finished12", (sender, handshake_hash)),
                           _bytes)

    def finished13(self, sender: int, transcript_hash: bytes) -> bytes:
        return self._check("finished13", self._call("finished13", (sender, transcript_hash)),
                           _bytes)

    def key_update(self, direction: int) -> None:
        self._defer("key_update", (direction,))

    def activate(self, direction: int) -> None:
        self._defer("activate", (direction,))

    def seal(self, records: Sequence[tuple[int, bytes]]) -> bytes:
        return self._check("seal", self._call("seal", (_records(records),)), _bytes)

    def open(self, records: Sequence[bytes]) -> tuple[list[tuple[int, bytes]], int, str]:
        return self._check("open", self._call("open", (_records(records),)), _opened)

    # --- lifetime -----------------------------------------------------------------------------
    def close(self, wait: bool = True) -> int | None:
        """Close our pipe ends (the key process sees EOF and exits). With `wait` and a known
        pid, reap it: returns its wait status, killing it if it lingers past CLOSE_GRACE."""
        if not self._closed:
            self._closed = True
            for fd in (self.wfd, self.rfd):
                try:
                    os.close(fd)
                except OSError:
                    pass
        if not wait or self.pid is None:
            return None
        pid, self.pid = self.pid, None
        deadline = time.monotonic() + CLOSE_GRACE
        while True:
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return None
            if done:
                return status
            if time.monotonic() >= deadline:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                except PermissionError:
                    # Jailed, we cannot signal it (another uid); it has our end of file and
                    # ends by itself (_watch_request_pipe): init reaps it. Never a hang here.
                    return None
                return os.waitpid(pid, 0)[1]
            time.sleep(0.002)

    def __enter__(self) -> PipeKeyService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- starting the key process --------------------------------------------------------------------

def _high_fd(fd: int) -> int:
    """`fd` moved to 3 or above, so that it can never be mistaken for stdin/stdout/stderr
    (fd 2 stays the key process's log)."""
    if fd >= 3:
        return fd
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.close(fd)
    return new


def _parent_death_signal() -> Callable[[], None]:
    """A function that sets PR_SET_PDEATHSIG to SIGKILL; it is resolved now (ctypes and libc
    loaded) so that it still works inside the jail, where nothing can be loaded."""
    # The libc handle jail.prepare() made before the fork, when there is one: loading it
    # again (ctypes.CDLL) costs ~0.2 ms per connection.
    jail_module = sys.modules.get("tlswrapper.jail")
    libc = getattr(jail_module, "_libc", None)
    try:
        if libc is not None:
            prctl = libc.prctl
        else:
            import ctypes   # imported in the key process only, before its jail
            prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError):
        return lambda: None
    kill = int(signal.SIGKILL)

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, kill, 0, 0, 0)
    return arm


def _child_fds(keep: tuple[int, ...]) -> None:
    """Close every fd but `keep` and 2; 0 and 1 become /dev/null so that a stray print or a
    later open() can never land on a descriptor someone else reads."""
    try:
        null = os.open(os.devnull, os.O_RDWR)
    except OSError:
        null = -1
    for fd in (0, 1):
        if null >= 0:
            os.dup2(null, fd)
        else:
            try:
                os.close(fd)
            except OSError:
                pass
    kept = sorted(set(keep) | {0, 1, 2})
    lo = 3
    for fd in kept:
        if fd >= lo:
            os.closerange(lo, fd)
            lo = fd + 1
    os.closerange(lo, 1 << 20 if (m := os.sysconf("SC_OPEN_MAX")) < 0 else max(m, lo))


def _hung_up(rfd: int) -> bool:
    """True when no process holds the request pipe's write end any more (the network process
    is gone): pipe_poll reports POLLHUP then, even with requests still queued."""
    poller = select.poll()
    poller.register(rfd, 0)
    try:
        return any(events & (select.POLLHUP | select.POLLERR | select.POLLNVAL)
                   for _, events in poller.poll(0))
    except OSError:
        return False


def _watch_request_pipe(rfd: int) -> None:
    """From the first instant of the key process to its serve loop: end at once when the
    network process goes. PR_SET_PDEATHSIG cannot do it: the kernel sends the parent-death
    signal with the dying parent's credentials, so a network process that has jailed itself
    (another uid) cannot deliver it to a key process still root (EPERM, nothing reported); and
    setuid clears it. Instead the request pipe is put in O_ASYNC mode owned by this process:
    the kernel sends SIGIO when the last writer closes (pipe_release) or writes, with the
    credentials recorded here by F_SETOWN. Without this, a client that disconnects while its
    key process imports cryptography left that process running as root, re-parented to init,
    for as long as its start-up took (under a flood: many of them, outside tcpserver's -c)."""
    # Exit status as at end of file in the serve loop: the network process is done with us.
    def on_sigio(signum: int, frame: object) -> None:
        if _hung_up(rfd):
            os._exit(EXIT_OK)

    signal.signal(signal.SIGIO, on_sigio)
    fcntl.fcntl(rfd, fcntl.F_SETOWN, os.getpid())
    fcntl.fcntl(rfd, fcntl.F_SETFL, fcntl.fcntl(rfd, fcntl.F_GETFL) | os.O_ASYNC)
    if _hung_up(rfd):       # gone before the watch was set: no SIGIO will come
        os._exit(EXIT_OK)


def _unwatch_request_pipe(rfd: int) -> None:
    """The serve loop notices the network process's end itself (EOF on a request, EPIPE on
    an answer): no SIGIO per request from here on."""
    fcntl.fcntl(rfd, fcntl.F_SETFL, fcntl.fcntl(rfd, fcntl.F_GETFL) & ~os.O_ASYNC)
    signal.signal(signal.SIGIO, signal.SIG_IGN)
    if _hung_up(rfd):       # gone between the last SIGIO and now
        os._exit(EXIT_OK)


def _key_process_main(rfd: int, wfd: int, parent: int, files: KeyFiles,
                      factory: Callable[[Callable[[], None] | None, KeyFiles], Any],
                      jail: Callable[[], None] | None,
                      log: Callable[[str], None] | None) -> int:
    """Runs in the forked child; returns its exit status."""
    _watch_request_pipe(rfd)
    arm = _parent_death_signal()
    arm()
    if os.getppid() != parent:      # the network process died before prctl took effect
        return EXIT_FATAL
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM,
                signal.SIGCHLD, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_DFL)   # the network process's handlers mean nothing here
    # A listener's spare: the handshake's key-side code run once on throw-away keys while no
    # client waits (warmup.key_side; nothing to replay under tcpserver). Before _child_fds,
    # which would close the throw-away certificate's memfd.
    from tlswrapper.warmup import key_side
    key_side()
    _child_fds((rfd, wfd))
    ahead = getattr(jail, "ahead", None)
    if ahead is not None:
        ahead()        # the jail worked out now, not in the first request's time

    rearming_jail: Callable[[], None] | None = None
    if jail is not None:
        inner = jail

        def rearming_jail() -> None:
            inner()
            # Changing uid/gid clears PR_SET_PDEATHSIG (prctl(2)): arm it again, and check
            # that the network process did not die in between.
            arm()
            if os.getppid() != parent:
                os._exit(EXIT_FATAL)

    service = factory(rearming_jail, files)
    _unwatch_request_pipe(rfd)
    try:
        key_service.serve(rfd, wfd, service, CallOrder(files.anchor is not None), log)
    except ipc.IpcError as e:
        if log is not None:
            log(f"tlswrapper: warning: key process: bad request: {e}")
        return EXIT_FATAL
    except OSError:
        return EXIT_FATAL     # the answer pipe broke: the network process is gone
    return EXIT_OK


def _local_factory(jail: Callable[[], None] | None, files: KeyFiles) -> Any:
    # Imported here: in the key process after fork (so the network process does not pay for
    # importing cryptography), before the jail; a parent that imported it already (the
    # built-in listener) makes this free.
    from tlswrapper.keys.local import LocalKeyService
    return LocalKeyService(jail=jail, files=files)


def start_key_process(jail: Callable[[], None] | None, files: KeyFiles,
                      factory: Callable[[Callable[[], None] | None, KeyFiles], Any]
                      | None = None,
                      log: Callable[[str], None] | None = key_service._stderr_log,
                      ) -> tuple[PipeKeyService, int]:
    """Fork the key process and return (its PipeKeyService, its pid). The key process runs
    `factory(jail, files)` (default: LocalKeyService(jail=jail, files=files)) and serves it
    until EOF on its request pipe, in handshake order (keys/order.py); it never returns into
    the caller's code. `files` is the configuration the key process derives every file it
    opens from (keys/files.py): it knows it from its own memory, not from the pipe. `log`
    receives its one-line warnings (None: silent). The caller reaps it (PipeKeyService.close
    does)."""
    if factory is None:
        factory = _local_factory
    req_r, req_w = (_high_fd(fd) for fd in os.pipe())
    ans_r, ans_w = (_high_fd(fd) for fd in os.pipe())
    # Default 64 KiB pipes: F_SETPIPE_SZ to 256 KiB or 1 MiB measured no faster for a
    # 256 KiB batch, and large pipes count against the per-user pipe memory limit.
    parent = os.getpid()
    # Flush Python's buffers so the child cannot write out a copy of pending output.
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    pid = os.fork()
    if pid == 0:
        status = EXIT_FATAL
        try:
            os.close(req_w)
            os.close(ans_r)
            status = _key_process_main(req_r, ans_w, parent, files, factory, jail, log)
        except BaseException as e:   # whatever happens, never unwind into the caller
            if log is not None:
                try:
                    log(f"tlswrapper: warning: key process failed: {type(e).__name__}")
                except BaseException:
                    pass
        finally:
            os._exit(status)
    os.close(req_r)
    os.close(ans_w)
    return PipeKeyService(ans_r, req_w, pid), pid
