"""The TLS 1.3 server engine against the in-test client (tls13client.py), in memory, with the
in-process KeyService. Every failure checks both the alert on the wire (as the client decoded
it, in the clear or under its keys) and the ConnectionFailed event."""

from __future__ import annotations

import os

import pytest

from tls13client import ALL_SUITES_13, KeyShare, Options, Protection, TLS13Client, Wire
from keyservices import key_service_kind, new_key_service  # noqa: F401 (autouse fixture)
from tlswrapper.tls import messages as m
from tlswrapper.tls import suites as s
from tlswrapper.tls.config import ServerConfig
from tlswrapper.tls.events import (AlertReceived, ApplicationData, ClientHelloReceived,
                                   ConnectionFailed, HandshakeComplete, PeerClosed)
from tlswrapper.tls.keyservice import Unusable
from tlswrapper.tls.server import ServerConnection
from tlswrapper.tls.wire import handshake_message

ALL_GROUP_NAMES = tuple(s.GROUP_NAMES)
CERTS = ("ecdsa-p256", "ecdsa-p384", "ecdsa-p521", "rsa-2048")
EXPECTED_SCHEME = {
    "ecdsa-p256": s.ECDSA_SECP256R1_SHA256, "ecdsa-p384": s.ECDSA_SECP384R1_SHA384,
    "ecdsa-p521": s.ECDSA_SECP521R1_SHA512, "rsa-2048": s.RSA_PSS_RSAE_SHA512,
    "rsa-4096": s.RSA_PSS_RSAE_SHA512,
}
ALL_CONFIG = ServerConfig(groups=ALL_GROUP_NAMES)


def make_wire(pki, certs=("ecdsa-p256",), config: ServerConfig = ALL_CONFIG,
              candidates=None, **client_kw) -> Wire:
    paths = [c if os.path.isabs(c) else str(pki[c].path) for c in certs]
    keys = new_key_service(paths)
    loaded = keys.load(paths)
    server = ServerConnection(config, keys)
    client = TLS13Client(Options(**client_kw))
    return Wire(server, client, loaded if candidates is None else candidates(loaded))


def connected(pki, **kw) -> Wire:
    w = make_wire(pki, **kw)
    w.handshake()
    assert w.client.connected, w.events
    assert len(w.of_type(HandshakeComplete)) == 1
    return w


def assert_failed(w: Wire, alert: int, reason: str | None = None) -> ConnectionFailed:
    failed = w.of_type(ConnectionFailed)
    assert len(failed) == 1, w.events
    assert failed[0].alert == alert, (failed[0], s.ALERT_NAMES.get(alert))
    if reason is not None:
        assert reason in failed[0].reason
    # The alert the server wrote, as the client decoded it from the wire.
    assert w.client.alerts, "no alert reached the client"
    assert w.client.alerts[-1] == (2, alert), w.client.alerts
    assert w.server.failed
    assert not w.of_type(HandshakeComplete) or w.client.connected
    return failed[0]


def exchange(w: Wire, size: int) -> None:
    up, down = os.urandom(size), os.urandom(size + 7)
    before_up = len(w.app_data())
    before_down = len(w.client.app_data)
    w.client.send(up)
    w.pump()
    w.server.send(down)
    w.pump()
    assert w.app_data()[before_up:] == up
    assert bytes(w.client.app_data[before_down:]) == down


# --- the matrix -------------------------------------------------------------------------------

@pytest.mark.parametrize("cert", CERTS)
@pytest.mark.parametrize("group", ALL_GROUP_NAMES)
@pytest.mark.parametrize("suite", ALL_SUITES_13, ids=lambda c: s.SUITES[c].name)
def test_handshake_and_data_every_suite_group_certificate(pki, suite, group, cert):
    code = s.GROUP_NAMES[group]
    w = connected(pki, certs=(cert,), cipher_suites=(suite,), groups=(code,))
    done = w.of_type(HandshakeComplete)[0]
    assert (done.version, done.version_name) == (s.TLS13, "TLSv1.3")
    assert done.cipher_suite == suite == w.client.suite
    assert done.group == group and w.client.group == code
    assert done.signature_scheme == EXPECTED_SCHEME[cert] == w.client.certificate_verify.scheme
    assert done.sni == "localhost"
    assert w.client.certificate.entries[0][0] == pki[cert].der
    assert [der for der, _ in w.client.certificate.entries] == pki[cert].chain_der
    assert w.client.hello_retry_request is None
    exchange(w, 3000)


def test_transfer_100k_both_ways_in_full_records(pki):
    w = connected(pki, cipher_suites=(0x1302,), groups=(s.X25519,))
    sizes_before = len(w.client.server_record_sizes)
    exchange(w, 100 * 1024)
    sizes = w.client.server_record_sizes[sizes_before:]
    # 2^14 plaintext + content type + 16-byte tag per full record.
    assert max(sizes) == s.MAX_PLAINTEXT + 1 + 16
    assert len(w.of_type(ApplicationData)) == 7   # the client wrote 7 records


