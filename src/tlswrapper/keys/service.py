"""The key process main loop: read a request from the pipe, check it, call the KeyService,
answer.

Rule: the caller is assumed hostile (ARCHITECTURE MUST 6): a network process taken over by a
client may send any bytes. Only the calls the engine makes in production can be made, each
with checked argument types, within a size limit for its kind, in handshake order
(keys/order.py), naming only files the configuration leads to (keys/files.py). The first
request that breaks any of these ends the key process, with no answer to it; a call that
fails for a reason a client can cause becomes an error answer, never a traceback.
"""

from __future__ import annotations

import os

from tlswrapper import ipc
from tlswrapper.keys.files import NameRefused
from tlswrapper.keys.order import CallOrder, OutOfOrder
from tlswrapper.tls import suites
from tlswrapper.tls.keyservice import KeyServiceError

# typing is not imported at run time (each tcpserver-mode connection imports this module).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

# The reason sent for an unexpected exception: the details stay in the key process's log
# line, which names only the method and the exception type (a message could carry secrets).
GENERIC_REASON = "key process internal error"


class HostileRequest(ipc.IpcError):
    """A request the engine never makes: wrong arguments, out of order, over its size limit,
    or naming a file the configuration does not lead to. The key process ends on it."""


class _BadArgs(Exception):
    """A well-formed frame whose arguments do not fit the method."""


def stderr_log(line: str) -> None:
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


def _bytes_seq(v: Any) -> list | tuple:
    for item in _seq(v):
        _bytes(item)
    return v


def _direction(v: Any) -> int:
    if type(v) is not int or v not in (0, 1):
        raise _BadArgs
    return v


# --- the table: one function per call the engine makes ------------------------------------------
# Each takes (service, args tuple), whose types it checks first (_BadArgs), and returns a plain
# value for the answer. There is no raw sign(), key_share() or derive13_*(): every signature is
# made inside a flight call, over a transcript or parameters holding the key share the key
# process has just made itself.

def _check_load(a: tuple) -> None:
    (names,) = _n(a, 1, 1)
    for name in _seq(names):
        if type(name) is not str:
            raise _BadArgs


def _load(s: Any, a: tuple) -> Any:
    return [ipc.candidate_to_wire(c) for c in s.load(list(a[0]))]


def _check_select(a: tuple) -> None:
    _int(_n(a, 1, 1)[0])


def _select(s: Any, a: tuple) -> Any:
    return s.select(a[0])


def _check_derive12(a: tuple) -> None:
    version, suite, peer, crandom, srandom, shash, etm = _n(a, 7, 7)
    _int(version), _int(suite), _bytes(peer), _bytes(crandom), _bytes(srandom)
    _opt_bytes(shash), _bool(etm)


def _derive12(s: Any, a: tuple) -> Any:
    return s.derive12(*a)


def _check_derive12_finished(a: tuple) -> None:
    version, suite, peer, crandom, srandom, transcript, ems, etm = _n(a, 8, 8)
    _int(version), _int(suite), _bytes(peer), _bytes(crandom), _bytes(srandom)
    _bytes_seq(transcript), _bool(ems), _bool(etm)


def _derive12_finished(s: Any, a: tuple) -> Any:
    return s.derive12_finished(*a)


def _check_server_key_exchange12(a: tuple) -> None:
    group, scheme, crandom, srandom = _n(a, 4, 4)
    _int(group), _int(scheme), _bytes(crandom), _bytes(srandom)


def _server_key_exchange12(s: Any, a: tuple) -> Any:
    return s.server_key_exchange12(*a)


def _check_one_hash(a: tuple) -> None:
    _bytes(_n(a, 1, 1)[0])


def _seal_finished12(s: Any, a: tuple) -> Any:
    return s.seal_finished12(a[0])


def _check_finished(a: tuple) -> None:
    sender, h = _n(a, 2, 2)
    _int(sender), _bytes(h)


def _finished12(s: Any, a: tuple) -> Any:
    return s.finished12(*a)


def _finished13(s: Any, a: tuple) -> Any:
    return s.finished13(*a)


def _check_server_flight13(a: tuple) -> None:
    group, peer, suite, scheme, transcript, hello_head, flight, client_auth = _n(a, 8, 8)
    _int(group), _bytes(peer), _int(suite), _int(scheme), _bytes_seq(transcript)
    _bytes(hello_head), _bytes_seq(flight), _bool(client_auth)


def _server_flight13(s: Any, a: tuple) -> Any:
    return s.server_flight13(*a)


def _check_direction(a: tuple) -> None:
    _direction(_n(a, 1, 1)[0])


def _key_update(s: Any, a: tuple) -> Any:
    return s.key_update(a[0])


def _activate(s: Any, a: tuple) -> Any:
    return s.activate(a[0])


def _check_seal(a: tuple) -> None:
    (records,) = _n(a, 1, 1)
    for r in _seq(records):
        if type(r) is not tuple or len(r) != 2 or type(r[0]) is not int \
                or type(r[1]) is not bytes:
            raise _BadArgs


def _seal(s: Any, a: tuple) -> Any:
    return s.seal(a[0])


def _check_open(a: tuple) -> None:
    (records,) = _n(a, 1, 1)
    _bytes_seq(records)


def _open(s: Any, a: tuple) -> Any:
    results, alert, reason = s.open(a[0])
    # Answer with plain types whatever sequence types the service used.
    return ([(t, p) for t, p in results], alert, reason)


def _check_none(a: tuple) -> None:
    _n(a, 0, 0)


