"""Tests of the key process and its pipe: serve(), PipeKeyService, start_key_process.

Rule: the forked key process runs a fake service here (or the real LocalKeyService when it
exists); a dead key process must give KeyProcessDied promptly, never a hang.

Run as a script for the measurements (not timed tests):
    .venv/bin/python tests/test_keyprocess.py
"""

from __future__ import annotations

import datetime
import os
import resource
import signal
import sys
import threading
import time

import pytest

from tlswrapper import ipc
from tlswrapper.keys.process import start_key_process
from tlswrapper.net.keyproxy import KeyProcessDied, PipeKeyService
from tlswrapper.keys import service as key_service
from tlswrapper.keys.files import KeyFiles
from tlswrapper.keys.order import CallOrder
from tlswrapper.tls import suites
from tlswrapper.tls.keyservice import (READ, WRITE, Candidate, KeyRefused, KeyServiceError,
                                    Unusable)


LOG_DIR = "/tmp"   # replaced per test by the fake_ks fixture (tmp_path)
NAMES = ["a", "b", "c"]
FILES = KeyFiles([("file", n) for n in NAMES])
CH = b"\x01\x00\x00\x02ch"              # a ClientHello-like first transcript message
SH = b"\x02\x00\x00\x22sh"              # a ServerHello head to which a 32-byte share is due


class Fake:
    """Answers from its arguments so that the parent can check what arrived; the key
    process's calls are appended to a log file the test reads back (state())."""

    def __init__(self, jail=None, files=None, log_path=None) -> None:
        self.jail = jail
        self.files = files
        self.log_path = log_path
        self.fds = sorted(int(x) for x in os.listdir("/proc/self/fd"))
        self._write(("fds", self.fds, jail is not None))

    def _write(self, entry) -> None:
        if self.log_path is not None:
            with open(self.log_path, "a") as f:
                f.write(repr(entry) + "\n")

    def _log(self, *a):
        self._write(a)

    def load(self, paths):
        self._log("load", paths)
        if self.jail is not None:
            self.jail()             # as LocalKeyService.load does
        return [Candidate((b"leaf", b"ca"), suites.KEY_EC_P256), Unusable("missing", True),
                Candidate((b"rsa",), suites.KEY_RSA, 2048)][:len(paths)]

    def read_anchor(self):
        return b"anchor:" + self.files.anchor.encode()

    def select(self, index):
        if index == 9 or index == 1:
            raise KeyServiceError(suites.INTERNAL_ERROR, "key does not match certificate")
        self._log("select", index)

    def derive12(self, version, suite, peer_share, client_random, server_random,
                 session_hash, encrypt_then_mac=False):
        self._log("derive12", version, suite, peer_share, client_random, server_random,
                  session_hash, encrypt_then_mac)

    def derive12_finished(self, version, suite, peer_share, client_random, server_random,
                          transcript, extended_master_secret, encrypt_then_mac):
        self._log("derive12_finished", version, suite, peer_share, client_random,
                  server_random, transcript, extended_master_secret, encrypt_then_mac)
        return b"cf", b"record"

    def server_key_exchange12(self, group, scheme, client_random, server_random):
        self._log("server_key_exchange12", group, scheme, client_random, server_random)
        if scheme == 1:
            raise KeyServiceError(suites.ILLEGAL_PARAMETER, "scheme does not fit the key")
        if scheme == 2:
            raise ValueError("a bug with a secret in its message")
        if scheme == 3:
            time.sleep(30)          # a key process that hangs (killed by the test)
        if scheme == 4:
            return 1.5              # not encodable: a key-side bug
        if scheme == 5:
            os._exit(3)             # dies in the middle of a call
        return b"pub", b"sig"

    def seal_finished12(self, handshake_hash):
        return b"sf" + handshake_hash

    def server_flight13(self, group, peer_share, suite, scheme, transcript, hello_head,
                        flight, client_auth):
        self._log("server_flight13", group, peer_share, suite, scheme, transcript,
                  hello_head, flight, client_auth)
        return b"share", b"cv", b"fin", b"records", b"" if client_auth else b"cfin"

    def finished12(self, sender, handshake_hash):
        return b"f12" + bytes([sender]) + handshake_hash

    def finished13(self, sender, transcript_hash):
        return b"f13" + bytes([sender]) + transcript_hash

    def key_update(self, direction):
        self._log("key_update", direction)

    def activate(self, direction):
        self._log("activate", direction)

    def seal(self, records):
        return b"".join(bytes([t]) + p for t, p in records)

    def open(self, records):
        if records and records[0] == b"bad":
            return [], suites.BAD_RECORD_MAC, "bad record mac"
        return [(23, r[::-1]) for r in records], 0, ""


