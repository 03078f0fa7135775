"""tlswrapper-listen: the built-in listener. One process imports everything once, accepts, and
forks one child per connection; the child is exactly tlswrapper under `tcpserver -HRDl0`
(connection on fd 0/1, TCP* variables set, then net/start.py's run: its own network process, key
process and jail).

Rule: the listener never reads a key or a client byte; it only binds (or takes systemd's
socket), accepts, counts the bytes queued on a connection (FIONREAD), hands it over, forks and
reaps. A connection costs a process only once it has shown it is TLS: it waits in the
listener's pool (bounded, -w seconds) until a whole record header is queued, then goes to a
spare (SCM_RIGHTS). Over the concurrency limit the connections that are ready wait in the pool;
-C caps the connections served per client address. SIGTERM (or SIGINT): stop accepting, serve
what was accepted, let the open connections finish, exit 0.

    tlswrapper-listen [-c limit] [-b backlog] [-w seconds] [-C perip] host port
                      [tlswrapper options] prog [args...]
    tlswrapper-listen [-c limit] ... - [tlswrapper options] prog [args...]  (systemd, Accept=no)

Why a separate command and not `tlswrapper -l host:port`: the tlswrapper command line stays
exactly the C version's (no new letter), and the listener can use tcpserver's own letters
(-c limit, -b backlog) and busybox tcpsvd's (-C per-address limit), which in tlswrapper's
namespace already mean a cipher and nothing.
"""

from __future__ import annotations

import collections
import errno
import gc
import os
import resource
import select
import signal
import socket
import sys
import time
from typing import NoReturn, Sequence

from tlswrapper import jail, log
from tlswrapper.commands import cli
from tlswrapper.exits import EXIT_FAILURE, EXIT_USAGE
from tlswrapper.net.keyproxy import KeyProcessDied
from tlswrapper.net.phases import unread
from tlswrapper.tls.keyservice import KeyServiceError

DEFAULT_LIMIT = 100          # tcpserver's -c default
DEFAULT_BACKLOG = 128
MAX_LIMIT = 100000
# Connections' processes started ahead of time (each a network process with its key process
# and prog's waiting child): a new connection is handed to one at once, and the forks are
# paid between connections instead of within one.
SPARES = 2
# The pool of accepted connections that have not shown they are TLS yet (see the Rule).
DEFAULT_WAIT = 10            # -w: seconds a connection may take to queue a record header
MAX_WAIT = 3600
POOL_LIMIT = 16384           # connections held at once; over it, accepting pauses
RECORD_HEADER = 5            # a TLS record header (type, version, length): bytes to queue
ACCEPT_BATCH = 64            # accepts per round of the loop (see Listener._accept)
NOFILE_WANTED = POOL_LIMIT + 1024   # RLIMIT_NOFILE the listener raises its soft limit to
USAGE = ("tlswrapper-listen [ -c limit ] [ -b backlog ] [ -w seconds ] [ -C perip ] "
         "host port | - [tlswrapper options] prog [args...]")
SD_LISTEN_FDS_START = 3      # sd_listen_fds(3): the first passed descriptor
QUEUE_DRAIN = 2.0            # on stop: longest wait for the spares to empty the accept queue

# The variables tcpserver -HRDl0 sets (PROTO, TCPLOCALHOST=0 from -l0) or unsets (-H: no
# TCPREMOTEHOST, -R: no TCPREMOTEINFO); the four addresses are set per connection.
_UNSET = ("TCPREMOTEHOST", "TCPREMOTEINFO")