def _read_anchor(s: Any, a: tuple) -> Any:
    # No argument: the file is the configured one (keys/files.py), never named by a request.
    return s.read_anchor()


def _ready(s: Any, a: tuple) -> Any:
    # Not a KeyService method: the answer itself says the key process is serving (a listener's
    # spare waits for it, so that the key process's warm-up is over before a client comes).
    return None


# Size limits of a request's body by kind (the frame header is checked before the body is
# read). Handshake calls carry at most the ClientHello(s) (2^17 bytes each as their length
# fields allow, two with a HelloRetryRequest), our certificate chain (a PEM file is at most
# 1 MiB) and a few small messages; record calls a batch of records (ipc.MAX_FRAME).
SMALL_REQUEST = 1024
LOAD_REQUEST = 64 * 1024
HANDSHAKE_REQUEST = 4 << 20
RECORDS_REQUEST = ipc.MAX_FRAME

# name: (argument check, call, size limit)
_TABLE: dict[str, tuple[Callable[[tuple], None], Callable[[Any, tuple], Any], int]] = {
    "load": (_check_load, _load, LOAD_REQUEST),
    "select": (_check_select, _select, SMALL_REQUEST),
    "derive12": (_check_derive12, _derive12, SMALL_REQUEST),
    "finished12": (_check_finished, _finished12, SMALL_REQUEST),
    "finished13": (_check_finished, _finished13, SMALL_REQUEST),
    "key_update": (_check_direction, _key_update, SMALL_REQUEST),
    "activate": (_check_direction, _activate, SMALL_REQUEST),
    "seal": (_check_seal, _seal, RECORDS_REQUEST),
    "open": (_check_open, _open, RECORDS_REQUEST),
    "read_anchor": (_check_none, _read_anchor, SMALL_REQUEST),
    "server_flight13": (_check_server_flight13, _server_flight13, HANDSHAKE_REQUEST),
    "server_key_exchange12": (_check_server_key_exchange12, _server_key_exchange12,
                              SMALL_REQUEST),
    "seal_finished12": (_check_one_hash, _seal_finished12, SMALL_REQUEST),
    "derive12_finished": (_check_derive12_finished, _derive12_finished, HANDSHAKE_REQUEST),
    "ready": (_check_none, _ready, SMALL_REQUEST),
}
HANDLERS: dict[int, tuple[str, Callable[[tuple], None], Callable[[Any, tuple], Any]]] = {
    ipc.OPCODES[name]: (name, check, call) for name, (check, call, _) in _TABLE.items()
}
REQUEST_LIMITS: dict[int, int] = {ipc.OPCODES[name]: limit
                                  for name, (_, _, limit) in _TABLE.items()}
# A method added to ipc.METHODS without a handler here is a programming error; fail at import
# (not with assert: this package runs with -O too).
if set(HANDLERS) != set(ipc.OPCODES.values()):
    raise ImportError("keys.service: handler table does not match ipc.METHODS")


# The calls that sign, with the key the last select chose.
FLIGHTS = frozenset(("server_flight13", "server_key_exchange12"))

# Answers are held back while more requests are buffered (the network process sent them in
# one write: deferred calls before the one it waits for), then written together; bounded.
MAX_HELD_ANSWERS = 64 * 1024


def serve(rfd: int, wfd: int, service: Any, order: CallOrder,
          log: Callable[[str], None] | None = stderr_log) -> None:
    """Answer requests read from `rfd` on `wfd` until EOF on `rfd` (the network process closed
    its end or died), then return. A malformed frame, an unknown opcode or a request that
    breaks the rules above raises IpcError (HostileRequest) before anything of it is answered,
    and a broken answer pipe raises OSError: the caller then exits, the connection is over."""
    reader = ipc.FrameReader(rfd, REQUEST_LIMITS)
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
        parts = answer(frame, service, order, log)
        held += parts
        held_size += sum(len(p) for p in parts)


def answer(frame: tuple[int, Any], service: Any, order: CallOrder,
           log: Callable[[str], None] | None) -> list[Any]:
    """The answer frame (as encode_parts buffers) to one request."""
    opcode, args = frame
    entry = HANDLERS.get(opcode)
    if entry is None:
        raise HostileRequest(f"unknown opcode {opcode}")
    name, check, call = entry
    if type(args) is not tuple:
        raise HostileRequest("request arguments are not a tuple")
    try:
        check(args)
        order.admit(name, args)
    except _BadArgs:
        raise HostileRequest(f"bad arguments to {name}") from None
    except OutOfOrder as e:
        raise HostileRequest(f"out of order: {e}") from None
    if name in FLIGHTS and not order.key_selected():
        # The select sent with this flight was refused: the flight is refused too, with
        # nothing done (the engine selects the next candidate and makes it again).
        order.done(name, args, False)
        return ipc.encode_parts(ipc.OP_ERR, (suites.INTERNAL_ERROR, "no key selected"))
    try:
        result = call(service, args)
    except NameRefused as e:
        raise HostileRequest(f"load: {e}") from None
    except KeyServiceError as e:
        order.done(name, args, False)
        return ipc.encode_parts(ipc.OP_ERR, (_alert(e.alert), str(e.reason)))
    except Exception as e:   # a bug on the key side: one log line, a generic answer
        order.done(name, args, False)
        if log is not None:
            log(f"tlswrapper: warning: key process: {name} failed: {type(e).__name__}")
        return ipc.encode_parts(ipc.OP_ERR, (suites.INTERNAL_ERROR, GENERIC_REASON))
    order.done(name, args, True, result)
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
