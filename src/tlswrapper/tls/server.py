"""The TLS server state machine (TLS 1.0-1.3). Rule: sans-IO, and every secret behind KeyService.

API (BearSSL-style: the caller owns all I/O, timing and back-pressure):

    conn = ServerConnection(config, keys)
    events = conn.receive(data)        # bytes from the client; b"" means the transport ended
    events = conn.choose_certificate(candidates)  # after ClientHelloReceived (keys.load's answer)
    conn.send(data)                    # application data (after HandshakeComplete)
    conn.close()                       # queue close_notify
    out = conn.outgoing()              # bytes to write to the client (may be b"")

The engine never raises for anything the client sends: a bad input becomes ConnectionFailed
with the RFC's alert queued in outgoing(). Every transition is listed in _TRANSITIONS (the
handler of each event and the states it may lead to); the handshake messages a state accepts
are its keys (_EXPECTED); everything else is unexpected_message.
"""

from __future__ import annotations

import hmac
import os

from . import messages as m
from . import suites
from .clientauth import ClientAuth
from .config import ServerConfig
from .events import (AlertReceived, ApplicationData, CertificateRefused, ClientHelloReceived,
                     ConnectionFailed, Event, HandshakeComplete, PeerClosed)
from .keyservice import (READ, WRITE, Candidate, KeyRefused, KeyService, KeyServiceError,
                         Unusable)
from .offer import Offer, OfferRefused, read_offer
from .record import (HandshakeReassembler, RecordReader, plaintext_records, record_header,
                     split_fragments)
from .server12 import Tls12Server
from .server13 import Tls13Server
from .state import Abort, State, StateValue
from .transcript import Transcript, hash_names
from .wire import DecodeError, handshake_message

# No typing, enum or secrets at run time: each tcpserver-mode connection imports this module.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

# Bounds against a client that keeps us busy without progress.
MAX_EMPTY_RECORDS = 32          # consecutive empty application_data records
MAX_WARNING_ALERTS = 8          # warning alerts (TLS 1.2) or user_canceled
# KeyUpdates are paid for with application data, not forgiven by any of it: a client may run
# MAX_KEY_UPDATES ahead, and each KEY_UPDATE_DATA bytes of its application data earn one back.
# (Reset by any record, a client alternating KeyUpdate and 1-byte records was never stopped.)
MAX_KEY_UPDATES = 32
KEY_UPDATE_DATA = 1 << 14
MAX_SKIPPED_EARLY_DATA = 1 << 16  # rejected 0-RTT bytes we skip (RFC 8446 4.2.10)
MAX_OPEN_BATCH = 64             # records per KeyService.open call