class ListenError(Exception):
    """The listener cannot start: one fatal line; `code` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def _number(what: str, value: str, low: int, high: int) -> int:
    if not value.isdigit() or not low <= int(value) <= high:
        raise cli.OptionError(f"{what} must be a number from {low} to {high}, not "
                              f"'{log.escape(value)}'")
    return int(value)


def parse(args: Sequence[str]) -> tuple[dict, list[str]]:
    """The listener's own options and address; returns (settings, tlswrapper's arguments).
    settings: limit, backlog, host (None for `-`), port, wait (-w), per_source (-C, 0: off)."""
    settings: dict = {"limit": DEFAULT_LIMIT, "backlog": DEFAULT_BACKLOG, "host": None,
                      "port": None, "wait": DEFAULT_WAIT, "per_source": 0}
    args = list(args)
    i = 0
    while i < len(args) and args[i].startswith("-") and len(args[i]) > 1:
        arg = args[i]
        if arg == "--":
            i += 1
            break
        letter = arg[1]
        if letter not in "cbwC":
            raise cli.UsageError(f"unknown option -{log.escape(letter)}")
        value = arg[2:]
        if not value:
            i += 1
            if i >= len(args):
                raise cli.UsageError(f"option -{letter} needs a value")
            value = args[i]
        if letter == "c":
            settings["limit"] = _number("limit", value, 1, MAX_LIMIT)
        elif letter == "w":
            settings["wait"] = _number("wait", value, 1, MAX_WAIT)
        elif letter == "C":
            settings["per_source"] = _number("per-address limit", value, 0, MAX_LIMIT)
        else:
            settings["backlog"] = _number("backlog", value, 1, 65535)
        i += 1
    if i >= len(args):
        raise cli.UsageError("no host and port given")
    if args[i] == "-":
        return settings, args[i + 1:]
    if i + 1 >= len(args):
        raise cli.UsageError("no port given")
    settings["host"] = args[i]
    settings["port"] = _number("port", args[i + 1], 0, 65535)
    return settings, args[i + 2:]


# --------------------------------------------------------------------------- the socket

def systemd_socket(environ=os.environ) -> socket.socket | None:
    """The listening socket systemd passed (Accept=no), or None when the variables are
    absent or meant for another process (LISTEN_PID is not ours). Raises ListenError for a
    passed descriptor we cannot use. The variables are removed, as sd_listen_fds(1) does, so
    that prog does not inherit them."""
    fds, pid = environ.get("LISTEN_FDS"), environ.get("LISTEN_PID")
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        environ.pop(name, None)
    if not fds or not pid or not pid.isdigit() or int(pid) != os.getpid():
        return None
    if not fds.isdigit() or int(fds) < 1:
        return None
    if int(fds) > 1:
        raise ListenError(f"systemd passed {fds} sockets; one ListenStream= is supported")
    try:
        sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    except OSError as e:
        raise ListenError(f"unable to use the socket from systemd on fd 3 "
                          f"({log.oserror_text(e)})") from None
    if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6) \
            or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise ListenError("fd 3 from systemd is not a listening TCP socket "
                          "(ListenStream= with Accept=no is needed)")
    os.set_inheritable(SD_LISTEN_FDS_START, False)
    return sock


def bind(host: str, port: int, backlog: int) -> socket.socket:
    """A listening socket on host:port; `0` is any IPv4 address (as in tcpserver), `::` any
    IPv6 address and IPv4 too."""
    if host == "0":
        host = "0.0.0.0"
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0,
                                   socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        raise ListenError(f"unable to resolve '{log.escape(host)}' ({e})", EXIT_USAGE) from None
    family, type_, proto, _, address = infos[0]
    try:
        sock = socket.socket(family, type_, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # "::" serves IPv4 as well (mapped addresses, shown as plain IPv4 to prog).
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host == "::" else 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as e:
        raise ListenError(f"unable to bind {log.escape(host)} port {port} "
                          f"({log.oserror_text(e)})") from None
    return sock


# --------------------------------------------------------------------------- one connection

def _plain(ip: str) -> str:
    return ip[7:] if ip.startswith("::ffff:") and "." in ip else ip.split("%", 1)[0]


def connection_environment(conn: socket.socket, remote: tuple | None = None
                           ) -> dict[str, str]:
    """The four addresses tcpserver -HRDl0 sets for this connection (PROTO and TCPLOCALHOST
    are the same for every connection: the listener puts them in its own environment).
    `remote`: the client's address as accept() gave it (getpeername fails once the client
    has reset the connection, which a connection waiting in the pool may well have done)."""
    local = conn.getsockname()
    if remote is None:
        remote = conn.getpeername()
    return {"TCPLOCALIP": _plain(local[0]), "TCPLOCALPORT": str(local[1]),
            "TCPREMOTEIP": _plain(remote[0]), "TCPREMOTEPORT": str(remote[1])}


def tcpserver_environment(environ=os.environ) -> None:
    """What tcpserver -HRDl0 sets alike for every connection: PROTO, TCPLOCALHOST=0 (-l0),
    no TCPREMOTEHOST (-H) and no TCPREMOTEINFO (-R); stale addresses removed."""
    for name in _UNSET + ("TCPLOCALIP", "TCPLOCALPORT", "TCPREMOTEIP", "TCPREMOTEPORT"):
        environ.pop(name, None)
    environ["PROTO"] = "TCP"
    environ["TCPLOCALHOST"] = "0"


def _encode_environment(env: dict[str, str]) -> bytes:
    return "\n".join(f"{k}={v}" for k, v in env.items()).encode()


def _decode_environment(data: bytes) -> dict[str, str]:
    env = {}
    for line in data.decode(errors="replace").split("\n"):
        name, sep, value = line.partition("=")
        if sep and name in ("TCPLOCALIP", "TCPLOCALPORT", "TCPREMOTEIP", "TCPREMOTEPORT"):
            env[name] = value
    return env


def _receive_connection(sock: socket.socket) -> tuple[socket.socket, dict[str, str]] | None:
    """Wait for the listener to hand us a connection (its descriptor over `sock`, with its
    addresses), or for the listener to close `sock` (it stops, or it is gone): None."""
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(sock, 1024, 1)
        except InterruptedError:
            continue
        except OSError:
            return None
        if not fds:
            return None      # end of file: nothing else is ever sent to a spare
        for extra in fds[1:]:
            os.close(extra)
        try:
            conn = socket.socket(fileno=fds[0])
        except OSError:
            os.close(fds[0])
            return None
        return conn, _decode_environment(data)


def spare_main(sock: socket.socket, close: Sequence[int], options: cli.Options,
               nofile: tuple[int, int] | None = None) -> NoReturn:
    """In a forked spare: start the connection's key process and prog ahead of time, jail
    (all but RLIMIT_NOFILE, see Prepared.jail_ahead), tell the listener it is ready (one
    byte on `sock`), receive one connection from it, then become `tlswrapper` under
    tcpserver for it (RLIMIT_NOFILE 0, handshake, relay) and exit with its status. `close`:
    the listener's descriptors (its sockets, the pool's connections), closed first; `nofile`:
    the RLIMIT_NOFILE the listener started with (it raised its own for the pool), for prog.
    Never returns into the listener."""
    code = EXIT_FAILURE
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        for fd in close:
            try:
                os.close(fd)
            except OSError:
                pass
        if nofile is not None:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, nofile)
            except (OSError, ValueError):
                pass
        log.setup("tlswrapper", options.verbosity)
        from tlswrapper.net import start
        from tlswrapper.warmup import close_key_file, network_side
        prepared = None
        error = None
        try:
            prepared = start.prepare(options)
        except start.StartError as e:
            error = str(e)        # reported with the connection it fails, as under tcpserver
        close_key_file()          # the throw-away certificate: its key process has it
        if prepared is not None:
            network_side(prepared.config)    # pages copied now, not while a client waits
            try:
                prepared.keys.ready()        # its warm-up is over: no client waits for it
            except (KeyServiceError, KeyProcessDied) as e:
                prepared = None
                error = f"key process: {e}"
        if prepared is not None:
            try:
                prepared.jail_ahead()
            except jail.JailError as e:
                prepared = None   # half-jailed: it must not serve; the connection is told
                error = f"unable to create jail: {e}"
        try:
            sock.send(b"r")       # ready: the listener hands us the next connection
        except OSError:
            pass
        received = _receive_connection(sock)
        sock.close()
        if received is None:
            if prepared is not None:
                try:
                    prepared.abandon()
                except Exception:   # noqa: BLE001 -- exiting anyway; EOF ends the others
                    pass
            os._exit(0)
        conn, env = received
        try:
            # As tcpserver -D: records go out as they are made (the relay batches already).
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass      # not TCP (systemd may pass a UNIX socket)
        if not env:
            try:
                env = connection_environment(conn)
            except OSError:
                env = {}       # the client is gone already; the relay ends it quickly
        fd = conn.detach()
        os.dup2(fd, 0)
        os.dup2(fd, 1)
        if fd > 1:
            os.close(fd)
        log.set_prefix(log.client_prefix(env.get("TCPREMOTEIP"), env.get("TCPREMOTEPORT")))
        if prepared is None:
            log.fatal(error or "unable to start")
        else:
            code = prepared.serve(env)
    except BaseException as e:   # noqa: BLE001 -- the child must never unwind into the loop
        try:
            log.fatal(f"internal error ({type(e).__name__}: {e})")
        except BaseException:    # noqa: BLE001
            pass
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    # os._exit: no interpreter teardown (it costs milliseconds and does nothing useful here).
    os._exit(code if isinstance(code, int) else EXIT_FAILURE)


# --------------------------------------------------------------------------- the loop

def _queued(sock: socket.socket) -> int:
    """Connections completed by the kernel and not accepted yet: on a listening socket,
    Linux's TCP_INFO reports the accept queue's length as tcpi_unacked (at byte 24)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
    except OSError:
        return 0
    return int.from_bytes(info[24:28], sys.byteorder) if len(info) >= 28 else 0


