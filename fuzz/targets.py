"""The fuzz targets: one function per attack surface, bytes in, and nothing may escape but the
surface's own error type (DecodeError, ProxyError, IpcError; the engine: nothing at all).
Anything else (an IndexError, a ValueError from a builder, a broken invariant, which the
targets raise as AssertionError) is a bug that the fuzzer reports as a crash.

Rule: no atheris here. fuzz/run.py drives these under atheris; tests/test_fuzz_corpus.py
replays fuzz/corpus/<target>/* through them in CI, so a fixed bug stays fixed."""

from __future__ import annotations

import datetime
import importlib
import os
import sys
import tempfile
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from tlswrapper import ipc
from tlswrapper.keys import protect
from tlswrapper.keys import service as key_service
from tlswrapper.keys.files import KeyFiles
from tlswrapper.keys.local import LocalKeyService
from tlswrapper.keys.order import CallOrder
from tlswrapper.net import proxyproto
from tlswrapper.tls import messages as m
from tlswrapper.tls import record, suites
from tlswrapper.tls.config import ServerConfig
from tlswrapper.tls.events import ClientHelloReceived, ConnectionFailed, HandshakeComplete
from tlswrapper.tls.server import ServerConnection
from tlswrapper.tls.wire import DecodeError, Reader

# libFuzzer's -max_len per target: the engine's flights and the largest ClientHello need room.
MAX_LEN = {"messages": 8192, "wire": 4096, "record": 40000, "protect": 20000,
           "engine12": 40000, "engine13": 40000, "proxy": 4096, "ipc": 16384,
           "connected12": 20000, "connected13": 20000, "keyservice": 16384}

# --- every parse_* of tls/messages.py ---------------------------------------------------------

# Parsers that take more than the bytes: the extra arguments, chosen by one input byte.
_EXTRA_ARGS: dict[str, Callable[[int], tuple]] = {
    "parse_server_key_exchange": lambda b: (bool(b & 1),),
    "parse_certificate_request12": lambda b: (bool(b & 1),),
    "parse_finished": lambda b: ((12, 32, 48, 0)[b & 3],),
    "parse_empty": lambda b: ("ServerHelloDone",),
    "parse_extensions": lambda b: ("extensions",),
}
PARSERS = tuple(sorted((name, getattr(m, name)) for name in dir(m)
                       if name.startswith("parse_") and callable(getattr(m, name))))


def fuzz_messages(data: bytes) -> None:
    """One byte picks the parser (every parse_* of messages.py), one its extra argument,
    the rest is the body."""
    if len(data) < 2:
        return
    name, parse = PARSERS[data[0] % len(PARSERS)]
    extra = _EXTRA_ARGS.get(name, lambda b: ())(data[1])
    try:
        parse(data[2:], *extra)
    except DecodeError as e:
        assert e.alert in suites.ALERT_NAMES, (name, e.alert)


# --- tls/wire.py: the Reader, driven by a small program -------------------------------------

_OPS = ("u8", "u16", "u24", "u32", "vec8", "vec16", "vec24", "block8", "block16", "block24",
        "raw", "rest", "expect_end", "at_end")


def fuzz_wire(data: bytes) -> None:
    """data[0] = n, then n op bytes, then the buffer the ops read. Blocks descend into the
    sub-reader, which must stay within its parent's bounds."""
    if not data:
        return
    n = data[0]
    ops, buf = data[1:1 + n], data[1 + n:]
    stack = [Reader(buf)]
    for op in ops:
        r = stack[-1]
        before = r.remaining()
        name = _OPS[op % len(_OPS)]
        try:
            if name == "raw":
                got = r.raw(op >> 4)
            elif name.startswith("block"):
                sub = getattr(r, name)()
                assert sub.remaining() <= before, "sub-reader beyond its parent"
                stack.append(sub)
                continue
            elif name == "expect_end":
                r.expect_end("fuzz")
                if len(stack) > 1:
                    stack.pop()
                continue
            else:
                got = getattr(r, name)()
        except DecodeError:
            # Parsing ends at the first error (a vector's length may have been consumed
            # before its body was found short): the Reader is not used after it.
            assert r.remaining() <= before
            return
        assert 0 <= r.remaining() <= before
        if isinstance(got, int) and not isinstance(got, bool):
            width = {"u8": 1, "u16": 2, "u24": 3, "u32": 4}[name]
            assert 0 <= got < 1 << (8 * width)
            assert before - r.remaining() == width
        elif isinstance(got, bytes):
            assert before - r.remaining() >= len(got)


