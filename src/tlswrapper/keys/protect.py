"""Record protection for one direction: AEAD (TLS 1.3, TLS 1.2) and CBC + HMAC (TLS 1.0-1.2).

Rule: an object per direction and key, built once; it owns the record key, the IV and the
sequence number, and never lets a record through that did not authenticate."""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from tlswrapper.tls import suites

# RFC 8446 section 5.3 / RFC 5246 section 6.1: sequence numbers are 64 bits and must not
# wrap. We refuse to use the last value, so a counter can never reach 2^64.
SEQ_LIMIT = (1 << 64) - 1
TAG_LEN = 16
CBC_BLOCK = 16
# Widest CBC padding: 255 padding bytes plus the length byte (RFC 5246 section 6.2.3.2).
_PAD_WINDOW = 256
# The padding check works on integers of a fixed width: a sentinel bit above the widest
# window, and one mask per padding length covering its last pad+1 bytes (see _open_mte).
_PAD_SENTINEL = 1 << (8 * _PAD_WINDOW)
_PAD_MASKS = tuple(_PAD_SENTINEL | ((1 << (8 * (pad + 1))) - 1) for pad in range(256))

OpenResult = tuple[list[tuple[int, bytes]], int, str]


class ProtectionError(Exception):
    """seal() refused: `alert` is the alert to send, `reason` a line for the log."""

    def __init__(self, alert: int, reason: str) -> None:
        super().__init__(reason)
        self.alert = alert
        self.reason = reason


def _aead(cipher: str, key: bytes) -> AESGCM | ChaCha20Poly1305:
    if cipher in ("aes-128-gcm", "aes-256-gcm"):
        return AESGCM(key)
    if cipher == "chacha20-poly1305":
        return ChaCha20Poly1305(key)
    raise ValueError(f"not an AEAD cipher: {cipher}")


class RecordProtection:
    """Common part: the sequence number and a reusable output buffer (writing every record
    of a batch into one preallocated buffer avoids an allocation per record, which costs
    more than the AEAD itself at 16 KiB records)."""

    version: int

    def __init__(self) -> None:
        self.seq = 0
        self._out = bytearray()

    def _buffer(self, size: int) -> memoryview:
        if len(self._out) < size:
            self._out = bytearray(size)
        return memoryview(self._out)

    def _check_batch(self, records: Sequence[tuple[int, bytes]]) -> None:
        # Checked before anything is sealed, so that a refused batch changes no state.
        if self.seq + len(records) > SEQ_LIMIT:
            raise ProtectionError(suites.INTERNAL_ERROR, "sequence number exhausted")
        for _, plaintext in records:
            if len(plaintext) > suites.MAX_PLAINTEXT:
                raise ProtectionError(suites.INTERNAL_ERROR, "plaintext longer than 2^14")

    def seal(self, records: Sequence[tuple[int, bytes]]) -> bytes:
        raise NotImplementedError

    def open(self, records: Sequence[bytes]) -> OpenResult:
        raise NotImplementedError


def _split(record: bytes, limit: int) -> tuple[int, int] | tuple[int, str]:
    """(content type, fragment length) of a whole record, or (alert, reason) when it is
    malformed (decode_error) or its fragment is over `limit` (record_overflow)."""
    if len(record) < 5:
        return suites.DECODE_ERROR, "record shorter than its header"
    length = (record[3] << 8) | record[4]
    if length != len(record) - 5:
        return suites.DECODE_ERROR, "record length does not match its header"
    if length > limit:
        return suites.RECORD_OVERFLOW, f"ciphertext longer than {_LIMIT_TEXT[limit]}"
    return record[0], length


_LIMIT_TEXT = {suites.MAX_CIPHERTEXT_13: "2^14+256", suites.MAX_CIPHERTEXT_12: "2^14+2048"}


