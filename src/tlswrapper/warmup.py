"""Warm-ups: the handshake's code run once ahead, before a client waits for it.

Why: every process of a connection is a fork of the listener, and the first write to each
shared page (Python writes reference counts on every object it uses, and fills caches on
first use) copies that page: 3-10 us each on this VM, about a thousand per process.
- network_side(): a spare parses a made-up ClientHello with a throw-away engine before its
  client comes (the listener runs it once too, so that its caches are shared); no key service
  is involved.
- key_side(): a spare's key process, before its first request, replays the key service calls
  of a whole TLS handshake on a throw-away certificate, so that the pages its real handshake
  touches are mostly copied already.
- record_key_side(): the listener, at start, gets those calls from a short-lived helper
  process that makes the throw-away certificate and key, writes them to a memfd, and runs
  complete handshakes (the engine with an in-process key service against Python's ssl client,
  in memory): the calls' arguments are public values (client key shares, transcripts, records).

Rule: no file is read and no user key is touched. MUST 1 holds for the throw-away material
too: the listener, whose memory every network process inherits, never holds the throw-away
key nor any secret of those handshakes (they live in the helper, and in each key process's
replay); it holds only the memfd's descriptor, which a spare closes as soon as its key
process is forked.
"""

from __future__ import annotations

import marshal
import os

from tlswrapper.tls import messages as m
from tlswrapper.tls import suites
from tlswrapper.tls.events import ClientHelloReceived
from tlswrapper.tls.record import plaintext_records
from tlswrapper.tls.server import ServerConnection
from tlswrapper.tls.wire import handshake_message


class _NoKeys:
    """A KeyService that must not be used: the warm-up ends at ClientHelloReceived."""

    def __getattr__(self, name: str):
        raise RuntimeError(f"warm-up asked the key service for {name}")


def sample_client_hello() -> bytes:
    """A ClientHello record as a current client sends it (TLS 1.3 and 1.2, SNI, x25519 share);
    the key share is random bytes, never used."""
    extensions = (
        m.Extension(suites.EXT_SERVER_NAME, m.build_server_name("warm-up.invalid")),
        m.Extension(suites.EXT_SUPPORTED_VERSIONS,
                    m.build_supported_versions_client((suites.TLS13, suites.TLS12))),
        m.Extension(suites.EXT_SUPPORTED_GROUPS,
                    m.build_supported_groups((suites.X25519, suites.SECP256R1))),
        m.Extension(suites.EXT_SIGNATURE_ALGORITHMS, m.build_signature_algorithms(
            (suites.ECDSA_SECP256R1_SHA256, suites.RSA_PSS_RSAE_SHA256))),
        m.Extension(suites.EXT_KEY_SHARE,
                    m.build_key_share_client(((suites.X25519, os.urandom(32)),))),
        m.Extension(suites.EXT_EC_POINT_FORMATS, m.build_ec_point_formats(b"\x00")),
        m.Extension(suites.EXT_EXTENDED_MASTER_SECRET, b""),
    )
    hello = m.ClientHello(suites.TLS12, os.urandom(32), os.urandom(32),
                          (0x1303, 0x1301, 0xCCA9, 0xC02B), b"\x00", extensions)
    body = handshake_message(suites.HS_CLIENT_HELLO, m.build_client_hello(hello))
    return plaintext_records(suites.HANDSHAKE, 0x0301, body)


def network_side(config) -> bool:
    """Parse a sample ClientHello with a throw-away engine; True if it got as far as the
    real one would (ClientHelloReceived). Never raises."""
    try:
        events = ServerConnection(config, _NoKeys()).receive(sample_client_hello())
    except Exception:   # noqa: BLE001 -- only a warm-up: the real connection reports its own
        return False
    return any(isinstance(e, ClientHelloReceived) for e in events)


# --------------------------------------------------------------------------- full handshakes

def _throwaway_pem() -> bytes:
    """A throw-away ECDSA P-256 key and self-signed certificate, as one PEM file."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "warm-up.invalid")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()) \
        + cert.public_bytes(serialization.Encoding.PEM)


MAX_RECORD = 1 << 20        # the recorded calls, marshalled (a handshake's are ~5 KiB)


class Replay:
    """What key_side() replays, set in the listener by record_key_side(): the key service
    calls of one TLS handshake (ECDSA, TLS 1.3 where the configuration allows it) and the
    memfd holding that handshake's throw-away certificate and key (-1: none)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple]] = []
        self.fd = -1

    def take_fd(self) -> int:
        """The memfd, now the caller's to close (-1: none); this object forgets it."""
        fd, self.fd = self.fd, -1
        return fd


# The listener's one Replay; its forks (spares, their key processes) inherit it.
REPLAY = Replay()


