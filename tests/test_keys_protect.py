"""Record protection: round trips for every suite and version, the record formats checked
with cryptography's primitives directly, tampering, CBC padding oracles, sequence limits."""

from __future__ import annotations

import hashlib
import hmac
import os

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from tlswrapper.keys import protect
from tlswrapper.tls import suites

VERSIONS = (suites.TLS10, suites.TLS11, suites.TLS12, suites.TLS13)


def _cases() -> list[tuple[int, int, bool]]:
    cases = []
    for code, suite in sorted(suites.SUITES.items()):
        for version in VERSIONS:
            if suite.version_min <= version <= suite.version_max:
                cases.append((code, version, False))
                if suite.mac is not None:
                    cases.append((code, version, True))
    return cases


CASES = _cases()
IDS = [f"{suites.SUITES[c].name}-{v:04x}{'-etm' if e else ''}" for c, v, e in CASES]


def _pair(code: int, version: int, etm: bool = False
          ) -> tuple[protect.RecordProtection, protect.RecordProtection, dict[str, bytes]]:
    """A sealing and an opening protection with the same random keys."""
    suite = suites.SUITES[code]
    keys = {"key": os.urandom(suite.key_len), "iv": os.urandom(suite.iv_len),
            "mac_key": os.urandom(suite.mac_len)}
    w = protect.new_protection(version, suite, keys["key"], keys["iv"], keys["mac_key"], etm)
    r = protect.new_protection(version, suite, keys["key"], keys["iv"], keys["mac_key"], etm)
    return w, r, keys


PLAINTEXTS = [b"", b"a", bytes(15), os.urandom(16), os.urandom(17), os.urandom(1000),
              os.urandom(suites.MAX_PLAINTEXT)]


@pytest.mark.parametrize("code,version,etm", CASES, ids=IDS)
def test_seal_open_round_trip_every_suite_and_version(code: int, version: int,
                                                      etm: bool) -> None:
    w, r, _ = _pair(code, version, etm)
    records = [(suites.APPLICATION_DATA, p) for p in PLAINTEXTS] + \
        [(suites.HANDSHAKE, b"\x14\x00\x00\x0c" + bytes(12)), (suites.ALERT, b"\x01\x00")]
    for batch in (records, records[:2], records[3:]):
        wire = w.seal(batch)
        split = _split_records(wire)
        assert len(split) == len(batch)
        for rec in split:
            expected_version = 0x0303 if version == suites.TLS13 else version
            assert int.from_bytes(rec[1:3], "big") == expected_version
            if version == suites.TLS13:
                assert rec[0] == suites.APPLICATION_DATA
        results: list = []
        while split:
            # open() stops right after a record that is not application_data (it may change
            # the keys); the caller resubmits the rest.
            got, alert, reason = r.open(split)
            assert (alert, reason) == (0, "")
            assert got
            if len(got) < len(split):
                assert got[-1][0] != suites.APPLICATION_DATA
            results += got
            split = split[len(got):]
        assert results == list(batch)
    assert w.seq == r.seq == len(records) + 2 + len(records) - 3


def _split_records(wire: bytes) -> list[bytes]:
    out = []
    pos = 0
    while pos < len(wire):
        n = int.from_bytes(wire[pos + 3:pos + 5], "big")
        out.append(wire[pos:pos + 5 + n])
        pos += 5 + n
    return out


@pytest.mark.parametrize("code,version,etm", CASES, ids=IDS)
def test_any_flipped_bit_in_the_fragment_is_bad_record_mac(code: int, version: int,
                                                           etm: bool) -> None:
    w, _, keys = _pair(code, version, etm)
    suite = suites.SUITES[code]
    record = w.seal([(suites.APPLICATION_DATA, b"attack at dawn" * 5)])
    positions = range(5, len(record))
    for pos in positions:
        tampered = bytearray(record)
        tampered[pos] ^= 0x01
        r = protect.new_protection(version, suite, keys["key"], keys["iv"], keys["mac_key"],
                                   etm)
        results, alert, _ = r.open([bytes(tampered)])
        assert results == [] and alert == suites.BAD_RECORD_MAC, pos
        assert r.seq == 0


