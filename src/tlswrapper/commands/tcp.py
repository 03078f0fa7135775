"""`tlswrapper-tcp [options] host port`: the prog that connects tlswrapper to a plain TCP service.

Rule: the host name is resolved in a process of its own (fork, getaddrinfo, addresses back over
a pipe, exit), under the jail account; the relay process creates one unconnected socket per
address, jails itself, and only then connects (each address in turn, -T each) and relays
stdin/stdout <-> the connection, half-closes passed through both ways. Any failure: one log
line and exit 111; a usage error: exit 100. Nothing here lets a traceback reach the user.

What tlswrapper-smtp uses too (option values, the resolver process, the partial privilege
drop, the connect) is in companion.py.
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import time

from tlswrapper import jail, log
from tlswrapper.commands.companion import (DEFAULT_CONNECT_TIMEOUT, Failure,
                                           connect_first, make_sockets, parse_jail_dir,
                                           parse_port, resolve, verbosity_of, warm_up)
from tlswrapper.commands.optscan import (  # noqa: F401 (the errors: re-exported)
    OptionError, UsageError, check_account, parse_timeout, run_main, split_options)
from tlswrapper.exits import EXIT_FAILURE, EXIT_OK, EXIT_USAGE  # noqa: F401 (EXIT_USAGE: tests)
from tlswrapper.net import proxyproto
from tlswrapper.net.prog import connection_addresses
from tlswrapper.tls.frozen import Frozen, init

# typing is not imported at run time (each connection starts this command anew).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import NoReturn

USAGE = "tlswrapper-tcp [options] host port"
DEFAULT_TIMEOUT = 3600          # -t: network timeout
READ_SIZE = 1 << 17             # bytes per read


def parse_proxy_version(direction: str, value: str) -> int:
    """1 or 2; incoming also 0 (either version, as tlswrapper's -p 0)."""
    available = ("0", "1", "2") if direction == "incoming" else ("1", "2")
    if value not in available:
        raise OptionError(f"unable to parse {direction} proxy-protocol version from the string "
                          f"'{log.escape(value)}' (available: {', '.join(available)})")
    return int(value)


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

class Options(Frozen):
    __slots__ = ("verbosity", "timeout", "connect_timeout", "proxy_in", "proxy_out",
                 "jail_dir", "jail_user", "host", "port")
    verbosity: int
    timeout: int
    connect_timeout: int
    proxy_in: int | None
    proxy_out: int | None
    jail_dir: str
    jail_user: str | None
    host: str
    port: int

    def __init__(self, verbosity: int = log.DEFAULT, timeout: int = DEFAULT_TIMEOUT,
                 connect_timeout: int = DEFAULT_CONNECT_TIMEOUT, proxy_in: int | None = None,
                 proxy_out: int | None = None, jail_dir: str = jail.DEFAULT_JAIL_DIR,
                 jail_user: str | None = None, host: str = "", port: int = 0) -> None:
        init(self, "verbosity", verbosity)
        init(self, "timeout", timeout)
        init(self, "connect_timeout", connect_timeout)
        init(self, "proxy_in", proxy_in)
        init(self, "proxy_out", proxy_out)
        init(self, "jail_dir", jail_dir)
        init(self, "jail_user", jail_user)
        init(self, "host", host)
        init(self, "port", port)


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
            kw["jail_user"] = check_account("j", value)
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