def test_rsa_4096_certificate(pki):
    w = connected(pki, certs=("rsa-4096",), groups=(s.X25519,))
    assert w.of_type(HandshakeComplete)[0].signature_scheme == s.RSA_PSS_RSAE_SHA512
    exchange(w, 100)


def test_client_hello_reported_to_the_caller(pki):
    w = connected(pki, sni="Example.COM", groups=(s.X25519, s.SECP256R1),
                  key_share_groups=(s.X25519, s.SECP256R1), cipher_suites=(0x1301, 0x1303))
    hello = w.of_type(ClientHelloReceived)[0]
    assert hello.sni == "example.com"
    assert hello.versions == (s.TLS13,)
    assert hello.cipher_suites == (0x1301, 0x1303)
    assert hello.groups == (s.X25519, s.SECP256R1)
    assert hello.key_share_groups == (s.X25519, s.SECP256R1)
    assert hello.signature_schemes == w.client.o.signature_algorithms
    assert w.of_type(HandshakeComplete)[0].sni == "example.com"


def test_no_sni(pki):
    w = connected(pki, sni=None)
    assert w.of_type(ClientHelloReceived)[0].sni is None


@pytest.mark.parametrize("server_preference, expected", [(True, 0x1303), (False, 0x1301)])
def test_suite_preference(pki, server_preference, expected):
    config = ServerConfig(groups=ALL_GROUP_NAMES, server_preference=server_preference)
    w = connected(pki, config=config, cipher_suites=(0x1301, 0x1303))
    assert w.client.suite == expected


def test_group_by_server_preference_among_shares(pki):
    config = ServerConfig(groups=("secp384r1", "x25519"))
    w = connected(pki, config=config, groups=(s.X25519, s.SECP384R1),
                  key_share_groups=(s.X25519, s.SECP384R1))
    assert w.client.group == s.SECP384R1 and w.client.hello_retry_request is None


# --- HelloRetryRequest -------------------------------------------------------------------

@pytest.mark.parametrize("session_id", [b"", None], ids=["plain", "middlebox"])
def test_hello_retry_request(pki, session_id):
    config = ServerConfig(groups=("secp384r1",))
    w = connected(pki, config=config, groups=(s.X25519, s.SECP384R1),
                  key_share_groups=(s.X25519,), session_id=session_id)
    hrr = w.client.hello_retry_request
    assert hrr is not None and hrr.random == s.HRR_RANDOM
    assert m.parse_key_share_hrr(hrr.extension(s.EXT_KEY_SHARE)) == s.SECP384R1
    assert hrr.session_id == w.client.session_id
    assert w.client.group == s.SECP384R1
    assert w.of_type(HandshakeComplete)[0].group == "secp384r1"
    # One ClientHelloReceived (the second ClientHello is not reported again).
    assert len(w.of_type(ClientHelloReceived)) == 1
    # Middlebox mode: exactly one CCS, right after the HelloRetryRequest.
    assert w.client.ccs_received == (1 if w.client.session_id else 0)
    exchange(w, 1000)


@pytest.mark.parametrize("shares", [
    lambda group: (),
    lambda group: ((s.X25519, os.urandom(32)),),
    lambda group: ((s.SECP384R1, os.urandom(97)), (s.X25519, os.urandom(32))),
], ids=["no-share", "old-share", "two-shares"])
def test_second_client_hello_without_the_requested_share(pki, shares):
    config = ServerConfig(groups=("secp384r1",))
    w = make_wire(pki, config=config, groups=(s.X25519, s.SECP384R1),
                  key_share_groups=(s.X25519,), hrr_key_shares=shares)
    w.handshake()
    assert w.client.hello_retry_request is not None
    assert_failed(w, s.ILLEGAL_PARAMETER)


@pytest.mark.parametrize("change", ["cipher_suites", "session_id"])
def test_second_client_hello_that_changes_is_illegal_parameter(pki, change):
    config = ServerConfig(groups=("secp384r1",))
    w = make_wire(pki, config=config, groups=(s.X25519, s.SECP384R1),
                  key_share_groups=(s.X25519,))

    def second_shares(group):
        # Change the ClientHello between the two sends (RFC 8446 4.1.2 forbids it).
        if change == "cipher_suites":
            w.client.o.cipher_suites = w.client.o.cipher_suites[1:]
        else:
            w.client.session_id = os.urandom(32)
        share = KeyShare(group)
        w.client.shares = {group: share}
        return ((group, share.public),)

    w.client.o.hrr_key_shares = second_shares
    w.handshake()
    assert_failed(w, s.ILLEGAL_PARAMETER)


def test_second_client_hello_with_early_data_is_refused(pki):
    config = ServerConfig(groups=("secp384r1",))
    w = make_wire(pki, config=config, groups=(s.X25519, s.SECP384R1),
                  key_share_groups=(s.X25519,),
                  extra_extensions=(m.Extension(s.EXT_EARLY_DATA, b""),))
    w.handshake()
    assert_failed(w, s.ILLEGAL_PARAMETER)