@pytest.mark.parametrize("code,version,etm", CASES, ids=IDS)
def test_header_type_and_version_are_authenticated(code: int, version: int, etm: bool) -> None:
    w, _, keys = _pair(code, version, etm)
    suite = suites.SUITES[code]
    record = w.seal([(suites.APPLICATION_DATA, b"x" * 40)])
    for pos, value in ((0, suites.HANDSHAKE), (2, (version & 0xFF) ^ 1)):
        tampered = bytearray(record)
        tampered[pos] = value
        r = protect.new_protection(version, suite, keys["key"], keys["iv"], keys["mac_key"],
                                   etm)
        _, alert, _ = r.open([bytes(tampered)])
        if version == suites.TLS13 and pos == 0:
            assert alert == suites.UNEXPECTED_MESSAGE
        else:
            assert alert == suites.BAD_RECORD_MAC


@pytest.mark.parametrize("code,version,etm", CASES, ids=IDS)
def test_replayed_or_reordered_record_fails(code: int, version: int, etm: bool) -> None:
    w, r, _ = _pair(code, version, etm)
    first, second = _split_records(w.seal([(23, b"one"), (23, b"two")]))
    results, alert, _ = r.open([first, first])
    assert results == [(23, b"one")] and alert == suites.BAD_RECORD_MAC


def test_open_stops_at_first_failure_and_keeps_earlier_results() -> None:
    w, r, _ = _pair(0x1302, suites.TLS13)
    recs = _split_records(w.seal([(23, b"a"), (23, b"b"), (23, b"c")]))
    bad = bytearray(recs[1])
    bad[-1] ^= 1
    results, alert, _ = r.open([recs[0], bytes(bad), recs[2]])
    assert results == [(23, b"a")] and alert == suites.BAD_RECORD_MAC


def test_header_length_mismatch_is_decode_error() -> None:
    w, r, _ = _pair(0x1301, suites.TLS13)
    rec = w.seal([(23, b"hello")])
    assert r.open([rec + b"\x00"])[1] == suites.DECODE_ERROR
    assert r.open([rec[:3]])[1] == suites.DECODE_ERROR


# --- TLS 1.3 details -------------------------------------------------------------------------

def _tls13_record(key: bytes, iv: bytes, seq: int, inner: bytes) -> bytes:
    length = len(inner) + 16
    header = bytes((23, 3, 3)) + length.to_bytes(2, "big")
    nonce = (int.from_bytes(iv, "big") ^ seq).to_bytes(12, "big")
    return header + AESGCM(key).encrypt(nonce, inner, header)


def test_tls13_record_format_nonce_is_iv_xor_seq() -> None:
    key, iv = os.urandom(16), os.urandom(12)
    w = protect.new_protection(suites.TLS13, suites.SUITES[0x1301], key, iv)
    w.seq = 0x0102030405060708
    rec = w.seal([(suites.HANDSHAKE, b"hello")])
    assert rec == _tls13_record(key, iv, 0x0102030405060708, b"hello" + bytes((22,)))


def test_tls13_padding_removed_and_inner_type_returned() -> None:
    key, iv = os.urandom(16), os.urandom(12)
    r = protect.new_protection(suites.TLS13, suites.SUITES[0x1301], key, iv)
    recs = [_tls13_record(key, iv, 0, b"data\x17" + bytes(100)),
            _tls13_record(key, iv, 1, b"\x15" + bytes(3)),
            _tls13_record(key, iv, 2, b"\x00\x00\x16" + bytes(1))]
    # open() stops after each record that is not application_data.
    assert r.open(recs) == ([(23, b"data"), (21, b"")], 0, "")
    assert r.open(recs[2:]) == ([(22, b"\x00\x00")], 0, "")


def test_tls13_all_zero_inner_plaintext_is_unexpected_message() -> None:
    key, iv = os.urandom(16), os.urandom(12)
    r = protect.new_protection(suites.TLS13, suites.SUITES[0x1301], key, iv)
    assert r.open([_tls13_record(key, iv, 0, bytes(20))])[1] == suites.UNEXPECTED_MESSAGE
    r = protect.new_protection(suites.TLS13, suites.SUITES[0x1301], key, iv)
    assert r.open([_tls13_record(key, iv, 0, b"")])[1] == suites.BAD_RECORD_MAC