class FailingActivate(Fake):
    def activate(self, direction):
        raise KeyServiceError(suites.INTERNAL_ERROR, "no pending protection")


def state(ks: PipeKeyService):
    """(calls, fds, jailed) as the fake in the key process logged them."""
    import ast
    with open(ks.fake_log) as f:
        entries = [ast.literal_eval(line) for line in f]
    _, fds, jailed = entries[0]
    return entries[1:], fds, jailed


def start_fake(log_dir, cls=Fake, jail=None, files=FILES):
    path = os.path.join(str(log_dir), f"fake-{time.monotonic_ns()}.log")
    ks, pid = start_key_process(jail, files,
                                factory=lambda jail, files: cls(jail, files, path), log=None)
    ks.fake_log = path
    return ks, pid


@pytest.fixture
def fake_ks(tmp_path):
    ks, pid = start_fake(tmp_path)
    yield ks, pid
    ks.close()


def to_tls13(ks, client_auth=False, index=0):
    """load, select and the TLS 1.3 flight, as the engine makes them."""
    ks.load(NAMES)
    ks.select(index)
    return ks.server_flight13(suites.X25519, b"peer", 0x1301, 0x0403, [CH], SH,
                              [b"ee", b"cert"], client_auth)


def to_tls12(ks):
    ks.load(NAMES)
    ks.select(0)
    return ks.server_key_exchange12(suites.SECP256R1, 0x0403, b"c" * 32, b"s" * 32)


# --- every call over a real fork, in handshake order ---------------------------------------------

def test_every_call_of_a_tls13_handshake(fake_ks):
    ks, pid = fake_ks
    assert pid == ks.pid and pid > 0
    assert ks.ready() is None
    assert ks.load(NAMES) == [
        Candidate((b"leaf", b"ca"), suites.KEY_EC_P256), Unusable("missing", True),
        Candidate((b"rsa",), suites.KEY_RSA, 2048)]
    assert ks.select(2) is None
    assert ks.server_flight13(suites.X25519, b"peer", 0x1301, 0x0403, [CH], SH,
                              [b"ee", b"cert"], True) == \
        (b"share", b"cv", b"fin", b"records", b"")
    assert ks.open([b"abc", b"de"]) == ([(23, b"cba"), (23, b"ed")], 0, "")
    assert ks.finished13(0, b"t") == b"f13\x00t"
    assert ks.activate(READ) is None
    assert ks.seal([(23, b"abc"), (21, b"")]) == b"\x17abc\x15"
    assert ks.seal([]) == b""
    assert ks.key_update(WRITE) is None
    assert ks.open([b"xyz"]) == ([(23, b"zyx")], 0, "")
    assert ks.key_update(READ) is None
    assert ks.open([b"bad"]) == ([], suites.BAD_RECORD_MAC, "bad record mac")
    calls, _fds, jailed = state(ks)
    assert calls == [
        ("load", NAMES), ("select", 2),
        ("server_flight13", suites.X25519, b"peer", 0x1301, 0x0403, [CH], SH,
         [b"ee", b"cert"], True),
        ("activate", READ), ("key_update", WRITE), ("key_update", READ)]
    assert jailed is False


