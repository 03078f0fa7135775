"""What tlswrapper-tcp and tlswrapper-smtp share: option values, the resolver process, the
resolver's partial privilege drop, one socket per address and the connect, the warm-up.

Rule: the host name is resolved in a process of its own (fork, getaddrinfo, addresses back
over a pipe, exit) under the jail account, never in the process that then jails itself; any
failure is a Failure (one fatal line, exit 111). Nothing here imports dataclasses or typing at
run time: both commands start once per connection.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import signal
import socket
import time

from tlswrapper import jail, log
from tlswrapper.commands.optscan import OptionError
from tlswrapper.exits import EXIT_FAILURE
from tlswrapper.net import proxyproto
from tlswrapper.tls.frozen import Frozen, init

# typing is not imported at run time (each connection starts these commands anew).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

DEFAULT_CONNECT_TIMEOUT = 10    # -T: connect timeout (per address; also the resolver's limit)
MAX_ADDRESSES = 16              # resolved addresses kept (one socket each before the jail)
RESOLVER_REPLY_LIMIT = 4096     # bytes read from the resolver process, at most


class Failure(Exception):
    """A run-time failure: one fatal line, exit 111."""


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


def parse_port(value: str) -> int:
    if value.isascii() and value.isdigit() and int(value) <= 65535:
        return int(value)
    raise OptionError(f"unable to parse TCP port (a number 0 - 65535) from the string "
                      f"'{log.escape(value)}'")


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
    jail.prctl(jail.PR_SET_DUMPABLE, 0)
    if os.getresuid() != (account.uid,) * 3 or os.getresgid() != (account.gid,) * 3:
        raise OSError(errno.EPERM, "ids did not change")


class Address(Frozen):
    __slots__ = ("family", "ip", "port")
    family: int
    ip: str
    port: int

    def __init__(self, family: int, ip: str, port: int) -> None:
        init(self, "family", family)
        init(self, "ip", ip)
        init(self, "port", port)

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
    return parse_resolver_reply(host, port, bytes(data))


def parse_resolver_reply(host: str, port: int, data: bytes) -> list[Address]:
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