def test_tls13_overlong_inner_plaintext_is_record_overflow() -> None:
    key, iv = os.urandom(16), os.urandom(12)
    r = protect.new_protection(suites.TLS13, suites.SUITES[0x1301], key, iv)
    rec = _tls13_record(key, iv, 0, bytes(suites.MAX_PLAINTEXT + 1) + b"\x17")
    assert r.open([rec])[1] == suites.RECORD_OVERFLOW
    # Padding up to the limit is fine.
    r = protect.new_protection(suites.TLS13, suites.SUITES[0x1301], key, iv)
    rec = _tls13_record(key, iv, 0, b"x\x17" + bytes(suites.MAX_PLAINTEXT - 1))
    assert r.open([rec]) == ([(23, b"x")], 0, "")
    too_long = bytes((23, 3, 3)) + (suites.MAX_CIPHERTEXT_13 + 1).to_bytes(2, "big") \
        + bytes(suites.MAX_CIPHERTEXT_13 + 1)
    assert r.open([too_long])[1] == suites.RECORD_OVERFLOW


# --- TLS 1.2 AEAD formats ----------------------------------------------------------------------

def test_tls12_gcm_explicit_nonce_is_the_sequence_number() -> None:
    suite = suites.SUITES[0xC02F]
    key, salt = os.urandom(16), os.urandom(4)
    w = protect.new_protection(suites.TLS12, suite, key, salt)
    w.seq = 5
    rec = w.seal([(23, b"payload")])
    assert rec[:5] == bytes((23, 3, 3, 0, 8 + 7 + 16))
    assert rec[5:13] == (5).to_bytes(8, "big")
    ad = (5).to_bytes(8, "big") + bytes((23, 3, 3, 0, 7))
    assert AESGCM(key).decrypt(salt + rec[5:13], rec[13:], ad) == b"payload"


def test_tls12_chacha20_nonce_is_iv_xor_seq_no_explicit_part() -> None:
    suite = suites.SUITES[0xCCA8]
    key, iv = os.urandom(32), os.urandom(12)
    w = protect.new_protection(suites.TLS12, suite, key, iv)
    w.seq = 9
    rec = w.seal([(22, b"payload")])
    assert rec[:5] == bytes((22, 3, 3, 0, 7 + 16))
    nonce = (int.from_bytes(iv, "big") ^ 9).to_bytes(12, "big")
    ad = (9).to_bytes(8, "big") + bytes((22, 3, 3, 0, 7))
    assert ChaCha20Poly1305(key).decrypt(nonce, rec[5:], ad) == b"payload"


# --- CBC formats, Lucky 13 ---------------------------------------------------------------------

def _mac(hash_name: str, key: bytes, seq: int, ctype: int, version: int, data: bytes) -> bytes:
    header = seq.to_bytes(8, "big") + bytes((ctype,)) + version.to_bytes(2, "big") \
        + len(data).to_bytes(2, "big")
    return hmac.new(key, header + data, hash_name).digest()


@pytest.mark.parametrize("version", [suites.TLS10, suites.TLS11, suites.TLS12])
def test_cbc_mac_then_encrypt_format(version: int) -> None:
    suite = suites.SUITES[0xC013]   # AES_128_CBC_SHA
    key, iv, mk = os.urandom(16), os.urandom(16), os.urandom(20)
    w = protect.new_protection(version, suite, key, iv, mk)
    recs = _split_records(w.seal([(23, b"first record"), (23, b"second record")]))
    chain = iv
    for seq, (rec, text) in enumerate(zip(recs, (b"first record", b"second record"))):
        body = rec[5:]
        if version == suites.TLS10:
            # Chained IV: the first from the key block, then the last ciphertext block.
            dec = Cipher(algorithms.AES(key), modes.CBC(chain)).decryptor()
            plain = dec.update(body) + dec.finalize()
            chain = body[-16:]
        else:
            dec = Cipher(algorithms.AES(key), modes.CBC(body[:16])).decryptor()
            plain = dec.update(body[16:]) + dec.finalize()
        pad = plain[-1]
        assert plain[-pad - 1:] == bytes((pad,)) * (pad + 1)
        assert plain[:len(text)] == text
        assert plain[len(text):len(text) + 20] == _mac("sha1", mk, seq, 23, version, text)
        assert len(plain) == len(text) + 20 + pad + 1