def test_every_call_of_a_tls12_handshake_with_a_client_certificate(fake_ks):
    ks, _ = fake_ks
    assert to_tls12(ks) == (b"pub", b"sig")
    assert ks.derive12(suites.TLS12, 0xC02B, b"p", b"c" * 32, b"s" * 32, b"h", True) is None
    assert ks.finished12(0, b"hh") == b"f12\x00hh"
    ks.activate(READ)
    assert ks.open([b"fin"]) == ([(23, b"nif")], 0, "")
    ks.activate(WRITE)
    assert ks.seal_finished12(b"hh") == b"sfhh"
    assert ks.seal([(23, b"x")]) == b"\x17x"
    calls, _fds, _jailed = state(ks)
    assert [c[0] for c in calls] == ["load", "select", "server_key_exchange12", "derive12",
                                     "activate", "activate"]


def test_every_call_of_a_tls12_handshake(fake_ks):
    ks, _ = fake_ks
    to_tls12(ks)
    assert ks.derive12_finished(suites.TLS12, 0xC02B, b"p", b"c", b"s", [b"ch", b"cke"],
                                True, False) == (b"cf", b"record")
    ks.activate(READ)
    assert ks.open([b"fin"]) == ([(23, b"nif")], 0, "")
    assert ks.seal([(23, b"x")]) == b"\x17x"


def test_read_anchor_is_the_configured_file(tmp_path):
    ks, _ = start_fake(tmp_path, files=KeyFiles([("file", "a")], "/etc/ca.pem"))
    with ks:
        assert ks.read_anchor() == b"anchor:/etc/ca.pem"
        assert ks.load(["a"])


@pytest.fixture
def pipe_writes(monkeypatch) -> list[int]:
    """The descriptor of each pipe write the key service makes, in order."""
    writes: list[int] = []
    real = ipc.write_parts

    def counting(fd, parts):
        writes.append(fd)
        return real(fd, parts)
    monkeypatch.setattr(ipc, "write_parts", counting)
    return writes


def test_deferred_calls_go_with_the_next_call(fake_ks, pipe_writes):
    ks, _ = fake_ks
    to_tls13(ks)
    ks.seal([(23, b"x")])
    del pipe_writes[:]
    # activate and key_update answer nothing: they wait for the next call and go in its
    # write, in order; one round trip for the three.
    assert ks.activate(READ) is None
    assert ks.key_update(WRITE) is None
    assert pipe_writes == []
    assert ks.seal([(23, b"x")]) == b"\x17x"
    assert pipe_writes == [ks.wfd]
    calls, _fds, _jailed = state(ks)
    assert calls[-2:] == [("activate", READ), ("key_update", WRITE)]


def test_deferred_call_error_surfaces_from_the_next_call(tmp_path):
    ks, _ = start_fake(tmp_path, FailingActivate)
    with ks:
        to_tls13(ks)
        ks.activate(READ)            # refused by the key side: reported with the next call
        with pytest.raises(KeyServiceError) as e:
            ks.seal([(23, b"x")])
        assert (e.value.alert, e.value.reason) == (suites.INTERNAL_ERROR,
                                                   "no pending protection")
        # The pipes are in step; after a failure only the engine's alert can be sealed.
        assert ks.seal([(21, b"\x02\x50")]) == b"\x15\x02\x50"
        with pytest.raises(KeyProcessDied):
            ks.open([b"x"])


