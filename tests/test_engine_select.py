"""Certificate selection when a key does not match its certificate, with both KeyService
implementations (ARCHITECTURE MUST 2), TLS 1.2 and 1.3: the candidate is refused
(CertificateRefused) and the next fitting one is used. PipeKeyService defers select() into
the round trip of the server flight call that signs, so the refusal comes back from that call
(KeyRefused) rather than from select() itself; the engine's events are the same either way,
and a handshake costs one key-process round trip fewer than when select() had its own."""

from __future__ import annotations

import ssl

import pytest

from keyservices import key_service_kind, new_key_service  # noqa: F401 (autouse fixture)
from test_engine_12 import SslWire as Wire12
from tls13client import Options, TLS13Client, Wire
from tlswrapper import ipc
from tlswrapper.net.keyproxy import PipeKeyService
from tlswrapper.tls import suites as s
from tlswrapper.tls.config import ServerConfig
from tlswrapper.tls.events import (CertificateRefused, ConnectionFailed,
                                   HandshakeComplete)
from tlswrapper.tls.server import ServerConnection

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
# The key-process round trips of a handshake, each with the calls it carries (deferred calls
# first), up to HandshakeComplete; select() has no round trip of its own (before: load,
# select, server_flight13, open in TLS 1.3; load, select, server_key_exchange12,
# derive12_finished, open in TLS 1.2).
ROUND_TRIPS = {
    "1.3": [["load"], ["select", "server_flight13"], ["open"]],
    "1.2": [["load"], ["select", "server_key_exchange12"], ["derive12_finished"],
            ["activate", "open"]],
}
REFUSED_FIRST = {
    "1.3": [["load"], ["select", "server_flight13"], ["select", "server_flight13"], ["open"]],
    "1.2": [["load"], ["select", "server_key_exchange12"], ["select", "server_key_exchange12"],
            ["derive12_finished"], ["activate", "open"]],
}
FLIGHT = {"1.3": "server_flight13", "1.2": "server_key_exchange12"}
# Calls made and still deferred at HandshakeComplete (TLS 1.3: READ's application keys).
PENDING = {"1.3": ["activate"], "1.2": []}


class Recording:
    """Wraps a KeyService: notes each call by name; for a PipeKeyService, also each round
    trip (one _call, one ipc.write_parts) with the names of the calls it carries."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls: list[str] = []
        self.round_trips: list[list[str]] = []
        if isinstance(inner, PipeKeyService):
            real_call = inner._call

            def call(name, args):
                self.round_trips.append([n for n, _ in inner._deferred] + [name])
                return real_call(name, args)
            inner._call = call

    def __getattr__(self, name: str):
        method = getattr(self.inner, name)

        def call(*args):
            self.calls.append(name)
            return method(*args)
        return call


class SslWire(Wire12):
    """Python's ssl client in memory against a ServerConnection (test_engine_12's), over
    the given certificate files, with a Recording key service."""

    def __init__(self, pki, paths, version: str, config: ServerConfig | None = None) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=str(pki.ca_pem))
        ctx.minimum_version = ctx.maximum_version = VERSIONS[version]
        self.keys = Recording(new_key_service([str(p) for p in paths]))
        self.candidates = self.keys.load([str(p) for p in paths])
        self.server = ServerConnection(config or ServerConfig(), self.keys)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        self.events: list = []
        self.client_chunks: list[bytes] = []
        self.server_chunks: list[bytes] = []

    def handshake(self) -> None:
        """As test_engine_12's, but a server alert ends it too."""
        for _ in range(20):
            try:
                self.tls.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            except ssl.SSLError:
                done = True     # the server's alert
            if not self.move() and (done or self.server.failed):
                return
        raise AssertionError("handshake did not finish")


def _assert_round_trips(keys: Recording, expected: list[list[str]], version: str,
                        refused: int = 0) -> None:
    calls = [name for trip in expected for name in trip] + PENDING[version]
    if isinstance(keys.inner, PipeKeyService):
        assert keys.round_trips == expected
        assert [n for n, _ in keys.inner._deferred] == PENDING[version]
    else:
        assert keys.round_trips == []
        # LocalKeyService.select raises at once: no flight call for a refused candidate.
        for _ in range(refused):
            calls.remove(FLIGHT[version])
    assert keys.calls == calls


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_round_trips_per_handshake(pki, version):
    w = SslWire(pki, [pki["ecdsa-p256"].path], version)
    w.handshake()
    assert w.tls.version() == f"TLSv{version}"
    assert len(w.of_type(HandshakeComplete)) == 1
    _assert_round_trips(w.keys, ROUND_TRIPS[version], version)


