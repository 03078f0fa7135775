"""LocalKeyService: load/jail order, select, every signature scheme verified with the public
key, key shares for every group against a client made of cryptography primitives, and the
TLS 1.2 / 1.3 derivations driven end to end against an independent client-side schedule."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, mlkem, padding, rsa, x25519

import certs as kh
from tlswrapper.keys import local, pem, protect, schedule12, schedule13
from tlswrapper.tls import keyservice, suites
from tlswrapper.tls.keyservice import Candidate, KeyServiceError, Unusable

HASHES = {"sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha384": hashes.SHA384,
          "sha512": hashes.SHA512}


@pytest.fixture()
def rsa_file(tmp_path: Path) -> tuple[Path, rsa.RSAPrivateKey]:
    key = kh.rsa_key(2048)
    return kh.write_pem(tmp_path / "rsa.pem", key, [kh.certificate(key)]), key


@pytest.fixture()
def ec_file(tmp_path: Path) -> tuple[Path, ec.EllipticCurvePrivateKey]:
    key = kh.ec_key()
    return kh.write_pem(tmp_path / "ec.pem", key, [kh.certificate(key)], "traditional"), key


# --- load / select ----------------------------------------------------------------------------

def test_load_reads_all_files_then_jails_then_parses(tmp_path: Path, rsa_file, ec_file,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_parse = pem.parse_public

    def parse(sealed: pem.SealedPem):   # type: ignore[no-untyped-def]
        events.append("parse")
        return real_parse(sealed)

    monkeypatch.setattr(pem, "parse_public", parse)

    def jail() -> None:
        events.append("jail")
        # After the jail the files are out of reach: everything was read before.
        rsa_file[0].unlink()
        ec_file[0].unlink()

    bad = tmp_path / "bad.pem"
    bad.write_bytes(b"not a pem")
    svc = local.LocalKeyService(jail=jail)
    answer = svc.load([str(ec_file[0]), str(tmp_path / "missing.pem"), str(bad),
                       str(rsa_file[0])])
    assert events == ["jail", "parse", "parse", "parse"]
    assert isinstance(answer[0], Candidate) and answer[0].key_type == suites.KEY_EC_P256
    assert answer[1] == Unusable("missing", missing=True)
    assert answer[2] == Unusable("no certificate")
    assert answer[3] == Candidate(answer[3].chain, suites.KEY_RSA, 2048)  # type: ignore[union-attr]
    svc.select(3)   # the file is gone: the sealed copy read before the jail serves
    sig = svc.sign(suites.RSA_PSS_RSAE_SHA256, b"data")
    rsa_file[1].public_key().verify(sig, b"data", padding.PSS(padding.MGF1(hashes.SHA256()), 32),
                                    hashes.SHA256())
    with pytest.raises(KeyServiceError):
        svc.load([])


def test_jail_failure_propagates(rsa_file) -> None:
    def jail() -> None:
        raise PermissionError("setuid failed")

    with pytest.raises(PermissionError):
        local.LocalKeyService(jail=jail).load([str(rsa_file[0])])


def test_select_refuses_unusable_and_reports_mismatch(tmp_path: Path, rsa_file) -> None:
    key, other = kh.ec_key(), kh.ec_key()
    wrong = kh.write_pem(tmp_path / "wrong.pem", key, [kh.certificate(other)])
    svc = local.LocalKeyService()
    answer = svc.load([str(tmp_path / "missing"), str(wrong)])
    assert isinstance(answer[1], Candidate)   # the key is not parsed before select
    with pytest.raises(KeyServiceError) as e:
        svc.select(0)
    assert e.value.alert == suites.HANDSHAKE_FAILURE
    with pytest.raises(KeyServiceError) as e:
        svc.select(7)
    with pytest.raises(KeyServiceError) as e:
        svc.select(1)
    assert e.value.alert == suites.INTERNAL_ERROR
    assert "key does not match certificate" in e.value.reason
    with pytest.raises(KeyServiceError):
        svc.sign(suites.ECDSA_SECP256R1_SHA256, b"data")


def test_failed_select_leaves_no_key_and_the_flights_fail_first(tmp_path: Path,
                                                                  ec_file) -> None:
    """A failed select never leaves an earlier key in use: the engine may have sent its
    flight call right behind the select (PipeKeyService defers select), and that call must
    fail before doing anything rather than sign with a key the engine did not choose."""
    key, other = kh.ec_key(), kh.ec_key()
    wrong = kh.write_pem(tmp_path / "wrong.pem", key, [kh.certificate(other)])
    svc = local.LocalKeyService()
    svc.load([str(ec_file[0]), str(wrong)])
    svc.select(0)
    assert svc.sign(suites.ECDSA_SECP256R1_SHA256, b"data")
    with pytest.raises(KeyServiceError):
        svc.select(1)        # the other sealed keys were dropped at select(0): refused
    with pytest.raises(KeyServiceError, match="sign before select"):
        svc.sign(suites.ECDSA_SECP256R1_SHA256, b"data")

    svc = local.LocalKeyService()
    svc.load([str(wrong), str(ec_file[0])])
    with pytest.raises(KeyServiceError, match="key does not match certificate"):
        svc.select(0)
    peer = x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()
    with pytest.raises(KeyServiceError, match="no key selected") as e:
        svc.server_flight13(suites.X25519, peer, 0x1301, suites.ECDSA_SECP256R1_SHA256,
                            [b"ch"], b"sh", [b"ee"], False)
    assert e.value.alert == suites.INTERNAL_ERROR
    with pytest.raises(KeyServiceError, match="no key selected"):
        svc.server_key_exchange12(suites.X25519, suites.ECDSA_SECP256R1_SHA256, b"c" * 32,
                                  b"s" * 32)
    # Nothing was done: no ephemeral key, no secret, no protection.
    assert svc._ephemeral is None and svc._shared is None and svc._schedule is None
    assert svc._current == [None, None] and svc._pending == [None, None]
    # The next candidate works, and signs with its own key.
    svc.select(1)
    public, signature = svc.server_key_exchange12(suites.X25519, suites.ECDSA_SECP256R1_SHA256,
                                                  b"c" * 32, b"s" * 32)
    from tlswrapper.tls import messages
    ec_file[1].public_key().verify(
        signature, b"c" * 32 + b"s" * 32 + messages.ecdhe_params(suites.X25519, public),
        ec.ECDSA(hashes.SHA256()))


# --- signatures -----------------------------------------------------------------------------

RSA_SCHEMES = [suites.RSA_PKCS1_SHA1, suites.RSA_PKCS1_SHA256, suites.RSA_PKCS1_SHA384,
               suites.RSA_PKCS1_SHA512, suites.RSA_PSS_RSAE_SHA256, suites.RSA_PSS_RSAE_SHA384,
               suites.RSA_PSS_RSAE_SHA512]
EC_SCHEMES = [suites.ECDSA_SHA1, suites.ECDSA_SECP256R1_SHA256, suites.ECDSA_SECP384R1_SHA384,
              suites.ECDSA_SECP521R1_SHA512, suites.LEGACY_ECDSA_SHA1]


def _loaded(path: Path) -> local.LocalKeyService:
    svc = local.LocalKeyService()
    assert isinstance(svc.load([str(path)])[0], Candidate)
    svc.select(0)
    return svc


@pytest.mark.parametrize("scheme", RSA_SCHEMES)
def test_rsa_signatures_verify(rsa_file, scheme: int) -> None:
    path, key = rsa_file
    svc = _loaded(path)
    data = os.urandom(130)
    sig = svc.sign(scheme, data)
    algorithm = HASHES[suites.SIGNATURE_SCHEME_HASH[scheme]]()
    if scheme in (suites.RSA_PSS_RSAE_SHA256, suites.RSA_PSS_RSAE_SHA384,
                  suites.RSA_PSS_RSAE_SHA512):
        pad: padding.AsymmetricPadding = padding.PSS(padding.MGF1(algorithm),
                                                     algorithm.digest_size)
    else:
        pad = padding.PKCS1v15()
    key.public_key().verify(sig, data, pad, algorithm)


def test_rsa_pss_salt_is_hash_length(rsa_file) -> None:
    path, key = rsa_file
    sig = _loaded(path).sign(suites.RSA_PSS_RSAE_SHA384, b"m")
    # Recover the PSS encoding with the public key and count the salt (RFC 8017 9.1.2).
    n = key.public_key().public_numbers()
    em = pow(int.from_bytes(sig, "big"), n.e, n.n).to_bytes(256, "big")
    h_len = 48
    masked_db, h = em[:256 - h_len - 1], em[256 - h_len - 1:-1]
    mask = b""
    counter = 0
    while len(mask) < len(masked_db):
        mask += hashlib.sha384(h + counter.to_bytes(4, "big")).digest()
        counter += 1
    db = bytes(a ^ b for a, b in zip(masked_db, mask))
    db = bytes((db[0] & 0x7F,)) + db[1:]
    salt = db[db.index(1) + 1:]
    assert len(salt) == h_len


def test_legacy_rsa_md5_sha1_has_no_digest_info(rsa_file) -> None:
    path, key = rsa_file
    data = b"client_random server_random params"
    sig = _loaded(path).sign(suites.LEGACY_RSA_MD5_SHA1, data)
    n = key.public_key().public_numbers()
    em = pow(int.from_bytes(sig, "big"), n.e, n.n).to_bytes(256, "big")
    digest = hashlib.md5(data).digest() + hashlib.sha1(data).digest()
    # RFC 4346 7.4.3 / RFC 8017 9.2 without DigestInfo: 00 01 FF..FF 00 || MD5 || SHA-1.
    assert em == b"\x00\x01" + b"\xff" * (256 - 3 - 36) + b"\x00" + digest


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1()],
                         ids=lambda c: c.name)
@pytest.mark.parametrize("scheme", EC_SCHEMES)
def test_ecdsa_signatures_verify(tmp_path: Path, curve: ec.EllipticCurve, scheme: int) -> None:
    key = kh.ec_key(curve)
    svc = _loaded(kh.write_pem(tmp_path / "k.pem", key, [kh.certificate(key)]))
    data = os.urandom(77)
    sig = svc.sign(scheme, data)
    assert sig[0] == 0x30   # DER SEQUENCE, as TLS carries it
    key.public_key().verify(sig, data, ec.ECDSA(HASHES[suites.SIGNATURE_SCHEME_HASH[scheme]]()))


def test_scheme_that_does_not_fit_the_key(rsa_file, ec_file) -> None:
    rsa_svc = _loaded(rsa_file[0])
    ec_svc = _loaded(ec_file[0])
    for svc, scheme in ((rsa_svc, suites.ECDSA_SECP256R1_SHA256),
                        (rsa_svc, suites.RSA_PSS_PSS_SHA256), (rsa_svc, 0x1234),
                        (ec_svc, suites.RSA_PKCS1_SHA256), (ec_svc, suites.LEGACY_RSA_MD5_SHA1)):
        with pytest.raises(KeyServiceError) as e:
            svc.sign(scheme, b"data")
        assert e.value.alert == suites.INTERNAL_ERROR


# --- key exchange, TLS 1.3 ---------------------------------------------------------------------

def _client_share(group: int) -> tuple[bytes, object]:
    if group == suites.X25519:
        k = x25519.X25519PrivateKey.generate()
        return k.public_key().public_bytes_raw(), k
    if group == suites.X25519MLKEM768:
        kem = mlkem.MLKEM768PrivateKey.generate()
        x = x25519.X25519PrivateKey.generate()
        return kem.public_key().public_bytes_raw() + x.public_key().public_bytes_raw(), (kem, x)
    curve = {suites.SECP256R1: ec.SECP256R1, suites.SECP384R1: ec.SECP384R1,
             suites.SECP521R1: ec.SECP521R1}[group]()
    e = ec.generate_private_key(curve)
    return e.public_key().public_bytes(serialization.Encoding.X962,
                                       serialization.PublicFormat.UncompressedPoint), e


def _client_shared(group: int, private: object, server_share: bytes) -> bytes:
    if group == suites.X25519:
        peer = x25519.X25519PublicKey.from_public_bytes(server_share)
        return private.exchange(peer)  # type: ignore[attr-defined]
    if group == suites.X25519MLKEM768:
        kem, x = private   # type: ignore[misc]
        assert len(server_share) == 1088 + 32
        return kem.decapsulate(server_share[:1088]) + x.exchange(
            x25519.X25519PublicKey.from_public_bytes(server_share[1088:]))
    curve = private.curve   # type: ignore[attr-defined]
    point = ec.EllipticCurvePublicKey.from_encoded_point(curve, server_share)
    return private.exchange(ec.ECDH(), point)   # type: ignore[attr-defined]


GROUPS = [suites.X25519, suites.SECP256R1, suites.SECP384R1, suites.SECP521R1,
          suites.X25519MLKEM768]


def _client13(suite: suites.CipherSuite, shared: bytes, th: bytes) -> tuple[
        schedule13.KeySchedule, bytes, bytes]:
    ks = schedule13.KeySchedule(suite.prf_hash)
    ks.set_shared_secret(shared)
    c_hs, s_hs = ks.handshake_traffic_secrets(th)
    return ks, c_hs, s_hs


def _prot13(ks: schedule13.KeySchedule, suite: suites.CipherSuite,
            secret: bytes) -> protect.RecordProtection:
    return protect.new_protection(suites.TLS13, suite,
                                  *ks.traffic_key_iv(secret, suite.key_len, suite.iv_len))


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: suites.GROUP_LABELS[g])
@pytest.mark.parametrize("suite_code", [0x1301, 0x1302, 0x1303])
def test_tls13_key_share_and_schedule_match_an_independent_client(group: int,
                                                                  suite_code: int) -> None:
    suite = suites.SUITES[suite_code]
    hash_len = hashes.Hash(HASHES[suite.prf_hash]()).algorithm.digest_size
    client_share, client_private = _client_share(group)
    svc = local.LocalKeyService()
    server_share = svc.key_share(group, client_share)
    assert len(server_share) == suites.KEY_SHARE_SIZES[group][1]
    shared = _client_shared(group, client_private, server_share)
    if group == suites.X25519MLKEM768:
        assert len(shared) == 64

    th1 = os.urandom(hash_len)
    svc.derive13_handshake(suite_code, th1)
    ks, c_hs, s_hs = _client13(suite, shared, th1)
    svc.activate(keyservice.WRITE)
    svc.activate(keyservice.READ)
    flight = svc.seal([(suites.HANDSHAKE, b"\x08\x00\x00\x02\x00\x00")])
    assert _prot13(ks, suite, s_hs).open([flight]) == \
        ([(suites.HANDSHAKE, b"\x08\x00\x00\x02\x00\x00")], 0, "")

    th2 = os.urandom(hash_len)
    assert svc.finished13(keyservice.SENDER_SERVER, th2) == ks.finished_verify_data(s_hs, th2)
    svc.derive13_application(th2)
    c_ap, s_ap = ks.application_traffic_secrets(th2)
    svc.activate(keyservice.WRITE)
    th3 = os.urandom(hash_len)
    assert svc.finished13(keyservice.SENDER_CLIENT, th3) == ks.finished_verify_data(c_hs, th3)
    # The client's Finished still arrives under the handshake keys.
    fin = _prot13(ks, suite, c_hs).seal([(suites.HANDSHAKE, b"fin")])
    assert svc.open([fin]) == ([(suites.HANDSHAKE, b"fin")], 0, "")
    svc.activate(keyservice.READ)

    client_read = _prot13(ks, suite, s_ap)
    client_write = _prot13(ks, suite, c_ap)
    assert client_read.open([svc.seal([(23, b"hello")])]) == ([(23, b"hello")], 0, "")
    assert svc.open([client_write.seal([(23, b"hi")])]) == ([(23, b"hi")], 0, "")

    # KeyUpdate each way: new generation, sequence numbers from zero.
    svc.key_update(keyservice.WRITE)
    s_ap = ks.next_application_secret(s_ap)
    assert _prot13(ks, suite, s_ap).open([svc.seal([(23, b"after")])]) == \
        ([(23, b"after")], 0, "")
    svc.key_update(keyservice.READ)
    c_ap = ks.next_application_secret(c_ap)
    assert svc.open([_prot13(ks, suite, c_ap).seal([(23, b"up")])]) == ([(23, b"up")], 0, "")
    # The old generation no longer opens.
    assert svc.open([client_write.seal([(23, b"old")])])[1] == suites.BAD_RECORD_MAC


BAD_SHARES = {
    suites.X25519: [bytes(32), b"\x01" + bytes(31), bytes(31), bytes(33)],
    suites.SECP256R1: [b"\x04" + bytes(64), b"\x04" + b"\x01" * 64, bytes(65),
                       b"\x02" + bytes(32)],
    suites.SECP384R1: [b"\x04" + b"\x01" * 96, b"\x04" + bytes(95)],
    suites.SECP521R1: [b"\x04" + b"\x01" * 132, b""],
    suites.X25519MLKEM768: [b"\xff" * 1184 + os.urandom(32), bytes(1216 - 1), bytes(1217)],
}


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: suites.GROUP_LABELS[g])
def test_invalid_peer_shares_are_illegal_parameter(group: int) -> None:
    bad_shares = list(BAD_SHARES[group])
    if group in (suites.SECP256R1, suites.SECP384R1, suites.SECP521R1):
        # A valid point with its last byte changed is (almost surely) off the curve.
        good = bytearray(_client_share(group)[0])
        good[-1] ^= 1
        bad_shares.append(bytes(good))
        compressed = ec.generate_private_key(
            {suites.SECP256R1: ec.SECP256R1(), suites.SECP384R1: ec.SECP384R1(),
             suites.SECP521R1: ec.SECP521R1()}[group]).public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
        bad_shares.append(compressed)
    if group == suites.X25519MLKEM768:
        # A good ML-KEM key with a small-order X25519 point.
        kem = mlkem.MLKEM768PrivateKey.generate()
        bad_shares.append(kem.public_key().public_bytes_raw() + bytes(32))
    for share in bad_shares:
        with pytest.raises(KeyServiceError) as e:
            local.LocalKeyService().key_share(group, share)
        assert e.value.alert == suites.ILLEGAL_PARAMETER, share[:8].hex()


def test_tls12_share_validated_in_derive12() -> None:
    for group in (suites.X25519, suites.SECP256R1):
        svc = local.LocalKeyService()
        svc.key_share(group)
        with pytest.raises(KeyServiceError) as e:
            svc.derive12(suites.TLS12, 0xC02F, BAD_SHARES[group][0], bytes(32), bytes(32), None)
        assert e.value.alert == suites.ILLEGAL_PARAMETER


def test_hybrid_needs_peer_share_and_unknown_group_refused() -> None:
    with pytest.raises(KeyServiceError):
        local.LocalKeyService().key_share(suites.X25519MLKEM768)
    with pytest.raises(KeyServiceError):
        local.LocalKeyService().key_share(0x0100)


# --- TLS 1.0 - 1.2 -------------------------------------------------------------------------

TLS12_CASES = [(code, version, ems, etm)
               for code, s in sorted(suites.SUITES.items()) if s.version_min < suites.TLS13
               for version in (suites.TLS10, suites.TLS11, suites.TLS12)
               if s.version_min <= version <= s.version_max
               for ems in (False, True) for etm in ((False, True) if s.mac else (False,))]


@pytest.mark.parametrize("code,version,ems,etm", TLS12_CASES)
def test_tls12_derivation_matches_an_independent_client(code: int, version: int, ems: bool,
                                                        etm: bool) -> None:
    suite = suites.SUITES[code]
    group = suites.SECP256R1 if code % 2 else suites.X25519
    svc = local.LocalKeyService()
    server_share = svc.key_share(group)
    client_share, client_private = _client_share(group)
    premaster = _client_shared(group, client_private, server_share)
    cr, sr = os.urandom(32), os.urandom(32)
    session_hash = os.urandom(48) if ems else None
    svc.derive12(version, code, client_share, cr, sr, session_hash, etm)

    if session_hash is not None:
        master = schedule12.extended_master_secret(version, suite.prf_hash, premaster,
                                                   session_hash)
    else:
        master = schedule12.master_secret(version, suite.prf_hash, premaster, cr, sr)
    kb = schedule12.key_block(version, suite, master, cr, sr)
    hh = os.urandom(36 if version < suites.TLS12 else 32)
    for sender, is_client in ((keyservice.SENDER_CLIENT, True), (keyservice.SENDER_SERVER, False)):
        assert svc.finished12(sender, hh) == schedule12.verify_data(
            version, suite.prf_hash, master, is_client, hh)

    client_write = protect.new_protection(version, suite, kb.client_key, kb.client_iv,
                                          kb.client_mac_key, etm)
    client_read = protect.new_protection(version, suite, kb.server_key, kb.server_iv,
                                         kb.server_mac_key, etm)
    with pytest.raises(KeyServiceError):
        svc.seal([(22, b"too early")])
    svc.activate(keyservice.READ)
    svc.activate(keyservice.WRITE)
    with pytest.raises(KeyServiceError):
        svc.activate(keyservice.WRITE)   # nothing pending any more
    assert svc.open([client_write.seal([(22, b"client finished")])]) == \
        ([(22, b"client finished")], 0, "")
    batch = [(23, os.urandom(n)) for n in (0, 1, 100, suites.MAX_PLAINTEXT)]
    wire = svc.seal(batch)
    records = []
    pos = 0
    while pos < len(wire):
        n = int.from_bytes(wire[pos + 3:pos + 5], "big")
        records.append(wire[pos:pos + 5 + n])
        pos += 5 + n
    assert client_read.open(records) == (batch, 0, "")


def test_derive12_refuses_suite_version_mismatch_and_missing_key() -> None:
    svc = local.LocalKeyService()
    with pytest.raises(KeyServiceError):
        svc.derive12(suites.TLS12, 0xC02F, bytes(32), bytes(32), bytes(32), None)
    svc.key_share(suites.X25519)
    with pytest.raises(KeyServiceError):
        svc.derive12(suites.TLS10, 0xC02F, bytes(32), bytes(32), bytes(32), None)
    with pytest.raises(KeyServiceError):
        svc.derive12(suites.TLS13, 0x1301, bytes(32), bytes(32), bytes(32), None)
    with pytest.raises(KeyServiceError):
        svc.finished12(keyservice.SENDER_SERVER, bytes(32))


def test_out_of_order_requests_are_refused() -> None:
    svc = local.LocalKeyService()
    for call in (lambda: svc.derive13_handshake(0x1301, bytes(32)),
                 lambda: svc.finished13(keyservice.SENDER_SERVER, bytes(32)),
                 lambda: svc.derive13_application(bytes(32)),
                 lambda: svc.key_update(keyservice.WRITE),
                 lambda: svc.activate(keyservice.READ),
                 lambda: svc.seal([(23, b"x")]),
                 lambda: svc.open([b"\x17\x03\x03\x00\x00"]),
                 lambda: svc.sign(suites.RSA_PSS_RSAE_SHA256, b"x")):
        with pytest.raises(KeyServiceError) as e:
            call()
        assert e.value.alert == suites.INTERNAL_ERROR
    svc.key_share(suites.X25519, _client_share(suites.X25519)[0])
    with pytest.raises(KeyServiceError):
        svc.derive13_handshake(0xC02F, bytes(32))     # not a TLS 1.3 suite
    with pytest.raises(KeyServiceError):
        svc.derive13_handshake(0x1301, bytes(48))     # wrong transcript hash length


# --- no secret in clear in memory before select -------------------------------------------------

_CHILD = r"""
import sys
from tlswrapper.keys.local import LocalKeyService
from tlswrapper.tls import suites
svc = LocalKeyService()
answer = svc.load([sys.argv[1]])
print(type(answer[0]).__name__, flush=True)
sys.stdin.readline()
svc.select(0)
svc.sign(suites.ECDSA_SECP256R1_SHA256, b"data")
with open(sys.argv[1], "rb") as f:    # a deliberate clear copy: proves the scan finds one
    clear = f.read()
