"""tlswrapper-listen: the built-in listener. One process imports everything once, accepts, and
forks one child per connection; the child is exactly tlswrapper under `tcpserver -HRDl0`
(connection on fd 0/1, TCP* variables set, then relay.run: its own network process, key
process and jail).

Rule: the listener never reads a key or a client byte; it only binds (or takes systemd's
socket), accepts, forks and reaps. Over the concurrency limit it stops accepting, so new
connections wait in the kernel's backlog. SIGTERM (or SIGINT): stop accepting, let the open
connections finish, exit 0.

    tlswrapper-listen [-c limit] [-b backlog] host port [tlswrapper options] prog [args...]
    tlswrapper-listen [-c limit] - [tlswrapper options] prog [args...]     (systemd, Accept=no)

Why a separate command and not `tlswrapper -l host:port`: the tlswrapper command line stays
exactly the C version's (no new letter), and the listener can use tcpserver's own letters
(-c limit, -b backlog), which in tlswrapper's namespace already mean a cipher and nothing.
"""

from __future__ import annotations

import errno
import gc
import os
import select
import signal
import socket
import sys
import time
from typing import NoReturn, Sequence

from . import cli, jail, log
from .keyclient import KeyProcessDied
from .tls.secrets import KeyServiceError

EXIT_USAGE = cli.EXIT_USAGE
EXIT_FAILURE = cli.EXIT_FAILURE
DEFAULT_LIMIT = 100          # tcpserver's -c default
DEFAULT_BACKLOG = 128
MAX_LIMIT = 100000
# Connections' processes started ahead of time (each a network process with its key process
# and prog's waiting child): a new connection is handed to one at once, and the forks are
# paid between connections instead of within one.
SPARES = 2
USAGE = ("tlswrapper-listen [ -c limit ] [ -b backlog ] host port | - "
         "[tlswrapper options] prog [args...]")
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
    settings: limit, backlog, host (None for `-`), port."""
    settings: dict = {"limit": DEFAULT_LIMIT, "backlog": DEFAULT_BACKLOG, "host": None,
                      "port": None}
    args = list(args)
    i = 0
    while i < len(args) and args[i].startswith("-") and len(args[i]) > 1:
        arg = args[i]
        if arg == "--":
            i += 1
            break
        letter = arg[1]
        if letter not in "cb":
            raise cli.UsageError(f"unknown option -{log.escape(letter)}")
        value = arg[2:]
        if not value:
            i += 1
            if i >= len(args):
                raise cli.UsageError(f"option -{letter} needs a value")
            value = args[i]
        if letter == "c":
            settings["limit"] = _number("limit", value, 1, MAX_LIMIT)
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


def connection_environment(conn: socket.socket) -> dict[str, str]:
    """The four addresses tcpserver -HRDl0 sets for this connection (PROTO and TCPLOCALHOST
    are the same for every connection: the listener puts them in its own environment)."""
    local = conn.getsockname()
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


def _accept_one(listening: socket.socket, sock: socket.socket) -> socket.socket | None:
    """Wait until a client connects and accept it, or until the listener closes our socket
    (it stops, or it is gone): None.

    epoll with EPOLLEXCLUSIVE on the listening socket: a new connection wakes one waiting
    spare, not all of them (with select() every spare woke and all but one went back to
    sleep: measured about 1 ms more to the first byte with two spares)."""
    lfd, cfd = listening.fileno(), sock.fileno()
    try:
        poller = select.epoll(2)
        poller.register(lfd, select.EPOLLIN | select.EPOLLEXCLUSIVE)
        poller.register(cfd, select.EPOLLIN)
    except (OSError, AttributeError, ValueError):
        poller = None
    try:
        while True:
            try:
                if poller is not None:
                    ready = [fd for fd, _ in poller.poll()]
                else:
                    ready, _, _ = select.select([lfd, cfd], [], [])
            except InterruptedError:
                continue
            if cfd in ready:
                return None      # end of file: nothing else is ever sent to a spare
            try:
                conn, _ = listening.accept()
            except (BlockingIOError, InterruptedError):
                continue         # another spare was first
            except OSError as e:
                if e.errno == errno.EINVAL:
                    return None  # the socket no longer listens: the listener shut it down
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    time.sleep(0.1)
                continue         # ECONNABORTED and the like: the client gave up, go on
            return conn
    finally:
        if poller is not None:
            poller.close()


def spare_main(sock: socket.socket, listening: socket.socket, close: Sequence[int],
               options: cli.Options) -> NoReturn:
    """In a forked spare: start the connection's key process and prog ahead of time, jail
    (all but RLIMIT_NOFILE, see Prepared.jail_ahead), accept one connection on the listening
    socket, tell the listener (one byte on `sock`) and close both, then become `tlswrapper`
    under tcpserver for it (RLIMIT_NOFILE 0, handshake, relay) and exit with its status.
    Never returns into the listener."""
    code = EXIT_FAILURE
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        for fd in close:
            os.close(fd)
        log.setup("tlswrapper", options.verbosity)
        from . import relay
        from .warmup import close_key_file, network_side
        prepared = None
        error = None
        try:
            prepared = relay.prepare(options)
        except relay.StartError as e:
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
        conn = _accept_one(listening, sock)
        listening.close()
        if conn is None:
            sock.close()
            if prepared is not None:
                try:
                    prepared.abandon()
                except Exception:   # noqa: BLE001 -- exiting anyway; EOF ends the others
                    pass
            os._exit(0)
        try:
            sock.send(b"a")       # the listener counts us as a connection from now on
        except OSError:
            pass
        sock.close()
        try:
            # As tcpserver -D: records go out as they are made (the relay batches already).
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass      # not TCP (systemd may pass a UNIX socket)
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
    """A forked process waiting for its connection, with its key process and prog started."""
    __slots__ = ("pid", "sock")

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock


class Listener:
    """Keeps the spares: each accepts one connection itself (no hand-over, no extra wake-up
    on the connection's path) and says so with one byte; the listener then counts it as a
    connection and forks the next spare. Connections + spares never exceed the limit, so
    over it nobody accepts and new connections wait in the kernel's backlog."""

    def __init__(self, sock: socket.socket, options: cli.Options, limit: int,
                 spares: int = SPARES, own_socket: bool = True) -> None:
        self.sock = sock
        self.own_socket = own_socket        # bound here, not systemd's
        self.options = options
        self.limit = limit
        self.children: set[int] = set()     # serving a connection
        self.spares: list[Spare] = []       # waiting for one, oldest first
        self.spare_target = min(spares, limit)
        self.respawn_after = 0.0
        self.stopping = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def _on_signal(self, signum: int, frame: object) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stopping = True

    def _reap(self) -> None:
        while self.children or self.spares:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            if pid in self.children:
                self.children.discard(pid)
                continue
            for spare in self.spares:
                if spare.pid == pid:
                    self.spares.remove(spare)
                    if not self._took_connection(spare):
                        # Not expected (a spare waits for its connection even when it could
                        # not start): slow down, so that a failing start is no fork storm.
                        log.warning("a spare connection process exited before its connection")
                        self.respawn_after = time.monotonic() + 1.0
                    spare.sock.close()
                    break

    @staticmethod
    def _took_connection(spare: Spare) -> bool:
        """Read the spare's byte, if it sent it: True once it has accepted a connection."""
        try:
            return spare.sock.recv(1, socket.MSG_DONTWAIT) == b"a"
        except OSError:       # nothing yet (EAGAIN), or it is gone
            return False

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
            close = [self._wake_r, self._wake_w, ours.fileno()]
            close += [spare.sock.fileno() for spare in self.spares]
            spare_main(theirs, self.sock, close, self.options)
        theirs.close()
        return Spare(pid, ours)

    def _wants_spare(self) -> bool:
        return len(self.spares) < self.spare_target \
            and len(self.children) + len(self.spares) < self.limit

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        self.sock.setblocking(False)
        drain_until = 0.0
        while True:
            if self.stopping:
                # Our own socket: connections the kernel has queued are reset when it is
                # shut down below, and they were the client's (a load balancer sent them
                # here and cannot retry them elsewhere). The spares take them first, for at
                # most QUEUE_DRAIN. Meanwhile the backlog is 0, so that the queue empties
                # under load too: Linux drops a SYN while one connection waits, and the
                # client's retransmission (1 s later) finds the socket closed, a refusal
                # that a load balancer retries on another host.
                if not drain_until:
                    drain_until = time.monotonic() + QUEUE_DRAIN
                    if self.own_socket:
                        try:
                            self.sock.listen(0)
                        except OSError:
                            pass
                if not self.own_socket or not _queued(self.sock) \
                        or time.monotonic() >= drain_until:
                    break
            self._reap()
            readers = [self._wake_r] + [spare.sock.fileno() for spare in self.spares]
            timeout = None
            if self._wants_spare():
                timeout = max(0.0, self.respawn_after - time.monotonic())
            if self.stopping:
                timeout = 0.01 if timeout is None else min(timeout, 0.01)
            try:
                ready, _, _ = select.select(readers, [], [], timeout)
            except InterruptedError:
                continue
            if self._wake_r in ready:
                self._drain_wakeups()
            for spare in [s for s in self.spares if s.sock.fileno() in ready]:
                if self._took_connection(spare):
                    self.spares.remove(spare)
                    spare.sock.close()
                    self.children.add(spare.pid)
                # else: end of file, it died: _reap tells
            if self._wants_spare() and time.monotonic() >= self.respawn_after:
                spare = self._spawn()
                if spare is None:
                    self.respawn_after = time.monotonic() + 0.1
                else:
                    self.spares.append(spare)
        # Stop accepting: the spares see end of file and exit without running prog. Our own
        # socket is shut down first, so that new connections are refused at once and not
        # queued for spares that are leaving (the spares hold it too); a socket from systemd
        # stays open in systemd, which queues them for the next start.
        if self.own_socket:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.sock.close()
        for spare in self.spares:
            spare.sock.close()
            self.children.add(spare.pid)
        self.spares.clear()
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
            self.children.discard(pid)
        return 0


def prepare_imports() -> None:
    """Everything a connection needs, imported (and initialised) once, before the first
    fork: the relay and engine, the key process's code and cryptography's backend, libc for
    prctl. A forked child then loads nothing."""
    from . import relay, warmup  # noqa: F401
    from .keys import local  # noqa: F401
    try:
        from . import clientcert  # noqa: F401  (-a: imported per connection otherwise)
    except ImportError:
        pass
    jail.prepare()
    _warm_up()


def warm_up(options: cli.Options) -> None:
    """The warm-ups (warmup.py), before the first fork: the ClientHello code run here once
    (what it caches on first use is then shared with every fork instead of being written, and
    so copied, in each), and the key service calls the key processes replay, recorded by a
    helper process."""
    from .warmup import network_side, record_key_side
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
        code = Listener(sock, options, settings["limit"], own_socket=not systemd).run()
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
