"""The key process main loop: read a request from the pipe, call the KeyService, answer.

Rule: only the methods of a fixed table can be called, each with checked argument types; a
malformed frame ends the process, a failing call becomes an error answer, never a traceback.
"""

from __future__ import annotations

import os

from tlswrapper import ipc
from tlswrapper.tls import suites
from tlswrapper.tls.secrets import KeyServiceError

# typing is not imported at run time (each tcpserver-mode connection imports this module).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

# The reason sent for an unexpected exception: the details stay in the key process's log
# line, which names only the method and the exception type (a message could carry secrets).
GENERIC_REASON = "key process internal error"


class _BadArgs(Exception):
    """A well-formed request whose arguments do not fit the method."""


def _stderr_log(line: str) -> None:
    # os.write on fd 2: no buffering to flush before os._exit, and nothing to import.
    try:
        os.write(2, (line + "\n").encode("utf-8", "backslashreplace"))
    except OSError:
        pass


# --- argument checks -------------------------------------------------------------------------
# The network process parses what strangers send; if it is subverted, these requests are the
# attacker's. So every argument is checked for its exact type before the service sees it.

def _n(args: tuple, lo: int, hi: int) -> tuple:
    if not lo <= len(args) <= hi:
        raise _BadArgs
    return args


def _int(v: Any) -> int:
    if type(v) is not int:
        raise _BadArgs
    return v


def _bytes(v: Any) -> bytes:
    if type(v) is not bytes:
        raise _BadArgs
    return v


def _opt_bytes(v: Any) -> bytes | None:
    return None if v is None else _bytes(v)


def _bool(v: Any) -> bool:
    if type(v) is not bool:
        raise _BadArgs
    return v


def _seq(v: Any) -> list | tuple:
    if type(v) is not list and type(v) is not tuple:
        raise _BadArgs
    return v


# --- the table: one function per KeyService method ---------------------------------------------
# Each takes (service, args tuple) and returns a plain value for the answer.

def _load(s: Any, a: tuple) -> Any:
    (paths,) = _n(a, 1, 1)
    paths = _seq(paths)
    for p in paths:
        if type(p) is not str:
            raise _BadArgs
    return [ipc.candidate_to_wire(c) for c in s.load(list(paths))]


def _select(s: Any, a: tuple) -> Any:
    (index,) = _n(a, 1, 1)
    return s.select(_int(index))


def _sign(s: Any, a: tuple) -> Any:
    scheme, data = _n(a, 2, 2)
    return s.sign(_int(scheme), _bytes(data))


def _key_share(s: Any, a: tuple) -> Any:
    _n(a, 1, 2)
    if len(a) == 1:
        return s.key_share(_int(a[0]))
    return s.key_share(_int(a[0]), _opt_bytes(a[1]))


def _derive12(s: Any, a: tuple) -> Any:
    _n(a, 6, 7)
    version, suite, peer, crandom, srandom, shash = a[:6]
    etm = _bool(a[6]) if len(a) == 7 else False
    return s.derive12(_int(version), _int(suite), _bytes(peer), _bytes(crandom),
                      _bytes(srandom), _opt_bytes(shash), etm)


def _derive12_finished(s: Any, a: tuple) -> Any:
    version, suite, peer, crandom, srandom, transcript, ems, etm = _n(a, 8, 8)
    return s.derive12_finished(_int(version), _int(suite), _bytes(peer), _bytes(crandom),
                               _bytes(srandom), _bytes_seq(transcript), _bool(ems),
                               _bool(etm))


def _server_key_exchange12(s: Any, a: tuple) -> Any:
    group, scheme, crandom, srandom = _n(a, 4, 4)
    return s.server_key_exchange12(_int(group), _int(scheme), _bytes(crandom),
                                   _bytes(srandom))


def _seal_finished12(s: Any, a: tuple) -> Any:
    (h,) = _n(a, 1, 1)
    return s.seal_finished12(_bytes(h))


def _finished12(s: Any, a: tuple) -> Any:
    sender, h = _n(a, 2, 2)
    return s.finished12(_int(sender), _bytes(h))


def _derive13_handshake(s: Any, a: tuple) -> Any:
    suite, h = _n(a, 2, 2)
    return s.derive13_handshake(_int(suite), _bytes(h))


def _bytes_seq(v: Any) -> list | tuple:
    for item in _seq(v):
        _bytes(item)
    return v


def _server_flight13(s: Any, a: tuple) -> Any:
    group, peer, suite, scheme, transcript, hello_head, flight, client_auth = _n(a, 8, 8)
    return s.server_flight13(_int(group), _bytes(peer), _int(suite), _int(scheme),
                             _bytes_seq(transcript), _bytes(hello_head), _bytes_seq(flight),
                             _bool(client_auth))


def _finished13(s: Any, a: tuple) -> Any:
    sender, h = _n(a, 2, 2)
    return s.finished13(_int(sender), _bytes(h))


def _derive13_application(s: Any, a: tuple) -> Any:
    (h,) = _n(a, 1, 1)
    return s.derive13_application(_bytes(h))