def test_no_group_in_common_is_handshake_failure(pki):
    config = ServerConfig(groups=("secp521r1",))
    w = make_wire(pki, config=config, groups=(s.X25519, s.SECP256R1))
    w.handshake()
    assert_failed(w, s.HANDSHAKE_FAILURE)


# --- middlebox compatibility -------------------------------------------------------------

def test_middlebox_mode_echoes_session_id_and_sends_one_ccs(pki):
    w = connected(pki)
    assert len(w.client.session_id) == 32
    assert w.client.server_hello.session_id == w.client.session_id
    assert w.client.ccs_received == 1
    # The CCS follows the ServerHello record, in the clear.
    first = w.server_bytes[0]
    sh_len = int.from_bytes(first[3:5], "big")
    assert first[5 + sh_len:5 + sh_len + 6] == b"\x14\x03\x03\x00\x01\x01"


def test_no_ccs_without_session_id(pki):
    w = connected(pki, session_id=b"")
    assert w.client.server_hello.session_id == b""
    assert w.client.ccs_received == 0
    assert s.CHANGE_CIPHER_SPEC not in w.client.record_types_received


def test_client_ccs_tolerated_even_without_session_id(pki):
    connected(pki, session_id=b"", send_ccs=True)


def test_short_session_id_echoed(pki):
    w = connected(pki, session_id=b"\x07" * 8)
    assert w.client.server_hello.session_id == b"\x07" * 8


def test_ccs_after_handshake_is_unexpected(pki):
    w = connected(pki)
    w.client.send_ccs()
    w.pump()
    assert_failed(w, s.UNEXPECTED_MESSAGE)


def test_malformed_ccs_is_unexpected(pki):
    w = make_wire(pki)
    w.client.start()
    w.pump()
    w.client.send_plaintext_record(s.CHANGE_CIPHER_SPEC, b"\x02")
    w.pump()
    assert_failed(w, s.UNEXPECTED_MESSAGE)


# --- PSK and 0-RTT offered: refused, full handshake ---------------------------------------

def test_psk_and_early_data_get_a_full_handshake(pki):
    early = os.urandom(5000)
    w = connected(pki, psk=True, early_data=early)
    # The client checked: no pre_shared_key in ServerHello, no early_data in EE.
    assert w.client.encrypted_extensions.extension(s.EXT_EARLY_DATA) is None
    assert w.client.server_hello.extension(s.EXT_PRE_SHARED_KEY) is None
    assert w.app_data() == b""   # the 0-RTT records were skipped, not delivered
    exchange(w, 2000)


def test_psk_without_early_data(pki):
    w = connected(pki, psk=True)
    exchange(w, 100)


def test_early_data_before_hello_retry_request_is_skipped(pki):
    config = ServerConfig(groups=("secp384r1",))
    w = connected(pki, config=config, groups=(s.X25519, s.SECP384R1),
                  key_share_groups=(s.X25519,), psk=True, early_data=os.urandom(3000))
    assert w.client.hello_retry_request is not None
    assert w.app_data() == b""
    exchange(w, 100)


def test_psk_without_psk_key_exchange_modes_is_missing_extension(pki):
    w = make_wire(pki, psk=True, omit_extensions=(s.EXT_PSK_KEY_EXCHANGE_MODES,))
    w.handshake()
    assert_failed(w, s.MISSING_EXTENSION)


def test_application_data_without_early_data_offer_is_bad_record_mac(pki):
    w = make_wire(pki)
    w.client.start()
    w.client.send_plaintext_record(s.APPLICATION_DATA, os.urandom(40))
    w.pump()
    assert_failed(w, s.BAD_RECORD_MAC)


# --- KeyUpdate ----------------------------------------------------------------------------

def test_key_update_requested_is_answered_and_keys_switch(pki):
    w = connected(pki)
    for round_ in (1, 2):
        old_read, old_write = w.client.read.secret, w.client.write.secret
        w.client.key_update(requested=True)
        w.pump()
        assert w.client.key_updates_received == [m.UPDATE_NOT_REQUESTED] * round_
        assert w.client.read.secret != old_read and w.client.write.secret != old_write
        # Both directions now run on the next generation: data must still decrypt.
        exchange(w, 5000)


def test_key_update_not_requested_is_not_answered(pki):
    w = connected(pki)
    for _ in range(3):
        w.client.key_update(requested=False)
        w.pump()
    assert w.client.key_updates_received == []
    exchange(w, 100)


# The KeyService contract (tls/keyservice.py, open): processing stops right after a record
# whose content type is not application_data, because it may change the keys; the engine
# resubmits the rest of the batch under the new key.
@pytest.mark.parametrize("requested", [True, False])
def test_key_update_and_data_in_one_flight(pki, requested):
    # What a client writing KeyUpdate then data in one write() produces.
    w = connected(pki)
    w.client.key_update(requested=requested)
    w.client.send(b"after update")
    w.pump()
    assert not w.server.failed, w.events
    assert w.app_data() == b"after update"
    assert w.client.key_updates_received == ([0] if requested else [])