# --- tls/record.py: record framing and handshake reassembly --------------------------------

def _pieces(data: bytes) -> tuple[list[bytes], bytes]:
    """data[0] sets the size of the pieces the rest is fed in (1 .. 17086 bytes)."""
    if not data:
        return [], b""
    size = 1 + data[0] * 67
    body = data[1:]
    return [body[i:i + size] for i in range(0, len(body), size)], body


def fuzz_record(data: bytes) -> None:
    pieces, _ = _pieces(data)
    reader = record.RecordReader()
    hs = record.HandshakeReassembler()
    fed = 0
    try:
        for piece in pieces:
            reader.feed(piece)
            fed += len(piece)
            while True:
                got = reader.next_record()
                if got is None:
                    break
                content_type, rec = got
                assert content_type == rec[0] and len(rec) - 5 <= reader.limit
                if content_type == suites.HANDSHAKE:
                    hs.feed(rec[5:])
                    while (msg := hs.next_message()) is not None:
                        msg_type, body, whole = msg
                        assert whole[0] == msg_type and whole[4:] == body
                        limit = suites.MAX_CLIENT_HELLO if msg_type == suites.HS_CLIENT_HELLO \
                            else suites.MAX_HANDSHAKE_MESSAGE
                        assert len(body) <= limit
            # Bounded buffers: a partial message and at most one record's fragment.
            assert len(hs._buf) <= 4 + suites.MAX_CLIENT_HELLO + suites.MAX_PLAINTEXT
    except DecodeError as e:
        assert e.alert in suites.ALERT_NAMES


# --- keys/protect.py: opening records the client made up ------------------------------------

_PROTECTIONS = (
    (suites.TLS13, 0x1301), (suites.TLS13, 0x1302), (suites.TLS13, 0x1303),
    (suites.TLS12, 0xC02B), (suites.TLS12, 0xCCA9),
    (suites.TLS12, 0xC013), (suites.TLS12, 0xC027), (suites.TLS12, 0xC024),
    (suites.TLS11, 0xC00A), (suites.TLS10, 0xC009),
)


def _protection(selector: int) -> protect.RecordProtection:
    version, code = _PROTECTIONS[(selector >> 1) % len(_PROTECTIONS)]
    suite = suites.SUITES[code]
    etm = bool(selector & 1) and suite.mac is not None
    # Fixed keys: the fuzzer cannot forge a MAC anyway; what matters is that no length,
    # padding or header it makes up escapes as anything but an alert.
    return protect.new_protection(version, suite, bytes(range(suite.key_len)),
                                  bytes(suite.iv_len), bytes(suite.mac_len), etm)


def fuzz_protect(data: bytes) -> None:
    """data[0] picks the protection (AEAD 1.3/1.2, CBC MtE/EtM in 1.0-1.2); the rest is cut
    into records by their own headers (a short or lying header is a record too)."""
    if not data:
        return
    prot = _protection(data[0])
    body = data[1:]
    recs, pos = [], 0
    while pos < len(body) and len(recs) < 8:
        length = int.from_bytes(body[pos + 3:pos + 5], "big") if pos + 5 <= len(body) else 0
        recs.append(bytes(body[pos:pos + 5 + length]))
        pos += 5 + length
    if not recs:
        return
    results, alert, reason = prot.open(recs)
    assert len(results) <= len(recs)
    if alert:
        assert alert in suites.ALERT_NAMES and reason
        assert alert in (suites.BAD_RECORD_MAC, suites.RECORD_OVERFLOW, suites.DECODE_ERROR,
                         suites.UNEXPECTED_MESSAGE, suites.INTERNAL_ERROR), alert
    for content_type, plaintext in results:
        assert len(plaintext) <= suites.MAX_PLAINTEXT and 0 <= content_type < 256