def test_deferred_select_goes_with_the_flight_and_its_error_is_key_refused(fake_ks,
                                                                          pipe_writes):
    ks, _ = fake_ks
    ks.load(NAMES)
    # A refused select: the flight sent with it is refused too, without being made.
    ks.select(1)
    assert pipe_writes == [ks.wfd]          # load only: select is deferred
    with pytest.raises(KeyRefused) as e:
        ks.server_flight13(suites.X25519, b"peer", 0x1301, 0x0403, [CH], SH, [b"ee"], False)
    assert (e.value.alert, e.value.reason) == (suites.INTERNAL_ERROR,
                                               "key does not match certificate")
    assert len(pipe_writes) == 2
    # The next candidate: select and flight in one write again.
    ks.select(2)
    assert ks.server_key_exchange12(suites.SECP256R1, 0x0403, b"c", b"s") == (b"pub", b"sig")
    assert len(pipe_writes) == 3
    calls, _fds, _jailed = state(ks)
    assert [c[0] for c in calls] == ["load", "select", "server_key_exchange12"]


def test_deferred_calls_dropped_at_close(fake_ks):
    ks, _ = fake_ks
    to_tls13(ks)
    ks.activate(READ)
    assert ks.close() == 0


def test_bulk_batch(fake_ks):
    ks, _ = fake_ks
    to_tls13(ks)
    records = [(23, os.urandom(16384)) for _ in range(16)]
    assert ks.seal(records) == b"".join(b"\x17" + p for _, p in records)
    raw = [os.urandom(16384 + 5) for _ in range(16)]
    assert ks.open(raw) == ([(23, r[::-1]) for r in raw], 0, "")
    # A frame of several MiB (over the pipe and the reader's first buffer), twice in a row.
    big = [(23, os.urandom(16384)) for _ in range(300)]
    for _ in range(2):
        assert ks.seal(big) == b"".join(b"\x17" + p for _, p in big)


@pytest.mark.parametrize("scheme,alert,reason", [
    (1, suites.ILLEGAL_PARAMETER, "scheme does not fit the key"),
    (2, suites.INTERNAL_ERROR, key_service.GENERIC_REASON),
    (4, suites.INTERNAL_ERROR, key_service.GENERIC_REASON),
])
def test_errors_propagate(tmp_path, scheme, alert, reason):
    ks, _ = start_fake(tmp_path)
    with ks:
        ks.load(NAMES)
        ks.select(0)
        with pytest.raises(KeyServiceError) as e:
            ks.server_key_exchange12(suites.SECP256R1, scheme, b"c", b"s")
        assert (e.value.alert, e.value.reason) == (alert, reason)
        assert "secret" not in e.value.reason
        # A failed handshake call: the key process takes nothing more but an alert.
        with pytest.raises(KeyProcessDied):
            ks.select(0)
            ks.server_key_exchange12(suites.SECP256R1, 0x0403, b"c", b"s")


def test_unsendable_arguments_are_an_engine_error(fake_ks):
    ks, _ = fake_ks
    ks.load(NAMES)
    ks.select(0)
    with pytest.raises(KeyServiceError) as e:
        ks.server_key_exchange12(2**70, 0x0403, b"", b"")
    assert e.value.alert == suites.INTERNAL_ERROR
    with pytest.raises(KeyServiceError):
        ks.server_key_exchange12(suites.SECP256R1, 0x0403, 1.5, b"")  # type: ignore[arg-type]
    # Nothing was written: the pipes are in step, the select still goes with the next call.
    assert ks.server_key_exchange12(suites.SECP256R1, 0x0403, b"c", b"s") == (b"pub", b"sig")


def test_child_keeps_only_its_pipes(tmp_path):
    extra = os.open(os.devnull, os.O_RDONLY)   # an fd the key process must not inherit
    try:
        ks, pid = start_fake(tmp_path)
    finally:
        os.close(extra)
    try:
        ks.ready()
        _calls, fds, _ = state(ks)
        # 0, 1 (/dev/null), 2 (log), the two pipe ends, and listdir's own transient fd.
        assert len(fds) == 6 and fds[:3] == [0, 1, 2]
    finally:
        ks.close()