class Spare:
    """A forked process with its key process and prog started; `ready` once it said so and
    waits for its connection."""
    __slots__ = ("pid", "sock", "ready")

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock
        self.ready = False


class Pending:
    """An accepted connection in the pool: waiting to queue a record header (`ready` False,
    until `deadline`), then for a spare."""
    __slots__ = ("conn", "env", "source", "deadline", "ready")

    def __init__(self, conn: socket.socket, env: dict[str, str], deadline: float) -> None:
        self.conn = conn
        self.env = env
        self.source = env.get("TCPREMOTEIP", "")
        self.deadline = deadline
        self.ready = False


def _who(entry: Pending) -> str:
    return log.client_prefix(entry.source, entry.env.get("TCPREMOTEPORT")) or "client"


# Connection events that end a pooled connection which has not queued a record header: the
# client reset it (HUP, ERR) or half-closed it (RDHUP) without showing it speaks TLS.
_GONE = select.EPOLLHUP | select.EPOLLERR | select.EPOLLRDHUP


class Listener:
    """Accepts into the pool, hands connections that queued a record header to ready spares
    (oldest first) and keeps the spares: connections served + spares never exceed the limit;
    the ready connections beyond it wait in the pool. One epoll loop: the pool may hold more
    descriptors than select() can watch."""

    def __init__(self, sock: socket.socket, options: cli.Options, limit: int,
                 spares: int = SPARES, own_socket: bool = True, wait: int = DEFAULT_WAIT,
                 per_source: int = 0, nofile: tuple[int, int] | None = None) -> None:
        self.sock = sock
        self.own_socket = own_socket        # bound here, not systemd's
        self.options = options
        self.limit = limit
        self.wait = wait
        self.per_source = per_source
        self.nofile = nofile
        self.children: dict[int, str] = {}  # serving a connection: pid -> client address
        self.serving: collections.Counter[str] = collections.Counter()
        self.spares: list[Spare] = []       # waiting for one, oldest first
        self.spare_target = min(spares, limit)
        self.respawn_after = 0.0
        self.stopping = False
        self.pending: dict[int, Pending] = {}          # fd -> connection, in accept order
        self.ready: collections.deque[int] = collections.deque()   # fds, oldest first
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.pool_limit = max(16, min(POOL_LIMIT, soft - 256)) \
            if soft != resource.RLIM_INFINITY else POOL_LIMIT
        # -n: prog speaks first (a STARTTLS banner), the client waits for it: no pool.
        self.speaks_first = bool(getattr(options, "delayed_encryption", False))
        self.accepting = False
        self.listening = True
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.poller = select.epoll()

    def _on_signal(self, signum: int, frame: object) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stopping = True

    # ------------------------------------------------------------------ processes
    def _reap(self) -> None:
        while self.children or self.spares:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                self.serving.clear()
                return
            if pid == 0:
                return
            if pid in self.children:
                source = self.children.pop(pid)
                self.serving[source] -= 1
                if self.serving[source] <= 0:
                    del self.serving[source]
                continue
            for spare in self.spares:
                if spare.pid == pid:
                    # Not expected (a spare waits for its connection even when it could not
                    # start): slow down, so that a failing start is no fork storm.
                    log.warning("a spare connection process exited before its connection")
                    self.respawn_after = time.monotonic() + 1.0
                    self._drop_spare(spare)
                    break

    def _drop_spare(self, spare: Spare) -> None:
        self.spares.remove(spare)
        try:
            self.poller.unregister(spare.sock.fileno())
        except (OSError, ValueError):
            pass
        spare.sock.close()

    def _spare_said(self, spare: Spare) -> None:
        try:
            byte = spare.sock.recv(1, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            byte = b""
        if byte == b"r":
            spare.ready = True
        elif not byte:
            # It died: _reap tells; stop watching its socket meanwhile (end of file stays).
            try:
                self.poller.unregister(spare.sock.fileno())
            except (OSError, ValueError):
                pass

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _spawn(self) -> Spare | None:
        """Fork a spare (see spare_main); None if that fails now."""
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError as e:
            log.warning(f"unable to create a socket pair ({log.oserror_text(e)})")
            return None
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (AttributeError, OSError, ValueError):
                pass
        try:
            pid = os.fork()
        except OSError as e:
            log.warning(f"unable to fork ({log.oserror_text(e)})")
            ours.close()
            theirs.close()
            return None
        if pid == 0:
            # Nothing of the listener's stays in a spare: no client connection of the pool,
            # not the listening socket (it never accepts: connections are handed to it).
            close = [self._wake_r, self._wake_w, ours.fileno(), self.poller.fileno()]
            close += [spare.sock.fileno() for spare in self.spares]
            close += list(self.pending)
            if self.listening:
                close.append(self.sock.fileno())
            spare_main(theirs, close, self.options, self.nofile)
        theirs.close()
        spare = Spare(pid, ours)
        self.poller.register(ours.fileno(), select.EPOLLIN)
        return spare

    def _wants_spare(self) -> bool:
        return len(self.spares) < self.spare_target \
            and len(self.children) + len(self.spares) < self.limit

    # ------------------------------------------------------------------ the pool
    def _accept(self) -> None:
        """Accept what the kernel has queued, into the pool, while there is room; at most
        ACCEPT_BATCH at a time, so that a flood of new connections does not hold back the
        hand-over of those that are ready (the listening socket stays readable: the rest
        comes on the next round)."""
        for _ in range(ACCEPT_BATCH):
            if len(self.pending) >= self.pool_limit:
                break
            try:
                conn, remote = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors or memory: the connection stays in the backlog;
                    # a pause, not a loop spinning on the listening socket.
                    log.warning(f"unable to accept ({log.oserror_text(e)})")
                    time.sleep(0.1)
                return          # ECONNABORTED and the like: the client gave up
            try:
                env = connection_environment(conn, remote)
            except OSError:
                conn.close()    # gone already
                continue
            fd = conn.fileno()
            entry = Pending(conn, env, time.monotonic() + self.wait)
            self.pending[fd] = entry
            # Edge-triggered: one event per arrival of bytes (a client that queued fewer than
            # a record header must not wake us until it sends more).
            self.poller.register(fd, select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET)
            self._check(fd, 0)
        if len(self.pending) >= self.pool_limit:
            self._pause_accepting()

    def _pause_accepting(self) -> None:
        if self.accepting:
            self.accepting = False
            self.poller.modify(self.sock.fileno(), 0)

    def _resume_accepting(self) -> None:
        if not self.accepting and self.listening and len(self.pending) < self.pool_limit:
            self.accepting = True
            self.poller.modify(self.sock.fileno(), select.EPOLLIN)

    def _check(self, fd: int, events: int) -> None:
        """A pooled connection's event: ready once a record header is queued; dropped when
        the client goes without one."""
        entry = self.pending[fd]
        if entry.ready:
            if events & (select.EPOLLHUP | select.EPOLLERR):
                self._drop(fd)      # reset while waiting for a spare
            return
        if self.speaks_first or unread(fd) >= RECORD_HEADER:
            entry.ready = True
            self.ready.append(fd)
        elif events & _GONE:
            self._drop(fd)

    def _drop(self, fd: int) -> None:
        entry = self.pending.pop(fd)
        try:
            self.poller.unregister(fd)
        except (OSError, ValueError):
            pass
        entry.conn.close()

    def _expire(self, now: float) -> float | None:
        """Close the connections that queued no record header in time (they are in accept
        order, so all deadlines come in order); the next deadline, or None."""
        expired = []
        following = None
        for fd, entry in self.pending.items():
            if entry.ready:
                continue
            if entry.deadline > now:
                following = entry.deadline
                break
            expired.append(fd)
        for fd in expired:
            entry = self.pending[fd]
            log.debug(f"{_who(entry)}: no TLS record header within {self.wait} s: closed")
            self._drop(fd)
        return following

    def _hand_over(self) -> None:
        """Give ready connections to ready spares, oldest first."""
        while self.ready:
            spare = next((sp for sp in self.spares if sp.ready), None)
            if spare is None:
                return
            fd = self.ready[0]
            entry = self.pending.get(fd)
            if entry is None or not entry.ready:
                self.ready.popleft()      # dropped meanwhile
                continue
            if self.per_source and self.serving[entry.source] >= self.per_source:
                self.ready.popleft()
                log.info(f"{_who(entry)}: {self.serving[entry.source]} connections from "
                         f"this address served already (-C {self.per_source}): closed")
                self._drop(fd)
                continue
            try:
                socket.send_fds(spare.sock, [_encode_environment(entry.env)], [fd])
            except OSError:
                spare.ready = False       # gone: _reap tells
                self._drop_spare(spare)
                continue
            self.ready.popleft()
            self._drop(fd)                # our copy: the spare has its own now
            self._drop_spare(spare)
            self.children[spare.pid] = entry.source
            self.serving[entry.source] += 1

    def _stop_listening(self) -> None:
        """Stop accepting: our own socket is shut down, so that new connections are refused
        at once; a socket from systemd stays open in systemd, which queues them for the next
        start."""
        if not self.listening:
            return
        self.listening = False
        self.accepting = False
        try:
            self.poller.unregister(self.sock.fileno())
        except (OSError, ValueError):
            pass
        if self.own_socket:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.sock.close()

    # ------------------------------------------------------------------ the loop
    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        self.sock.setblocking(False)
        self.poller.register(self._wake_r, select.EPOLLIN)
        self.poller.register(self.sock.fileno(), 0)
        self._resume_accepting()
        drain_until = 0.0
        while True:
            now = time.monotonic()
            if self.stopping and self.listening:
                # Our own socket: connections the kernel has queued are reset when it is
                # shut down, and they were the client's (a load balancer sent them here and
                # cannot retry them elsewhere): accepted first, for at most QUEUE_DRAIN.
                drain_until = drain_until or now + QUEUE_DRAIN
                if not self.own_socket or not _queued(self.sock) or now >= drain_until:
                    self._stop_listening()
            if self.stopping and not self.listening and not self.pending:
                break       # everything accepted is served (or timed out)
            self._reap()
            self._hand_over()
            self._resume_accepting()
            if self._wants_spare() and now >= self.respawn_after:
                spare = self._spawn()
                if spare is None:
                    self.respawn_after = now + 0.1
                else:
                    self.spares.append(spare)
            timeout = -1.0
            deadline = self._expire(now)
            if deadline is not None:
                timeout = max(0.0, deadline - now)
            if self._wants_spare():
                left = max(0.0, self.respawn_after - now)
                timeout = left if timeout < 0 else min(timeout, left)
            if self.stopping:
                timeout = 0.01 if timeout < 0 else min(timeout, 0.01)
            try:
                events = self.poller.poll(timeout)
            except InterruptedError:
                continue
            spares = {spare.sock.fileno(): spare for spare in self.spares}
            for fd, mask in events:
                if fd == self._wake_r:
                    self._drain_wakeups()
                elif self.listening and fd == self.sock.fileno():
                    self._accept()
                elif fd in spares:
                    self._spare_said(spares[fd])
                elif fd in self.pending:
                    self._check(fd, mask)
            self._hand_over()      # the ready ones first, before the next round's work
        for fd in list(self.pending):
            self._drop(fd)
        # The spares see end of file and exit without running prog.
        for spare in list(self.spares):
            self.children[spare.pid] = ""
            self._drop_spare(spare)
        log.info(f"stopping: waiting for {len(self.children)} process(es) to finish")
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        while self.children:
            try:
                pid, _ = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            self.children.pop(pid, None)
        return 0


def raise_nofile() -> tuple[int, int] | None:
    """Raise our soft RLIMIT_NOFILE towards NOFILE_WANTED (as far as the hard limit allows)
    for the pool; returns the limits as they were (the spares restore them for prog), or
    None when nothing changed."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return None
    want = NOFILE_WANTED if hard == resource.RLIM_INFINITY else min(NOFILE_WANTED, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (OSError, ValueError):
            return None
        return soft, hard
    return None


def prepare_imports() -> None:
    """Everything a connection needs, imported (and initialised) once, before the first
    fork: the relay and engine, the key process's code and cryptography's backend, libc for
    prctl. A forked child then loads nothing."""
    from tlswrapper import warmup  # noqa: F401
    from tlswrapper.net import start  # noqa: F401
    from tlswrapper.keys import local  # noqa: F401
    try:
        from tlswrapper.net import clientcert  # noqa: F401  (-a: imported per connection otherwise)
    except ImportError:
        pass
    jail.prepare()
    _warm_up()


def warm_up(options: cli.Options) -> None:
    """The warm-ups (warmup.py), before the first fork: the ClientHello code run here once
    (what it caches on first use is then shared with every fork instead of being written, and
    so copied, in each), and the key service calls the key processes replay, recorded by a
    helper process."""
    from tlswrapper.warmup import network_side, record_key_side
    config = options.server_config()
    network_side(config)
    # -a: the in-memory client has no certificate; the rest of the handshake is the same.
    record_key_side(config.replace(request_client_certificate=False, client_ca_names=()))


def _warm_up() -> None:
    """Run each primitive a handshake uses once, on throw-away keys and data, so that
    OpenSSL's per-process first-use work (provider and algorithm fetches, tables; about 3 ms
    for the first X25519 alone) is done here, once, and shared with every forked child,
    instead of being paid again in each key process. No key file is read."""
    from cryptography.hazmat.primitives import hashes, hmac as crypto_hmac
    from cryptography.hazmat.primitives.asymmetric import ec, mlkem, x25519
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
    from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
    import hashlib
    import hmac

    x = x25519.X25519PrivateKey.generate()
    x.exchange(x25519.X25519PrivateKey.generate().public_key())
    p = ec.generate_private_key(ec.SECP256R1())
    p.exchange(ec.ECDH(), ec.generate_private_key(ec.SECP256R1()).public_key())
    p.public_key().verify(p.sign(b"warm-up", ec.ECDSA(hashes.SHA256())), b"warm-up",
                          ec.ECDSA(hashes.SHA256()))
    try:
        k = mlkem.MLKEM768PrivateKey.generate()
        k.decapsulate(k.public_key().encapsulate()[1])
    except Exception:   # noqa: BLE001 -- only a warm-up: ML-KEM may be missing in OpenSSL
        pass
    for name, algorithm in (("sha256", hashes.SHA256()), ("sha384", hashes.SHA384())):
        hmac.new(b"k" * 32, b"warm-up", name).digest()
        hashlib.new(name, b"warm-up").digest()
        h = crypto_hmac.HMAC(b"k" * 32, algorithm)
        h.update(b"warm-up")
        h.finalize()
        HKDFExpand(algorithm, 32, b"warm-up").derive(b"k" * 32)
    for aead in (AESGCM(bytes(16)), AESGCM(bytes(32)), ChaCha20Poly1305(bytes(32))):
        aead.decrypt(bytes(12), aead.encrypt(bytes(12), b"warm-up", b"ad"), b"ad")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    code = EXIT_FAILURE
    log.setup(name="tlswrapper-listen", verbosity=log.DEFAULT)
    try:
        args = list(sys.argv[1:] if argv is None else argv)
        try:
            settings, rest = parse(args)
            options = cli.parse(rest)
        except cli.UsageError as e:
            log.setup(verbosity=max(log.verbosity(), log.FATAL))
            log.fatal(f"{e}; usage: {USAGE}")
            sys.exit(EXIT_USAGE)
        except cli.OptionError as e:
            log.fatal(str(e))
            sys.exit(EXIT_USAGE)
        log.setup(name="tlswrapper-listen", verbosity=options.verbosity)
        try:
            # sd_listen_fds_with_names(3): the socket unit's FileDescriptorName= (by default
            # the unit's name), shown so that a log says which socket unit is served.
            fd_name = os.environ.get("LISTEN_FDNAMES", "").split(":")[0]
            sock = systemd_socket()
            systemd = sock is not None
            if sock is None:
                if settings["host"] is None:
                    raise ListenError("'-' needs a socket from systemd (LISTEN_FDS, LISTEN_PID)",
                                      EXIT_USAGE)
                sock = bind(settings["host"], settings["port"], settings["backlog"])
            else:
                log.info("using the listening socket from systemd"
                         + (f" ({log.escape(fd_name)})" if fd_name else ""))
            prepare_imports()
        except ListenError as e:
            log.fatal(str(e))
            sys.exit(e.code)
        except (OSError, jail.JailError) as e:
            log.fatal(f"unable to start: {e}")
            sys.exit(EXIT_FAILURE)
        warm_up(options)
        address = sock.getsockname()
        log.info(f"listening on {address[0]} port {address[1]}, limit {settings['limit']}")
        # Everything imported so far lives as long as the listener: keep the collector off
        # it, so that a child's collections do not write to (and un-share) those pages.
        tcpserver_environment()
        gc.collect()
        gc.freeze()
        nofile = raise_nofile()
        code = Listener(sock, options, settings["limit"], own_socket=not systemd,
                        wait=settings["wait"], per_source=settings["per_source"],
                        nofile=nofile).run()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else EXIT_FAILURE
    except KeyboardInterrupt:
        code = EXIT_FAILURE
    except BaseException as e:  # noqa: BLE001 -- no traceback reaches the user
        try:
            log.fatal(f"internal error ({type(e).__name__}: {e})")
        except BaseException:   # noqa: BLE001
            pass
        code = EXIT_FAILURE
    sys.exit(code)


if __name__ == "__main__":
    main()