class Aead13Protection(RecordProtection):
    """TLS 1.3 (RFC 8446 section 5.2): nonce = iv XOR seq, additional data = the record
    header, TLSInnerPlaintext = content || type || zeros, outer type application_data."""

    version = suites.TLS13

    def __init__(self, cipher: str, key: bytes, iv: bytes) -> None:
        super().__init__()
        if len(iv) != 12:
            raise ValueError("TLS 1.3 IV must be 12 bytes")
        self._aead = _aead(cipher, key)
        self._iv = int.from_bytes(iv, "big")
        self._plain: bytearray | None = None   # open()'s buffer, made on first use

    def seal(self, records: Sequence[tuple[int, bytes]]) -> bytes:
        self._check_batch(records)
        total = sum(len(p) + 5 + 1 + TAG_LEN for _, p in records)
        out = self._buffer(total)
        aead = self._aead
        iv = self._iv
        seq = self.seq
        pos = 0
        for content_type, plaintext in records:
            length = len(plaintext) + 1 + TAG_LEN
            header = bytes((suites.APPLICATION_DATA, 3, 3, length >> 8, length & 0xFF))
            out[pos:pos + 5] = header
            # No padding: hiding lengths is not a goal we were asked for (section 5.4).
            aead.encrypt_into((iv ^ seq).to_bytes(12, "big"), plaintext + bytes((content_type,)),
                              header, out[pos + 5:pos + 5 + length])
            seq += 1
            pos += 5 + length
        self.seq = seq
        return bytes(out[:pos])

    def open(self, records: Sequence[bytes]) -> OpenResult:
        results: list[tuple[int, bytes]] = []
        aead = self._aead
        iv = self._iv
        if self._plain is None:
            # Not in __init__: a write protection never opens, and each page of a new
            # buffer costs a page fault in the freshly forked key process.
            self._plain = bytearray(suites.MAX_PLAINTEXT + 256)
        plain = memoryview(self._plain)
        for record in records:
            outer_type, length = _split(record, suites.MAX_CIPHERTEXT_13)
            if isinstance(length, str):
                return results, outer_type, length
            if outer_type != suites.APPLICATION_DATA:
                return results, suites.UNEXPECTED_MESSAGE, "protected record not application_data"
            if length < TAG_LEN + 1:
                return results, suites.BAD_RECORD_MAC, "record shorter than its tag"
            if self.seq >= SEQ_LIMIT:
                return results, suites.INTERNAL_ERROR, "sequence number exhausted"
            n = length - TAG_LEN
            try:
                aead.decrypt_into((iv ^ self.seq).to_bytes(12, "big"), memoryview(record)[5:],
                                  record[:5], plain[:n])
            except InvalidTag:
                return results, suites.BAD_RECORD_MAC, "record did not authenticate"
            self.seq += 1
            if n > suites.MAX_PLAINTEXT + 1:
                return results, suites.RECORD_OVERFLOW, "inner plaintext longer than 2^14+1"
            # The content type is the last non-zero byte; all zeros is a record with no
            # type, which RFC 8446 section 5.4 answers with unexpected_message.
            end = n
            if plain[end - 1] == 0:
                end = len(bytes(plain[:n]).rstrip(b"\0"))
                if end == 0:
                    return results, suites.UNEXPECTED_MESSAGE, "record has no content type"
            results.append((plain[end - 1], bytes(plain[:end - 1])))
            if results[-1][0] != suites.APPLICATION_DATA:
                # It may change the keys (KeyUpdate, Finished): the engine resubmits the rest.
                break
        return results, 0, ""