def test_jail_is_handed_to_the_service(tmp_path):
    ran = []
    ks, pid = start_fake(tmp_path, jail=lambda: ran.append(1))
    try:
        ks.ready()
        assert state(ks)[2] is True
    finally:
        ks.close()


def test_close_reaps_a_clean_exit(fake_ks):
    ks, pid = fake_ks
    ks.load(NAMES)
    status = ks.close()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    with pytest.raises(KeyProcessDied):
        ks.select(0)
        ks.server_key_exchange12(suites.SECP256R1, 0x0403, b"c", b"s")


# --- a dying key process -------------------------------------------------------------------------

def test_killed_mid_call_raises_promptly(fake_ks):
    ks, pid = fake_ks
    killer = threading.Timer(0.2, os.kill, (pid, signal.SIGKILL))
    killer.start()
    t0 = time.monotonic()
    ks.load(NAMES)
    ks.select(0)
    with pytest.raises(KeyProcessDied):
        # scheme 3: sleeps 30 s in the key process
        ks.server_key_exchange12(suites.SECP256R1, 3, b"c", b"s")
    assert time.monotonic() - t0 < 5
    killer.join()
    with pytest.raises(KeyProcessDied):    # and stays dead
        ks.seal([(23, b"x")])
    assert not isinstance(KeyProcessDied("x"), KeyServiceError)


def test_exit_mid_call(fake_ks):
    ks, pid = fake_ks
    ks.load(NAMES)
    ks.select(0)
    with pytest.raises(KeyProcessDied):
        ks.server_key_exchange12(suites.SECP256R1, 5, b"c", b"s")     # exits with 3
    status = ks.close()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 3


def test_dead_before_call(fake_ks):
    ks, pid = fake_ks
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    ks.pid = None
    with pytest.raises(KeyProcessDied):    # EPIPE on the request, or EOF on the answer
        ks.seal([(23, b"x" * 100000)])


def test_misbehaving_key_process():
    # A "key process" that answers garbage: a thread on the other ends of the pipes.
    for answer in (b"\x00\x00\x00\x01\x80X",                 # malformed value
                   ipc.encode(ipc.OP_OK, 5),                  # wrong type for seal()
                   ipc.encode(0x42, b""),                     # unknown answer opcode
                   ipc.encode(ipc.OP_ERR, ("80", "x"))):      # malformed error answer
        req_r, req_w = os.pipe()
        ans_r, ans_w = os.pipe()
        ks = PipeKeyService(ans_r, req_w)

        def other_side():
            ipc.FrameReader(req_r).read()
            os.write(ans_w, answer)
        t = threading.Thread(target=other_side)
        t.start()
        with pytest.raises(KeyProcessDied):
            ks.seal([(23, b"")])
        t.join()
        ks.close()
        os.close(req_r)
        os.close(ans_w)


def _setuid_jail() -> None:
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)


@pytest.mark.parametrize("jailed", [False, True])
def test_key_process_dies_with_the_network_process(jailed):
    """The network process is SIGKILLed while a grandchild still holds its request pipe (so no
    EOF reaches the key process): PR_SET_PDEATHSIG must kill the key process, also after a
    jail that changed its uid (which clears PR_SET_PDEATHSIG; start_key_process re-arms it)."""
    if jailed and os.geteuid() != 0:
        pytest.skip("needs root to change uid")
    r, w = os.pipe()
    net = os.fork()
    if net == 0:
        try:
            ks, kpid = start_key_process(_setuid_jail if jailed else None, FILES,
                                         factory=lambda jail, files: Fake(jail, files),
                                         log=None)
            if jailed:
                ks.load(NAMES)       # the fake jails in load(), as LocalKeyService does
            holder = os.fork()
            if holder == 0:              # holds ks.wfd open: no EOF for the key process
                time.sleep(30)
                os._exit(0)
            os.write(w, kpid.to_bytes(4, "big") + holder.to_bytes(4, "big"))
            time.sleep(30)
        finally:
            os._exit(0)
    got = b""
    while len(got) < 8:
        got += os.read(r, 8 - len(got))
    kpid, holder = int.from_bytes(got[:4], "big"), int.from_bytes(got[4:], "big")
    os.close(r)
    os.close(w)
    try:
        os.kill(net, signal.SIGKILL)
        os.waitpid(net, 0)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _alive(kpid):
            time.sleep(0.01)
        assert not _alive(kpid)
    finally:
        os.kill(holder, signal.SIGKILL)   # the orphaned pipe holder, started by this test