def test_several_key_updates_in_one_flight(pki):
    w = connected(pki)
    for _ in range(3):
        w.client.key_update(requested=False)
    w.client.send(b"x")
    w.pump()
    assert not w.server.failed, w.events
    assert w.app_data() == b"x"


def test_key_update_flood_is_refused_and_data_pays_for_more(pki):
    from tlswrapper.tls.server import KEY_UPDATE_DATA, MAX_KEY_UPDATES
    w = connected(pki)
    for _ in range(MAX_KEY_UPDATES):
        w.client.key_update(requested=True)
        w.pump()
    # Application data earns KeyUpdates back: one per KEY_UPDATE_DATA bytes.
    exchange(w, MAX_KEY_UPDATES * KEY_UPDATE_DATA)
    for _ in range(MAX_KEY_UPDATES):
        w.client.key_update(requested=False)
        w.pump()
    assert not w.server.failed, w.events
    w.client.key_update(requested=False)
    w.pump()
    assert_failed(w, s.UNEXPECTED_MESSAGE)


def test_key_updates_alternating_with_tiny_records_are_refused(pki):
    """The flood that grew the network process without bound: KeyUpdate, 1-byte record,
    KeyUpdate, ... A record no longer clears the count; only enough data pays for more."""
    from tlswrapper.tls.server import MAX_KEY_UPDATES
    w = connected(pki)
    for _ in range(MAX_KEY_UPDATES):
        w.client.key_update(requested=True)
        w.client.send(b"x")
        w.pump()
    assert not w.server.failed, w.events
    w.client.key_update(requested=True)
    w.pump()
    assert_failed(w, s.UNEXPECTED_MESSAGE)


def test_key_update_with_bad_value_is_illegal_parameter(pki):
    w = connected(pki)
    w.client.send_protected(s.HANDSHAKE, handshake_message(s.HS_KEY_UPDATE, b"\x02"))
    w.pump()
    assert_failed(w, s.ILLEGAL_PARAMETER)


def test_two_key_updates_in_one_record_are_unexpected(pki):
    w = connected(pki)
    ku = handshake_message(s.HS_KEY_UPDATE, b"\x00")
    w.client.send_protected(s.HANDSHAKE, ku + ku)
    w.pump()
    assert_failed(w, s.UNEXPECTED_MESSAGE)


def test_key_update_after_close_notify_sent_is_not_answered(pki):
    w = connected(pki)
    w.server.close()
    w.pump()
    assert w.client.alerts == [(1, s.CLOSE_NOTIFY)]
    w.client.key_update(requested=True)
    w.pump()
    assert w.client.key_updates_received == []
    assert not w.server.failed


# --- record layer -------------------------------------------------------------------------

@pytest.mark.parametrize("padding_len", [1, 200, s.MAX_PLAINTEXT - 100])
def test_padded_records_accepted(pki, padding_len):
    w = connected(pki)
    w.client.send(b"x" * 100, padding_len=padding_len)
    w.pump()
    assert w.app_data() == b"x" * 100
    assert not w.server.failed


def test_padding_only_handshake_record_after_the_handshake(pki):
    w = connected(pki)
    # A padded KeyUpdate: padding applies to every content type.
    w.client.send_protected(s.HANDSHAKE, handshake_message(s.HS_KEY_UPDATE, b"\x01"), 300)
    w.client.write = w.client.write.next_generation()
    w.pump()
    assert w.client.key_updates_received == [0]
    exchange(w, 10)


def _up_to_client_finished(w: Wire) -> bytes:
    """Run the handshake until the client has queued its Finished; return that message
    (not sent) and leave the client's write keys on the handshake secret."""
    w.client.start()
    w._server_events(w.server.receive(w.client.data_to_send()))
    w.client.receive(w.server.outgoing())
    w.client.data_to_send()   # drop what the client queued (CCS, Finished)
    w.client.write = Protection(w.client.suite, w.client._c_hs)
    return w.client.transcript[-1]


def test_padded_client_finished(pki):
    w = make_wire(pki, session_id=b"")
    finished = _up_to_client_finished(w)
    w.client.send_protected(s.HANDSHAKE, finished, padding_len=500)
    w.client.write = Protection(w.client.suite, w.client._c_ap)
    w.client.send(b"abc", padding_len=1000)
    w.pump()
    assert w.of_type(HandshakeComplete) and w.app_data() == b"abc"


def test_inner_plaintext_over_2_14_is_record_overflow(pki):
    w = connected(pki)
    w.client.send_protected(s.APPLICATION_DATA, os.urandom(s.MAX_PLAINTEXT + 1))
    w.pump()
    assert_failed(w, s.RECORD_OVERFLOW)


def test_inner_plaintext_with_padding_over_2_14_plus_1_is_record_overflow(pki):
    # RFC 8446 5.4: TLSInnerPlaintext MUST NOT exceed 2^14 + 1 octets.
    w = connected(pki)
    w.client.send_protected(s.APPLICATION_DATA, os.urandom(s.MAX_PLAINTEXT), padding_len=10)
    w.pump()
    assert_failed(w, s.RECORD_OVERFLOW)