def _key_update(s: Any, a: tuple) -> Any:
    (direction,) = _n(a, 1, 1)
    return s.key_update(_int(direction))


def _activate(s: Any, a: tuple) -> Any:
    (direction,) = _n(a, 1, 1)
    return s.activate(_int(direction))


def _seal(s: Any, a: tuple) -> Any:
    (records,) = _n(a, 1, 1)
    for r in _seq(records):
        if type(r) is not tuple or len(r) != 2 or type(r[0]) is not int \
                or type(r[1]) is not bytes:
            raise _BadArgs
    return s.seal(records)


def _open(s: Any, a: tuple) -> Any:
    (records,) = _n(a, 1, 1)
    for r in _seq(records):
        _bytes(r)
    results, alert, reason = s.open(records)
    # Answer with plain types whatever sequence types the service used.
    return ([(t, p) for t, p in results], alert, reason)


def _read_anchor(s: Any, a: tuple) -> Any:
    (path,) = _n(a, 1, 1)
    if type(path) is not str:
        raise _BadArgs
    return s.read_anchor(path)


def _ready(s: Any, a: tuple) -> Any:
    # Not a KeyService method: the answer itself says the key process is serving (a listener's
    # spare waits for it, so that the key process's warm-up is over before a client comes).
    _n(a, 0, 0)
    return None


HANDLERS: dict[int, tuple[str, Callable[[Any, tuple], Any]]] = {
    ipc.OPCODES[name]: (name, fn) for name, fn in (
        ("load", _load), ("select", _select), ("sign", _sign), ("key_share", _key_share),
        ("derive12", _derive12), ("finished12", _finished12),
        ("derive13_handshake", _derive13_handshake), ("finished13", _finished13),
        ("derive13_application", _derive13_application), ("key_update", _key_update),
        ("activate", _activate), ("seal", _seal), ("open", _open),
        ("read_anchor", _read_anchor),
        ("server_flight13", _server_flight13),
        ("server_key_exchange12", _server_key_exchange12),
        ("seal_finished12", _seal_finished12),
        ("derive12_finished", _derive12_finished),
        ("ready", _ready),
    )
}
# A method added to ipc.METHODS without a handler here is a programming error; fail at import
# (not with assert: this package runs with -O too).
if set(HANDLERS) != set(ipc.OPCODES.values()):
    raise ImportError("keys.service: handler table does not match ipc.METHODS")


# Answers are held back while more requests are buffered (the network process sent them in
# one write: deferred calls before the one it waits for), then written together; bounded.
MAX_HELD_ANSWERS = 64 * 1024


def serve(rfd: int, wfd: int, service: Any,
          log: Callable[[str], None] | None = _stderr_log) -> None:
    """Answer requests read from `rfd` on `wfd` until EOF on `rfd` (the network process closed
    its end or died), then return. A malformed frame or an unknown opcode raises IpcError and a
    broken answer pipe raises OSError: the caller then exits, the connection is over."""
    reader = ipc.FrameReader(rfd)
    held: list[Any] = []
    held_size = 0
    while True:
        if held and (not reader.buffered() or held_size >= MAX_HELD_ANSWERS):
            ipc.write_parts(wfd, held)
            held = []
            held_size = 0
        frame = reader.read()
        if frame is None:
            return
        parts = _answer(frame, service, log)
        held += parts
        held_size += sum(len(p) for p in parts)


def _answer(frame: tuple[int, Any], service: Any,
            log: Callable[[str], None] | None) -> list[Any]:
    """The answer frame (as encode_parts buffers) to one request."""
    opcode, args = frame
    entry = HANDLERS.get(opcode)
    if entry is None:
        raise ipc.IpcError(f"unknown opcode {opcode}")
    name, fn = entry
    if type(args) is not tuple:
        raise ipc.IpcError("request arguments are not a tuple")
    try:
        result = fn(service, args)
    except KeyServiceError as e:
        return ipc.encode_parts(ipc.OP_ERR, (_alert(e.alert), str(e.reason)))
    except _BadArgs:
        return ipc.encode_parts(ipc.OP_ERR, (suites.INTERNAL_ERROR, f"bad arguments to {name}"))
    except Exception as e:   # a bug on the key side: one log line, a generic answer
        if log is not None:
            log(f"tlswrapper: warning: key process: {name} failed: {type(e).__name__}")
        return ipc.encode_parts(ipc.OP_ERR, (suites.INTERNAL_ERROR, GENERIC_REASON))
    try:
        return ipc.encode_parts(ipc.OP_OK, result)
    except ipc.IpcError as e:
        # The service answered something the pipe cannot carry: a key-side bug.
        if log is not None:
            log(f"tlswrapper: warning: key process: {name} answer not encodable: {e}")
        return ipc.encode_parts(ipc.OP_ERR, (suites.INTERNAL_ERROR, GENERIC_REASON))


def _alert(alert: Any) -> int:
    # A KeyServiceError with a non-int alert is a key-side bug; send internal_error for it.
    return alert if type(alert) is int and 0 <= alert <= 255 else suites.INTERNAL_ERROR