@pytest.mark.parametrize("version", [suites.TLS10, suites.TLS12])
def test_cbc_encrypt_then_mac_format(version: int) -> None:
    suite = suites.SUITES[0xC00A] if version == suites.TLS10 else suites.SUITES[0xC028]
    key, iv, mk = os.urandom(32), os.urandom(16), os.urandom(suite.mac_len)
    w = protect.new_protection(version, suite, key, iv, mk, True)
    rec = w.seal([(23, b"etm record")])
    ml = suite.mac_len
    body, tag = rec[5:-ml], rec[-ml:]
    # RFC 7366: the MAC covers seq, type, version, length of IV || ciphertext, and them.
    assert tag == _mac(suite.mac or "", mk, 0, 23, version, body)
    if version == suites.TLS10:
        dec = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
        plain = dec.update(body)
    else:
        dec = Cipher(algorithms.AES(key), modes.CBC(body[:16])).decryptor()
        plain = dec.update(body[16:])
    assert plain[:10] == b"etm record" and plain[-1] == 5 and plain[10:] == bytes([5]) * 6


def _mte_record(version: int, key: bytes, mk: bytes, text: bytes, pad: int,
                corrupt: str = "") -> bytes:
    """A TLS 1.2 AES_128_CBC_SHA record built by hand, with chosen padding and damage."""
    mac = bytearray(_mac("sha1", mk, 0, 23, version, text))
    if corrupt == "mac":
        mac[3] ^= 0x40
    padding = bytearray(bytes((pad,)) * (pad + 1))
    if corrupt == "padding":
        padding[0] ^= 0x01
    if corrupt == "padding-length":
        padding[-1] = 200    # claims more padding than the record holds
    plain = text + bytes(mac) + bytes(padding)
    iv = os.urandom(16)
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    body = iv + enc.update(plain) + enc.finalize()
    return bytes((23,)) + version.to_bytes(2, "big") + len(body).to_bytes(2, "big") + body


@pytest.mark.parametrize("pad", [0, 11, 27, 255])
def test_cbc_any_valid_padding_length_accepted(pad: int) -> None:
    key, mk = os.urandom(16), os.urandom(20)
    text = b"x" * 13   # 13 + 20 + 1 + pad is a multiple of 16 for pad 11, 27, ..., 255
    if (len(text) + 20 + pad + 1) % 16:
        text = b"x" * (13 + (16 - (len(text) + 20 + pad + 1) % 16))
    r = protect.new_protection(suites.TLS12, suites.SUITES[0xC013], key, os.urandom(16), mk)
    assert r.open([_mte_record(suites.TLS12, key, mk, text, pad)]) == ([(23, text)], 0, "")


@pytest.mark.parametrize("corrupt", ["mac", "padding", "padding-length"])
def test_cbc_bad_padding_and_bad_mac_give_the_same_answer(corrupt: str) -> None:
    key, mk = os.urandom(16), os.urandom(20)
    text = b"y" * 16 * 4 + b"y" * 4   # 68 + 20 + 1 + 7 = 96
    r = protect.new_protection(suites.TLS12, suites.SUITES[0xC013], key, os.urandom(16), mk)
    results, alert, reason = r.open([_mte_record(suites.TLS12, key, mk, text, 7, corrupt)])
    assert (results, alert, reason) == ([], suites.BAD_RECORD_MAC, "record did not authenticate")