def test_ciphertext_over_2_14_plus_256_is_record_overflow(pki):
    w = connected(pki)
    size = s.MAX_CIPHERTEXT_13 + 1
    w.client.send_raw(b"\x17\x03\x03" + size.to_bytes(2, "big") + os.urandom(size))
    w.pump()
    assert_failed(w, s.RECORD_OVERFLOW)


def test_largest_legal_record_accepted(pki):
    w = connected(pki)
    w.client.send_inner(b"y" * s.MAX_PLAINTEXT + b"\x17")
    w.pump()
    assert w.app_data() == b"y" * s.MAX_PLAINTEXT


def test_plaintext_record_over_2_14_before_keys_is_record_overflow(pki):
    w = make_wire(pki)
    w.client.send_plaintext_record(s.HANDSHAKE, b"\x01" + os.urandom(s.MAX_PLAINTEXT))
    w.pump()
    assert_failed(w, s.RECORD_OVERFLOW)


def test_interleaved_handshake_fragment_and_application_data(pki):
    w = connected(pki)
    ku = handshake_message(s.HS_KEY_UPDATE, b"\x00")
    w.client.send_protected(s.HANDSHAKE, ku[:2])
    w.client.send(b"in between")
    w.pump()
    assert_failed(w, s.UNEXPECTED_MESSAGE)
    assert w.app_data() == b""


def test_ccs_inside_a_fragmented_client_hello(pki):
    w = make_wire(pki)
    hello = w.client._build_hello([])   # any ClientHello bytes
    w.client.send_plaintext_record(s.HANDSHAKE, hello[:10])
    w.client.send_ccs()
    w.pump()
    assert_failed(w, s.UNEXPECTED_MESSAGE)


def test_alert_inside_a_fragmented_client_hello(pki):
    w = make_wire(pki)
    hello = w.client._build_hello([])
    w.client.send_plaintext_record(s.HANDSHAKE, hello[:10])
    w.client.send_plaintext_record(s.ALERT, b"\x01\x00")
    w.pump()
    assert_failed(w, s.UNEXPECTED_MESSAGE)


def test_handshake_split_across_one_byte_records(pki):
    w = connected(pki, handshake_record_size=1, groups=(s.SECP256R1,))
    # The client's ClientHello and Finished both went out one byte per record.
    exchange(w, 100)


def test_client_hello_split_in_one_byte_chunks_of_the_stream(pki):
    w = make_wire(pki)
    w.client.start()
    data = w.client.data_to_send()
    for i in range(len(data)):
        w._server_events(w.server.receive(data[i:i + 1]))
    w.client.receive(w.server.outgoing())
    w.pump()
    assert w.client.connected


def test_server_flight_is_several_messages_in_one_record(pki):
    w = connected(pki, session_id=b"")
    # ServerHello record, then one protected record holding EE, Certificate, CV, Finished.
    assert w.client.record_types_received[:2] == [s.HANDSHAKE, s.HANDSHAKE]
    assert len(w.client.server_record_sizes) == 2


def test_client_hello_followed_by_more_in_the_same_record(pki):
    w = make_wire(pki)
    hello = w.client._build_hello([
        m.Extension(s.EXT_SUPPORTED_VERSIONS, m.build_supported_versions_client((s.TLS13,)))])
    w.client.send_plaintext_record(s.HANDSHAKE, hello + handshake_message(s.HS_FINISHED, b""))
    w.pump()
    assert_failed(w, s.UNEXPECTED_MESSAGE)


def test_unknown_outer_content_type_is_unexpected(pki):
    w = make_wire(pki)
    w.client.send_plaintext_record(25, b"\x00\x01")
    w.pump()
    assert_failed(w, s.UNEXPECTED_MESSAGE)


@pytest.mark.parametrize("inner", [b"hello\x19", b"\x00\x00\x00", b"\x01\x14"],
                         ids=["unknown-type", "no-type", "ccs-inside"])
def test_bad_inner_content_type_is_unexpected(pki, inner):
    w = connected(pki)
    w.client.send_inner(inner)
    w.pump()
    assert_failed(w, s.UNEXPECTED_MESSAGE)


def test_tampered_record_is_bad_record_mac(pki):
    w = connected(pki)
    w.client.send(b"secret data")
    record = bytearray(w.client.data_to_send())
    record[12] ^= 0x01
    w.client.send_raw(bytes(record))
    w.pump()
    assert_failed(w, s.BAD_RECORD_MAC)
    assert w.app_data() == b""


def test_tampered_record_header_is_bad_record_mac(pki):
    w = connected(pki)
    w.client.send(b"secret data")
    record = bytearray(w.client.data_to_send())
    record[2] = 0x01   # legacy_record_version is authenticated data
    w.client.send_raw(bytes(record))
    w.pump()
    assert_failed(w, s.BAD_RECORD_MAC)


