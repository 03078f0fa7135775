"""Cross-cutting properties of the engine (hypothesis): whatever bytes arrive, in whatever
chunks, the engine answers with events, never an exception, and writes nothing but an alert
when the input is garbage."""

from __future__ import annotations

import os
import ssl

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tls13client import Options, TLS13Client, Wire
from keyservices import key_service_kind, new_key_service  # noqa: F401 (autouse fixture)
from tlswrapper.tls import suites as s
from tlswrapper.tls.config import ServerConfig
from tlswrapper.tls.events import (AlertReceived, ApplicationData, ClientHelloReceived,
                                   ConnectionFailed, HandshakeComplete, PeerClosed)
from tlswrapper.tls.server import ServerConnection

EVENT_TYPES = (ClientHelloReceived, HandshakeComplete, ApplicationData, PeerClosed,
               AlertReceived, ConnectionFailed)
CONFIG = ServerConfig(groups=tuple(s.GROUP_NAMES))
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                      HealthCheck.too_slow])


@pytest.fixture(scope="module")
def cert_paths(pki):
    return [str(pki["ecdsa-p256"].path), str(pki["rsa-2048"].path)]


def fresh(cert_paths):
    keys = new_key_service(cert_paths)
    candidates = keys.load(cert_paths)
    return ServerConnection(CONFIG, keys), candidates


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:]) if b > a]


def drive(server, candidates, chunks) -> list:
    """Feed chunks, answering ClientHelloReceived; every step must give a list of events."""
    events = []
    for chunk in chunks:
        got = server.receive(chunk)
        assert isinstance(got, list)
        for ev in got:
            assert isinstance(ev, EVENT_TYPES), ev
            events.append(ev)
            if isinstance(ev, ClientHelloReceived):
                more = server.choose_certificate(candidates)
                assert all(isinstance(e, EVENT_TYPES) for e in more)
                events.extend(more)
    return events


def assert_failure_shape(events: list) -> None:
    failed = [e for e in events if isinstance(e, ConnectionFailed)]
    assert len(failed) <= 1
    if failed:
        # Nothing after the failure.
        assert events[-1] is failed[0]
        assert failed[0].reason and isinstance(failed[0].reason, str)


def records(data: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos < len(data):
        length = int.from_bytes(data[pos + 3:pos + 5], "big")
        out.append((data[pos], data[pos + 5:pos + 5 + length]))
        pos += 5 + length
    assert pos == len(data)
    return out


def plaintext_alert(out: bytes, alert: int) -> None:
    assert out == bytes((s.ALERT, 3, out[2], 0, 2, 2, alert)), out.hex()
    assert out[2] in (1, 3)


# --- garbage in -------------------------------------------------------------------------------

@settings(max_examples=300, **SETTINGS)
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=8))
def test_random_bytes_give_events_and_at_most_an_alert(cert_paths, data, cuts):
    server, candidates = fresh(cert_paths)
    events = drive(server, candidates, chunked(data, cuts))
    assert_failure_shape(events)
    out = server.outgoing()
    failed = [e for e in events if isinstance(e, ConnectionFailed)]
    if failed and failed[0].alert is not None:
        plaintext_alert(out, failed[0].alert)
    else:
        assert out == b""
    # A failed connection stays failed and quiet.
    if server.failed:
        assert server.receive(os.urandom(20)) == []
        assert server.outgoing() == b""


@settings(max_examples=200, **SETTINGS)
@given(body=st.binary(max_size=300), content_type=st.sampled_from([20, 21, 22, 23, 24, 0, 255]),
       version=st.sampled_from([0x0300, 0x0301, 0x0303, 0x0304, 0x0203, 0xFEFD]))
def test_random_record_bodies(cert_paths, body, content_type, version):
    server, candidates = fresh(cert_paths)
    record = bytes((content_type, version >> 8, version & 0xFF)) \
        + len(body).to_bytes(2, "big") + body
    events = drive(server, candidates, [record])
    assert_failure_shape(events)
    out = server.outgoing()
    failed = [e for e in events if isinstance(e, ConnectionFailed)]
    if failed and failed[0].alert is not None:
        plaintext_alert(out, failed[0].alert)
    else:
        assert out == b""


def _real_client_hellos() -> list[bytes]:
    hellos = []
    for opts in (Options(), Options(groups=(s.X25519MLKEM768, s.X25519),
                                    key_share_groups=(s.X25519MLKEM768, s.X25519)),
                 Options(psk=True, early_data=b"x" * 50, session_id=b"")):
        client = TLS13Client(opts)
        client.start()
        hellos.append(client.data_to_send())
    # OpenSSL's, through Python's ssl.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hellos.append(out.read())
    return hellos


REAL_HELLOS = _real_client_hellos()


