"""Key schedules against independent answers: RFC 8448 for TLS 1.3, OpenSSL's TLS1-PRF for
TLS 1.0-1.2."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519

from tlswrapper.keys import protect, schedule12, schedule13
from tlswrapper.tls import suites

VECTORS = Path("/work/shared/vectors/rfc8448-simple-1rtt.json")


@pytest.fixture(scope="module")
def rfc8448() -> dict[str, bytes]:
    raw = json.loads(VECTORS.read_text())
    return {k: bytes.fromhex(v) for k, v in raw.items() if k not in ("source", "notes")}


def _h(*messages: bytes) -> bytes:
    return hashlib.sha256(b"".join(messages)).digest()


# Intermediate values printed in RFC 8448 section 3 (each also proven below by the
# Finished values and the encrypted records, which depend on all of them).
RFC8448_SECRETS = {
    "early": "33ad0a1c607ec03b09e6cd9893680ce210adf300aa1f2660e1b22e10f170f92a",
    "handshake": "1dc826e93606aa6fdc0aadc12f741b01046aa6b99f691ed221a9f0ca043fbeac",
    "c_hs": "b3eddb126e067f35a780b3abf45e2d8f3b1a950738f52e9600746a0e27a55a21",
    "s_hs": "b67b7d690cc16c4e75e54213cb2d37b4e9c912bcded9105d42befd59d391ad38",
    "master": "18df06843d13a08bf2a449844c5f8a478001bc4d4c627984d5a41da8d0402919",
    "c_ap": "9e40646ce79a7f9dc05af8889bce6552875afa0b06df0087f792ebb7c17504a5",
    "s_ap": "a11af9f05531f856ad47116b45a950328204b4f44bfb6b3a4b4f1f3fcb631643",
    "s_hs_key": "3fce516009c21727d0f2e4e86ee403bc",
    "s_hs_iv": "5d313eb2671276ee13000b30",
    "c_hs_key": "dbfaa693d1762c5b666af5d950258d01",
    "c_hs_iv": "5bd3c71b836e0b76bb73265f",
    "s_ap_key": "9f02283b6c9c07efc26bb9f2ac92e356",
    "s_ap_iv": "cf782b88dd83549aadf1e984",
    "c_ap_key": "17422dda596ed5d9acd890e3c63f5051",
    "c_ap_iv": "5b78923dee08579033e523d9",
}


def test_rfc8448_key_schedule_secrets_keys_and_finished(rfc8448: dict[str, bytes]) -> None:
    v = rfc8448
    server = x25519.X25519PrivateKey.from_private_bytes(v["server_x25519_private"])
    assert server.public_key().public_bytes_raw() == v["server_x25519_public"]
    shared = server.exchange(x25519.X25519PublicKey.from_public_bytes(v["client_x25519_public"]))

    ks = schedule13.KeySchedule("sha256")
    assert ks.early_secret.hex() == RFC8448_SECRETS["early"]
    ks.set_shared_secret(shared)
    assert ks.handshake_secret is not None
    assert ks.handshake_secret.hex() == RFC8448_SECRETS["handshake"]
    th_hello = _h(v["client_hello"], v["server_hello"])
    c_hs, s_hs = ks.handshake_traffic_secrets(th_hello)
    assert c_hs.hex() == RFC8448_SECRETS["c_hs"]
    assert s_hs.hex() == RFC8448_SECRETS["s_hs"]
    for name, secret in (("s_hs", s_hs), ("c_hs", c_hs)):
        key, iv = ks.traffic_key_iv(secret, 16, 12)
        assert key.hex() == RFC8448_SECRETS[name + "_key"]
        assert iv.hex() == RFC8448_SECRETS[name + "_iv"]

    # Server Finished over ClientHello..CertificateVerify.
    before_sf = [v["client_hello"], v["server_hello"], v["encrypted_extensions"],
                 v["server_certificate"], v["server_certificate_verify"]]
    assert ks.finished_verify_data(s_hs, _h(*before_sf)) == v["server_finished"][4:]
    th_sf = _h(*before_sf, v["server_finished"])
    # Client Finished over ClientHello..server Finished.
    assert ks.finished_verify_data(c_hs, th_sf) == v["client_finished"][4:]

    c_ap, s_ap = ks.application_traffic_secrets(th_sf)
    assert ks.master_secret is not None
    assert ks.master_secret.hex() == RFC8448_SECRETS["master"]
    assert c_ap.hex() == RFC8448_SECRETS["c_ap"]
    assert s_ap.hex() == RFC8448_SECRETS["s_ap"]
    for name, secret in (("s_ap", s_ap), ("c_ap", c_ap)):
        key, iv = ks.traffic_key_iv(secret, 16, 12)
        assert key.hex() == RFC8448_SECRETS[name + "_key"]
        assert iv.hex() == RFC8448_SECRETS[name + "_iv"]


def test_rfc8448_records_sealed_and_opened_exactly(rfc8448: dict[str, bytes]) -> None:
    v = rfc8448
    suite = suites.SUITES[0x1301]
    ks = schedule13.KeySchedule("sha256")
    server = x25519.X25519PrivateKey.from_private_bytes(v["server_x25519_private"])
    ks.set_shared_secret(server.exchange(
        x25519.X25519PublicKey.from_public_bytes(v["client_x25519_public"])))
    c_hs, s_hs = ks.handshake_traffic_secrets(_h(v["client_hello"], v["server_hello"]))

    flight = b"".join(v[k] for k in ("encrypted_extensions", "server_certificate",
                                     "server_certificate_verify", "server_finished"))
    writer = protect.new_protection(suites.TLS13, suite, *ks.traffic_key_iv(s_hs, 16, 12))
    assert writer.seal([(suites.HANDSHAKE, flight)]) == v["server_flight_record"]
    reader = protect.new_protection(suites.TLS13, suite, *ks.traffic_key_iv(s_hs, 16, 12))
    assert reader.open([v["server_flight_record"]]) == ([(suites.HANDSHAKE, flight)], 0, "")

    client_reader = protect.new_protection(suites.TLS13, suite, *ks.traffic_key_iv(c_hs, 16, 12))
    results, alert, _ = client_reader.open([v["client_finished_record"]])
    assert alert == 0
    assert results == [(suites.HANDSHAKE, v["client_finished"])]
    client_writer = protect.new_protection(suites.TLS13, suite, *ks.traffic_key_iv(c_hs, 16, 12))
    assert client_writer.seal([(suites.HANDSHAKE, v["client_finished"])]) \
        == v["client_finished_record"]


def test_key_update_secret_is_expand_label_traffic_upd() -> None:
    ks = schedule13.KeySchedule("sha384")
    secret = bytes(range(48))
    expected = schedule13.hkdf_expand_label(ks.algorithm, secret, b"traffic upd", b"", 48)
    assert ks.next_application_secret(secret) == expected
    assert len(expected) == 48 and expected != secret


def test_application_secrets_need_handshake_secret() -> None:
    with pytest.raises(schedule13.ScheduleError):
        schedule13.KeySchedule("sha256").application_traffic_secrets(bytes(32))


def test_transcript_hash_length_checked() -> None:
    ks = schedule13.KeySchedule("sha256")
    ks.set_shared_secret(bytes(32))
    with pytest.raises(schedule13.ScheduleError):
        ks.handshake_traffic_secrets(bytes(48))


# --- TLS 1.0 - 1.2 PRF against OpenSSL's independent implementation -----------------------

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl")


def _openssl_prf(digest: str, secret: bytes, seed: bytes, length: int) -> bytes:
    out = subprocess.run(
        ["openssl", "kdf", "-keylen", str(length), "-kdfopt", f"digest:{digest}",
         "-kdfopt", f"hexsecret:{secret.hex()}", "-kdfopt", f"hexseed:{seed.hex()}",
         "TLS1-PRF"], check=True, capture_output=True, text=True).stdout
    return bytes.fromhex(out.strip().replace(":", ""))


@needs_openssl
@pytest.mark.parametrize("digest,hash_name", [("SHA256", "sha256"), ("SHA384", "sha384")])
@pytest.mark.parametrize("secret_len,length", [(48, 100), (32, 13), (1, 200), (47, 64)])
def test_tls12_prf_matches_openssl(digest: str, hash_name: str, secret_len: int,
                                   length: int) -> None:
    secret = bytes((i * 7 + 3) & 0xFF for i in range(secret_len))
    seed = b"seed-" + bytes(range(40))
    expected = _openssl_prf(digest, secret, b"test label" + seed, length)
    assert schedule12.prf12(hash_name, secret, b"test label", seed, length) == expected


@needs_openssl
@pytest.mark.parametrize("secret_len,length", [(48, 104), (47, 20), (1, 36), (2, 77)])
def test_tls10_prf_matches_openssl_md5_sha1(secret_len: int, length: int) -> None:
    # Odd and even secret lengths: the two halves share the middle byte when it is odd.
    secret = bytes((i * 13 + 1) & 0xFF for i in range(secret_len))
    seed = bytes(range(64))
    expected = _openssl_prf("MD5-SHA1", secret, b"key expansion" + seed, length)
    assert schedule12.prf10(secret, b"key expansion", seed, length) == expected
    for version in (suites.TLS10, suites.TLS11):
        assert schedule12.prf(version, "sha384", secret, b"key expansion", seed, length) \
            == expected


def test_tls12_prf_published_vector() -> None:
    # The TLS 1.2 PRF SHA-256 test vector circulated on the IETF TLS list (2009).
    secret = bytes.fromhex("9bbe436ba940f017b17652849a71db35")
    seed = bytes.fromhex("a0ba9f936cda311827a6f796ffd5198c")
    expected = bytes.fromhex(
        "e3f229ba727be17b8d122620557cd453c2aab21d07c3d495329b52d4e61edb5a6b301791e90d35c9"
        "c9a46b4e14baf9af0fa022f7077def17abfd3797c0564bab4fbc91666e9def9b97fce34f796789ba"
        "a48082d122ee42c5a72e5a5110fff70187347b66")
    assert schedule12.prf12("sha256", secret, b"test label", seed, 100) == expected


def test_master_secret_extended_and_key_block_split() -> None:
    pms = bytes(range(32))
    cr, sr = bytes([1]) * 32, bytes([2]) * 32
    ms = schedule12.master_secret(suites.TLS12, "sha256", pms, cr, sr)
    assert ms == schedule12.prf12("sha256", pms, b"master secret", cr + sr, 48)
    ems = schedule12.extended_master_secret(suites.TLS12, "sha384", pms, bytes(48))
    assert ems == schedule12.prf12("sha384", pms, b"extended master secret", bytes(48), 48)
    for suite in suites.SUITES.values():
        if suite.version_min == suites.TLS13:
            continue
        for version in (suites.TLS10, suites.TLS11, suites.TLS12):
            if not suite.version_min <= version <= suite.version_max:
                with pytest.raises(schedule12.ScheduleError):
                    schedule12.key_block(version, suite, ms, cr, sr)
                continue
            kb = schedule12.key_block(version, suite, ms, cr, sr)
            flat = schedule12.prf(version, suite.prf_hash, ms, b"key expansion", sr + cr,
                                  2 * (suite.mac_len + suite.key_len + suite.iv_len))
            assert kb.client_mac_key + kb.server_mac_key + kb.client_key + kb.server_key \
                + kb.client_iv + kb.server_iv == flat
            assert len(kb.client_key) == suite.key_len
            assert len(kb.server_iv) == suite.iv_len
            assert len(kb.client_mac_key) == suite.mac_len


def test_verify_data_is_twelve_bytes_of_prf() -> None:
    ms = bytes(48)
    hh = bytes(32)
    assert schedule12.verify_data(suites.TLS12, "sha256", ms, True, hh) == \
        schedule12.prf12("sha256", ms, b"client finished", hh, 12)
    assert schedule12.verify_data(suites.TLS10, "sha256", ms, False, bytes(36)) == \
        schedule12.prf10(ms, b"server finished", bytes(36), 12)