@pytest.mark.parametrize("network_jailed", [False, True])
def test_key_process_still_starting_ends_with_its_network_process(network_jailed, tmp_path):
    """The key process is still starting (here a factory that sleeps, standing for imports
    slowed by load) when its network process exits. A jailed network process (another uid)
    cannot signal it, and the kernel drops PR_SET_PDEATHSIG for the same reason (the signal
    is sent with the dying parent's credentials): the key process must notice the end of its
    request pipe itself, at once, not after its start-up."""
    if network_jailed and os.geteuid() != 0:
        pytest.skip("needs root to change uid")
    started = tmp_path / "started"
    r, w = os.pipe()
    net = os.fork()
    if net == 0:
        try:
            def slow_start(jail, files):
                started.write_text("")
                time.sleep(60)
                return Fake(jail, files)
            _ks, kpid = start_key_process(None, FILES, factory=slow_start, log=None)
            os.write(w, kpid.to_bytes(4, "big"))
            while not started.exists():      # the key process is past its first checks
                time.sleep(0.01)
            if network_jailed:
                _setuid_jail()
        finally:
            os._exit(0)
    got = b""
    while len(got) < 4:
        got += os.read(r, 4 - len(got))
    kpid = int.from_bytes(got, "big")
    os.close(r)
    os.close(w)
    os.waitpid(net, 0)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(kpid):
            time.sleep(0.01)
        assert not _alive(kpid)
    finally:
        if _alive(kpid):
            os.kill(kpid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return st not in ("Z", "X")


# --- serve() in a thread: the request side's checks -------------------------------------------

class ServeHarness:
    def __init__(self, service, files=FILES) -> None:
        self.order = CallOrder(files.anchor is not None)
        self.req_r, self.req_w = os.pipe()
        self.ans_r, self.ans_w = os.pipe()
        self.lines: list[str] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(service,))
        self.thread.start()
        self.reader = ipc.FrameReader(self.ans_r)

    def _run(self, service) -> None:
        try:
            key_service.serve(self.req_r, self.ans_w, service, self.order, self.lines.append)
        except BaseException as e:
            self.error = e

    def ask(self, opcode, args):
        ipc.write_frame(self.req_w, opcode, args)
        return self.reader.read()

    def finish(self) -> BaseException | None:
        os.close(self.req_w)
        self.thread.join(5)
        for fd in (self.req_r, self.ans_r, self.ans_w):
            os.close(fd)
        return self.error


@pytest.mark.parametrize("name,args", [
    ("load", ("a",)), ("load", ([b"a"],)), ("load", (["a"], 1)), ("select", (None,)),
    ("select", (True,)), ("read_anchor", ("/ca.pem",)), ("ready", (1,)),
    ("derive12", (1, 2, b"", b"", b"", None, 1)), ("seal", ([(23, "x")],)),
    ("seal", ([[23, b"x"]],)), ("seal", ((23, b"x"),)), ("open", ([1],)), ("activate", ()),
    ("activate", (2,)), ("key_update", (-1,)),
])
def test_bad_arguments_end_the_loop_without_an_answer(name, args):
    h = ServeHarness(Fake())
    ipc.write_frame(h.req_w, ipc.OPCODES[name], args)
    h.thread.join(5)
    assert not h.thread.is_alive()
    assert _queued(h.ans_r) == 0      # no answer, not even a partial one
    error = h.finish()
    assert isinstance(error, key_service.HostileRequest)
    assert f"bad arguments to {name}" in str(error)