@st.composite
def mutated_hello(draw):
    data = bytearray(draw(st.sampled_from(REAL_HELLOS)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "set"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif kind == "delete":
            del data[pos:pos + draw(st.integers(1, 4))]
        elif kind == "set" and data:
            data[pos] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]))
    return bytes(data)


@settings(max_examples=300, **SETTINGS)
@given(hello=mutated_hello(), cuts=st.lists(st.integers(0, 2000), max_size=5))
def test_mutated_client_hellos_never_raise(cert_paths, hello, cuts):
    server, candidates = fresh(cert_paths)
    events = drive(server, candidates, chunked(hello, cuts))
    assert_failure_shape(events)
    out = server.outgoing()
    failed = [e for e in events if isinstance(e, ConnectionFailed)]
    if failed and failed[0].alert is not None:
        recs = records(out)
        last_type, last_body = recs[-1]
        if last_type == s.ALERT:
            assert last_body == bytes((2, failed[0].alert))
        else:
            # The ClientHello was accepted and junk after it failed under the new keys.
            assert last_type == s.APPLICATION_DATA and recs[0][0] == s.HANDSHAKE
    elif not any(isinstance(e, ClientHelloReceived) for e in events):
        assert out == b""
    # Then the transport ends: still only events.
    assert all(isinstance(e, EVENT_TYPES) for e in server.receive(b""))


# --- a real handshake in any chunking -------------------------------------------------------

@settings(max_examples=40, **SETTINGS)
@given(cuts1=st.lists(st.integers(0, 3000), max_size=10),
       cuts2=st.lists(st.integers(0, 200), max_size=6),
       group=st.sampled_from([s.X25519, s.SECP256R1, s.X25519MLKEM768]))
def test_handshake_in_any_chunking(cert_paths, cuts1, cuts2, group):
    server, candidates = fresh(cert_paths)
    client = TLS13Client(Options(groups=(group,)))
    client.start()
    drive(server, candidates, chunked(client.data_to_send(), cuts1))
    client.receive(server.outgoing())
    assert client.connected
    client.send(b"payload")
    events = drive(server, candidates, chunked(client.data_to_send(), cuts2))
    assert [type(e) for e in events] == [HandshakeComplete, ApplicationData]
    assert events[1].data == b"payload"


# --- garbage after a real handshake ---------------------------------------------------------

@settings(max_examples=100, **SETTINGS)
@given(garbage=st.binary(min_size=1, max_size=400), cuts=st.lists(st.integers(0, 400),
                                                                  max_size=4),
       as_record=st.booleans())
def test_garbage_after_handshake(cert_paths, garbage, cuts, as_record):
    server, candidates = fresh(cert_paths)
    client = TLS13Client(Options())
    wire = Wire(server, client, candidates)
    wire.handshake()
    assert client.connected
    if as_record:
        garbage = b"\x17\x03\x03" + len(garbage).to_bytes(2, "big") + garbage
    events = drive(server, candidates, chunked(garbage, cuts))
    assert_failure_shape(events)
    failed = [e for e in events if isinstance(e, ConnectionFailed)]
    if failed and failed[0].alert is not None:
        # The alert is protected: the client decrypts it with the application keys.
        client.receive(server.outgoing())
        assert client.alerts[-1] == (2, failed[0].alert)
    elif as_record:
        pytest.fail(f"a random protected record was accepted: {events}")


@settings(max_examples=60, **SETTINGS)
@given(position=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_any_bit_flip_in_a_protected_record_is_bad_record_mac(cert_paths, position, bit):
    server, candidates = fresh(cert_paths)
    client = TLS13Client(Options())
    wire = Wire(server, client, candidates)
    wire.handshake()
    client.send(os.urandom(100))
    record = bytearray(client.data_to_send())
    position %= len(record)
    record[position] ^= 1 << bit
    events = drive(server, candidates, [bytes(record)])
    failed = [e for e in events if isinstance(e, ConnectionFailed)]
    assert not [e for e in events if isinstance(e, ApplicationData)]
    if position < 5:
        # Framing: the type, the version (authenticated too) or the length; a longer length
        # leaves the record incomplete, with no event yet.
        assert not failed or failed[0].alert in (
            s.BAD_RECORD_MAC, s.RECORD_OVERFLOW, s.UNEXPECTED_MESSAGE, s.PROTOCOL_VERSION)
    else:
        assert failed and failed[0].alert == s.BAD_RECORD_MAC


# --- API misuse by the caller -----------------------------------------------------------------

def test_api_calls_out_of_order_are_harmless(cert_paths):
    server, candidates = fresh(cert_paths)
    assert server.choose_certificate(candidates) == []
    server.send(b"before the handshake")
    assert server.outgoing() == b""
    assert not server.handshake_done and not server.failed
    server.close()
    plaintext_alert_warning = server.outgoing()
    assert plaintext_alert_warning == b"\x15\x03\x03\x00\x02\x01\x00"