# Every transition of the handshake in one place (h11's style): for each state and whether TLS
# 1.3 was chosen, the events it accepts, the handler of each and the states that handler may
# lead to. An event is a handshake message type, or "choose_certificate" (the caller's call)
# or "change_cipher_spec" (TLS 1.0-1.2: the record). Handlers return the next state and
# _enter checks it against this table. Not listed, as any state may take it: FAILED (a fatal
# alert sent or received, close_notify or the transport's end during the handshake).
_TRANSITIONS: dict[tuple[StateValue, bool],
                   dict[int | str, tuple[str, frozenset[StateValue]]]] = {
    (State.START, False): {
        suites.HS_CLIENT_HELLO: ("_client_hello", frozenset({State.CHOOSE_CERTIFICATE}))},
    # The server flight: a HelloRetryRequest (1.3), or the flight with or without a
    # CertificateRequest (-a).
    (State.CHOOSE_CERTIFICATE, False): {
        "choose_certificate": ("_choose", frozenset({State.WAIT_CLIENT_KEY_EXCHANGE,
                                                     State.WAIT_CLIENT_CERTIFICATE}))},
    (State.CHOOSE_CERTIFICATE, True): {
        "choose_certificate": ("_choose", frozenset({State.WAIT_CLIENT_HELLO_2,
                                                     State.WAIT_CLIENT_CERTIFICATE,
                                                     State.WAIT_FINISHED}))},
    (State.WAIT_CLIENT_HELLO_2, True): {
        suites.HS_CLIENT_HELLO: ("_client_hello_2", frozenset({State.WAIT_CLIENT_CERTIFICATE,
                                                               State.WAIT_FINISHED}))},
    # -a: Certificate (1.2: before ClientKeyExchange), then CertificateVerify (1.2: after it).
    (State.WAIT_CLIENT_CERTIFICATE, False): {
        suites.HS_CERTIFICATE: ("_client_certificate",
                                frozenset({State.WAIT_CLIENT_KEY_EXCHANGE}))},
    (State.WAIT_CLIENT_CERTIFICATE, True): {
        suites.HS_CERTIFICATE: ("_client_certificate",
                                frozenset({State.WAIT_CLIENT_CERTIFICATE_VERIFY}))},
    (State.WAIT_CLIENT_KEY_EXCHANGE, False): {
        suites.HS_CLIENT_KEY_EXCHANGE: ("_client_key_exchange",
                                        frozenset({State.WAIT_CHANGE_CIPHER_SPEC,
                                                   State.WAIT_CLIENT_CERTIFICATE_VERIFY}))},
    (State.WAIT_CLIENT_CERTIFICATE_VERIFY, False): {
        suites.HS_CERTIFICATE_VERIFY: ("_client_certificate_verify",
                                       frozenset({State.WAIT_CHANGE_CIPHER_SPEC}))},
    (State.WAIT_CLIENT_CERTIFICATE_VERIFY, True): {
        suites.HS_CERTIFICATE_VERIFY: ("_client_certificate_verify",
                                       frozenset({State.WAIT_FINISHED}))},
    (State.WAIT_CHANGE_CIPHER_SPEC, False): {
        "change_cipher_spec": ("_change_cipher_spec_12", frozenset({State.WAIT_FINISHED}))},
    (State.WAIT_FINISHED, False): {
        suites.HS_FINISHED: ("_finished", frozenset({State.CONNECTED}))},
    (State.WAIT_FINISHED, True): {
        suites.HS_FINISHED: ("_finished", frozenset({State.CONNECTED}))},
    (State.CONNECTED, True): {
        suites.HS_KEY_UPDATE: ("_key_update", frozenset({State.CONNECTED}))},
    # TLS 1.2 renegotiation: a ClientHello is answered with no_renegotiation (RFC 5746).
    (State.CONNECTED, False): {
        suites.HS_CLIENT_HELLO: ("_renegotiation", frozenset({State.CONNECTED}))},
}

# Handshake messages accepted in each state; anything else is unexpected_message.
_EXPECTED: dict[tuple[StateValue, bool], frozenset[int]] = {
    key: frozenset(event for event in row if isinstance(event, int))
    for key, row in _TRANSITIONS.items()}