class _Recorder:
    """A key service that passes every call on and notes it (name, arguments)."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.calls: list[tuple[str, tuple]] = []

    def __getattr__(self, name: str):
        method = getattr(self._inner, name)

        def call(*args):
            self.calls.append((name, args))
            return method(*args)
        return call


def key_side() -> int:
    """In a key process that has not served anything yet (a listener's spare): replay the
    recorded calls on a throw-away in-process key service, so that the pages a handshake
    touches are copied now rather than while the client waits. It reads only the throw-away
    certificate (the memfd) and keeps nothing; the memfd is closed here. Needs no jail.
    Returns the calls that succeeded. Never raises."""
    fd = REPLAY.take_fd()
    if fd < 0:
        return 0
    done = 0
    try:
        from tlswrapper.keys.local import LocalKeyService
        keys = LocalKeyService()
        for name, args in REPLAY.calls:
            if name == "load":
                args = ([f"/proc/self/fd/{fd}"],)
            try:
                getattr(keys, name)(*args)
            except Exception:   # noqa: BLE001 -- e.g. a record not for these keys
                continue
            done += 1
    except Exception:   # noqa: BLE001 -- only a warm-up
        pass
    finally:
        os.close(fd)
    return done


def close_key_file() -> None:
    """In a network process: drop the descriptor of the throw-away certificate and key (its
    key process, forked already, has it)."""
    fd = REPLAY.take_fd()
    if fd >= 0:
        os.close(fd)


def _handshake(config, path: str, version, record: bool = False) -> bool:
    """One handshake, one line each way and close_notify, engine against ssl in memory.
    With `record`, the key service calls are kept for key_side()."""
    import ssl

    from tlswrapper.keys.local import LocalKeyService
    from tlswrapper.tls.events import ApplicationData, ConnectionFailed

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = version
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ctx.wrap_bio(to_client, to_server, server_hostname="warm-up.invalid")
    keys = _Recorder(LocalKeyService())
    conn = ServerConnection(config, keys)
    done = echoed = False
    for _ in range(16):
        try:
            if not done:
                client.do_handshake()
                done = True
                client.write(b"warm-up\n")
            elif not echoed:
                echoed = client.read(64) == b"warm-up\n"
                if echoed:
                    client.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            pass
        events = conn.receive(to_server.read()) if to_server.pending else []
        while events:
            event = events.pop(0)
            if isinstance(event, ClientHelloReceived):
                events.extend(conn.choose_certificate(keys.load([path])))
            elif isinstance(event, ApplicationData):
                conn.send(event.data)
            elif isinstance(event, ConnectionFailed):
                return False
        if echoed:
            conn.close()
        out = conn.outgoing()
        if out:
            to_client.write(out)
        elif echoed:
            if record:
                REPLAY.calls[:] = keys.calls
            return True
    return False


def full_handshakes(config, fd: int) -> int:
    """In the helper (or a test): make a throw-away ECDSA certificate and key, write them to
    `fd` (a memfd), and run the warm-up handshakes on it, TLS 1.3 then 1.2, recording the key
    service calls of the first that completes. Returns how many completed (a configuration
    without TLS 1.2, say, completes fewer)."""
    import ssl
    os.write(fd, _throwaway_pem())
    completed = 0
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        try:
            completed += _handshake(config, f"/proc/self/fd/{fd}", version, not REPLAY.calls)
        except Exception:   # noqa: BLE001 -- only a warm-up
            pass
    return completed


def record_key_side(config) -> int:
    """In the listener, at start: get the calls key_side() replays from a helper process
    (see the module docstring), and keep the memfd it wrote. Returns the number of calls
    recorded (0: no warm-up for key processes). Never raises."""
    try:
        fd = os.memfd_create("tlswrapper-warm-up", os.MFD_CLOEXEC)
    except (OSError, AttributeError):
        return 0
    data = b""
    try:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:   # the helper: nothing returns from here
            code = 1
            try:
                os.close(r)
                if full_handshakes(config, fd) and REPLAY.calls:
                    out = marshal.dumps(REPLAY.calls)
                    while out:
                        out = out[os.write(w, out):]
                    code = 0
            except BaseException:   # noqa: BLE001 -- only a warm-up
                pass
            os._exit(code)
        os.close(w)
        while len(data) <= MAX_RECORD and (chunk := os.read(r, 65536)):
            data += chunk
        os.close(r)
        _, status = os.waitpid(pid, 0)
        calls = marshal.loads(data) if status == 0 and len(data) <= MAX_RECORD else []
    except Exception:   # noqa: BLE001 -- only a warm-up
        calls = []
    if not calls:
        os.close(fd)
        return 0
    REPLAY.calls[:] = calls
    REPLAY.fd = fd
    return len(calls)
