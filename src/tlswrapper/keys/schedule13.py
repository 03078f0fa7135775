"""The TLS 1.3 key schedule (RFC 8446 section 7), without PSK.

Rule: one KeySchedule per connection; it holds the chain of secrets and hands out traffic
secrets, keys and Finished values, never deciding when (that is the caller's job)."""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives import hashes

_ALGORITHMS: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256, "sha384": hashes.SHA384,
}


class ScheduleError(ValueError):
    """A request out of order (e.g. application secrets before the handshake secret)."""


def hash_algorithm(hash_name: str) -> hashes.HashAlgorithm:
    """The cryptography hash object for a suite's hash name ('sha256' / 'sha384')."""
    cls = _ALGORITHMS.get(hash_name)
    if cls is None:
        raise ScheduleError(f"unknown hash {hash_name}")
    return cls()


# The HMACs are the standard library's one-shot hmac.digest (OpenSSL's HMAC in one C call):
# about ten times cheaper per call than cryptography's HMAC/HKDFExpand objects, and a TLS 1.3
# handshake makes about twenty of them.

def hkdf_extract(algorithm: hashes.HashAlgorithm, salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract (RFC 5869 section 2.2): HMAC-Hash(salt, IKM)."""
    return hmac.digest(salt, ikm, algorithm.name)


def hkdf_expand(algorithm: hashes.HashAlgorithm, prk: bytes, info: bytes,
                length: int) -> bytes:
    """HKDF-Expand (RFC 5869 section 2.3): T(1) | T(2) | ..., T(i) = HMAC-Hash(PRK,
    T(i-1) | info | i), the first `length` bytes (at most 255 blocks)."""
    name = algorithm.name
    if not 0 < length <= 255 * algorithm.digest_size:
        raise ScheduleError("HKDF-Expand length out of range")
    block = hmac.digest(prk, info + b"\x01", name)
    if length <= len(block):
        return block[:length]
    out = bytearray(block)
    i = 1
    while len(out) < length:
        i += 1
        block = hmac.digest(prk, block + info + bytes((i,)), name)
        out += block
    return bytes(out[:length])


def hkdf_expand_label(algorithm: hashes.HashAlgorithm, secret: bytes, label: bytes,
                      context: bytes, length: int) -> bytes:
    """HKDF-Expand-Label (RFC 8446 section 7.1): HKDF-Expand(Secret, HkdfLabel, Length),
    HkdfLabel = uint16 length || opaque label<7..255> = "tls13 " + Label ||
    opaque context<0..255>."""
    full = b"tls13 " + label
    if len(full) > 255 or len(context) > 255 or not 0 < length < 65536:
        raise ScheduleError("HkdfLabel field out of range")
    info = length.to_bytes(2, "big") + bytes((len(full),)) + full + bytes((len(context),)) \
        + context
    return hkdf_expand(algorithm, secret, info, length)


class KeySchedule:
    """Early Secret -> Handshake Secret -> Master Secret (RFC 8446 section 7.1), PSK-less:
    the PSK input is a string of Hash.length zeros."""

    def __init__(self, hash_name: str) -> None:
        self.algorithm = hash_algorithm(hash_name)
        self.hash_len = self.algorithm.digest_size
        self._zeros = bytes(self.hash_len)
        # Transcript-Hash of no messages, the context of Derive-Secret(., "derived", "").
        self._empty_hash = hashlib.new(self.algorithm.name).digest()
        self.early_secret = hkdf_extract(self.algorithm, self._zeros, self._zeros)
        self.handshake_secret: bytes | None = None
        self.master_secret: bytes | None = None

    def expand_label(self, secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
        return hkdf_expand_label(self.algorithm, secret, label, context, length)

    def derive_secret(self, secret: bytes, label: bytes, transcript_hash: bytes) -> bytes:
        """Derive-Secret(Secret, Label, Messages), given Transcript-Hash(Messages)."""
        if len(transcript_hash) != self.hash_len:
            raise ScheduleError("transcript hash has the wrong length")
        return self.expand_label(secret, label, transcript_hash, self.hash_len)

    def set_shared_secret(self, shared_secret: bytes) -> None:
        """Handshake Secret = HKDF-Extract(Derive-Secret(Early Secret, "derived", ""),
        (EC)DHE shared secret)."""
        salt = self.derive_secret(self.early_secret, b"derived", self._empty_hash)
        self.handshake_secret = hkdf_extract(self.algorithm, salt, shared_secret)

    def handshake_traffic_secrets(self, transcript_hash: bytes) -> tuple[bytes, bytes]:
        """(client, server) handshake traffic secrets; transcript ClientHello..ServerHello."""
        if self.handshake_secret is None:
            raise ScheduleError("no handshake secret yet")
        return (self.derive_secret(self.handshake_secret, b"c hs traffic", transcript_hash),
                self.derive_secret(self.handshake_secret, b"s hs traffic", transcript_hash))

    def application_traffic_secrets(self, transcript_hash: bytes) -> tuple[bytes, bytes]:
        """Master Secret = HKDF-Extract(Derive-Secret(Handshake Secret, "derived", ""), 0),
        then the (client, server) application traffic secrets over ClientHello..server
        Finished. The handshake secret is dropped: nothing derives from it afterwards."""
        if self.handshake_secret is None:
            raise ScheduleError("no handshake secret yet")
        salt = self.derive_secret(self.handshake_secret, b"derived", self._empty_hash)
        self.master_secret = hkdf_extract(self.algorithm, salt, self._zeros)
        self.handshake_secret = None
        return (self.derive_secret(self.master_secret, b"c ap traffic", transcript_hash),
                self.derive_secret(self.master_secret, b"s ap traffic", transcript_hash))

    def traffic_key_iv(self, secret: bytes, key_len: int, iv_len: int) -> tuple[bytes, bytes]:
        """RFC 8446 section 7.3: [sender]_write_key and [sender]_write_iv."""
        return (self.expand_label(secret, b"key", b"", key_len),
                self.expand_label(secret, b"iv", b"", iv_len))

    def finished_verify_data(self, base_key: bytes, transcript_hash: bytes) -> bytes:
        """RFC 8446 section 4.4.4: HMAC(finished_key, Transcript-Hash), finished_key =
        HKDF-Expand-Label(BaseKey, "finished", "", Hash.length)."""
        finished_key = self.expand_label(base_key, b"finished", b"", self.hash_len)
        return hmac.digest(finished_key, transcript_hash, self.algorithm.name)

    def next_application_secret(self, secret: bytes) -> bytes:
        """RFC 8446 section 7.2: application_traffic_secret_N+1 =
        HKDF-Expand-Label(application_traffic_secret_N, "traffic upd", "", Hash.length)."""
        return self.expand_label(secret, b"traffic upd", b"", self.hash_len)
