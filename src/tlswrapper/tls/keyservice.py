"""The KeyService: the only things the engine may ask of the side that holds secrets.

Rule: every argument and result is bytes, int, str, bool, or a list/tuple of them, so that the
same interface runs in-process (tests) or over a pipe to the jailed key process (production).
The engine never receives a secret: not a private key, an ephemeral key, a shared secret, a
master/handshake/traffic secret, a record key or IV. It holds no handles either: the key side
keeps one connection's state (one key process per connection).

Key stages. Each direction (READ = client to server, WRITE = server to client) has a current
protection (initially none: the engine frames plaintext records itself) and a pending one.
derive12 / derive13_handshake / derive13_application fill the pending protection of both
directions; activate(direction) makes a direction's pending protection current (resetting its
sequence number). The engine decides when: at ChangeCipherSpec in TLS 1.2, right after
derive13_handshake for both directions, after its own Finished (WRITE) and after the client's
Finished (READ) for the application keys in TLS 1.3.

Round trips. Over the pipe every call that answers something costs a round trip to the key
process, so the server flights have one call each that does a whole step on the key side
(server_flight13; server_key_exchange12 and derive12_finished), and activate() and
key_update(), whose answers the engine never needs, may be deferred by an implementation
until the next call (PipeKeyService sends them in the same write as that call). Their errors
(engine bugs: internal_error) then surface from that call; if no call follows, they are not
made at all. select() may be deferred the same way (PipeKeyService sends it with the server
flight call that signs: one round trip fewer per handshake); its error then surfaces from
that call as KeyRefused, so that the engine can tell a refused certificate (it tries the next
one) from a failure of the flight call itself.

A hostile caller (ARCHITECTURE MUST 6). Over the pipe, the key process takes these calls only
in the order a handshake makes them (keys/order.py) and ends on the first that breaks it.
There is no call that signs, or returns a key share or secret, on its own: the key side signs
only inside server_flight13 and server_key_exchange12, over a transcript or parameters that
hold the key share it has just made itself, so no caller-chosen data can be signed.
"""

from __future__ import annotations

from .frozen import Frozen, init

# Neither typing nor dataclasses at run time (each tcpserver-mode connection imports this
# module): for the type checker KeyService is a Protocol, at run time a plain class.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Protocol
else:
    Protocol = object

READ = 0    # records from the client
WRITE = 1   # records to the client

SENDER_CLIENT = 0
SENDER_SERVER = 1


class KeyServiceError(Exception):
    """A request the key side refused. `alert` is the TLS alert to send (suites.*), `reason`
    a short line for the log. Raised e.g. for an invalid peer key share (illegal_parameter)."""

    def __init__(self, alert: int, reason: str) -> None:
        super().__init__(reason)
        self.alert = alert
        self.reason = reason


class KeyRefused(KeyServiceError):
    """A deferred select() failed (the key does not match its certificate, say): raised by
    the call the select was sent with, whatever that call answered (it fails too: no key is
    selected after a failed select). The engine reports the candidate and tries the next."""


class Candidate(Frozen):
    """A certificate file as the key side read it: its public chain (DER, leaf first) and the
    type of its private key (suites.KEY_RSA, KEY_EC_P256, KEY_EC_P384, KEY_EC_P521). `bits` is
    the RSA modulus size (0 for EC keys)."""

    __slots__ = ("chain", "key_type", "bits")
    chain: tuple[bytes, ...]
    key_type: str
    bits: int

    def __init__(self, chain: tuple[bytes, ...], key_type: str, bits: int = 0) -> None:
        init(self, "chain", chain)
        init(self, "key_type", key_type)
        init(self, "bits", bits)


class Unusable(Frozen):
    """A certificate file that cannot be used, and why (for the log): 'missing' when the
    file does not exist, else a reason such as 'key does not match certificate'."""

    __slots__ = ("reason", "missing")
    reason: str
    missing: bool

    def __init__(self, reason: str, missing: bool = False) -> None:
        init(self, "reason", reason)
        init(self, "missing", missing)