@pytest.mark.parametrize("version", ["1.2", "1.3"])
@pytest.mark.parametrize("first", ["ecdsa-p256", "rsa-2048"])
def test_mismatched_key_refused_and_next_candidate_used(pki, version, first):
    mismatched = pki.write_mismatched(first, first)
    w = SslWire(pki, [mismatched, pki["rsa-2048"].path, pki["ecdsa-p256"].path], version)
    w.handshake()
    refused = w.of_type(CertificateRefused)
    assert [r.index for r in refused] == [0], w.events
    assert "key does not match certificate" in refused[0].reason
    done = w.of_type(HandshakeComplete)
    assert len(done) == 1 and not w.of_type(ConnectionFailed), w.events
    # The client verified the chain of the second file, signed with its key.
    assert w.tls.getpeercert(binary_form=True) == pki["rsa-2048"].der
    assert done[0].signature_scheme in (s.RSA_PSS_RSAE_SHA256, s.RSA_PSS_RSAE_SHA384,
                                        s.RSA_PSS_RSAE_SHA512, s.RSA_PKCS1_SHA256,
                                        s.RSA_PKCS1_SHA384, s.RSA_PKCS1_SHA512)
    _assert_round_trips(w.keys, REFUSED_FIRST[version], version, refused=1)
    w.tls.write(b"ping")
    data = w.outgoing.read()
    assert any(getattr(e, "data", None) == b"ping" for e in w.server.receive(data))


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_every_key_mismatched_is_internal_error_with_the_reasons(pki, version):
    bad = [pki.write_mismatched("ecdsa-p256", "ecdsa-p256"),
           pki.write_mismatched("rsa-2048", "rsa-2048")]
    w = SslWire(pki, bad, version)
    w.handshake()
    assert [r.index for r in w.of_type(CertificateRefused)] == [0, 1]
    failed = w.of_type(ConnectionFailed)
    assert len(failed) == 1 and failed[0].alert == s.INTERNAL_ERROR
    assert failed[0].reason.startswith("no usable certificate (")
    assert failed[0].reason.count("key does not match certificate") == 2
    assert not w.of_type(HandshakeComplete)


def test_refused_candidate_not_fitting_is_never_selected(pki):
    """TLS 1.2, a client that takes only ECDSA suites: the RSA file is skipped unselected,
    the mismatched ECDSA one refused, the good ECDSA one used."""
    w = SslWire(pki, [pki.write_mismatched("ecdsa-p256", "ecdsa-p256"), pki["rsa-2048"].path,
                      pki["ecdsa-p256"].path], "1.2")
    w.tls.context.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
    w.handshake()
    assert [r.index for r in w.of_type(CertificateRefused)] == [0]
    assert w.tls.getpeercert(binary_form=True) == pki["ecdsa-p256"].der
    assert w.keys.calls.count("select") == 2


def test_tls13_refusal_after_hello_retry_request(pki):
    """The key is selected with the server flight, which comes after the second ClientHello:
    the refusal and the next candidate happen there."""
    mismatched = pki.write_mismatched("ecdsa-p256", "ecdsa-p256")
    paths = [str(mismatched), str(pki["ecdsa-p384"].path)]
    keys = Recording(new_key_service(paths))
    candidates = keys.load(paths)
    server = ServerConnection(ServerConfig(groups=("secp384r1",)), keys)
    client = TLS13Client(Options(groups=(s.X25519, s.SECP384R1), key_share_groups=(s.X25519,),
                                 signature_algorithms=(s.ECDSA_SECP256R1_SHA256,
                                                       s.ECDSA_SECP384R1_SHA384)))
    w = Wire(server, client, candidates)
    w.handshake()
    assert w.client.hello_retry_request is not None
    assert w.client.connected, w.events
    assert [r.index for r in w.of_type(CertificateRefused)] == [0]
    assert w.client.certificate.entries[0][0] == pki["ecdsa-p384"].der
    assert w.of_type(HandshakeComplete)[0].signature_scheme == s.ECDSA_SECP384R1_SHA384
    _assert_round_trips(keys, REFUSED_FIRST["1.3"], "1.3", refused=1)


def test_round_trips_are_writes_on_the_pipe(pki, monkeypatch):
    """Each round trip counted above is one write on the request pipe (none in-process)."""
    writes = []
    real = ipc.write_parts

    def counting(fd, parts):
        writes.append(fd)
        return real(fd, parts)
    w = SslWire(pki, [pki["ecdsa-p256"].path], "1.3")
    monkeypatch.setattr(ipc, "write_parts", counting)
    w.handshake()
    assert len(w.of_type(HandshakeComplete)) == 1
    pipe = isinstance(w.keys.inner, PipeKeyService)
    assert len(writes) == (len(w.keys.round_trips) - 1 if pipe else 0)   # load was before
    assert len(writes) == (2 if pipe else 0)
