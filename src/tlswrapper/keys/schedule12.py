"""The TLS 1.0-1.2 key schedule: PRF, (extended) master secret, key block, Finished.

Rule: pure functions of secret bytes, no state; the caller (keys/local.py) keeps the results."""

from __future__ import annotations

import hashlib
import hmac

from tlswrapper.tls import suites
from tlswrapper.tls.frozen import Frozen, init

MASTER_SECRET_LEN = 48
VERIFY_DATA_LEN = 12   # RFC 5246 section 7.4.9: verify_data_length 12 for every suite we have

_HASHES = {"md5": hashlib.md5, "sha1": hashlib.sha1, "sha256": hashlib.sha256,
           "sha384": hashlib.sha384, "sha512": hashlib.sha512}


class ScheduleError(ValueError):
    """A request the key schedule cannot serve (wrong version or suite, bad lengths)."""


def p_hash(hash_name: str, secret: bytes, seed: bytes, length: int) -> bytes:
    """P_hash of RFC 5246 section 5: HMAC chained over A(i), truncated to `length`."""
    digestmod = _HASHES.get(hash_name)
    if digestmod is None:
        raise ScheduleError(f"unknown hash {hash_name}")
    if length < 0:
        raise ScheduleError("negative length")
    # One keyed HMAC object, copied per block: the key is hashed into ipad/opad only once.
    keyed = hmac.new(secret, digestmod=digestmod)
    out = bytearray()
    a = seed
    while len(out) < length:
        h = keyed.copy()
        h.update(a)
        a = h.digest()
        h = keyed.copy()
        h.update(a)
        h.update(seed)
        out += h.digest()
    return bytes(out[:length])


def prf10(secret: bytes, label: bytes, seed: bytes, length: int) -> bytes:
    """The TLS 1.0/1.1 PRF (RFC 2246 section 5, RFC 4346 section 5): the secret split in two
    halves (sharing the middle byte when its length is odd), P_MD5 XOR P_SHA-1."""
    half = (len(secret) + 1) // 2
    s1 = secret[:half]
    s2 = secret[len(secret) - half:]
    md5_part = p_hash("md5", s1, label + seed, length)
    sha_part = p_hash("sha1", s2, label + seed, length)
    x = int.from_bytes(md5_part, "big") ^ int.from_bytes(sha_part, "big")
    return x.to_bytes(length, "big")


def prf12(hash_name: str, secret: bytes, label: bytes, seed: bytes, length: int) -> bytes:
    """The TLS 1.2 PRF (RFC 5246 section 5): P_<hash>(secret, label + seed), where the hash is
    the cipher suite's PRF hash (SHA-256 unless the suite says SHA-384)."""
    return p_hash(hash_name, secret, label + seed, length)


def prf(version: int, prf_hash: str, secret: bytes, label: bytes, seed: bytes,
        length: int) -> bytes:
    """The PRF of `version`: MD5/SHA-1 for TLS 1.0 and 1.1, `prf_hash` for TLS 1.2."""
    if version in (suites.TLS10, suites.TLS11):
        return prf10(secret, label, seed, length)
    if version == suites.TLS12:
        return prf12(prf_hash, secret, label, seed, length)
    raise ScheduleError(f"no TLS 1.0-1.2 PRF for version {version:#06x}")


def master_secret(version: int, prf_hash: str, premaster: bytes, client_random: bytes,
                  server_random: bytes) -> bytes:
    """RFC 5246 section 8.1: PRF(pre_master_secret, "master secret", randoms)[0..47]."""
    if len(client_random) != 32 or len(server_random) != 32:
        raise ScheduleError("randoms must be 32 bytes")
    return prf(version, prf_hash, premaster, b"master secret",
               client_random + server_random, MASTER_SECRET_LEN)


def extended_master_secret(version: int, prf_hash: str, premaster: bytes,
                           session_hash: bytes) -> bytes:
    """RFC 7627 section 4: PRF(pre_master_secret, "extended master secret", session_hash),
    which binds the master secret to the whole handshake (the triple handshake attack)."""
    return prf(version, prf_hash, premaster, b"extended master secret", session_hash,
               MASTER_SECRET_LEN)


class KeyBlock(Frozen):
    """The key block split (RFC 5246 section 6.3). `*_iv` is the fixed IV: the 4-byte salt
    of AES-GCM (RFC 5288), the 12-byte nonce mask of ChaCha20-Poly1305 (RFC 7905), or the
    first CBC IV of TLS 1.0; TLS 1.1/1.2 CBC records carry an explicit IV and ignore it."""

    __slots__ = ("client_mac_key", "server_mac_key", "client_key", "server_key", "client_iv",
                 "server_iv")
    client_mac_key: bytes
    server_mac_key: bytes
    client_key: bytes
    server_key: bytes
    client_iv: bytes
    server_iv: bytes

    def __init__(self, client_mac_key: bytes, server_mac_key: bytes, client_key: bytes,
                 server_key: bytes, client_iv: bytes, server_iv: bytes) -> None:
        init(self, "client_mac_key", client_mac_key)
        init(self, "server_mac_key", server_mac_key)
        init(self, "client_key", client_key)
        init(self, "server_key", server_key)
        init(self, "client_iv", client_iv)
        init(self, "server_iv", server_iv)


def key_block(version: int, suite: suites.CipherSuite, master: bytes, client_random: bytes,
              server_random: bytes) -> KeyBlock:
    """RFC 5246 section 6.3: PRF(master_secret, "key expansion", server_random +
    client_random), split into MAC keys, encryption keys and fixed IVs in that order.
    TLS 1.1 and 1.2 define no CBC IVs in the key block; as they come last, computing them
    anyway changes nothing before them."""
    if not suite.version_min <= version <= suite.version_max or version == suites.TLS13:
        raise ScheduleError(f"suite {suite.name} not allowed in version {version:#06x}")
    mac_len = suite.mac_len
    key_len = suite.key_len
    iv_len = suite.iv_len
    total = 2 * (mac_len + key_len + iv_len)
    block = prf(version, suite.prf_hash, master, b"key expansion",
                server_random + client_random, total)
    p = 0
    parts = []
    for n in (mac_len, mac_len, key_len, key_len, iv_len, iv_len):
        parts.append(block[p:p + n])
        p += n
    return KeyBlock(*parts)


def verify_data(version: int, prf_hash: str, master: bytes, sender_is_client: bool,
                handshake_hash: bytes) -> bytes:
    """RFC 5246 section 7.4.9: PRF(master_secret, finished_label, Hash(handshake_messages))
    truncated to 12 bytes. For TLS 1.0/1.1 the hash is MD5 || SHA-1 (RFC 2246 7.4.9)."""
    label = b"client finished" if sender_is_client else b"server finished"
    return prf(version, prf_hash, master, label, handshake_hash, VERIFY_DATA_LEN)