class ServerConnection(Tls12Server, Tls13Server, ClientAuth):
    def __init__(self, config: ServerConfig, keys: KeyService,
                 random: Callable[[int], bytes] = os.urandom) -> None:
        self.config = config
        self.keys = keys
        self._random = random
        self.state = State.START
        self._reader = RecordReader()
        self._handshake = HandshakeReassembler()
        self._events: list[Event] = []
        self._out: list[bytes] = []
        self._protected_read = False
        self._protected_write = False
        self._transcript = Transcript()
        self._record_version = suites.TLS12 if config.version_max >= suites.TLS12 \
            else config.version_max
        # negotiated
        self.version: int | None = None
        self.suite: suites.CipherSuite | None = None
        self.group: int | None = None
        self.scheme: int | None = None
        self.sni: str | None = None
        self.client_hello: m.ClientHello | None = None
        self._client_info: ClientHelloReceived | None = None
        self._hrr_sent = False
        self._ccs_sent = False
        self._client_random = b""
        self._server_random = b""
        self._offer: Offer | None = None   # what the ClientHello offers (read_offer)
        self._ems = False
        self._etm = False           # RFC 7366: offered and a CBC suite chosen
        self._expected_client_finished = b""
        self._server_finished = b""     # TLS 1.2: our Finished record, sealed ahead
        self._early_data_offered = False
        self._skipped_early_data = 0
        self._empty_records = 0
        self._key_updates = 0           # KeyUpdates not yet paid for (see KEY_UPDATE_DATA)
        self._key_update_data = 0       # application data bytes towards the next one
        self._warnings = 0
        self._candidate: Candidate | None = None
        # The fitting candidates not tried yet, best first: (index, candidate, suite code or
        # None (TLS 1.3: the suite does not depend on it), signature scheme).
        self._choices: list[tuple[int, Candidate, int | None, int]] = []
        self._no_fit = ""               # the failure reason when no candidate fits at all
        self._refused: list[str] = []   # why the key side refused candidates at select()
        self._client_chain: tuple[bytes, ...] = ()   # -a: the verified client chain
        self._client_identity: object | None = None
        self.peer_closed = False
        self.local_closed = False

    # ------------------------------------------------------------------ public API
    @property
    def handshake_done(self) -> bool:
        return self.state is State.CONNECTED

    @property
    def failed(self) -> bool:
        return self.state is State.FAILED

    def outgoing(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def receive(self, data: bytes) -> list[Event]:
        if self.state is State.FAILED:
            return []
        try:
            if not data:
                self._transport_ended()
            else:
                if self.peer_closed:
                    return []   # RFC 8446 6.1: data after close_notify is ignored
                self._reader.feed(data)
                self._process_records()
        except (Abort, DecodeError, KeyServiceError) as e:
            self._fail(e.alert, e.reason)
        return self._take_events()

    def choose_certificate(self, candidates: Sequence[Candidate | Unusable]) -> list[Event]:
        """Continue the handshake with the first candidate that fits the client's offer."""
        if self.state is not State.CHOOSE_CERTIFICATE:
            return self._take_events()
        try:
            _, allowed = _TRANSITIONS[(self.state, self.version == suites.TLS13)][
                "choose_certificate"]
            self._enter(self._choose(candidates), allowed)
            self._process_records()   # the client may have sent more already
        except (Abort, DecodeError, KeyServiceError) as e:
            self._fail(e.alert, e.reason)
        return self._take_events()

    def send(self, data: bytes) -> None:
        """Queue application data (only once the handshake is complete)."""
        if self.state is not State.CONNECTED or self.local_closed or not data:
            return
        self._out.append(self.keys.seal(
            [(suites.APPLICATION_DATA, f) for f in split_fragments(data)]))

    def close(self) -> None:
        """Queue close_notify; nothing is sent after it."""
        if self.local_closed or self.state is State.FAILED:
            return
        self.local_closed = True
        self._send_alert(1, suites.CLOSE_NOTIFY)

    # ------------------------------------------------------------------ plumbing
    def _take_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def _fail(self, alert: int, reason: str) -> None:
        if self.state is State.FAILED:
            return
        try:
            self._send_alert(2, alert)
        except KeyServiceError:
            pass
        self.state = State.FAILED
        self._events.append(ConnectionFailed(alert, reason))

    def _enter(self, state: StateValue, allowed: frozenset[StateValue]) -> None:
        """Take a transition a handler chose, if _TRANSITIONS lists it (else a bug of ours)."""
        if state not in allowed:
            raise Abort(suites.INTERNAL_ERROR, f"no transition from {self.state.name} "
                        f"to {state.name}")
        self.state = state

    def _send_alert(self, level: int, description: int) -> None:
        body = bytes((level, description))
        if self._protected_write:
            self._out.append(self.keys.seal([(suites.ALERT, body)]))
        else:
            self._out.append(record_header(suites.ALERT, self._record_version, 2) + body)

    def _send_handshake(self, messages: Sequence[bytes]) -> None:
        """Send whole handshake messages, coalesced into as few records as possible."""
        data = b"".join(messages)
        if self._protected_write:
            self._out.append(self.keys.seal(
                [(suites.HANDSHAKE, f) for f in split_fragments(data)]))
        else:
            self._out.append(plaintext_records(suites.HANDSHAKE, self._record_version, data))

    def _send_change_cipher_spec(self) -> None:
        self._out.append(record_header(suites.CHANGE_CIPHER_SPEC, self._record_version, 1)
                         + b"\x01")

    def _hash_name(self) -> str:
        return self.suite.prf_hash if self.suite else "sha256"

    def _transcript_hash(self) -> bytes:
        version = self.version if self.version is not None else suites.TLS12
        return self._transcript.digest(hash_names(version, self._hash_name()))

    def _transport_ended(self) -> None:
        if self.peer_closed:
            return
        self.peer_closed = True
        if self.state is State.CONNECTED:
            self._events.append(PeerClosed(clean=False))
        else:
            self.state = State.FAILED
            self._events.append(ConnectionFailed(
                None, "client closed the connection during the handshake"))

    # ------------------------------------------------------------------ records in
    def _process_records(self) -> None:
        while self.state not in (State.FAILED, State.CHOOSE_CERTIFICATE) and not self.peer_closed:
            if self._protected_read and self._reader.peek_type() == suites.APPLICATION_DATA \
                    and self.state is State.CONNECTED:
                if not self._open_batch():
                    return
                continue
            got = self._reader.next_record()
            if got is None:
                return
            content_type, record = got
            self._one_record(content_type, record)

    def _open_batch(self) -> bool:
        """Open consecutive protected application_data-typed records in one KeyService call."""
        batch: list[bytes] = []
        while len(batch) < MAX_OPEN_BATCH and \
                self._reader.peek_type() == suites.APPLICATION_DATA:
            got = self._reader.next_record()
            if got is None:
                break
            batch.append(got[1])
        if not batch:
            return False
        while batch:
            results, alert, reason = self.keys.open(batch)
            for content_type, plaintext in results:
                self._inner_record(content_type, plaintext)
                if self.state is State.FAILED or self.peer_closed:
                    return False
            if alert:
                raise Abort(alert, reason)
            batch = batch[len(results):]
        return True

    def _one_record(self, content_type: int, record: bytes) -> None:
        fragment = record[5:]
        if content_type == suites.CHANGE_CIPHER_SPEC:
            self._change_cipher_spec(fragment)
            return
        if not self._protected_read:
            if content_type == suites.APPLICATION_DATA and self._early_data_offered \
                    and self.state is State.WAIT_CLIENT_HELLO_2:
                # RFC 8446 4.2.10: 0-RTT sent before our HelloRetryRequest is skipped.
                self._skipped_early_data += len(fragment)
                if self._skipped_early_data <= MAX_SKIPPED_EARLY_DATA:
                    return
            self._inner_record(content_type, fragment)
            return
        if self.version == suites.TLS13:
            if content_type == suites.ALERT and len(fragment) == 2:
                # A client that could not derive our keys answers in the clear.
                self._inner_record(content_type, fragment)
                return
            if content_type != suites.APPLICATION_DATA:
                raise Abort(suites.UNEXPECTED_MESSAGE,
                            "unprotected record after the handshake keys were set")
        results, alert, reason = self.keys.open([record])
        if alert:
            if self._may_skip_early_data(record):
                return
            raise Abort(alert, reason)
        self._early_data_offered = False   # the first record that opens ends 0-RTT skipping
        for inner_type, plaintext in results:
            self._inner_record(inner_type, plaintext)

    def _may_skip_early_data(self, record: bytes) -> bool:
        """RFC 8446 4.2.10: a server that rejects 0-RTT skips records it cannot open, up to a
        bound, until the client's Finished opens with the handshake key."""
        if self._early_data_offered and self.state in (State.WAIT_FINISHED,
                                                       State.WAIT_CLIENT_CERTIFICATE):
            self._skipped_early_data += len(record) - 5
            return self._skipped_early_data <= MAX_SKIPPED_EARLY_DATA
        return False

    def _change_cipher_spec(self, fragment: bytes) -> None:
        if fragment != b"\x01":
            raise Abort(suites.UNEXPECTED_MESSAGE, "malformed change_cipher_spec")
        if not self._handshake.empty():
            raise Abort(suites.UNEXPECTED_MESSAGE,
                        "change_cipher_spec inside a fragmented handshake message")
        if self.version == suites.TLS13 and self.state in (
                State.WAIT_CLIENT_HELLO_2, State.WAIT_FINISHED, State.WAIT_CLIENT_CERTIFICATE):
            return   # RFC 8446 5: the middlebox-compatibility record, dropped
        if self.version != suites.TLS13 and self.state is State.WAIT_CHANGE_CIPHER_SPEC:
            _, allowed = _TRANSITIONS[(self.state, False)]["change_cipher_spec"]
            self._enter(self._change_cipher_spec_12(), allowed)
            return
        raise Abort(suites.UNEXPECTED_MESSAGE, "unexpected change_cipher_spec")

    def _inner_record(self, content_type: int, plaintext: bytes) -> None:
        if len(plaintext) > suites.MAX_PLAINTEXT:
            raise Abort(suites.RECORD_OVERFLOW, "record plaintext over 2^14 bytes")
        if content_type != suites.HANDSHAKE and not self._handshake.empty():
            raise Abort(suites.UNEXPECTED_MESSAGE,
                        "record interleaved with a fragmented handshake message")
        if content_type == suites.APPLICATION_DATA:
            self._application_data(plaintext)
        elif content_type == suites.HANDSHAKE:
            self._handshake_fragment(plaintext)
        elif content_type == suites.ALERT:
            self._alert(plaintext)
        else:
            raise Abort(suites.UNEXPECTED_MESSAGE,
                        f"record of content type {content_type} inside protection")

    def _application_data(self, data: bytes) -> None:
        if self.state is not State.CONNECTED:
            raise Abort(suites.UNEXPECTED_MESSAGE, "application data before the handshake")
        if not data:
            self._empty_records += 1
            if self._empty_records > MAX_EMPTY_RECORDS:
                raise Abort(suites.UNEXPECTED_MESSAGE, "too many empty records")
            return
        self._empty_records = 0
        if self._key_updates:
            self._key_update_data += len(data)
            if self._key_update_data >= KEY_UPDATE_DATA:
                paid, self._key_update_data = divmod(self._key_update_data, KEY_UPDATE_DATA)
                self._key_updates = max(0, self._key_updates - paid)
        self._events.append(ApplicationData(data))

    def _alert(self, fragment: bytes) -> None:
        if not fragment and self.version == suites.TLS13:
            # RFC 8446 5.4: an Alert with zero-length content MUST get unexpected_message.
            raise Abort(suites.UNEXPECTED_MESSAGE, "empty alert record")
        alert = m.parse_alert(fragment)
        if alert.description == suites.CLOSE_NOTIFY:
            self.peer_closed = True
            if self.state is State.CONNECTED:
                self._events.append(PeerClosed(clean=True))
            else:
                self.state = State.FAILED
                self._events.append(ConnectionFailed(None, "client sent close_notify during "
                                                     "the handshake"))
            return
        self._events.append(AlertReceived(alert.level, alert.description))
        name = suites.ALERT_NAMES.get(alert.description, str(alert.description))
        # TLS 1.3 6.2: every alert but close_notify and user_canceled is fatal. TLS 1.2:
        # warnings are tolerated (a bounded number).
        warning = alert.level == 1 and (self.version != suites.TLS13
                                        or alert.description == suites.USER_CANCELED)
        if warning:
            self._warnings += 1
            if self._warnings > MAX_WARNING_ALERTS:
                raise Abort(suites.UNEXPECTED_MESSAGE, "too many warning alerts")
            return
        self.state = State.FAILED
        self._events.append(ConnectionFailed(None, f"client sent alert {name}"))

    def _handshake_fragment(self, fragment: bytes) -> None:
        if self._handshake.empty() and fragment and fragment[0] not in _EXPECTED.get(
                (self.state, self.version == suites.TLS13), ()):
            # Judge the type on the first byte: an out-of-place message (e.g. a Finished
            # before the CCS) is unexpected_message, not a length error after buffering.
            raise Abort(suites.UNEXPECTED_MESSAGE,
                        f"unexpected handshake message {fragment[0]} in {self.state.name}")
        self._handshake.feed(fragment)
        while self.state not in (State.FAILED, State.CHOOSE_CERTIFICATE):
            got = self._handshake.next_message()
            if got is None:
                return
            msg_type, body, whole = got
            tls13 = self.version == suites.TLS13
            if msg_type not in _EXPECTED.get((self.state, tls13), ()):
                raise Abort(suites.UNEXPECTED_MESSAGE,
                            f"unexpected handshake message {msg_type} in {self.state.name}")
            self._handshake_message(msg_type, body, whole)

    def _require_record_boundary(self, what: str) -> None:
        # RFC 8446 5.1: messages before a key change must end at a record boundary.
        if not self._handshake.empty():
            raise Abort(suites.UNEXPECTED_MESSAGE, f"data after {what} in the same record")

    def _handshake_message(self, msg_type: int, body: bytes, whole: bytes) -> None:
        # The row is read before the handler runs: the ClientHello's handler sets the version.
        handler, allowed = _TRANSITIONS[(self.state, self.version == suites.TLS13)][msg_type]
        self._enter(getattr(self, handler)(body, whole), allowed)

    def _renegotiation(self, body: bytes, whole: bytes) -> StateValue:
        # RFC 5746: we never renegotiate; a warning lets the client carry on.
        self._warnings += 1
        if self._warnings > MAX_WARNING_ALERTS:
            raise Abort(suites.UNEXPECTED_MESSAGE, "too many renegotiation attempts")
        self._send_alert(1, suites.NO_RENEGOTIATION)
        return State.CONNECTED

    # ------------------------------------------------------------------ ClientHello
    def _client_hello(self, body: bytes, whole: bytes) -> StateValue:
        self._require_record_boundary("ClientHello")
        hello = m.parse_client_hello(body)
        self.client_hello = hello
        self._transcript.append(whole)
        self._client_random = hello.random
        version = self._negotiate_version(hello)
        self.version = version
        self._record_version = min(version, suites.TLS12)
        if suites.TLS_FALLBACK_SCSV in hello.cipher_suites and version < self.config.version_max:
            raise Abort(suites.INAPPROPRIATE_FALLBACK,
                        "client fell back to a lower version than both support")
        if version == suites.TLS13:
            if hello.compression_methods != b"\x00":
                raise Abort(suites.ILLEGAL_PARAMETER, "TLS 1.3 ClientHello with compression")
        elif 0 not in hello.compression_methods:
            # RFC 5246 7.4.1.2: the list MUST hold null; without it the field is wrong.
            raise Abort(suites.ILLEGAL_PARAMETER, "client offers no null compression")
        try:
            offer = read_offer(hello, version)
        except OfferRefused as e:
            raise Abort(e.alert, e.reason) from None
        self._offer = offer
        self.sni = offer.sni
        self._ems = offer.ems
        self._early_data_offered = offer.early_data
        self._client_info = ClientHelloReceived(
            sni=offer.sni, versions=offer.versions, cipher_suites=offer.cipher_suites,
            groups=offer.groups, signature_schemes=offer.schemes,
            key_share_groups=tuple(g for g, _ in offer.shares))
        self._events.append(self._client_info)
        return State.CHOOSE_CERTIFICATE

    def _negotiate_version(self, hello: m.ClientHello) -> int:
        cfg = self.config
        legacy = hello.legacy_version
        if legacy < suites.TLS10:
            # RFC 8446 D.5: legacy_version 0x0300 or lower MUST be refused with
            # protocol_version, whatever supported_versions offers.
            raise Abort(suites.PROTOCOL_VERSION, f"client offers version {legacy:#06x}")
        raw = hello.extension(suites.EXT_SUPPORTED_VERSIONS)
        if raw is not None:
            # RFC 8446 4.2.1: with supported_versions, only it counts (also when TLS 1.3
            # is disabled: a client offering only TLS 1.3 gets protocol_version).
            offered = m.parse_supported_versions_client(raw)
            for v in sorted(set(offered), reverse=True):
                if cfg.version_min <= v <= cfg.version_max:
                    return v
            raise Abort(suites.PROTOCOL_VERSION, "no protocol version in common; client "
                        "offers " + ",".join(suites.VERSION_LABELS.get(v, hex(v))
                                              for v in offered))
        version = min(legacy, cfg.version_max, suites.TLS12)
        if version < cfg.version_min:
            raise Abort(suites.PROTOCOL_VERSION,
                        f"client's highest version "
                        f"{suites.VERSION_LABELS.get(legacy, hex(legacy))}"
                        " is below the configured minimum")
        return version

    # ------------------------------------------------------------------ choice
    def _choose(self, candidates: Sequence[Candidate | Unusable]) -> StateValue:
        if self.version == suites.TLS13:
            return self._choose_13(candidates)
        return self._choose_12(candidates)

    def _pick_suite(self, offered: Sequence[int], usable: Sequence[int]) -> int | None:
        if self.config.server_preference:
            for code in usable:
                if code in offered:
                    return code
            return None
        usable_set = set(usable)
        for code in offered:
            if code in usable_set:
                return code
        return None

    def _usable_candidates(self, candidates: Sequence[Candidate | Unusable]) \
            -> list[tuple[int, Candidate]]:
        usable = [(i, c) for i, c in enumerate(candidates) if isinstance(c, Candidate)]
        if not usable:
            reasons = "; ".join(c.reason for c in candidates if isinstance(c, Unusable))
            raise Abort(suites.INTERNAL_ERROR,
                        "no usable certificate" + (f" ({reasons})" if reasons else ""))
        return usable

    def _refuse(self, index: int, reason: str) -> None:
        self._refused.append(reason)
        self._events.append(CertificateRefused(index, reason))

    def _with_certificate(self, flight: Callable[[], StateValue]) -> StateValue:
        """Select the first fitting candidate not tried yet (self._choices) and make `flight`,
        the server flight whose key-side call signs with its key. The key side parses a
        private key only at select() (never before the first signature), so this is where a
        key that does not match its certificate shows: that candidate is reported
        (CertificateRefused) and the flight is made again with the next one. The in-process
        KeyService raises from select() itself; PipeKeyService defers select() into the
        flight call's round trip and raises KeyRefused from that call instead (which failed
        for want of a key, so nothing of it is used)."""
        while self._choices:
            index, cand, suite, scheme = self._choices.pop(0)
            self._candidate = cand
            self.scheme = scheme
            if suite is not None:
                self.suite = suites.SUITES[suite]
            try:
                self.keys.select(index)
            except KeyServiceError as e:
                self._refuse(index, e.reason)
                continue
            try:
                return flight()
            except KeyRefused as e:
                self._refuse(index, e.reason)
        raise self._no_certificate(self._no_fit)

    def _no_certificate(self, reason: str) -> Abort:
        if self._refused:
            return Abort(suites.INTERNAL_ERROR,
                         "no usable certificate (" + "; ".join(self._refused) + ")")
        return Abort(suites.HANDSHAKE_FAILURE, reason)

    # ------------------------------------------------------------------ TLS 1.3
    def _key_update(self, body: bytes, whole: bytes) -> StateValue:
        self._require_record_boundary("KeyUpdate")
        update = m.parse_key_update(body)
        # Each one costs us a key derivation and, if requested, an answer: bound a flood.
        self._key_updates += 1
        if self._key_updates > MAX_KEY_UPDATES:
            raise Abort(suites.UNEXPECTED_MESSAGE,
                        "too many KeyUpdate messages for the application data received")
        self.keys.key_update(READ)
        if update.request_update == 1 and not self.local_closed:
            # RFC 8446 4.6.3: answer with update_not_requested, then switch our keys.
            self._send_handshake([handshake_message(
                suites.HS_KEY_UPDATE, m.build_key_update(m.KeyUpdate(0)))])
            self.keys.key_update(WRITE)
        return State.CONNECTED

    # ------------------------------------------------------------------ client certificate
    # ------------------------------------------------------------------ Finished
    def _finished(self, body: bytes, whole: bytes) -> StateValue:
        self._require_record_boundary("Finished")
        fin = m.parse_finished(body, len(self._expected_client_finished))
        if not hmac.compare_digest(fin.verify_data, self._expected_client_finished):
            raise Abort(suites.DECRYPT_ERROR, "client Finished does not verify")
        self._transcript.append(whole)
        if self.version == suites.TLS13:
            self.keys.activate(READ)
        else:
            self._send_change_cipher_spec()
            if self._server_finished:
                finished = self._server_finished    # sealed by derive12_finished
                self._server_finished = b""
            else:
                self.keys.activate(WRITE)
                finished = self.keys.seal_finished12(self._transcript_hash())
            self._protected_write = True
            self._out.append(finished)
        self._early_data_offered = False
        # What the ClientHello offered is not needed any more: a large one (up to
        # MAX_CLIENT_HELLO, parsed into some 1.5 MB of objects) is not kept for the
        # connection's life.
        self._transcript = Transcript()
        self.client_hello = self._client_info = None
        self._offer = None
        self._events.append(HandshakeComplete(
            version=self.version, cipher_suite=self.suite.code, cipher=self.suite.name,
            group=suites.GROUP_LABELS[self.group], sni=self.sni, signature_scheme=self.scheme,
            version_name=suites.VERSION_LABELS[self.version],
            client_identity=self._client_identity))
        return State.CONNECTED