def _queued(fd: int) -> int:
    import fcntl
    import termios
    return int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"), "little")


def test_internal_error_logs_one_line_without_the_message():
    h = ServeHarness(Fake())
    try:
        assert h.ask(ipc.OPCODES["load"], (NAMES,))[0] == ipc.OP_OK
        assert h.ask(ipc.OPCODES["select"], (0,)) == (ipc.OP_OK, None)
        assert h.ask(ipc.OPCODES["server_key_exchange12"], (23, 2, b"c", b"s")) == (
            ipc.OP_ERR, (suites.INTERNAL_ERROR, key_service.GENERIC_REASON))
    finally:
        h.finish()
    assert len(h.lines) == 1 and "\n" not in h.lines[0]
    assert "server_key_exchange12" in h.lines[0] and "ValueError" in h.lines[0]
    assert "secret" not in "".join(h.lines)


@pytest.mark.parametrize("opcode", [0, ipc.OP_OK, ipc.OP_ERR, len(ipc.METHODS) + 1, 255])
def test_unknown_opcode_ends_the_loop(opcode):
    h = ServeHarness(Fake())
    ipc.write_frame(h.req_w, opcode, ())
    h.thread.join(5)
    assert isinstance(h.finish(), ipc.IpcError)


@pytest.mark.parametrize("frame", [
    b"\x00\x00\x00\x02\x03X",                        # malformed body
    ipc.encode(ipc.OPCODES["select"], [1]),           # arguments not a tuple
    b"\x00\x00\x00\x10\x03N",                        # cut short, then EOF
    b"\xff\xff\xff\xff\x03",                         # over the frame limit
])
def test_malformed_request_ends_the_loop(frame):
    h = ServeHarness(Fake())
    os.write(h.req_w, frame)
    os.close(h.req_w)
    h.thread.join(5)
    h.req_w = os.open(os.devnull, os.O_WRONLY)   # for finish() to close
    assert isinstance(h.finish(), ipc.IpcError)


def test_no_getattr_on_names():
    # The table is the calls the engine makes, nothing else.
    assert sorted(entry[0] for entry in key_service.HANDLERS.values()) == sorted(ipc.METHODS)
    for gone in ("sign", "key_share", "derive13_handshake", "derive13_application"):
        assert gone not in ipc.METHODS


# --- the real LocalKeyService in the forked key process -----------------------------------------

def _local_available() -> bool:
    try:
        import tlswrapper.keys.local  # noqa: F401
    except ImportError:
        return False
    return True


def _make_pem(directory: str) -> tuple[str, bytes, object]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keyprocess.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(key, hashes.SHA256()))
    der = cert.public_bytes(serialization.Encoding.DER)
    pem = (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
           + cert.public_bytes(serialization.Encoding.PEM))
    path = os.path.join(directory, "server.pem")
    with open(path, "wb") as f:
        f.write(pem)
    return path, der, cert


def _test_jail(empty_dir: str):
    """A jail for tests: chroot into an empty directory when root, and RLIMIT_NOFILE 0 in any
    case, so that an import or file open after the jail fails as it would in production."""
    def jail() -> None:
        if os.geteuid() == 0:
            os.chroot(empty_dir)
            os.chdir("/")
        resource.setrlimit(resource.RLIMIT_NOFILE, (0, 0))
    return jail