class Aead12Protection(RecordProtection):
    """TLS 1.2 AEAD. AES-GCM (RFC 5288): nonce = 4-byte fixed IV || 8-byte explicit nonce,
    the explicit part sent in the record (we send the sequence number, which never repeats).
    ChaCha20-Poly1305 (RFC 7905): nonce = 12-byte IV XOR seq, nothing explicit. Additional
    data (RFC 5246 section 6.2.3.3): seq || type || version || plaintext length."""

    def __init__(self, version: int, cipher: str, key: bytes, iv: bytes) -> None:
        super().__init__()
        self.version = version
        self._aead = _aead(cipher, key)
        self._gcm = cipher != "chacha20-poly1305"
        if self._gcm and len(iv) != 4 or not self._gcm and len(iv) != 12:
            raise ValueError("wrong fixed IV length")
        self._salt = iv
        self._iv = int.from_bytes(iv, "big")
        self._explicit = 8 if self._gcm else 0
        self._vhi = version >> 8
        self._vlo = version & 0xFF
        self._plain: bytearray | None = None   # open()'s buffer, made on first use

    def seal(self, records: Sequence[tuple[int, bytes]]) -> bytes:
        self._check_batch(records)
        overhead = 5 + self._explicit + TAG_LEN
        total = sum(len(p) + overhead for _, p in records)
        out = self._buffer(total)
        aead = self._aead
        seq = self.seq
        pos = 0
        vhi, vlo = self._vhi, self._vlo
        for content_type, plaintext in records:
            n = len(plaintext)
            seq8 = seq.to_bytes(8, "big")
            ad = seq8 + bytes((content_type, vhi, vlo, n >> 8, n & 0xFF))
            length = self._explicit + n + TAG_LEN
            out[pos:pos + 5] = bytes((content_type, vhi, vlo, length >> 8, length & 0xFF))
            pos += 5
            if self._gcm:
                nonce = self._salt + seq8
                out[pos:pos + 8] = seq8
                pos += 8
            else:
                nonce = (self._iv ^ seq).to_bytes(12, "big")
            aead.encrypt_into(nonce, plaintext, ad, out[pos:pos + n + TAG_LEN])
            pos += n + TAG_LEN
            seq += 1
        self.seq = seq
        return bytes(out[:pos])

    def open(self, records: Sequence[bytes]) -> OpenResult:
        results: list[tuple[int, bytes]] = []
        aead = self._aead
        if self._plain is None:
            self._plain = bytearray(suites.MAX_PLAINTEXT + 2048)   # as in Aead13Protection
        plain = memoryview(self._plain)
        explicit = self._explicit
        for record in records:
            content_type, length = _split(record, suites.MAX_CIPHERTEXT_12)
            if isinstance(length, str):
                return results, content_type, length
            n = length - explicit - TAG_LEN
            if n < 0:
                return results, suites.BAD_RECORD_MAC, "record shorter than nonce and tag"
            if n > suites.MAX_PLAINTEXT:
                return results, suites.RECORD_OVERFLOW, "plaintext longer than 2^14"
            if self.seq >= SEQ_LIMIT:
                return results, suites.INTERNAL_ERROR, "sequence number exhausted"
            seq = self.seq
            if self._gcm:
                nonce = self._salt + bytes(record[5:13])
            else:
                nonce = (self._iv ^ seq).to_bytes(12, "big")
            # Additional data with the version the record claims (RFC 5246 section 6.2.3.3).
            ad = seq.to_bytes(8, "big") + bytes((content_type, record[1], record[2],
                                                 n >> 8, n & 0xFF))
            try:
                aead.decrypt_into(nonce, memoryview(record)[5 + explicit:], ad, plain[:n])
            except InvalidTag:
                return results, suites.BAD_RECORD_MAC, "record did not authenticate"
            self.seq = seq + 1
            results.append((content_type, bytes(plain[:n])))
            if results[-1][0] != suites.APPLICATION_DATA:
                # It may change the keys (KeyUpdate, Finished): the engine resubmits the rest.
                break
        return results, 0, ""