# --- the engine, fed whole client flights ----------------------------------------------------

def _self_signed(directory: str, name: str, key) -> str:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(key, hashes.SHA256()))
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return path


_CERTS: list[str] = []


def _cert_paths() -> list[str]:
    if not _CERTS:
        directory = tempfile.mkdtemp(prefix="tlswrapper-fuzz-")
        _CERTS.append(_self_signed(directory, "ecdsa.pem", ec.generate_private_key(
            ec.SECP256R1())))
        _CERTS.append(_self_signed(directory, "rsa.pem", rsa.generate_private_key(65537, 2048)))
    return _CERTS


ALL_GROUPS = tuple(suites.GROUP_NAMES)
CONFIG_13 = ServerConfig(groups=ALL_GROUPS)
CONFIG_12 = ServerConfig(version_min=suites.TLS10, version_max=suites.TLS12,
                         ciphers=suites.CIPHER_NAMES, groups=ALL_GROUPS)


def _check_output(out: bytes) -> None:
    pos = 0
    while pos < len(out):
        assert pos + 5 <= len(out), "cut record header in our output"
        assert out[pos] in (suites.CHANGE_CIPHER_SPEC, suites.ALERT, suites.HANDSHAKE,
                            suites.APPLICATION_DATA) and out[pos + 1] == 3
        pos += 5 + int.from_bytes(out[pos + 3:pos + 5], "big")
    assert pos == len(out), "cut record in our output"


def _engine(data: bytes, config: ServerConfig) -> None:
    pieces, _ = _pieces(data)
    keys = LocalKeyService()
    candidates = keys.load(_cert_paths())
    conn = ServerConnection(config, keys)
    failures = 0
    for piece in pieces + [b""]:
        events = conn.receive(piece)
        while events:
            event = events.pop(0)
            if isinstance(event, ClientHelloReceived):
                events.extend(conn.choose_certificate(candidates))
            elif isinstance(event, ConnectionFailed):
                failures += 1
                assert event.alert is None or event.alert in suites.ALERT_NAMES
            elif isinstance(event, HandshakeComplete):
                conn.send(b"hello")
        _check_output(conn.outgoing())
        assert failures <= 1, "two ConnectionFailed events"
        if conn.failed:
            assert conn.receive(b"\x16\x03\x03\x00\x01\x01") == [], "events after failing"
    conn.close()
    _check_output(conn.outgoing())


def fuzz_engine12(data: bytes) -> None:
    """ServerConnection (TLS 1.0-1.2, every suite, CBC included) with the in-process
    LocalKeyService; data[0] sets the piece size the client's bytes come in."""
    _engine(data, CONFIG_12)


def fuzz_engine13(data: bytes) -> None:
    """ServerConnection (the defaults: TLS 1.2-1.3, every group) with LocalKeyService."""
    _engine(data, CONFIG_13)


# --- the engine once connected: records sealed under the client's real keys --------------

def _test_clients():
    """tests/support/ holds the in-test TLS clients (their own key schedules, from the RFCs):
    the fuzzer completes a real handshake with them, then seals what it makes up."""
    tests = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests",
                         "support")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import hostile
    import tls12client
    import tls13client
    return hostile, tls12client, tls13client


def _sealed_records(data: bytes) -> list[tuple[int, bytes]]:
    """data as (content type, plaintext) pairs: a type byte, a u16 length (cut to what is
    left), the plaintext; at most 64 records."""
    out, pos = [], 0
    while pos + 3 <= len(data) and len(out) < 64:
        n = int.from_bytes(data[pos + 1:pos + 3], "big")
        out.append((data[pos], bytes(data[pos + 3:pos + 3 + n])))
        pos += 3 + n
    return out