class _CountingHash:
    """Stands in for the keyed HMAC and the dummy hash, counting bytes fed to each."""

    def __init__(self, real: object, log: list[tuple[str, int]], name: str) -> None:
        self._real = real
        self._log = log
        self._name = name
        self.digest_size = real.digest_size   # type: ignore[attr-defined]

    def copy(self) -> _CountingHash:
        return _CountingHash(self._real.copy(), self._log, self._name)  # type: ignore[attr-defined]

    def update(self, data: bytes) -> None:
        self._log.append((self._name, len(data)))
        self._real.update(data)   # type: ignore[attr-defined]

    def digest(self) -> bytes:
        return self._real.digest()   # type: ignore[attr-defined]


@pytest.mark.parametrize("hash_code", [0xC013, 0xC027, 0xC028])   # SHA-1, SHA-256, SHA-384
def test_cbc_mac_check_costs_the_same_compressions_whatever_the_padding(hash_code: int) -> None:
    """Lucky Thirteen: for one record length, every padding length and every failure must
    make the HMAC's inner hash run the same number of compression blocks."""
    suite = suites.SUITES[hash_code]
    block = 128 if suite.mac == "sha384" else 64
    tail = 17 if block == 128 else 9
    key, mk = os.urandom(16 if suite.key_len == 16 else 32), os.urandom(suite.mac_len)
    total = 320   # plaintext + MAC + padding, after the explicit IV
    counts = set()
    for pad in (0, 1, 15, 16, 63, 64, 127, 200, 255):
        text_len = total - suite.mac_len - pad - 1
        if text_len < 0:
            continue
        for corrupt in ("", "mac", "padding"):
            text = os.urandom(text_len)
            mac = bytearray(_mac(suite.mac or "", mk, 0, 23, suites.TLS12, text))
            if corrupt == "mac":
                mac[0] ^= 1
            padding = bytearray(bytes((pad,)) * (pad + 1))
            if corrupt == "padding" and pad > 0:
                padding[0] ^= 1
            iv = os.urandom(16)
            enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
            body = iv + enc.update(text + bytes(mac) + bytes(padding)) + enc.finalize()
            rec = bytes((23, 3, 3)) + len(body).to_bytes(2, "big") + body
            r = protect.new_protection(suites.TLS12, suite, key, os.urandom(16), mk)
            log: list[tuple[str, int]] = []
            r._mac = _CountingHash(r._mac, log, "mac")          # type: ignore[attr-defined]
            r._dummy = _CountingHash(r._dummy, log, "dummy")    # type: ignore[attr-defined]
            results, alert, _ = r.open([rec])
            ok = corrupt == "" or (corrupt == "padding" and pad == 0)
            assert (alert == 0) == ok, (pad, corrupt)
            mac_bytes = sum(n for name, n in log if name == "mac")
            dummy_bytes = sum(n for name, n in log if name == "dummy")
            assert dummy_bytes % block == 0
            compressions = (mac_bytes + tail + block - 1) // block + dummy_bytes // block
            counts.add(compressions)
    assert len(counts) == 1


@pytest.mark.parametrize("version", [suites.TLS10, suites.TLS11, suites.TLS12])
def test_cbc_malformed_lengths_are_bad_record_mac(version) -> None:
    """RFC 5246 7.2.2: a ciphertext that is not a multiple of the block size, or too short for
    (IV,) MAC and padding, is bad_record_mac like a bad MAC or padding (not decode_error)."""
    key, mk = os.urandom(16), os.urandom(20)
    iv_len = 16 if version >= suites.TLS11 else 0
    r = protect.new_protection(version, suites.SUITES[0xC013], key, os.urandom(16), mk)
    # not a block multiple, or too short for IV + MAC (20) + one padding byte
    for n in (0, 1, 15, 17, 31, 33, iv_len + 16, iv_len + 31, iv_len + 33):
        rec = bytes((23, 3, version & 0xFF)) + n.to_bytes(2, "big") + bytes(n)
        assert r.open([rec])[1] == suites.BAD_RECORD_MAC, n
    etm = protect.new_protection(version, suites.SUITES[0xC013], key, os.urandom(16), mk,
                                 True)
    for n in (0, 19, 20, 36, 20 + 33, 20 + iv_len + 15):
        rec = bytes((23, 3, version & 0xFF)) + n.to_bytes(2, "big") + bytes(n)
        assert etm.open([rec])[1] == suites.BAD_RECORD_MAC, n