class KeyService(Protocol):
    # --- certificates -------------------------------------------------------------------
    def load(self, paths: Sequence[str]) -> list[Candidate | Unusable]:
        """Read the PEM files named, in order (the key process reads them privileged and
        jails before parsing the secret parts), and report each file's public chain and key
        type. Called at most once per connection. The key process opens only names its own
        configuration leads to (certfiles.candidate_paths: a -f file, or a -d directory and a
        valid host name), at most one per -f/-d entry; any other name ends it."""

    def read_anchor(self) -> bytes:
        """-a: the CERTIFICATE blocks of the configured anchor file (the key side knows its
        name from its own configuration; no request names a file), read while still
        privileged (before load(), which jails it); the caller parses them (in its own jail).
        Raises KeyServiceError when the file cannot be read or load() was already called."""

    def select(self, index: int) -> None:
        """Use the private key of candidate `index` of load()'s answer for the server flight
        calls, which sign. Raises KeyServiceError when that key cannot be used
        (e.g. it does not match its certificate); a failed select leaves no key selected, not
        an earlier one, so the calls that sign fail until a select succeeds. May be deferred
        (see the top): its error then comes as KeyRefused from the next call."""

    # --- TLS 1.0 - 1.2 --------------------------------------------------------------------
    def derive12(self, version: int, suite: int, peer_share: bytes, client_random: bytes,
                 server_random: bytes, session_hash: bytes | None,
                 encrypt_then_mac: bool = False) -> None:
        """ECDH with the client's share (ClientKeyExchange), then the master secret (extended,
        RFC 7627, when `session_hash` is given) and the key block; fills the pending protection
        of both directions. Raises KeyServiceError(illegal_parameter) for an invalid share."""

    def derive12_finished(self, version: int, suite: int, peer_share: bytes,
                          client_random: bytes, server_random: bytes,
                          transcript: Sequence[bytes], extended_master_secret: bool,
                          encrypt_then_mac: bool) -> tuple[bytes, bytes]:
        """TLS 1.0-1.2 without a client certificate: the handshake hash of `transcript` (every
        handshake message up to ClientKeyExchange; MD5||SHA-1 below TLS 1.2); derive12 (that
        hash as the session hash with `extended_master_secret`); the client's Finished
        verify_data expected over it; then our Finished, whose transcript ends with that
        client Finished, sealed ahead of time: WRITE is activated for it, and the engine sends
        the record, after a change_cipher_spec, once the client's Finished has verified.
        Returns (client verify_data, the sealed server Finished record)."""

    def server_key_exchange12(self, group: int, scheme: int, client_random: bytes,
                              server_random: bytes) -> tuple[bytes, bytes]:
        """key_share(group), then sign(scheme, client_random + server_random +
        ServerECDHParams) as the ServerKeyExchange wants it (RFC 8422 5.4): (public share,
        signature) in one call. With no key selected it fails first, having done nothing."""

    def seal_finished12(self, handshake_hash: bytes) -> bytes:
        """The server's Finished message (verify_data of finished12(SENDER_SERVER,
        handshake_hash)) sealed as a handshake record with the current WRITE protection."""

    def finished12(self, sender: int, handshake_hash: bytes) -> bytes:
        """verify_data of the Finished message sent by `sender` (SENDER_CLIENT: 'client
        finished', SENDER_SERVER: 'server finished') over `handshake_hash` (MD5||SHA-1 for
        TLS 1.0/1.1, the suite's PRF hash for 1.2)."""

    # --- TLS 1.3 ----------------------------------------------------------------------------
    def server_flight13(self, group: int, peer_share: bytes, suite: int, scheme: int,
                        transcript: Sequence[bytes], hello_head: bytes,
                        flight: Sequence[bytes], client_auth: bool,
                        ) -> tuple[bytes, bytes, bytes, bytes, bytes]:
        """The TLS 1.3 server flight in one call. `transcript` are the handshake messages
        before the ServerHello (ClientHello; or message_hash, HelloRetryRequest, ClientHello),
        `hello_head` the ServerHello message but our key share, which must end it (the
        key_share extension last), `flight` the messages after it up to our Certificate
        (EncryptedExtensions[, CertificateRequest], Certificate). In order: key_share(group,
        peer_share); derive13_handshake over ClientHello..ServerHello and activate both
        directions; sign(scheme) the CertificateVerify content over ..Certificate;
        finished13(SENDER_SERVER) over ..CertificateVerify; seal `flight`, CertificateVerify
        and Finished (coalesced handshake records); derive13_application over ..Finished and
        activate WRITE. Returns (our share, the CertificateVerify message, the Finished
        message, the sealed records, the client's Finished verify_data expected over
        ..server Finished, or b"" with `client_auth`, when it comes after the client's
        Certificate and CertificateVerify). Raises as the calls it makes; with no key
        selected it fails first, having done nothing (no key share, no keys activated)."""

    def finished13(self, sender: int, transcript_hash: bytes) -> bytes:
        """verify_data of `sender`'s Finished (the current handshake traffic secret)."""

    def key_update(self, direction: int) -> None:
        """TLS 1.3 KeyUpdate: next generation of `direction`'s application traffic secret,
        made current at once (sequence number reset). May be deferred (see the top)."""

    # --- records ----------------------------------------------------------------------------
    def activate(self, direction: int) -> None:
        """Make `direction`'s pending protection current. May be deferred (see the top)."""

    def seal(self, records: Sequence[tuple[int, bytes]]) -> bytes:
        """Protect each (content_type, plaintext) with the current WRITE protection and return
        the whole records (headers included), concatenated. Plaintexts are at most 2^14 bytes.
        TLS 1.3: the inner content type is added and the outer type is application_data."""

    def open(self, records: Sequence[bytes]) -> tuple[list[tuple[int, bytes]], int, str]:
        """Unprotect whole records (5-byte header + fragment) with the current READ
        protection, in order. Returns (results, alert, reason): results is one
        (content_type, plaintext) per record that opened; on the first failure `alert` is
        its alert (bad_record_mac; unexpected_message for a TLS 1.3 record with no content
        type; decode_error for a malformed CBC record) and the rest is not processed; alert 0
        means every record opened, or processing stopped early (fewer results than records)
        right after a record whose content type is not application_data: such a record may
        change the keys (KeyUpdate, Finished), so the engine resubmits the rest afterwards.
        A record that fails leaves the sequence number unchanged (TLS 1.3 may skip rejected
        0-RTT records). TLS 1.3: padding is removed and the inner type returned."""