class CbcProtection(RecordProtection):
    """AES-CBC with HMAC, TLS 1.0-1.2; MAC-then-encrypt (RFC 5246 section 6.2.3.2) or
    encrypt-then-MAC (RFC 7366).

    One CBC context lives as long as the key. TLS 1.0 chains the IV from the last ciphertext
    block of the previous record, which is just the continuation of one CBC stream. TLS 1.1
    and 1.2 carry an explicit IV: we encrypt a fresh random block at the head of each record
    through the same stream, and its ciphertext (the encryption of random XOR previous block,
    so unpredictable) is the record's IV; this is option (2)(b) of RFC 4346 section 6.2.3.2.
    On receipt, decrypting IV || ciphertext through one stream yields a garbage first block
    (dropped) and then the exact plaintext, because CBC decryption of a block depends only on
    that block and the one before it."""

    def __init__(self, version: int, cipher: str, key: bytes, iv: bytes, mac_hash: str,
                 mac_key: bytes, encrypt_then_mac: bool = False) -> None:
        super().__init__()
        if cipher not in ("aes-128-cbc", "aes-256-cbc"):
            raise ValueError(f"not a CBC cipher: {cipher}")
        if len(iv) != CBC_BLOCK:
            raise ValueError("CBC IV must be 16 bytes")
        if version not in (suites.TLS10, suites.TLS11, suites.TLS12):
            raise ValueError("CBC is for TLS 1.0-1.2")
        self.version = version
        self._vhi = version >> 8
        self._vlo = version & 0xFF
        self._etm = encrypt_then_mac
        # Both contexts are built; a protection object is used in one direction only.
        cbc = Cipher(algorithms.AES(key), modes.CBC(iv))
        self._encryptor = cbc.encryptor()
        self._decryptor = cbc.decryptor()
        self._explicit_iv = CBC_BLOCK if version >= suites.TLS11 else 0
        digestmod = getattr(hashlib, mac_hash)
        # The keyed HMAC state is computed once; each record copies it.
        self._mac = hmac.new(mac_key, digestmod=digestmod)
        self._mac_len = self._mac.digest_size
        self._hash_name = mac_hash
        self._hash_block = self._mac.block_size
        # Bytes the hash appends when finishing: 0x80 and the bit length (RFC 6234 4.1, 4.2).
        self._hash_tail = 1 + (16 if self._hash_block == 128 else 8)
        # For the dummy compressions: an HMAC of the same hash (the key does not matter,
        # the result is thrown away), so that a dummy block costs what a real one does.
        self._dummy = hmac.new(bytes(len(mac_key)), digestmod=digestmod)
        self._zero_blocks = bytes(self._hash_block * ((_PAD_WINDOW + 2 * 128) // 64))
        # Smallest ciphertext (without explicit IV) that can hold a MAC and a padding byte.
        self._min_body = max(CBC_BLOCK, -(-(self._mac_len + 1) // CBC_BLOCK) * CBC_BLOCK)

    @staticmethod
    def _pseudo_header(seq: int, content_type: int, vhi: int, vlo: int, length: int) -> bytes:
        return seq.to_bytes(8, "big") + bytes((content_type, vhi, vlo, length >> 8,
                                               length & 0xFF))

    def seal(self, records: Sequence[tuple[int, bytes]]) -> bytes:
        self._check_batch(records)
        out: list[bytes] = []
        seq = self.seq
        mac_len = self._mac_len
        for content_type, plaintext in records:
            n = len(plaintext)
            iv = os.urandom(CBC_BLOCK) if self._explicit_iv else b""
            if self._etm:
                pad = CBC_BLOCK - 1 - n % CBC_BLOCK
                body = self._encryptor.update(iv + plaintext + bytes((pad,)) * (pad + 1))
                h = self._mac.copy()
                h.update(self._pseudo_header(seq, content_type, self._vhi, self._vlo,
                                             len(body)))
                h.update(body)
                length = len(body) + mac_len
                out.append(bytes((content_type, self._vhi, self._vlo, length >> 8,
                                  length & 0xFF)))
                out.append(body)
                out.append(h.digest())
            else:
                h = self._mac.copy()
                h.update(self._pseudo_header(seq, content_type, self._vhi, self._vlo, n))
                h.update(plaintext)
                pad = CBC_BLOCK - 1 - (n + mac_len) % CBC_BLOCK
                body = self._encryptor.update(iv + plaintext + h.digest()
                                              + bytes((pad,)) * (pad + 1))
                length = len(body)
                out.append(bytes((content_type, self._vhi, self._vlo, length >> 8,
                                  length & 0xFF)))
                out.append(body)
            seq += 1
        self.seq = seq
        return b"".join(out)

    def open(self, records: Sequence[bytes]) -> OpenResult:
        results: list[tuple[int, bytes]] = []
        for record in records:
            content_type, length = _split(record, suites.MAX_CIPHERTEXT_12)
            if isinstance(length, str):
                return results, content_type, length
            if self.seq >= SEQ_LIMIT:
                return results, suites.INTERNAL_ERROR, "sequence number exhausted"
            fragment = memoryview(record)[5:]
            # The MAC covers the version the record claims (RFC 5246 section 6.2.3.1), so a
            # header altered in transit fails like any other alteration.
            if self._etm:
                opened = self._open_etm(content_type, record[1], record[2], fragment)
            else:
                opened = self._open_mte(content_type, record[1], record[2], fragment)
            if isinstance(opened, tuple):
                return results, opened[0], opened[1]
            self.seq += 1
            if len(opened) > suites.MAX_PLAINTEXT:
                return results, suites.RECORD_OVERFLOW, "plaintext longer than 2^14"
            results.append((content_type, opened))
            if results[-1][0] != suites.APPLICATION_DATA:
                # It may change the keys (KeyUpdate, Finished): the engine resubmits the rest.
                break
        return results, 0, ""

    def _open_etm(self, content_type: int, vhi: int, vlo: int,
                  fragment: memoryview) -> bytes | tuple[int, str]:
        """RFC 7366: check the MAC over IV || ciphertext first, decrypt only what
        authenticated. Padding is then checked in the clear: it came from the peer's key."""
        mac_len = self._mac_len
        body_len = len(fragment) - mac_len
        if body_len < self._explicit_iv + CBC_BLOCK or body_len % CBC_BLOCK:
            # RFC 5246 7.2.2: a length that cannot be a CBC record is bad_record_mac too.
            return suites.BAD_RECORD_MAC, "malformed CBC record"
        body = fragment[:body_len]
        h = self._mac.copy()
        h.update(self._pseudo_header(self.seq, content_type, vhi, vlo, body_len))
        h.update(body)
        if not hmac.compare_digest(h.digest(), fragment[body_len:]):
            return suites.BAD_RECORD_MAC, "record did not authenticate"
        plain = self._decryptor.update(body)
        pad = plain[-1]
        start = self._explicit_iv
        if pad + 1 > len(plain) - start or plain[-pad - 1:] != bytes((pad,)) * (pad + 1):
            return suites.BAD_RECORD_MAC, "bad CBC padding"
        return plain[start:len(plain) - pad - 1]

    def _open_mte(self, content_type: int, vhi: int, vlo: int,
                  fragment: memoryview) -> bytes | tuple[int, str]:
        """MAC-then-encrypt with the Lucky Thirteen countermeasure (AlFardan and Paterson,
        2013; RFC 5246 section 6.2.3.2 asks for the MAC to be computed even when the padding
        is bad). After decryption the padding length is secret: if the time to reject a
        record depended on it, or on whether padding or MAC failed, an attacker timing our
        bad_record_mac alerts could decrypt byte by byte (Vaudenay's padding oracle). So:

        - the padding is checked with fixed-size big-integer arithmetic over the last 256
          bytes (the widest padding), whatever the padding length, with no early exit;
        - a bad padding is treated as no padding, and the MAC is computed anyway;
        - the HMAC's inner hash costs one compression per hash block, so the number of
          blocks depends on the plaintext length and hence on the padding length. We
          count the blocks this record needed and hash as many dummy blocks as make the
          total equal to that of the longest possible plaintext (padding length 0), so
          every record of a given length costs the same number of compressions;
        - MAC and padding results are combined with a bitwise AND and compared with
          hmac.compare_digest, and both failures give the same bad_record_mac.

        Python slicing at the secret offset still touches memory at an address that depends
        on the padding length; that is a cache effect far below what the network shows, and
        the compression count (the signal Lucky Thirteen measured) is constant."""
        mac_len = self._mac_len
        start = self._explicit_iv
        if len(fragment) % CBC_BLOCK or len(fragment) < start + self._min_body:
            # RFC 5246 7.2.2: "not an even multiple of the block length" is bad_record_mac,
            # as is a length too short for IV, MAC and padding. The length is public (it is
            # in the header), so returning early here tells an attacker nothing new.
            return suites.BAD_RECORD_MAC, "malformed CBC record"
        plain = self._decryptor.update(fragment)
        total = len(plain) - start          # length of plaintext || MAC || padding
        pad = plain[-1]
        window = plain[max(start, len(plain) - _PAD_WINDOW):]
        # Every byte of the last pad+1 must equal pad: XOR with a run of `pad` bytes and
        # mask to the last pad+1 bytes, no per-byte branch. The sentinel bit keeps every
        # integer at the same width whatever the padding length: CPython's & costs time in
        # proportion to the narrower operand, and a mask built as (1 << 8*(pad+1)) - 1 made
        # a padding of 255 measurably slower to check than one of 0 (bench/lucky13.py).
        # The leading 1 byte keeps both operands at full width too (a run of zero bytes,
        # pad 0, would otherwise be the integer 0).
        diff = (int.from_bytes(b"\x01" + window, "big")
                ^ int.from_bytes(b"\x01" + bytes((pad,)) * len(window), "big")) | _PAD_SENTINEL
        pad_ok = ((diff & _PAD_MASKS[pad]) == _PAD_SENTINEL) & (pad + 1 + mac_len <= total)
        # Bad padding: treat as no padding at all (the longest content).
        strip = (pad + 1) * pad_ok
        content_len = total - mac_len - strip
        h = self._mac.copy()
        h.update(self._pseudo_header(self.seq, content_type, vhi, vlo, content_len))
        h.update(plain[start:start + content_len])
        mac_ok = hmac.compare_digest(h.digest(), plain[start + content_len:
                                                        start + content_len + mac_len])
        # Compressions of the inner hash after the ipad block: 13 bytes of pseudo-header,
        # the content, then the hash's own padding.
        block = self._hash_block
        done = (13 + content_len + self._hash_tail + block - 1) // block
        most = (13 + (total - mac_len) + self._hash_tail + block - 1) // block
        # The dummy blocks go through the same kind of object and call as the real ones
        # (a keyed HMAC copy fed a bytes slice), so a block costs the same either way.
        dummy = self._dummy.copy()
        dummy.update(self._zero_blocks[:(most - done) * block])
        if not (pad_ok & mac_ok):
            return suites.BAD_RECORD_MAC, "record did not authenticate"
        return plain[start:start + content_len]


def new_protection(version: int, suite: suites.CipherSuite, key: bytes, iv: bytes,
                   mac_key: bytes = b"", encrypt_then_mac: bool = False) -> RecordProtection:
    """The protection for one direction of `suite` in `version`. `encrypt_then_mac` only
    applies to CBC suites (RFC 7366 section 3: AEAD suites ignore the extension)."""
    if not suite.version_min <= version <= suite.version_max:
        raise ValueError(f"{suite.name} is not allowed in version {version:#06x}")
    if version == suites.TLS13:
        return Aead13Protection(suite.cipher, key, iv)
    if suite.mac is None:
        return Aead12Protection(version, suite.cipher, key, iv)
    return CbcProtection(version, suite.cipher, key, iv, suite.mac, mac_key, encrypt_then_mac)