def _drive_connected(conn: ServerConnection, seal: Callable[[int, bytes], bytes],
                     records: list[tuple[int, bytes]]) -> None:
    failures = 0
    for content_type, plaintext in records + [(-1, b"")]:
        events = conn.receive(seal(content_type, plaintext) if content_type >= 0 else b"")
        for event in events:
            assert not isinstance(event, (ClientHelloReceived, HandshakeComplete)), event
            if isinstance(event, ConnectionFailed):
                failures += 1
                assert event.alert is None or event.alert in suites.ALERT_NAMES
        _check_output(conn.outgoing())
        assert failures <= 1, "two ConnectionFailed events"
        if conn.failed:
            break
    conn.close()
    _check_output(conn.outgoing())


def fuzz_connected13(data: bytes) -> None:
    """A real TLS 1.3 handshake (tests/support/tls13client.py), then made-up records sealed under
    the client's application keys: KeyUpdate floods, alerts, empty records, any inner type. A
    KeyUpdate the client sends switches its keys, as a real client's would."""
    _, _, tls13client = _test_clients()
    keys = LocalKeyService()
    conn = ServerConnection(CONFIG_13, keys)
    client = tls13client.TLS13Client(groups=(suites.X25519,), cipher_suites=(0x1301,))
    wire = tls13client.Wire(conn, client, keys.load(_cert_paths()))
    wire.handshake()
    assert client.connected and conn.handshake_done

    def seal(content_type: int, plaintext: bytes) -> bytes:
        client.send_protected(content_type, plaintext, padding_len=content_type >> 7)
        if content_type == suites.HANDSHAKE and plaintext[:4] == b"\x18\x00\x00\x01":
            client.write = client.write.next_generation()
        return client.data_to_send()

    _drive_connected(conn, seal, _sealed_records(data))


def fuzz_connected12(data: bytes) -> None:
    """A real TLS 1.2 handshake (tests/support/tls12client.py, AES-128-GCM, EMS), then made-up
    records sealed under the client's keys: renegotiation ClientHellos, alerts, CCS..."""
    hostile, tls12client, _ = _test_clients()
    keys = LocalKeyService()
    candidates = keys.load(_cert_paths())
    conn = ServerConnection(CONFIG_13, keys)
    client = tls12client.TLS12Client(hostile.client_hello(
        tls13=False, cipher_suites=tls12client.SUITES,
        extra=(m.Extension(suites.EXT_EXTENDED_MASTER_SECRET, b""),)))
    data_out = hostile.records(client.hello)
    for _ in range(10):
        if not data_out:
            break
        events = conn.receive(data_out)
        while events:
            event = events.pop(0)
            if isinstance(event, ClientHelloReceived):
                events += conn.choose_certificate(candidates)
        client.receive(conn.outgoing())
        data_out = client.data_to_send()
    assert client.connected and conn.handshake_done
    _drive_connected(conn, lambda t, p: client.write.seal(t, p), _sealed_records(data))


# --- proxyproto.py (v1) and proxyproto2.py (v2): the PROXY header ----------------------------

def _proxy_parsers() -> tuple:
    """Every public parse* function of the PROXY modules (v2's is found when it exists)."""
    found = []
    for module_name in ("proxyproto", "proxyproto2"):
        try:
            module = importlib.import_module(f"tlswrapper.{module_name}")
        except ImportError:
            continue
        found += [(f"{module_name}.{n}", getattr(module, n)) for n in sorted(dir(module))
                  if n.startswith("parse") and callable(getattr(module, n))]
    return tuple(found)


PROXY_PARSERS = _proxy_parsers()


