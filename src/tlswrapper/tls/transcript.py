"""The handshake transcript: the messages in order and one running hash over them.

Rule: every hash of the handshake messages (Finished, extended master secret, CertificateVerify,
the TLS 1.3 key schedule) goes through Transcript, and the TLS 1.3 CertificateVerify prefixes
are defined only here; the engine and the key process both import them from here.
"""

from __future__ import annotations

import hashlib

from . import suites

# No typing at run time: each tcpserver-mode connection imports this module.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

# RFC 8446 4.4.3: what a TLS 1.3 CertificateVerify signs is one of these, then the transcript
# hash: 64 spaces, the context string and a zero byte, so that a signature made for TLS 1.3
# serves no other protocol and a server's cannot pass for a client's.
SERVER_PREFIX = b"\x20" * 64 + b"TLS 1.3, server CertificateVerify\x00"
CLIENT_PREFIX = b"\x20" * 64 + b"TLS 1.3, client CertificateVerify\x00"


def hash_names(version: int, prf_hash: str) -> tuple[str, ...]:
    """The hashes of the handshake hash: MD5 || SHA-1 below TLS 1.2 (RFC 2246/4346 7.4.9),
    else the suite's PRF hash (RFC 5246 7.4.9, RFC 8446 4.4.1)."""
    return ("md5", "sha1") if version < suites.TLS12 else (prf_hash,)


class Transcript:
    """The handshake messages so far and their running hash.

    The hash is known only once the version and suite are chosen, after the ClientHello is in:
    digest(names) starts the hash on its first call and from then on feeds only the messages
    added since, so no message is hashed twice (RFC 8446 4.4.1: one running hash, each step a
    snapshot). A call with other names starts over, so a digest is never of the wrong hash.
    """

    __slots__ = ("messages", "_names", "_hashes", "_hashed")

    def __init__(self, messages: Iterable[bytes] = ()) -> None:
        self.messages: list[bytes] = list(messages)
        self._names: tuple[str, ...] = ()
        self._hashes: list = []
        self._hashed = 0

    def append(self, message: bytes) -> None:
        self.messages.append(message)

    def extend(self, messages: Iterable[bytes]) -> None:
        self.messages.extend(messages)

    def digest(self, names: tuple[str, ...]) -> bytes:
        if names != self._names:
            self._names = names
            self._hashes = [hashlib.new(name) for name in names]
            self._hashed = 0
        messages = self.messages
        for h in self._hashes:
            for msg in messages[self._hashed:]:
                h.update(msg)
        self._hashed = len(messages)
        return b"".join(h.digest() for h in self._hashes)

    def replace_client_hello(self, name: str) -> None:
        """After a HelloRetryRequest (RFC 8446 4.4.1): the first ClientHello gives way to a
        message_hash message holding its hash."""
        ch1_hash = hashlib.new(name, self.messages[0]).digest()
        self.messages = [bytes((suites.HS_MESSAGE_HASH, 0, 0, len(ch1_hash))) + ch1_hash]
        self._names, self._hashes, self._hashed = (), [], 0