def test_unprotected_handshake_record_after_keys_is_unexpected(pki):
    w = connected(pki)
    w.client.send_plaintext_record(s.HANDSHAKE, handshake_message(s.HS_KEY_UPDATE, b"\x00"))
    w.pump()
    assert_failed(w, s.UNEXPECTED_MESSAGE)


def test_empty_records_bounded(pki):
    w = connected(pki)
    for _ in range(40):
        w.client.send_protected(s.APPLICATION_DATA, b"")
    w.pump()
    assert_failed(w, s.UNEXPECTED_MESSAGE)


def test_a_few_empty_records_are_fine(pki):
    w = connected(pki)
    for _ in range(5):
        w.client.send_protected(s.APPLICATION_DATA, b"")
    w.client.send(b"z")
    w.pump()
    assert w.app_data() == b"z" and not w.server.failed


# --- closing ------------------------------------------------------------------------------

def test_close_notify_is_clean_peer_close(pki):
    w = connected(pki)
    w.client.send(b"last words")
    w.client.close()
    w.pump()
    assert w.events[-1] == PeerClosed(clean=True)
    assert w.app_data() == b"last words"
    # Half-close: the server may still write.
    w.server.send(b"reply after client closed")
    w.server.close()
    w.pump()
    assert bytes(w.client.app_data) == b"reply after client closed"
    assert w.client.alerts == [(1, s.CLOSE_NOTIFY)]
    assert not w.of_type(ConnectionFailed)


def test_data_after_close_notify_ignored(pki):
    w = connected(pki)
    w.client.close()
    w.client.send(b"ignored")
    w.pump()
    assert w.app_data() == b""
    assert not w.server.failed


def test_server_close_then_nothing_sent(pki):
    w = connected(pki)
    w.server.close()
    w.server.send(b"too late")
    w.pump()
    assert w.client.closed_by_server and bytes(w.client.app_data) == b""


def test_transport_eof_after_handshake_is_unclean_close(pki):
    w = connected(pki)
    assert w.feed_server(b"") == [PeerClosed(clean=False)]


def test_transport_eof_during_handshake_fails_without_alert(pki):
    w = make_wire(pki)
    w.client.start()
    w._server_events(w.server.receive(w.client.data_to_send()))
    w.client.receive(w.server.outgoing())
    assert w.client.state == "connected" and not w.server.handshake_done
    events = w.feed_server(b"")   # instead of the client's Finished
    assert len(events) == 1 and isinstance(events[0], ConnectionFailed)
    assert events[0].alert is None
    assert w.server.outgoing() == b""


def test_close_notify_during_handshake_fails(pki):
    w = make_wire(pki)
    w.client.start()
    w.client.send_plaintext_record(s.ALERT, b"\x01\x00")
    w.pump()
    failed = w.of_type(ConnectionFailed)
    assert len(failed) == 1 and failed[0].alert is None


def test_fatal_alert_from_client(pki):
    w = connected(pki)
    w.client.send_protected(s.ALERT, bytes((2, s.BAD_CERTIFICATE)))
    w.pump()
    assert AlertReceived(2, s.BAD_CERTIFICATE) in w.events
    failed = w.of_type(ConnectionFailed)
    assert len(failed) == 1 and failed[0].alert is None
    assert w.client.alerts == []


def test_warning_alert_other_than_user_canceled_is_fatal_in_tls13(pki):
    w = connected(pki)
    w.client.send_protected(s.ALERT, bytes((1, s.UNRECOGNIZED_NAME)))
    w.pump()
    assert w.server.failed


def test_user_canceled_is_not_fatal(pki):
    w = connected(pki)
    w.client.send_protected(s.ALERT, bytes((1, s.USER_CANCELED)))
    w.client.send(b"still here")
    w.pump()
    assert not w.server.failed and w.app_data() == b"still here"


# --- ClientHello checks -------------------------------------------------------------------

@pytest.mark.parametrize("ext", [s.EXT_KEY_SHARE, s.EXT_SIGNATURE_ALGORITHMS,
                                 s.EXT_SUPPORTED_GROUPS],
                         ids=["key_share", "signature_algorithms", "supported_groups"])
def test_missing_extension(pki, ext):
    w = make_wire(pki, omit_extensions=(ext,))
    w.handshake()
    assert_failed(w, s.MISSING_EXTENSION)


def test_key_share_for_group_not_offered_is_illegal_parameter(pki):
    w = make_wire(pki, groups=(s.SECP256R1,), key_share_groups=(s.X25519,))
    w.handshake()
    assert_failed(w, s.ILLEGAL_PARAMETER)