def test_etm_bad_padding_after_good_mac_is_bad_record_mac() -> None:
    suite = suites.SUITES[0xC013]
    key, mk = os.urandom(16), os.urandom(20)
    iv = os.urandom(16)
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    body = iv + enc.update(b"z" * 14 + b"\x05\x01") + enc.finalize()   # pad byte 1, wrong
    tag = _mac("sha1", mk, 0, 23, suites.TLS12, body)
    rec = bytes((23, 3, 3)) + (len(body) + 20).to_bytes(2, "big") + body + tag
    r = protect.new_protection(suites.TLS12, suite, key, os.urandom(16), mk, True)
    assert r.open([rec])[1] == suites.BAD_RECORD_MAC


# --- limits --------------------------------------------------------------------------------

@pytest.mark.parametrize("code,version,etm", CASES[:1] + CASES[4:5] + CASES[-2:], ids=None)
def test_sequence_number_never_wraps(code: int, version: int, etm: bool) -> None:
    w, r, _ = _pair(code, version, etm)
    w.seq = r.seq = protect.SEQ_LIMIT - 1
    rec = w.seal([(23, b"last")])
    assert r.open([rec]) == ([(23, b"last")], 0, "")
    assert w.seq == protect.SEQ_LIMIT
    with pytest.raises(protect.ProtectionError) as e:
        w.seal([(23, b"one too many")])
    assert e.value.alert == suites.INTERNAL_ERROR
    assert r.open([rec])[1] == suites.INTERNAL_ERROR


def test_seal_refuses_a_batch_that_would_pass_the_limit_without_sealing_any() -> None:
    w, _, _ = _pair(0x1303, suites.TLS13)
    w.seq = protect.SEQ_LIMIT - 1
    with pytest.raises(protect.ProtectionError):
        w.seal([(23, b"a"), (23, b"b")])
    assert w.seq == protect.SEQ_LIMIT - 1


def test_seal_refuses_plaintext_over_2_14() -> None:
    w, _, _ = _pair(0xC02B, suites.TLS12)
    with pytest.raises(protect.ProtectionError):
        w.seal([(23, bytes(suites.MAX_PLAINTEXT + 1))])
    assert w.seq == 0


def test_tls12_overlong_ciphertext_is_record_overflow() -> None:
    for code in (0xC02F, 0xC013):
        _, r, _ = _pair(code, suites.TLS12)
        n = suites.MAX_CIPHERTEXT_12 + 16
        rec = bytes((23, 3, 3)) + n.to_bytes(2, "big") + bytes(n)
        assert r.open([rec])[1] == suites.RECORD_OVERFLOW


def test_suite_not_allowed_in_version_refused() -> None:
    with pytest.raises(ValueError):
        protect.new_protection(suites.TLS11, suites.SUITES[0xC02F], bytes(16), bytes(4))
    with pytest.raises(ValueError):
        protect.new_protection(suites.TLS12, suites.SUITES[0x1301], bytes(16), bytes(12))


def test_sha_names_match_hashlib() -> None:
    for suite in suites.SUITES.values():
        if suite.mac:
            assert hashlib.new(suite.mac).digest_size == suite.mac_len


# --- totality: any bytes give results or an alert, never an exception ----------------------------

@settings(max_examples=300, deadline=None)
@given(case=st.sampled_from(CASES), blobs=st.lists(st.binary(max_size=300), max_size=4),
       fix_length=st.booleans())
def test_open_is_total(case: tuple[int, int, bool], blobs: list[bytes], fix_length: bool) -> None:
    code, version, etm = case
    _, r, _ = _pair(code, version, etm)
    records = []
    for blob in blobs:
        if fix_length and len(blob) >= 5:
            blob = blob[:3] + (len(blob) - 5).to_bytes(2, "big") + blob[5:]
        records.append(blob)
    results, alert, reason = r.open(records)
    assert isinstance(results, list) and isinstance(alert, int) and isinstance(reason, str)
    assert (alert == 0) == (len(results) == len(records))
