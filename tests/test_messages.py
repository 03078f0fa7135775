"""tls/messages.py: every parse_x/build_x pair round-trips, and every parser is total."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tlswrapper.tls import messages as m
from tlswrapper.tls import suites
from tlswrapper.tls.wire import DecodeError, Writer

FAST = settings(max_examples=200, deadline=None)

RANDOM = bytes(range(32))
SESSION_ID = bytes(range(100, 132))
X25519_SHARE = bytes(range(1, 33))
P256_SHARE = b"\x04" + bytes(range(64))
BINDER = bytes(range(32))


@dataclass(frozen=True)
class Case:
    name: str
    parse: Callable[[bytes], Any]
    build: Callable[[Any], bytes]
    value: Any
    # Cuts of the encoding that still parse (an optional trailing part, such as a hello's
    # extensions block); every other truncation must be a DecodeError.
    valid_cuts: tuple[int, ...] = ()


CLIENT_HELLO = m.ClientHello(
    legacy_version=suites.TLS12,
    random=RANDOM,
    session_id=SESSION_ID,
    cipher_suites=(0x1301, 0x1303, 0xC02B, suites.TLS_EMPTY_RENEGOTIATION_INFO_SCSV),
    compression_methods=b"\x00",
    extensions=(
        m.Extension(suites.EXT_SERVER_NAME, m.build_server_name("example.com")),
        m.Extension(suites.EXT_SUPPORTED_GROUPS,
                    m.build_supported_groups((suites.X25519, suites.SECP256R1))),
        m.Extension(suites.EXT_EC_POINT_FORMATS, m.build_ec_point_formats(b"\x00")),
        m.Extension(suites.EXT_SIGNATURE_ALGORITHMS, m.build_signature_algorithms(
            (suites.ECDSA_SECP256R1_SHA256, suites.RSA_PSS_RSAE_SHA256))),
        m.Extension(suites.EXT_EXTENDED_MASTER_SECRET, b""),
        m.Extension(suites.EXT_SUPPORTED_VERSIONS,
                    m.build_supported_versions_client((suites.TLS13, suites.TLS12))),
        m.Extension(suites.EXT_KEY_SHARE, m.build_key_share_client(
            ((suites.X25519, X25519_SHARE), (suites.SECP256R1, P256_SHARE)))),
        m.Extension(suites.EXT_PSK_KEY_EXCHANGE_MODES, m.build_psk_key_exchange_modes(b"\x01")),
        m.Extension(suites.EXT_PRE_SHARED_KEY,
                    m.build_pre_shared_key_client(((b"ticket", 1234),), (BINDER,))),
    ),
)
# Without extensions: 2 + 32 + 1 + 32 + 2 + 8 + 2 bytes, where an old client may stop.
_CH_CUT = 2 + 32 + 1 + len(SESSION_ID) + 2 + 2 * len(CLIENT_HELLO.cipher_suites) + 2
SERVER_HELLO = m.ServerHello(
    suites.TLS12, RANDOM, SESSION_ID, 0x1301,
    (m.Extension(suites.EXT_SUPPORTED_VERSIONS, m.build_supported_versions_server(suites.TLS13)),
     m.Extension(suites.EXT_KEY_SHARE, m.build_key_share_server(suites.X25519, X25519_SHARE))))
_SH_CUT = 2 + 32 + 1 + len(SESSION_ID) + 2 + 1
HRR = m.ServerHello(
    suites.TLS12, suites.HRR_RANDOM, SESSION_ID, 0x1302,
    (m.Extension(suites.EXT_SUPPORTED_VERSIONS, m.build_supported_versions_server(suites.TLS13)),
     m.Extension(suites.EXT_KEY_SHARE, m.build_key_share_hrr(suites.SECP256R1)),
     m.Extension(suites.EXT_COOKIE, m.build_cookie(b"cookie!"))))

CERT_DER = b"\x30\x82\x01\x00" + bytes(256)
CA_DER = b"\x30\x0b" + b"\x31\x09" + bytes(9)

CASES = [
    Case("client_hello", m.parse_client_hello, m.build_client_hello, CLIENT_HELLO,
         (_CH_CUT,)),
    Case("client_hello_tls10_no_extensions", m.parse_client_hello, m.build_client_hello,
         m.ClientHello(suites.TLS10, RANDOM, b"", (0xC013, 0xC014), b"\x01\x00", ())),
    Case("server_hello", m.parse_server_hello, m.build_server_hello, SERVER_HELLO, (_SH_CUT,)),
    Case("server_hello_tls12_empty_extensions", m.parse_server_hello, m.build_server_hello,
         m.ServerHello(suites.TLS12, RANDOM, b"", 0xC02F, ()), (2 + 32 + 1 + 2 + 1,)),
    Case("hello_retry_request", m.parse_server_hello, m.build_server_hello, HRR, (_SH_CUT,)),
    Case("encrypted_extensions", m.parse_encrypted_extensions, m.build_encrypted_extensions,
         m.EncryptedExtensions((m.Extension(suites.EXT_SERVER_NAME, b""),
                                m.Extension(suites.EXT_ALPN, m.build_alpn((b"h2",)))))),
    Case("encrypted_extensions_empty", m.parse_encrypted_extensions,
         m.build_encrypted_extensions, m.EncryptedExtensions(())),
    Case("certificate13", m.parse_certificate13, m.build_certificate13,
         m.Certificate13(b"", ((CERT_DER, b""), (CA_DER, b"\x00\x05\x00\x00"))),),
    Case("certificate13_empty", m.parse_certificate13, m.build_certificate13,
         m.Certificate13(b"\x01\x02", ())),
    Case("certificate12", m.parse_certificate12, m.build_certificate12,
         m.Certificate12((CERT_DER, CA_DER))),
    Case("certificate12_empty", m.parse_certificate12, m.build_certificate12,
         m.Certificate12(())),
    Case("certificate_verify", m.parse_certificate_verify, m.build_certificate_verify,
         m.CertificateVerify(suites.ECDSA_SECP256R1_SHA256, bytes(range(70)))),
    Case("server_key_exchange12", lambda b: m.parse_server_key_exchange(b, True),
         m.build_server_key_exchange,
         m.ServerKeyExchangeECDHE(suites.X25519, X25519_SHARE, suites.RSA_PSS_RSAE_SHA256,
                                  bytes(256))),
    Case("server_key_exchange10", lambda b: m.parse_server_key_exchange(b, False),
         m.build_server_key_exchange,
         m.ServerKeyExchangeECDHE(suites.SECP256R1, P256_SHARE, None, bytes(72))),
    Case("client_key_exchange", m.parse_client_key_exchange, m.build_client_key_exchange,
         m.ClientKeyExchangeECDHE(X25519_SHARE)),
    Case("finished12", lambda b: m.parse_finished(b, 12), m.build_finished,
         m.Finished(bytes(range(12)))),
    Case("finished13", lambda b: m.parse_finished(b, 48), m.build_finished,
         m.Finished(bytes(range(48)))),
    Case("key_update", m.parse_key_update, m.build_key_update, m.KeyUpdate(1)),
    Case("certificate_request13", m.parse_certificate_request13,
         m.build_certificate_request13,
         m.CertificateRequest13(b"", (m.Extension(
             suites.EXT_SIGNATURE_ALGORITHMS,
             m.build_signature_algorithms((suites.ECDSA_SECP256R1_SHA256,))),))),
    Case("certificate_request12", m.parse_certificate_request12,
         m.build_certificate_request12,
         m.CertificateRequest12(b"\x01\x40", (suites.RSA_PKCS1_SHA256,), (CA_DER, CA_DER))),
    Case("certificate_request10", lambda b: m.parse_certificate_request12(b, False),
         lambda x: m.build_certificate_request12(x, False),
         m.CertificateRequest12(b"\x40", (), ())),
    Case("alert", m.parse_alert, m.build_alert, m.Alert(2, suites.HANDSHAKE_FAILURE)),
    # Extension data.
    Case("server_name", m.parse_server_name, m.build_server_name, "mail.example.org"),
    Case("supported_groups", m.parse_supported_groups, m.build_supported_groups,
         (suites.X25519MLKEM768, suites.X25519, suites.SECP384R1)),
    Case("signature_algorithms", m.parse_signature_algorithms, m.build_signature_algorithms,
         (suites.RSA_PSS_RSAE_SHA256, suites.ECDSA_SECP384R1_SHA384)),
    Case("supported_versions_client", m.parse_supported_versions_client,
         m.build_supported_versions_client, (0x0A0A, suites.TLS13, suites.TLS12)),
    Case("supported_versions_server", m.parse_supported_versions_server,
         m.build_supported_versions_server, suites.TLS13),
    Case("key_share_client", m.parse_key_share_client, m.build_key_share_client,
         ((suites.X25519, X25519_SHARE), (suites.SECP256R1, P256_SHARE))),
    Case("key_share_client_empty", m.parse_key_share_client, m.build_key_share_client, ()),
    Case("key_share_server", m.parse_key_share_server,
         lambda v: m.build_key_share_server(*v), (suites.X25519, X25519_SHARE)),
    Case("key_share_hrr", m.parse_key_share_hrr, m.build_key_share_hrr, suites.SECP256R1),
    Case("ec_point_formats", m.parse_ec_point_formats, m.build_ec_point_formats, b"\x00\x01"),
    Case("renegotiation_info", m.parse_renegotiation_info, m.build_renegotiation_info,
         bytes(12)),
    Case("renegotiation_info_empty", m.parse_renegotiation_info, m.build_renegotiation_info,
         b""),
    Case("psk_key_exchange_modes", m.parse_psk_key_exchange_modes,
         m.build_psk_key_exchange_modes, b"\x00\x01"),
    Case("pre_shared_key_client", m.parse_pre_shared_key_client,
         lambda v: m.build_pre_shared_key_client(*v),
         (((b"id-1", 0), (b"id-two", 0xFFFFFFFF)), (BINDER, BINDER + bytes(16)))),
    Case("cookie", m.parse_cookie, m.build_cookie, b"\x00cookie"),
    Case("alpn", m.parse_alpn, m.build_alpn, (b"h2", b"http/1.1")),
    Case("certificate_authorities", m.parse_certificate_authorities,
         m.build_certificate_authorities, (CA_DER,)),
]
CASE_IDS = [c.name for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_build_then_parse_gives_the_same_value(case: Case) -> None:
    assert case.parse(case.build(case.value)) == case.value


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_parse_then_build_gives_the_same_bytes(case: Case) -> None:
    encoded = case.build(case.value)
    assert case.build(case.parse(encoded)) == encoded


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_truncation_at_every_position_is_a_decode_error(case: Case) -> None:
    encoded = case.build(case.value)
    for cut in range(len(encoded)):
        if cut in case.valid_cuts:
            case.parse(encoded[:cut])
            continue
        with pytest.raises(DecodeError):
            case.parse(encoded[:cut])


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_a_trailing_byte_is_a_decode_error(case: Case) -> None:
    with pytest.raises(DecodeError) as info:
        case.parse(case.build(case.value) + b"\x00")
    assert info.value.alert == suites.DECODE_ERROR


# --- totality: any input gives a value or a DecodeError ----------------------------------------

PARSERS: list[tuple[str, Callable[[bytes], Any]]] = [
    (name, getattr(m, name)) for name in sorted(dir(m))
    if name.startswith("parse_") and name not in {
        "parse_finished", "parse_server_key_exchange", "parse_certificate_request12",
        "parse_empty", "parse_extensions"}
] + [
    ("parse_finished", lambda b: m.parse_finished(b, 12)),
    ("parse_server_key_exchange/scheme", lambda b: m.parse_server_key_exchange(b, True)),
    ("parse_server_key_exchange/noscheme", lambda b: m.parse_server_key_exchange(b, False)),
    ("parse_certificate_request12/schemes", lambda b: m.parse_certificate_request12(b, True)),
    ("parse_certificate_request12/noschemes",
     lambda b: m.parse_certificate_request12(b, False)),
    ("parse_empty", lambda b: m.parse_empty(b, "ServerHelloDone")),
    ("parse_extensions", m.parse_extensions),
]
PARSER_IDS = [name for name, _ in PARSERS]
# Builders whose parse output can be built again, to check the re-encoding is stable.
REBUILD = {c.parse: c.build for c in CASES}


def test_every_parser_in_the_module_is_covered() -> None:
    names = {n for n in dir(m) if n.startswith("parse_")}
    assert names == {name.split("/")[0] for name, _ in PARSERS}
    round_tripped = {c.parse.__name__ for c in CASES} | {"parse_finished",
                                                         "parse_server_key_exchange",
                                                         "parse_certificate_request12"}
    assert names - round_tripped == {"parse_empty", "parse_extensions"}


def _check_total(parse: Callable[[bytes], Any], data: bytes) -> None:
    try:
        value = parse(data)
    except DecodeError as e:
        assert isinstance(e.reason, str) and e.reason
        assert e.alert in (suites.DECODE_ERROR, suites.ILLEGAL_PARAMETER)
        return
    build = REBUILD.get(parse)
    # None is a server_name list without a host_name: nothing to rebuild.
    if build is not None and value is not None:
        # What parsed once must rebuild into something that parses to the same value.
        assert parse(build(value)) == value


@pytest.mark.parametrize("name,parse", PARSERS, ids=PARSER_IDS)
@FAST
@given(data=st.binary(max_size=300))
def test_any_bytes_give_a_value_or_a_decode_error(name: str, parse: Callable[[bytes], Any],
                                                  data: bytes) -> None:
    _check_total(parse, data)


@st.composite
def _mutated(draw: st.DrawFn, encoded: bytes) -> bytes:
    # Valid encodings with a few bytes flipped, inserted or removed reach deeper than noise.
    data = bytearray(encoded)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete"]))
        at = draw(st.integers(0, len(data)))
        if op == "insert" or not data:
            data[at:at] = bytes([draw(st.integers(0, 255))])
        elif op == "flip":
            data[min(at, len(data) - 1)] ^= draw(st.integers(1, 255))
        else:
            del data[min(at, len(data) - 1)]
    return bytes(data)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@FAST
@given(data=st.data())
def test_mutated_valid_encodings_give_a_value_or_a_decode_error(case: Case,
                                                                 data: st.DataObject) -> None:
    _check_total(case.parse, data.draw(_mutated(case.build(case.value))))


# --- structured round trips ----------------------------------------------------------------

_u16 = st.integers(0, 0xFFFF)
_extensions = st.lists(
    st.builds(m.Extension, _u16.filter(lambda t: t != suites.EXT_PRE_SHARED_KEY),
              st.binary(max_size=40)),
    max_size=8, unique_by=lambda e: e.type).map(tuple)


@FAST
@given(st.builds(m.ClientHello, _u16, st.binary(min_size=32, max_size=32),
                 st.binary(max_size=32), st.lists(_u16, min_size=1, max_size=20).map(tuple),
                 st.binary(min_size=1, max_size=5), _extensions))
def test_any_client_hello_round_trips(hello: m.ClientHello) -> None:
    encoded = m.build_client_hello(hello)
    assert m.parse_client_hello(encoded) == hello
    assert m.build_client_hello(m.parse_client_hello(encoded)) == encoded


@FAST
@given(st.builds(m.ServerHello, _u16, st.binary(min_size=32, max_size=32),
                 st.binary(max_size=32), _u16, _extensions))
def test_any_server_hello_round_trips(hello: m.ServerHello) -> None:
    assert m.parse_server_hello(m.build_server_hello(hello)) == hello


@FAST
@given(st.binary(max_size=255),
       st.lists(st.tuples(st.binary(min_size=1, max_size=300), st.binary(max_size=20)),
                max_size=5).map(tuple))
def test_any_certificate13_round_trips(context: bytes,
                                       entries: tuple[tuple[bytes, bytes], ...]) -> None:
    cert = m.Certificate13(context, entries)
    assert m.parse_certificate13(m.build_certificate13(cert)) == cert


@FAST
@given(st.lists(st.tuples(_u16, st.binary(min_size=1, max_size=100)), max_size=6,
                unique_by=lambda s: s[0]).map(tuple))
def test_any_key_share_client_round_trips(shares: tuple[tuple[int, bytes], ...]) -> None:
    assert m.parse_key_share_client(m.build_key_share_client(shares)) == shares


# --- the rules the RFCs set ------------------------------------------------------------------

def _hello_with(extensions: tuple[m.Extension, ...]) -> bytes:
    return m.build_client_hello(
        m.ClientHello(suites.TLS12, RANDOM, b"", (0x1301,), b"\x00", extensions))


def test_client_hello_extension_lookup() -> None:
    assert CLIENT_HELLO.extension(suites.EXT_EXTENDED_MASTER_SECRET) == b""
    assert CLIENT_HELLO.extension(suites.EXT_ALPN) is None
    sni = CLIENT_HELLO.extension(suites.EXT_SERVER_NAME)
    assert sni is not None and m.parse_server_name(sni) == "example.com"


def test_client_hello_without_extensions_block_has_no_extensions() -> None:
    hello = m.parse_client_hello(_hello_with(()))
    assert hello.extensions == ()
    # An empty but present block is the same to us.
    assert m.parse_client_hello(_hello_with(()) + b"\x00\x00").extensions == ()


def test_client_hello_duplicate_extension_is_decode_error() -> None:
    body = _hello_with((m.Extension(suites.EXT_EXTENDED_MASTER_SECRET, b""),
                        m.Extension(suites.EXT_EXTENDED_MASTER_SECRET, b"")))
    with pytest.raises(DecodeError) as info:
        m.parse_client_hello(body)
    assert info.value.alert == suites.DECODE_ERROR


def test_pre_shared_key_not_last_is_illegal_parameter() -> None:
    psk = m.Extension(suites.EXT_PRE_SHARED_KEY,
                      m.build_pre_shared_key_client(((b"t", 0),), (BINDER,)))
    ems = m.Extension(suites.EXT_EXTENDED_MASTER_SECRET, b"")
    m.parse_client_hello(_hello_with((ems, psk)))
    with pytest.raises(DecodeError) as info:
        m.parse_client_hello(_hello_with((psk, ems)))
    assert info.value.alert == suites.ILLEGAL_PARAMETER


@pytest.mark.parametrize("mutate,reason", [
    (lambda b: b[:2] + b[2:34][:31] + b[34:], "short random"),
    (lambda b: b[:34] + b"\x21" + bytes(33) + b[35:], "session_id of 33"),
    (lambda b: b[:35] + b"\x00\x03\x13\x01\x00" + b[39:], "odd cipher_suites"),
    (lambda b: b[:35] + b"\x00\x00" + b[39:], "empty cipher_suites"),
    (lambda b: b[:39] + b"\x00", "empty compression_methods"),
], ids=["short_random", "long_session_id", "odd_cipher_suites", "empty_cipher_suites",
        "empty_compression"])
def test_client_hello_field_rules(mutate: Callable[[bytes], bytes], reason: str) -> None:
    body = _hello_with(())   # 2 + 32 + 1 (empty session_id) + 2 + 2 + 1 + 1
    assert len(body) == 41
    with pytest.raises(DecodeError) as info:
        m.parse_client_hello(mutate(body))
    assert info.value.alert == suites.DECODE_ERROR, reason


def test_server_hello_non_null_compression_is_illegal_parameter() -> None:
    body = bytearray(m.build_server_hello(SERVER_HELLO))
    body[_SH_CUT - 1] = 1
    with pytest.raises(DecodeError) as info:
        m.parse_server_hello(bytes(body))
    assert info.value.alert == suites.ILLEGAL_PARAMETER


def test_hello_retry_request_is_recognised_by_its_random() -> None:
    assert m.parse_server_hello(m.build_server_hello(HRR)).is_hello_retry_request
    assert not SERVER_HELLO.is_hello_retry_request


def test_server_hello_builder_rejects_a_bad_random() -> None:
    with pytest.raises(ValueError):
        m.build_server_hello(m.ServerHello(suites.TLS12, bytes(31), b"", 0x1301, ()))


def test_server_name_is_lower_cased_ascii() -> None:
    assert m.parse_server_name(m.build_server_name("WWW.Example.COM")) == "www.example.com"


def test_server_name_non_ascii_is_decode_error() -> None:
    data = b"\x00\x06\x00\x00\x03\xc3\xa9x"
    with pytest.raises(DecodeError):
        m.parse_server_name(data)


@pytest.mark.parametrize("data", [b"\x00\x00", b"\x00\x03\x00\x00\x00", b""],
                         ids=["empty_list", "empty_host_name", "no_list"])
def test_server_name_empty_forms_are_decode_errors(data: bytes) -> None:
    with pytest.raises(DecodeError):
        m.parse_server_name(data)


def test_server_name_other_name_types_are_skipped() -> None:
    assert m.parse_server_name(b"\x00\x05\x07\x00\x02ab") is None
    data = b"\x00\x0a\x07\x00\x02ab" + b"\x00\x00\x02cd"
    assert m.parse_server_name(data) == "cd"


def test_server_name_two_host_names_is_illegal_parameter() -> None:
    data = b"\x00\x0a" + b"\x00\x00\x02ab" + b"\x00\x00\x02cd"
    with pytest.raises(DecodeError) as info:
        m.parse_server_name(data)
    assert info.value.alert == suites.ILLEGAL_PARAMETER


@pytest.mark.parametrize("parse", [m.parse_signature_algorithms, m.parse_supported_groups],
                         ids=["signature_algorithms", "supported_groups"])
@pytest.mark.parametrize("data", [b"\x00\x03\x04\x03\x05", b"\x00\x00"], ids=["odd", "empty"])
def test_u16_lists_odd_or_empty_are_decode_errors(parse: Callable[[bytes], Any],
                                                  data: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        parse(data)
    assert info.value.alert == suites.DECODE_ERROR


def test_supported_versions_client_empty_is_decode_error() -> None:
    with pytest.raises(DecodeError):
        m.parse_supported_versions_client(b"\x00")


def test_key_share_empty_key_exchange_is_decode_error() -> None:
    with pytest.raises(DecodeError):
        m.parse_key_share_client(b"\x00\x04\x00\x1d\x00\x00")


def test_key_share_same_group_twice_is_illegal_parameter() -> None:
    data = m.build_key_share_client(((suites.X25519, X25519_SHARE),
                                     (suites.X25519, X25519_SHARE)))
    with pytest.raises(DecodeError) as info:
        m.parse_key_share_client(data)
    assert info.value.alert == suites.ILLEGAL_PARAMETER


@pytest.mark.parametrize("value", [2, 255])
def test_key_update_other_values_are_illegal_parameter(value: int) -> None:
    with pytest.raises(DecodeError) as info:
        m.parse_key_update(bytes([value]))
    assert info.value.alert == suites.ILLEGAL_PARAMETER


def test_key_update_wrong_length_is_decode_error() -> None:
    for body in (b"", b"\x00\x00"):
        with pytest.raises(DecodeError) as info:
            m.parse_key_update(body)
        assert info.value.alert == suites.DECODE_ERROR


def test_finished_wrong_length_is_decode_error() -> None:
    with pytest.raises(DecodeError):
        m.parse_finished(bytes(32), 48)
    assert m.parse_finished(bytes(48), 48) == m.Finished(bytes(48))


def test_server_hello_done_is_empty() -> None:
    assert m.build_server_hello_done() == b""
    m.parse_empty(b"", "ServerHelloDone")
    with pytest.raises(DecodeError, match="ServerHelloDone"):
        m.parse_empty(b"\x00", "ServerHelloDone")


def test_alert_must_be_two_bytes() -> None:
    for body in (b"", b"\x02", b"\x02\x28\x00"):
        with pytest.raises(DecodeError):
            m.parse_alert(body)


def test_ecdhe_params_is_what_server_key_exchange_starts_with() -> None:
    ske = m.ServerKeyExchangeECDHE(suites.X25519, X25519_SHARE, suites.RSA_PSS_RSAE_SHA256,
                                   b"sig")
    params = m.ecdhe_params(suites.X25519, X25519_SHARE)
    assert params == b"\x03\x00\x1d\x20" + X25519_SHARE
    assert m.build_server_key_exchange(ske) == params + b"\x08\x04\x00\x03sig"


def test_server_key_exchange_explicit_curve_is_refused() -> None:
    body = b"\x01" + m.build_server_key_exchange(
        m.ServerKeyExchangeECDHE(suites.X25519, X25519_SHARE, None, b""))[1:]
    with pytest.raises(DecodeError):
        m.parse_server_key_exchange(body, False)


@pytest.mark.parametrize("parse,data", [
    (m.parse_client_key_exchange, b"\x00"),
    (m.parse_ec_point_formats, b"\x00"),
    (m.parse_psk_key_exchange_modes, b"\x00"),
    (m.parse_cookie, b"\x00\x00"),
    (m.parse_alpn, b"\x00\x00"),
    (m.parse_alpn, b"\x00\x01\x00"),
    (m.parse_certificate_authorities, b"\x00\x00"),
    (m.parse_certificate_authorities, b"\x00\x02\x00\x00"),
    (m.parse_certificate12, b"\x00\x00\x03\x00\x00\x00"),
    (m.parse_certificate13, b"\x00\x00\x00\x05\x00\x00\x00\x00\x00"),
    (lambda b: m.parse_certificate_request12(b, True), b"\x00\x00\x00\x00\x00"),
    (lambda b: m.parse_certificate_request12(b, True), b"\x01\x01\x00\x00\x00\x00"),
], ids=["cke_point", "ec_point_formats", "psk_modes", "cookie", "alpn_list", "alpn_name",
        "ca_list", "ca_name", "cert12_entry", "cert13_entry", "cr12_types", "cr12_schemes"])
def test_vectors_that_must_not_be_empty(parse: Callable[[bytes], Any], data: bytes) -> None:
    with pytest.raises(DecodeError):
        parse(data)


def test_pre_shared_key_rules() -> None:
    ok = m.build_pre_shared_key_client(((b"t", 0),), (BINDER,))
    m.parse_pre_shared_key_client(ok)
    with pytest.raises(DecodeError):   # binder shorter than 32 bytes
        m.parse_pre_shared_key_client(m.build_pre_shared_key_client(((b"t", 0),), (bytes(31),)))
    with pytest.raises(DecodeError):   # no identities
        m.parse_pre_shared_key_client(m.build_pre_shared_key_client((), (BINDER,)))
    with pytest.raises(DecodeError):   # no binders
        m.parse_pre_shared_key_client(m.build_pre_shared_key_client(((b"t", 0),), ()))
    with pytest.raises(DecodeError) as info:
        m.parse_pre_shared_key_client(
            m.build_pre_shared_key_client(((b"t", 0), (b"u", 0)), (BINDER,)))
    assert info.value.alert == suites.ILLEGAL_PARAMETER


# --- over-long inner vectors: a length that exceeds its enclosing block ----------------------

def _overlong_extension_in_client_hello() -> bytes:
    # The last extension's data length claims 5 more bytes than the extensions block holds;
    # the 5 bytes do follow, but outside the block.
    w = Writer()
    w.u16(suites.TLS12)
    w.raw(RANDOM)
    w.vec8(b"")
    w.vec16(b"\x13\x01")
    w.vec8(b"\x00")
    with w.block16():
        w.u16(suites.EXT_EXTENDED_MASTER_SECRET)
        w.u16(5)
    w.raw(bytes(5))
    return w.getvalue()


OVERLONG = [
    ("client_hello_extension", m.parse_client_hello, _overlong_extension_in_client_hello()),
    ("encrypted_extensions", m.parse_encrypted_extensions, b"\x00\x04\x00\x00\x00\x03abc"),
    ("server_name_host", m.parse_server_name, b"\x00\x05\x00\x00\x05abcde"),
    ("alpn_name", m.parse_alpn, b"\x00\x03\x02h2" + b"x"),
    ("key_share_entry", m.parse_key_share_client, b"\x00\x05\x00\x1d\x00\x20x" + bytes(31)),
    ("psk_identity", m.parse_pre_shared_key_client,
     b"\x00\x07\x00\x05abcde" + b"\x00\x00" + b"\x00\x21\x20" + BINDER),
    ("psk_binder", m.parse_pre_shared_key_client,
     b"\x00\x07\x00\x01t\x00\x00\x00\x00" + b"\x00\x21\x21" + BINDER + b"!"),
    ("certificate13_cert", m.parse_certificate13,
     b"\x00" + b"\x00\x00\x06" + b"\x00\x00\x05abc\x00\x00" + b"de"),
    ("certificate13_extensions", m.parse_certificate13,
     b"\x00" + b"\x00\x00\x06" + b"\x00\x00\x01a\x00\x02" + b"xy"),
    ("certificate12_cert", m.parse_certificate12, b"\x00\x00\x04\x00\x00\x05a" + b"bcde"),
    ("certificate_authorities_name", m.parse_certificate_authorities,
     b"\x00\x03\x00\x04a" + b"bcd"),
    ("certificate_request12_name", m.parse_certificate_request12,
     b"\x01\x01\x00\x02\x04\x01\x00\x03\x00\x04a" + b"bcd"),
    ("supported_versions_in_u8_block", m.parse_supported_versions_client,
     b"\x03\x03\x04\x03" + b"\x03"),
]


@pytest.mark.parametrize("parse,data", [(p, d) for _, p, d in OVERLONG],
                         ids=[n for n, _, _ in OVERLONG])
def test_inner_vector_longer_than_its_block_is_a_decode_error(parse: Callable[[bytes], Any],
                                                               data: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        parse(data)
    assert info.value.alert == suites.DECODE_ERROR


# --- a real ClientHello from openssl s_client ----------------------------------------------

def _capture_openssl_client_hello(*args: str) -> bytes:
    """The first handshake message body openssl s_client sends, read by a one-shot server."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(10)
    port = listener.getsockname()[1]
    record = bytearray()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(10)
                while len(record) < 5 or len(record) < 5 + int.from_bytes(record[3:5], "big"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    record.extend(chunk)
        except OSError as e:
            errors.append(e)

    thread = threading.Thread(target=serve)
    thread.start()
    proc = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        thread.join(15)
    finally:
        proc.kill()
        proc.wait()
        listener.close()
    assert not errors and len(record) >= 9, errors
    # Record header: type, version, length (RFC 8446 section 5.1).
    assert record[0] == suites.HANDSHAKE
    length = int.from_bytes(record[3:5], "big")
    fragment = bytes(record[5:5 + length])
    assert len(fragment) == length
    # Handshake header: type, u24 length; a ClientHello fits in the first record here.
    assert fragment[0] == suites.HS_CLIENT_HELLO
    body_length = int.from_bytes(fragment[1:4], "big")
    assert len(fragment) == 4 + body_length
    return fragment[4:]


EXTENSION_PARSERS: dict[int, Callable[[bytes], Any]] = {
    suites.EXT_SERVER_NAME: m.parse_server_name,
    suites.EXT_SUPPORTED_GROUPS: m.parse_supported_groups,
    suites.EXT_EC_POINT_FORMATS: m.parse_ec_point_formats,
    suites.EXT_SIGNATURE_ALGORITHMS: m.parse_signature_algorithms,
    suites.EXT_SIGNATURE_ALGORITHMS_CERT: m.parse_signature_algorithms,
    suites.EXT_ALPN: m.parse_alpn,
    suites.EXT_SUPPORTED_VERSIONS: m.parse_supported_versions_client,
    suites.EXT_KEY_SHARE: m.parse_key_share_client,
    suites.EXT_PSK_KEY_EXCHANGE_MODES: m.parse_psk_key_exchange_modes,
    suites.EXT_PRE_SHARED_KEY: m.parse_pre_shared_key_client,
    suites.EXT_COOKIE: m.parse_cookie,
    suites.EXT_RENEGOTIATION_INFO: m.parse_renegotiation_info,
    suites.EXT_CERTIFICATE_AUTHORITIES: m.parse_certificate_authorities,
}

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl")


@needs_openssl
def test_openssl_s_client_hello_parses_with_sni_versions_and_x25519() -> None:
    body = _capture_openssl_client_hello("-servername", "Mail.Example.ORG",
                                         "-alpn", "h2,http/1.1")
    hello = m.parse_client_hello(body)
    assert len(hello.random) == 32
    assert 0x1301 in hello.cipher_suites
    assert m.build_client_hello(hello) == body
    for ext in hello.extensions:
        parse = EXTENSION_PARSERS.get(ext.type)
        if parse is not None:
            parse(ext.data)
    sni = hello.extension(suites.EXT_SERVER_NAME)
    assert sni is not None and m.parse_server_name(sni) == "mail.example.org"
    versions = hello.extension(suites.EXT_SUPPORTED_VERSIONS)
    assert versions is not None and suites.TLS13 in m.parse_supported_versions_client(versions)
    shares = hello.extension(suites.EXT_KEY_SHARE)
    assert shares is not None
    groups = dict(m.parse_key_share_client(shares))
    assert len(groups[suites.X25519]) == suites.KEY_SHARE_SIZES[suites.X25519][0]
    alpn = hello.extension(suites.EXT_ALPN)
    assert alpn is not None and m.parse_alpn(alpn) == (b"h2", b"http/1.1")


@needs_openssl
def test_openssl_s_client_tls12_hello_parses() -> None:
    body = _capture_openssl_client_hello("-tls1_2", "-servername", "example.com")
    hello = m.parse_client_hello(body)
    assert m.build_client_hello(hello) == body
    assert hello.extension(suites.EXT_SUPPORTED_VERSIONS) is None
    formats = hello.extension(suites.EXT_EC_POINT_FORMATS)
    assert formats is not None and b"\x00" in m.parse_ec_point_formats(formats)
    for ext in hello.extensions:
        parse = EXTENSION_PARSERS.get(ext.type)
        if parse is not None:
            parse(ext.data)