@pytest.mark.parametrize("group, share", [
    (s.X25519, bytes(32)),                     # small-order point: zero shared secret
    (s.X25519, os.urandom(31)),
    (s.SECP256R1, b"\x04" + bytes(64)),        # not on the curve
    (s.SECP256R1, b"\x02" + os.urandom(32)),   # compressed: not allowed
    (s.X25519MLKEM768, os.urandom(100)),
    # FIPS 203 7.2 modulus check: 12-bit coefficients of 0xFFF are not below q = 3329.
    (s.X25519MLKEM768, b"\xff" * 1184 + os.urandom(32)),
    (s.X25519MLKEM768, b"\x00" * 1184 + bytes(32)),
], ids=["x25519-zero", "x25519-short", "p256-off-curve", "p256-compressed", "mlkem-short",
        "mlkem-not-reduced", "mlkem-zero-x25519"])
def test_bad_key_share_is_illegal_parameter(pki, group, share):
    w = make_wire(pki, groups=(group,),
                  extra_extensions=())
    w.client.shares = {}
    hello = w.client._build_hello([
        m.Extension(s.EXT_SUPPORTED_VERSIONS, m.build_supported_versions_client((s.TLS13,))),
        m.Extension(s.EXT_SUPPORTED_GROUPS, m.build_supported_groups((group,))),
        m.Extension(s.EXT_SIGNATURE_ALGORITHMS,
                    m.build_signature_algorithms((s.ECDSA_SECP256R1_SHA256,))),
        m.Extension(s.EXT_KEY_SHARE, m.build_key_share_client(((group, share),))),
    ])
    w.client.transcript.append(hello)
    w.client.state = "wait_server_hello"
    w.client.send_handshake(hello)
    w.pump()
    assert_failed(w, s.ILLEGAL_PARAMETER)


def test_protocol_version_when_only_tls12_enabled_and_client_offers_only_tls13(pki):
    config = ServerConfig(version_max=s.TLS12, groups=ALL_GROUP_NAMES,
                          ciphers=s.DEFAULT_CIPHERS)
    w = make_wire(pki, config=config)
    w.handshake()
    assert_failed(w, s.PROTOCOL_VERSION)


def test_protocol_version_when_client_offers_only_unknown_versions(pki):
    w = make_wire(pki, versions=(0x0305, 0x7F1C))
    w.handshake()
    assert_failed(w, s.PROTOCOL_VERSION)


def test_no_common_suite_is_handshake_failure(pki):
    config = ServerConfig(groups=ALL_GROUP_NAMES, ciphers=("AES_128_GCM_SHA256",))
    w = make_wire(pki, config=config, cipher_suites=(0x1302, 0x1303))
    w.handshake()
    assert_failed(w, s.HANDSHAKE_FAILURE)


def test_only_tls12_suites_offered_with_tls13_is_handshake_failure(pki):
    w = make_wire(pki, cipher_suites=(0xC02B, 0xC02F))
    w.handshake()
    assert_failed(w, s.HANDSHAKE_FAILURE)


def test_compression_in_tls13_client_hello_is_illegal_parameter(pki):
    w = make_wire(pki)
    share = w.client.shares[s.X25519].public
    hello = m.ClientHello(s.TLS12, os.urandom(32), b"", (0x1301,), b"\x01\x00", (
        m.Extension(s.EXT_SUPPORTED_VERSIONS, m.build_supported_versions_client((s.TLS13,))),
        m.Extension(s.EXT_SUPPORTED_GROUPS, m.build_supported_groups((s.X25519,))),
        m.Extension(s.EXT_SIGNATURE_ALGORITHMS,
                    m.build_signature_algorithms((s.ECDSA_SECP256R1_SHA256,))),
        m.Extension(s.EXT_KEY_SHARE, m.build_key_share_client(((s.X25519, share),)))))
    w.client.send_handshake(handshake_message(s.HS_CLIENT_HELLO, m.build_client_hello(hello)))
    w.pump()
    assert_failed(w, s.ILLEGAL_PARAMETER)


def test_second_client_hello_after_handshake_is_unexpected(pki):
    w = connected(pki)
    w.client.send_protected(s.HANDSHAKE, w.client.transcript[0])
    w.pump()
    assert_failed(w, s.UNEXPECTED_MESSAGE)


@pytest.mark.parametrize("msg_type", [s.HS_NEW_SESSION_TICKET, s.HS_CERTIFICATE,
                                      s.HS_END_OF_EARLY_DATA, 99])
def test_other_post_handshake_messages_are_unexpected(pki, msg_type):
    w = connected(pki)
    w.client.send_protected(s.HANDSHAKE, handshake_message(msg_type, b"\x00" * 8))
    w.pump()
    assert_failed(w, s.UNEXPECTED_MESSAGE)


def test_end_of_early_data_when_0rtt_refused_is_unexpected(pki):
    # The server refused 0-RTT, so EndOfEarlyData must not come (RFC 8446 4.5).
    w = make_wire(pki, psk=True, early_data=b"early")
    w.client.start()
    w.pump()
    assert w.client.connected
    w.client.send_protected(s.HANDSHAKE, handshake_message(s.HS_END_OF_EARLY_DATA, b""))
    w.pump()
    assert_failed(w, s.UNEXPECTED_MESSAGE)


# --- Finished ------------------------------------------------------------------------------

