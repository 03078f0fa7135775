"""Starting the key process, and what it runs from the fork to its request loop.

Rule: the forked key process never returns into the caller's code, ends at once when the
network process goes (_watch_request_pipe), and jails itself before its first request.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import sys

from tlswrapper import ipc
from tlswrapper.exits import EXIT_FAILURE, EXIT_OK
from tlswrapper.keys import service as key_service
from tlswrapper.keys.files import KeyFiles
from tlswrapper.keys.order import CallOrder
from tlswrapper.net.keyproxy import PipeKeyService

# typing is not imported at run time (each tcpserver-mode connection imports this module).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

PR_SET_PDEATHSIG = 1


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
    libc = jail_module.loaded_libc() if jail_module is not None else None
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
        return EXIT_FAILURE
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
                os._exit(EXIT_FAILURE)

    service = factory(rearming_jail, files)
    _unwatch_request_pipe(rfd)
    try:
        key_service.serve(rfd, wfd, service, CallOrder(files.anchor is not None), log)
    except ipc.IpcError as e:
        if log is not None:
            log(f"tlswrapper: warning: key process: bad request: {e}")
        return EXIT_FAILURE
    except OSError:
        return EXIT_FAILURE     # the answer pipe broke: the network process is gone
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
                      log: Callable[[str], None] | None = key_service.stderr_log,
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
        status = EXIT_FAILURE
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