def fuzz_proxy(data: bytes) -> None:
    """The public entry points: ProxyReader(version 0, 1 or 2).feed in pieces of at most
    wanted() bytes, as the relay reads, and every parse* function on the whole input.
    data[0]: the version (mod 3) and the piece size."""
    if not data:
        return
    version, size, body = data[0] % 3, 1 + (data[0] // 3) * 5, data[1:]
    try:
        reader = proxyproto.ProxyReader(version)
    except TypeError:                  # a reader without versions (v1 only)
        reader = proxyproto.ProxyReader()
    pos = 0
    try:
        while pos < len(body):
            wanted = reader.wanted() if hasattr(reader, "wanted") else size
            assert wanted >= 1, "the reader wants no byte before its header is complete"
            piece = body[pos:pos + min(size, wanted)]
            pos += len(piece)
            header = reader.feed(piece)
            if header is not None:
                header.environment()
                assert reader.rest == b"" or body[pos - len(reader.rest):pos] == reader.rest
                break
    except proxyproto.ProxyError:
        pass
    for _name, parse in PROXY_PARSERS:
        try:
            parse(body)
        except proxyproto.ProxyError:
            pass


# --- ipc.py: the frame decoder ----------------------------------------------------------------

def fuzz_ipc(data: bytes) -> None:
    """ipc.decode on the whole input, and FrameReader over a pipe holding it."""
    try:
        ipc.decode(data)
    except ipc.IpcError:
        pass
    r, w = os.pipe()
    try:
        os.write(w, data)     # MAX_LEN["ipc"] fits a pipe's buffer
        os.close(w)
        w = -1
        reader = ipc.FrameReader(r)
        for _ in range(len(data) + 1):
            try:
                if reader.read() is None:
                    break
            except ipc.IpcError:
                break
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


# --- keys/service.py: the key process against a hostile network process -------------------

# Names the harness turns into the configured certificate files, so that a mutated load can
# name them; every other name stays as the fuzzer wrote it (and ends the key process).
CERT_NAMES = ("cert0", "cert1")


def fuzz_keyservice(data: bytes) -> None:
    """Request frames, one after another, to the key process's request handling (the size
    limits, argument checks and handshake order of keys/service.py and keys/order.py) in front
    of the real LocalKeyService configured with two certificate files. A frame the key process
    refuses (IpcError, HostileRequest included) ends the run, as it ends the key process;
    anything else escaping is a bug, and every answer must be one well-formed frame."""
    paths = _cert_paths()
    service = LocalKeyService(files=KeyFiles([("file", p) for p in paths]))
    order = CallOrder(anchor_configured=False)
    pos = 0
    while len(data) - pos >= ipc.HEADER_SIZE:
        n, opcode = ipc.HEADER.unpack_from(data, pos)
        if n > key_service.REQUEST_LIMITS.get(opcode, -1) or n > len(data) - pos - 5:
            return      # refused from its header, or cut short: the key process ends
        frame = data[pos:pos + ipc.HEADER_SIZE + n]
        pos += ipc.HEADER_SIZE + n
        try:
            opcode, args = ipc.decode(frame)
        except ipc.IpcError:
            return
        if opcode == ipc.OPCODES["load"] and type(args) is tuple and len(args) == 1 \
                and type(args[0]) is list:
            args = ([paths[CERT_NAMES.index(a)] if a in CERT_NAMES else a
                     for a in args[0]],)
        try:
            answer = key_service.answer((opcode, args), service, order, None)
        except ipc.IpcError:
            return
        op, _value = ipc.decode(b"".join(bytes(p) for p in answer))
        assert op in (ipc.OP_OK, ipc.OP_ERR)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "messages": fuzz_messages, "wire": fuzz_wire, "record": fuzz_record,
    "protect": fuzz_protect, "engine12": fuzz_engine12, "engine13": fuzz_engine13,
    "connected12": fuzz_connected12, "connected13": fuzz_connected13,
    "proxy": fuzz_proxy, "ipc": fuzz_ipc, "keyservice": fuzz_keyservice,
}