def test_bad_client_finished_is_decrypt_error(pki):
    w = make_wire(pki, bad_finished=True)
    w.handshake()
    assert_failed(w, s.DECRYPT_ERROR)
    assert not w.of_type(HandshakeComplete)


def test_client_finished_of_wrong_length_is_decode_error(pki):
    w = make_wire(pki, session_id=b"")
    _up_to_client_finished(w)
    w.client.send_protected(s.HANDSHAKE, handshake_message(s.HS_FINISHED, b"\x00" * 31))
    w.pump()
    assert_failed(w, s.DECODE_ERROR)


def test_tampered_client_finished_record_is_bad_record_mac(pki):
    w = make_wire(pki, session_id=b"")
    w.client.start()
    w._server_events(w.server.receive(w.client.data_to_send()))
    w.client.receive(w.server.outgoing())
    finished = bytearray(w.client.data_to_send())
    finished[-1] ^= 0x80
    w.client.send_raw(bytes(finished))
    w.pump()
    assert_failed(w, s.BAD_RECORD_MAC)


def test_application_data_before_client_finished_is_unexpected(pki):
    w = make_wire(pki, session_id=b"")
    _up_to_client_finished(w)
    w.client.send_protected(s.APPLICATION_DATA, b"too early")
    w.pump()
    assert_failed(w, s.UNEXPECTED_MESSAGE)


def test_finished_split_across_records_with_data_after_it_in_the_last(pki):
    # RFC 8446 5.1: the Finished must end at a record boundary (a key change follows).
    w = make_wire(pki, session_id=b"")
    finished = _up_to_client_finished(w)
    w.client.send_protected(s.HANDSHAKE, finished[:10])
    w.client.send_protected(s.HANDSHAKE, finished[10:] + handshake_message(
        s.HS_KEY_UPDATE, b"\x00"))
    w.pump()
    assert_failed(w, s.UNEXPECTED_MESSAGE)


def test_ccs_before_client_hello_is_unexpected(pki):
    w = make_wire(pki)
    w.client.send_ccs()
    w.pump()
    assert_failed(w, s.UNEXPECTED_MESSAGE)


# --- certificate selection ----------------------------------------------------------------

def test_rsa_picked_when_client_offers_only_rsa_pss(pki):
    w = connected(pki, certs=("ecdsa-p256", "rsa-2048"),
                  signature_algorithms=(s.RSA_PSS_RSAE_SHA256,))
    assert w.client.certificate.entries[0][0] == pki["rsa-2048"].der
    assert w.client.certificate_verify.scheme == s.RSA_PSS_RSAE_SHA256


def test_first_fitting_candidate_wins(pki):
    w = connected(pki, certs=("ecdsa-p256", "rsa-2048"))
    assert w.client.certificate.entries[0][0] == pki["ecdsa-p256"].der


def test_ecdsa_curve_must_match_scheme_in_tls13(pki):
    w = connected(pki, certs=("ecdsa-p256", "ecdsa-p384", "rsa-2048"),
                  signature_algorithms=(s.ECDSA_SECP384R1_SHA384, s.RSA_PSS_RSAE_SHA256))
    assert w.client.certificate.entries[0][0] == pki["ecdsa-p384"].der


def test_rsa_pkcs1_only_client_gets_handshake_failure(pki):
    # TLS 1.3 signs CertificateVerify with RSA-PSS only (RFC 8446 4.4.3).
    w = make_wire(pki, certs=("rsa-2048",), signature_algorithms=(s.RSA_PKCS1_SHA256,))
    w.handshake()
    assert_failed(w, s.HANDSHAKE_FAILURE)


def test_unusable_candidate_skipped(pki, tmp_path):
    missing = str(tmp_path / "nope.pem")
    broken = str(pki.write_raw(b"-----BEGIN CERTIFICATE-----\nnot base64\n"))
    w = make_wire(pki, certs=(missing, broken, "rsa-2048"))
    assert isinstance(w.candidates[0], Unusable) and w.candidates[0].missing
    assert isinstance(w.candidates[1], Unusable)
    w.handshake()
    assert w.client.connected
    assert w.client.certificate.entries[0][0] == pki["rsa-2048"].der


def test_no_usable_candidate_is_alert_with_reason(pki, tmp_path):
    broken = str(pki.write_raw(b"not a pem file"))
    w = make_wire(pki, certs=(str(tmp_path / "missing.pem"), broken))
    w.handshake()
    failed = assert_failed(w, s.INTERNAL_ERROR)
    assert "no usable certificate" in failed.reason


def test_no_candidate_fits_the_signature_algorithms(pki):
    w = make_wire(pki, certs=("ecdsa-p256",), signature_algorithms=(s.RSA_PSS_RSAE_SHA256,))
    w.handshake()
    assert_failed(w, s.HANDSHAKE_FAILURE)


def test_choose_certificate_twice_is_ignored(pki):
    w = connected(pki)
    assert w.server.choose_certificate(w.candidates) == []
    exchange(w, 10)
