"""The logger: one `name: level: [client: ]message` line per os.write(2, ...) on stderr, or
per datagram to syslog when stderr is the client's own socket (inetd).

Rule: logging never raises, never blocks on a lock, never lets a client's bytes forge a line,
and never writes into the client's connection.
"""

from __future__ import annotations

import errno
import os

# Verbosity levels, as the C tlswrapper's -q / -Q / -v / -vv / -vvv set them.
QUIET = 0      # -q: nothing at all
FATAL = 1      # -Q (default): fatal configuration and system errors only
INFO = 2       # -v: connection info, warnings, errors after a completed handshake
DEBUG = 3      # -vv: every TLS error, the client's offers
TRACING = 4    # -vvv: tracing for bug hunting
DEFAULT = FATAL
MAX_VERBOSITY = TRACING

# A line longer than this is cut: a client-controlled string (SNI, certificate subject) must
# not make one log line arbitrarily large.
MAX_LINE = 1024

_name = "tlswrapper"
_verbosity = DEFAULT
_prefix: str | None = None

# Syslog instead of stderr (see avoid_client_socket): the connected /dev/log socket (-1: none,
# lines are dropped) and the process that connected it. A forked process (the key process,
# prog's child) closes its copy and may reuse the number for another file: it must not write
# there, so only the connecting process sends.
SYSLOG_PATH = "/dev/log"
SYSLOG_FACILITY = 3          # daemon
_syslog = False
_syslog_fd = -1
_syslog_pid = 0
# RFC 3164 / syslog(3) severities for our labels.
_SEVERITY = {"fatal": 3, "error": 3, "warning": 4, "info": 6, "debug": 7, "tracing": 7}

# Bytes that are printed as themselves; everything else becomes \xNN so that a newline or a
# terminal escape sent by a client cannot start a fake log line or rewrite the terminal.
_PRINTABLE = frozenset(range(0x20, 0x7F)) - {ord("\\")}


def setup(name: str | None = None, verbosity: int | None = None) -> None:
    """Set the program name (tlswrapper-tcp etc. reuse this module) and/or the verbosity."""
    global _name, _verbosity
    if name is not None:
        _name = name
    if verbosity is not None:
        _verbosity = max(QUIET, min(MAX_VERBOSITY, verbosity))


def avoid_client_socket() -> bool:
    """inetd (`nowait`) hands the connection on fd 0, 1 and 2 alike: a log line written to fd 2
    would go to the client in cleartext, in the middle of its TLS stream (and tell it our
    certificate paths). When fd 2 is the same socket as fd 0 or fd 1, fd 2 becomes /dev/null
    (for us, the key process and prog, which would write there too) and the log goes to
    syslog, facility daemon, through a socket connected now, before any jail. True if so."""
    global _syslog, _syslog_fd, _syslog_pid
    try:
        err = os.fstat(2)
    except OSError:
        return False
    if err.st_mode & 0o170000 != 0o140000:      # S_ISSOCK, without importing stat
        return False
    same = False
    for fd in (0, 1):
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        same = same or (st.st_dev, st.st_ino) == (err.st_dev, err.st_ino)
    if not same:
        return False
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
    except OSError:
        os.close(2)
    _syslog, _syslog_pid = True, os.getpid()
    import socket   # only under inetd; tcpserver mode does not pay for it here
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    except OSError:
        return True
    try:
        sock.connect(SYSLOG_PATH)
        sock.setblocking(False)     # a full syslog queue drops our line, never blocks us
        _syslog_fd = sock.detach()
    except OSError:
        sock.close()                # no syslog daemon: the lines are dropped
    return True


def _to_syslog(label: str, line: bytes) -> None:
    if _syslog_fd < 0 or os.getpid() != _syslog_pid:
        return
    pri = SYSLOG_FACILITY * 8 + _SEVERITY.get(label, 6)
    head = f"<{pri}>{_name}[{_syslog_pid}]: ".encode("ascii")
    name = _name.encode("ascii") + b": "
    # The line without our program name (the syslog tag carries it).
    try:
        os.write(_syslog_fd, head + (line[len(name):] if line.startswith(name) else line))
    except OSError:
        pass


def set_prefix(prefix: str | None) -> None:
    """Set the connection prefix (the client address) put on every later line; None clears it."""
    global _prefix
    _prefix = prefix


def client_prefix(ip: str | None, port: str | int | None = None) -> str | None:
    """The prefix for a client address: `1.2.3.4:5678`, `[::1]:5678`, or just the IP.

    The C version prints the IP alone and a random connection id at the end of each line; we
    print ip:port instead, which identifies the connection and matches tcpserver's log."""
    if not ip:
        return None
    host = f"[{ip}]" if ":" in ip and port not in (None, "") else ip
    return f"{host}:{port}" if port not in (None, "") else host


def verbosity() -> int:
    return _verbosity


def enabled(level: int) -> bool:
    """True when a line of this level would be printed (to skip building costly messages)."""
    return _verbosity >= level


def escape(text: str | bytes) -> str:
    """Render untrusted text on one printable ASCII line (non-printables as \\xNN)."""
    data = text.encode("utf-8", "backslashreplace") if isinstance(text, str) else bytes(text)
    return "".join(chr(b) if b in _PRINTABLE else f"\\x{b:02x}" for b in data)


def _emit(level: int, label: str, message: str) -> None:
    if _verbosity < level:
        return
    prefix = f"{escape(_prefix)}: " if _prefix else ""
    line = f"{_name}: {label}: {prefix}{escape(message)}".encode("ascii")
    if len(line) > MAX_LINE:
        line = line[:MAX_LINE - 3] + b"..."
    if _syslog:
        _to_syslog(label, line)
        return
    data = line + b"\n"
    # One write per line so that lines of concurrent processes sharing stderr do not mix
    # (a pipe write of <= PIPE_BUF bytes is atomic). Errors are dropped: a closed or full
    # stderr must not turn into an exception in the middle of a connection.
    try:
        while data:
            n = os.write(2, data)
            data = data[n:]
    except OSError:
        pass


def fatal(message: str) -> None:
    _emit(FATAL, "fatal", message)


def warning(message: str) -> None:
    _emit(INFO, "warning", message)


def error(message: str) -> None:
    # A connection error after the handshake (the C version's "error:" lines), shown from -v.
    _emit(INFO, "error", message)


def info(message: str) -> None:
    _emit(INFO, "info", message)


def debug(message: str) -> None:
    _emit(DEBUG, "debug", message)


def tracing(message: str) -> None:
    _emit(TRACING, "tracing", message)


_ERRNO_TEXT = {
    # The C version's wording for the common cases, so that messages read the same.
    errno.ENOENT: "file does not exist",
    errno.EACCES: "permission denied",
    errno.ENOTDIR: "not a directory",
    errno.EISDIR: "is a directory",
    errno.EPERM: "operation not permitted",
    errno.ENOEXEC: "exec format error",
    errno.ENOMEM: "out of memory",
    errno.EMFILE: "too many open files",
    errno.EAGAIN: "temporary failure",
}


def oserror_text(err: BaseException) -> str:
    """A short lower-case reason for an OSError, in the C version's words where it has one."""
    if isinstance(err, OSError) and err.errno is not None:
        return _ERRNO_TEXT.get(err.errno) or os.strerror(err.errno).lower()
    return str(err) or type(err).__name__
