"""`tlswrapper-tcp [options] host port`: the prog that connects tlswrapper to a plain TCP service.

Rule: the host name is resolved in a process of its own (fork, getaddrinfo, addresses back over
a pipe, exit), under the jail account; the relay process creates one unconnected socket per
address, jails itself, and only then connects (each address in turn, -T each) and relays
stdin/stdout <-> the connection, half-closes passed through both ways. Any failure: one log
line and exit 111; a usage error: exit 100. Nothing here lets a traceback reach the user.

The helpers at the top (option scanning, numbers, the resolver process, the partial privilege
drop) are shared with smtp.py.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import select
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from tlswrapper import jail, log
from tlswrapper.commands.optscan import (  # noqa: F401 (the errors: re-exported)
    OptionError, UsageError, run_main, split_options)
from tlswrapper.exits import EXIT_FAILURE, EXIT_OK, EXIT_USAGE  # noqa: F401 (EXIT_USAGE: tests)
from tlswrapper.net import proxyproto
from tlswrapper.net.prog import connection_addresses

USAGE = "tlswrapper-tcp [options] host port"
DEFAULT_TIMEOUT = 3600          # -t: network timeout
DEFAULT_CONNECT_TIMEOUT = 10    # -T: connect timeout (per address; also the resolver's limit)
MAX_TIMEOUT = 86400             # as tlswrapper: more than a day is refused
MAX_ADDRESSES = 16              # resolved addresses kept (one socket each before the jail)
RESOLVER_REPLY_LIMIT = 4096     # bytes read from the resolver process, at most
READ_SIZE = 1 << 17             # bytes per read


class Failure(Exception):
    """A run-time failure: one fatal line, exit 111."""


# --------------------------------------------------------------------------- shared helpers


def verbosity_of(opts: Sequence[tuple[str, str | None]]) -> int:
    level = log.DEFAULT
    for letter, value in opts:
        if value is None and letter == "q":
            level = log.QUIET
        elif value is None and letter == "Q":
            level = log.FATAL
        elif value is None and letter == "v":
            level = min(level + 1, log.MAX_VERBOSITY)
    return level


def parse_timeout(what: str, value: str) -> int:
    v = value.strip()
    if not v.isascii() or not v.lstrip("+-").isdigit():
        raise OptionError(f"unable to parse {what} from the string '{log.escape(value)}' "
                          f"(invalid argument)")
    n = int(v)
    if n <= 0:
        raise OptionError(f"{what} must be a number > 0, not '{log.escape(value)}'")
    if n > MAX_TIMEOUT:
        raise OptionError(f"{what} must be a number <= {MAX_TIMEOUT}, not '{log.escape(value)}'")
    return n


def parse_port(value: str) -> int:
    if value.isascii() and value.isdigit() and int(value) <= 65535:
        return int(value)
    raise OptionError(f"unable to parse TCP port (a number 0 - 65535) from the string "
                      f"'{log.escape(value)}'")


def parse_proxy_version(direction: str, value: str) -> int:
    """1 or 2; incoming also 0 (either version, as tlswrapper's -p 0)."""
    available = ("0", "1", "2") if direction == "incoming" else ("1", "2")
    if value not in available:
        raise OptionError(f"unable to parse {direction} proxy-protocol version from the string "
                          f"'{log.escape(value)}' (available: {', '.join(available)})")
    return int(value)


def parse_account(option: str, name: str) -> str:
    from tlswrapper.commands.cli import OptionError as CliOptionError
    from tlswrapper.commands.cli import _account
    try:
        return _account(option, name)
    except CliOptionError as e:
        raise OptionError(str(e)) from None


def parse_jail_dir(value: str) -> str:
    if not value:
        raise OptionError("jaildir must not be empty")
    return value


def drop_privileges(account: jail.Account) -> None:
    """The resolver's half jail: the jail account's ids, no forks, no core, not dumpable.
    No chroot and no RLIMIT_NOFILE 0: getaddrinfo needs /etc and a socket to the DNS server."""
    import resource
    jail.prepare()    # loads ctypes for prctl while we may still read the Python library
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    os.setgroups([account.gid])
    os.setresgid(account.gid, account.gid, account.gid)
    os.setresuid(account.uid, account.uid, account.uid)
    jail._prctl(jail.PR_SET_DUMPABLE, 0)
    if os.getresuid() != (account.uid,) * 3 or os.getresgid() != (account.gid,) * 3:
        raise OSError(errno.EPERM, "ids did not change")


@dataclass(frozen=True)
class Address:
    family: int
    ip: str
    port: int

    def sockaddr(self) -> tuple:
        return (self.ip, self.port) if self.family == socket.AF_INET else (self.ip, self.port, 0, 0)

    def __str__(self) -> str:
        if self.family == socket.AF_INET6:
            return f"[{self.ip}]:{self.port}"
        return f"{self.ip}:{self.port}"


def _resolver_child(wfd: int, host: str, port: int, account: str | None) -> int:
    try:
        if os.geteuid() == 0:
            drop_privileges(jail.choose_account(account))
    except (OSError, jail.JailError) as e:
        reason = log.oserror_text(e) if isinstance(e, OSError) else e
        os.write(wfd, f"E unable to drop privileges ({reason})\n".encode())
        return EXIT_FAILURE
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM,
                                   socket.IPPROTO_TCP)
    except socket.gaierror as e:
        reason = "name does not exist" if e.errno in (socket.EAI_NONAME, getattr(
            socket, "EAI_NODATA", socket.EAI_NONAME)) else str(e.strerror or e).lower()
        os.write(wfd, f"E {reason}\n".encode("ascii", "replace"))
        return EXIT_FAILURE
    except (OSError, UnicodeError, ValueError, LookupError) as e:
        os.write(wfd, f"E {e}\n".encode("ascii", "replace"))
        return EXIT_FAILURE
    lines = []
    for family, _type, _proto, _canon, sa in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            line = f"A {family == socket.AF_INET6 and 6 or 4} {sa[0]}\n"
            if line not in lines:
                lines.append(line)
    data = "".join(lines[:MAX_ADDRESSES]).encode("ascii", "replace")
    while data:
        n = os.write(wfd, data[:RESOLVER_REPLY_LIMIT])
        data = data[n:]
    return 0