def test_real_local_key_service(tmp_path):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    from tlswrapper.tls import messages

    path, der, cert = _make_pem(str(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    ks, pid = start_key_process(_test_jail(str(empty)), KeyFiles([("file", path)]))
    try:
        cands = ks.load([path])
        assert cands == [Candidate((der,), suites.KEY_EC_P256, 0)]
        ks.select(0)
        # The key process still works after the jail (nothing to import any more): it
        # makes its own share and signs the parameters holding it.
        public, sig = ks.server_key_exchange12(suites.X25519, suites.ECDSA_SECP256R1_SHA256,
                                               b"c" * 32, b"s" * 32)
        assert len(public) == 32
        cert.public_key().verify(
            sig, b"c" * 32 + b"s" * 32 + messages.ecdhe_params(suites.X25519, public),
            ec.ECDSA(hashes.SHA256()))
        with pytest.raises(KeyServiceError) as e:
            # low-order point: no shared secret
            ks.derive12_finished(suites.TLS12, 0xC02B, b"\x00" * 32, b"c" * 32, b"s" * 32,
                                 [b"ch"], True, False)
        assert e.value.alert == suites.ILLEGAL_PARAMETER
    finally:
        status = ks.close()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


@pytest.mark.skipif(not _local_available(), reason="tlswrapper.keys.local not written yet")
def test_real_key_process_refused_select_then_the_next_key(tmp_path):
    """The key process with LocalKeyService: a deferred select of a key that does not match
    its certificate comes back as KeyRefused from the flight call sent with it (which failed
    for want of a key, doing nothing); the next select and flight sign with the right key."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from tlswrapper.tls import messages

    path, _der, cert = _make_pem(str(tmp_path))
    with open(path, "rb") as f:
        chain = f.read().split(b"-----END PRIVATE KEY-----\n", 1)[1]
    wrong = os.path.join(str(tmp_path), "wrong.pem")
    with open(wrong, "wb") as f:
        f.write(ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()) + chain)
    ks, _pid = start_key_process(None, KeyFiles([("file", wrong), ("file", path)]))
    try:
        assert len(ks.load([wrong, path])) == 2
        ks.select(0)
        with pytest.raises(KeyRefused) as e:
            ks.server_key_exchange12(suites.X25519, suites.ECDSA_SECP256R1_SHA256, b"c" * 32,
                                     b"s" * 32)
        assert "key does not match certificate" in e.value.reason
        ks.select(1)
        public, sig = ks.server_key_exchange12(suites.X25519, suites.ECDSA_SECP256R1_SHA256,
                                               b"c" * 32, b"s" * 32)
        cert.public_key().verify(
            sig, b"c" * 32 + b"s" * 32 + messages.ecdhe_params(suites.X25519, public),
            ec.ECDSA(hashes.SHA256()))
    finally:
        status = ks.close()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


# --- measurements (run as a script) ------------------------------------------------------------

def _bench(label, fn, n):
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    dt = (time.perf_counter() - t0) / n
    print(f"{label:58s} {dt * 1e6:9.1f} us")
    return dt


def main() -> None:
    import tempfile
    records = [(23, os.urandom(16384)) for _ in range(16)]
    with tempfile.TemporaryDirectory() as tmp:
        ks, _ = start_fake(tmp)
        to_tls13(ks)
        fake = Fake()
        _bench("trivial call (fake seal of nothing), pipe", lambda: ks.seal([]), 20000)
        _bench("trivial call (fake seal of nothing), in-process", lambda: fake.seal([]), 20000)
        _bench("encode+decode only, 16 x 16 KiB seal request",
               lambda: ipc.decode(ipc.encode(12, (records,))), 500)
        _bench("seal 16 x 16 KiB, fake (join only), pipe", lambda: ks.seal(records), 500)
        _bench("seal 16 x 16 KiB, fake (join only), in-process", lambda: fake.seal(records),
               500)
        ks.close()


if __name__ == "__main__":
    sys.exit(main())


def test_ready_answers_once_the_key_process_serves(fake_ks):
    """Not a KeyService method (the service is not called): a listener's spare waits for it."""
    ks, _pid = fake_ks
    assert ks.ready() is None
    with pytest.raises(KeyProcessDied):      # once per key process: a second ends it
        ks.ready()
