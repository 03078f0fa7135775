"""The network process's side of the key process: a KeyService over its pipes (PipeKeyService).

Rule: every answer is checked before use, and a key process that dies or misbehaves raises
KeyProcessDied (fatal for the connection, exit 111), never a hang or a KeyServiceError.
"""

from __future__ import annotations

import os
import signal
import time

from tlswrapper import ipc
from tlswrapper.tls import suites
from tlswrapper.tls.keyservice import Candidate, KeyRefused, KeyServiceError, Unusable

# typing is not imported at run time (each tcpserver-mode connection imports this module).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

# How long close() waits for the key process to exit after EOF before killing it.
CLOSE_GRACE = 1.0


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
    deferred and sent in the same write as the next call (keyservice.py: "Round trips"): a failed
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