def resolve(host: str, port: int, timeout: float, account: str | jail.Account | None = None
            ) -> list[Address]:
    """The addresses of host (IPv4 and IPv6, getaddrinfo's order), from a forked process that
    runs as the jail account. Raises Failure with the reason."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:               # a literal address needs no resolver
        fam = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        return [Address(fam, str(ip), port)]
    # getaddrinfo imports the idna codec on first use: import it while files can be read
    # (the child runs as the jail account, which may not read the Python installation).
    "x".encode("idna")
    rfd, wfd = os.pipe()
    try:
        pid = os.fork()
    except OSError as e:
        os.close(rfd)
        os.close(wfd)
        raise Failure(f"unable to fork the resolver ({log.oserror_text(e)})") from None
    if pid == 0:
        code = EXIT_FAILURE
        try:
            os.close(rfd)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(max(1, int(timeout) + 1))     # never outlive the parent's patience
            code = _resolver_child(wfd, host, port,
                                   account.name if isinstance(account, jail.Account) else account)
        except BaseException as e:   # noqa: BLE001 -- the child must never unwind into the caller
            try:
                os.write(wfd, f"E resolver failed ({type(e).__name__})\n".encode())
            except BaseException:   # noqa: BLE001, S110 -- nothing is left to report it to
                pass
        os._exit(code)
    os.close(wfd)
    data = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while len(data) < RESOLVER_REPLY_LIMIT:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Failure(f"unable to resolve host '{log.escape(host)}': timeout")
            r, _, _ = select.select([rfd], [], [], left)
            if not r:
                continue
            chunk = os.read(rfd, RESOLVER_REPLY_LIMIT - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(rfd)
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            os.waitpid(pid, 0)
        except OSError:
            pass
    return _parse_resolver_reply(host, port, bytes(data))


def _parse_resolver_reply(host: str, port: int, data: bytes) -> list[Address]:
    out: list[Address] = []
    for raw in data.split(b"\n"):
        line = raw.decode("ascii", "replace")
        if line.startswith("E "):
            raise Failure(f"unable to resolve host '{log.escape(host)}': {log.escape(line[2:])}")
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != "A":
            continue
        try:
            ip = ipaddress.ip_address(parts[2])
        except ValueError:
            continue
        fam = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        addr = Address(fam, str(ip), port)
        if addr not in out and len(out) < MAX_ADDRESSES:
            out.append(addr)
    if not out:
        why = "no address" if data else "no answer from the resolver"
        raise Failure(f"unable to resolve host '{log.escape(host)}': {why}")
    return out


def make_sockets(addresses: Sequence[Address]) -> list[tuple[Address, socket.socket]]:
    """One unconnected non-blocking TCP socket per address, made before the jail."""
    out = []
    for addr in addresses:
        try:
            s = socket.socket(addr.family, socket.SOCK_STREAM)
        except OSError as e:
            log.debug(f"unable to create a socket for {addr} ({log.oserror_text(e)})")
            continue
        s.setblocking(False)
        out.append((addr, s))
    return out


def connect_first(candidates: list[tuple[Address, socket.socket]], timeout: float
                  ) -> tuple[Address, socket.socket]:
    """Connect to each address in turn, `timeout` seconds each; the first that answers wins,
    the other sockets are closed. Raises Failure naming the last error."""
    last = "no address"
    winner = None
    for addr, s in candidates:
        if winner is not None:
            s.close()
            continue
        log.debug(f"sending connect to {addr}")
        err = s.connect_ex(addr.sockaddr())
        if err in (errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK, errno.EINTR):
            deadline = time.monotonic() + timeout
            err = errno.ETIMEDOUT
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    _, w, _ = select.select([], [s], [], left)
                except InterruptedError:
                    continue
                if w:
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    break
        if err == 0:
            winner = (addr, s)
            continue
        last = f"unable to connect to {addr} ({log.oserror_text(OSError(err, os.strerror(err)))})"
        log.warning(last)
        s.close()
    if winner is None:
        raise Failure(last)
    return winner


def read_proxy_header(fd: int, timeout: float,
                      version: int = 1) -> tuple[proxyproto.ProxyHeader, bytes]:
    """Read one PROXY header (`version` as -p: 0, 1 or 2) from fd; returns it with the bytes
    read after it (no more than a v1 line can hold; none after a v2 header). Raises Failure."""
    reader = proxyproto.ProxyReader(version)
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Failure("timeout reading the PROXY protocol header")
        r, _, _ = select.select([fd], [], [], left)
        if not r:
            continue
        try:
            data = os.read(fd, reader.wanted())
        except BlockingIOError:
            continue
        if not data:
            raise Failure("end of input before the PROXY protocol header ended")
        try:
            header = reader.feed(data)
        except proxyproto.ProxyError as e:
            raise Failure(f"unable to parse the PROXY protocol header ({e})") from None
        if header is not None:
            return header, reader.rest


# --------------------------------------------------------------------------- tlswrapper-tcp

@dataclass(frozen=True)
class Options:
    verbosity: int = log.DEFAULT
    timeout: int = DEFAULT_TIMEOUT
    connect_timeout: int = DEFAULT_CONNECT_TIMEOUT
    proxy_in: int | None = None
    proxy_out: int | None = None
    jail_dir: str = jail.DEFAULT_JAIL_DIR
    jail_user: str | None = None
    host: str = ""
    port: int = 0


def parse(args: Sequence[str]) -> Options:
    opts, rest = split_options(args, "qQv", "tTpPJj")
    verbosity = verbosity_of(opts)
    log.setup(verbosity=verbosity)
    kw: dict[str, object] = {}
    for letter, value in opts:
        if value is None:
            continue
        if letter == "t":
            kw["timeout"] = parse_timeout("timeout", value)
        elif letter == "T":
            kw["connect_timeout"] = parse_timeout("connect timeout", value)
        elif letter == "p":
            kw["proxy_in"] = parse_proxy_version("incoming", value)
        elif letter == "P":
            kw["proxy_out"] = parse_proxy_version("outgoing", value)
        elif letter == "J":
            kw["jail_dir"] = parse_jail_dir(value)
        elif letter == "j":
            kw["jail_user"] = parse_account("j", value)
    if not rest:
        raise UsageError("no host given")
    if len(rest) < 2:
        raise UsageError("no port given")
    if len(rest) > 2:
        raise UsageError(f"unexpected argument '{log.escape(rest[2])}'")
    if not rest[0] or len(rest[0]) > 253:
        raise OptionError(f"unable to parse host from the string '{log.escape(rest[0])}'")
    return Options(verbosity=verbosity, host=rest[0], port=parse_port(rest[1]), **kw)  # type: ignore[arg-type]


def _nonblocking(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)


def proxy_line_out(env: dict[str, str], version: int = 1) -> bytes:
    """The outgoing PROXY header (v1 line or v2 binary) from the TCP* addresses; UNKNOWN
    (v2: UNSPEC) when they are missing, or are the `::` and `0` that tlswrapper -p gives
    for a client whose address its proxy did not send (passed on as unknown, not as `::`)."""
    from tlswrapper.net import proxyproto2
    build = proxyproto2.build if version == 2 else proxyproto.build
    src, sport = env.get("TCPREMOTEIP"), env.get("TCPREMOTEPORT")
    dst, dport = env.get("TCPLOCALIP"), env.get("TCPLOCALPORT")
    if not (src and sport and dst and dport) or (
            (src, sport, dst, dport) == (proxyproto.UNKNOWN_IP, proxyproto.UNKNOWN_PORT) * 2):
        return build(None, None)
    return build((src, sport), (dst, dport))  # type: ignore[arg-type]


class Pipe:
    """One direction of the relay: read from `src`, write to `dst`, bounded buffer."""

    def __init__(self, name: str, src: int, dst: int, on_eof: Callable[[], None]) -> None:
        self.name, self.src, self.dst, self.on_eof = name, src, dst, on_eof
        self.buf = bytearray()
        self.eof = False           # src ended
        self.done = False          # eof seen and everything written, dst shut

    def want_read(self) -> bool:
        return not self.eof and not self.buf

    def want_write(self) -> bool:
        return bool(self.buf) and not self.done

    def read(self) -> None:
        try:
            data = os.read(self.src, READ_SIZE)
        except BlockingIOError:
            return
        except OSError as e:
            log.debug(f"{self.name}: read: {log.oserror_text(e)}")
            data = b""
        if data:
            self.buf += data
        else:
            self.eof = True
            self._maybe_finish()

    def write(self) -> None:
        try:
            n = os.write(self.dst, self.buf)
        except BlockingIOError:
            return
        except OSError as e:
            # The other side cannot take more: drop what waits, stop reading this way.
            log.debug(f"{self.name}: write: {log.oserror_text(e)}")
            self.buf.clear()
            self.eof = True
            n = 0
        del self.buf[:n]
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self.eof and not self.buf and not self.done:
            self.done = True
            self.on_eof()


def relay(sock: socket.socket, timeout: float, stdin: int = 0, stdout: int = 1,
          pending: bytes = b"") -> None:
    """stdin -> sock, sock -> stdout, until both directions have ended; each EOF is passed on
    as a half close (shutdown(SHUT_WR) on the socket, close of stdout). Raises Failure on the
    network timeout (no progress either way for `timeout` seconds)."""
    sfd = sock.fileno()

    def shut_sock() -> None:
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close_stdout() -> None:
        try:
            os.close(stdout)
        except OSError:
            pass

    up = Pipe("client to server", stdin, sfd, shut_sock)
    down = Pipe("server to client", sfd, stdout, close_stdout)
    up.buf += pending
    for fd in (stdin, stdout):
        _nonblocking(fd)
    last = time.monotonic()
    while not (up.done and down.done):
        readers = [p.src for p in (up, down) if p.want_read()]
        writers = [p.dst for p in (up, down) if p.want_write()]
        left = last + timeout - time.monotonic()
        if left <= 0:
            raise Failure("network timeout")
        if not readers and not writers:
            break
        try:
            r, w, _ = select.select(readers, writers, [], left)
        except InterruptedError:
            continue
        if not r and not w:
            continue
        last = time.monotonic()
        for p in (up, down):
            if p.src in r and p.want_read():
                p.read()
            if p.dst in w and p.want_write():
                p.write()


def warm_up() -> None:
    """Run, before the jail, whatever could import lazily on first use afterwards."""
    jail.prepare()
    log.oserror_text(OSError(errno.ECONNREFUSED, "x"))
    select.select([], [], [], 0)
    "x".encode("idna")
    proxyproto.build(("127.0.0.1", 1), ("::1", 2))
    proxyproto.ProxyReader().feed(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n").environment()
    from tlswrapper.net import proxyproto2
    proxyproto.ProxyReader(2).feed(proxyproto2.build(("1.2.3.4", 1), ("::1", 2)))
    proxyproto2.crc32c(b"")


def run(options: Options) -> int:
    log.setup("tlswrapper-tcp", options.verbosity)
    env = connection_addresses(0)
    log.set_prefix(log.client_prefix(env.get("TCPREMOTEIP"), env.get("TCPREMOTEPORT")))
    try:
        warm_up()
        account = jail.lookup_account(options.jail_user) if options.jail_user else None
        addresses = resolve(options.host, options.port, options.connect_timeout, account)
        log.debug(f"{options.host}: {' '.join(a.ip for a in addresses)}")
        candidates = make_sockets(addresses)
        if not candidates:
            raise Failure(f"unable to create a socket for {options.host}")
        try:
            jail.jail(account, options.jail_dir)
        except jail.JailError as e:
            raise Failure(f"unable to create jail: {e}") from None
        after_header = b""
        if options.proxy_in is not None:
            header, after_header = read_proxy_header(0, options.connect_timeout,
                                                     options.proxy_in)
            env = {**env, **header.environment()}
            log.set_prefix(log.client_prefix(env.get("TCPREMOTEIP"), env.get("TCPREMOTEPORT")))
        addr, sock = connect_first(candidates, options.connect_timeout)
        log.info(f"connected to {addr}")
        pending = proxy_line_out(env, options.proxy_out) if options.proxy_out else b""
        pending += after_header
        relay(sock, options.timeout, pending=pending)
    except Failure as e:
        log.fatal(str(e))
        return EXIT_FAILURE
    except (OSError, jail.JailError) as e:
        log.fatal(f"{e}")
        return EXIT_FAILURE
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> NoReturn:
    run_main("tlswrapper-tcp", USAGE, parse, run, argv)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