print("signed", flush=True)
sys.stdin.readline()
"""


def _scan(pid: int, patterns: list[bytes]) -> set[int]:
    found: set[int] = set()
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            fields = line.split()
            if "r" not in fields[1] or (len(fields) > 5 and fields[5] in ("[vvar]", "[vsyscall]")):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            try:
                mem.seek(start)
                chunk = mem.read(end - start)
            except (OSError, ValueError, OverflowError):
                continue
            for i, p in enumerate(patterns):
                if p in chunk:
                    found.add(i)
    return found


def test_private_key_not_in_clear_in_memory_before_select(tmp_path: Path) -> None:
    import subprocess
    import sys

    key = kh.ec_key()
    path = kh.write_pem(tmp_path / "k.pem", key, [kh.certificate(key)])
    text = kh.key_pem(key)
    lines = text.splitlines()
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    patterns = [lines[1], lines[2], der, scalar, text]
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "Candidate"
        try:
            before = _scan(child.pid, patterns)
        except PermissionError:
            pytest.skip("cannot read another process's memory here")
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "signed"
        after = _scan(child.pid, patterns)
        child.stdin.write("\n")
        child.stdin.flush()
    finally:
        child.wait(timeout=30)
    assert 4 in after, "the scan does not see a copy the child made on purpose"
    assert before == set(), f"secret patterns {before} found before select"
