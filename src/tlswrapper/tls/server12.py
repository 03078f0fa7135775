"""TLS 1.0-1.2: the choice of certificate, suite and curve, the server flight (ServerHello to
ServerHelloDone), the ClientKeyExchange and the ChangeCipherSpec.

Rule: a mixin of ServerConnection, which holds the shared machine (records, alerts, the
transitions table, Finished); each handler returns the next state, as _TRANSITIONS lists it.
"""

from __future__ import annotations

from . import messages as m
from . import suites
from .clientauth import CLIENT_CERTIFICATE_TYPES, CLIENT_SCHEMES_12
from .keyservice import READ
from .state import Abort, State, StateValue
from .wire import handshake_message

# No typing at run time: each tcpserver-mode connection imports this module.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from .keyservice import Candidate, Unusable

# TLS 1.0-1.2: the group an ECDSA certificate's key is on (RFC 8422 5.1, 5.3).
_CERT_CURVE = {suites.KEY_EC_P256: suites.SECP256R1, suites.KEY_EC_P384: suites.SECP384R1,
               suites.KEY_EC_P521: suites.SECP521R1}


class Tls12Server:
    """The TLS 1.0-1.2 part of ServerConnection."""

    def _choose_12(self, candidates: Sequence[Candidate | Unusable]) -> StateValue:
        hello = self.client_hello
        version = self.version
        enabled_groups = [g for g in self.config.group_codes if g not in suites.TLS13_ONLY_GROUPS]
        offered_groups = frozenset(self._offer.groups)
        if offered_groups:
            group = next((g for g in enabled_groups if g in offered_groups), None)
        else:
            # RFC 8422 4: without supported_groups any curve may be used; P-256 is safest.
            group = suites.SECP256R1 if suites.SECP256R1 in enabled_groups else \
                next(iter(enabled_groups), None)
        if group is None:
            raise Abort(suites.HANDSHAKE_FAILURE, "no elliptic curve in common")
        if self._offer.point_formats is not None and 0 not in self._offer.point_formats:
            raise Abort(suites.ILLEGAL_PARAMETER, "client does not accept uncompressed points")
        # RFC 5246 7.4.1.4.1: without signature_algorithms, SHA-1 is assumed.
        schemes = self._offer.schemes or (suites.RSA_PKCS1_SHA1, suites.ECDSA_SHA1)
        if version < suites.TLS12:
            schemes = (suites.RSA_PKCS1_SHA1, suites.ECDSA_SHA1)
        enabled = self.config.suite_codes(version)
        choices: list[tuple[int, Candidate, int | None, int]] = []
        for index, cand in self._usable_candidates(candidates):
            auth = "rsa" if cand.key_type == suites.KEY_RSA else "ecdsa"
            if auth == "ecdsa" and offered_groups and \
                    _CERT_CURVE.get(cand.key_type) not in offered_groups:
                continue   # RFC 8422 5.1: the certificate's curve must be one the client lists
            usable = [c for c in enabled if suites.SUITES[c].auth == auth]
            suite = self._pick_suite(hello.cipher_suites, usable)
            scheme = next((s for s in suites.SCHEMES_12.get(cand.key_type, ())
                           if s in schemes), None)
            if suite is not None and scheme is not None:
                if version < suites.TLS12:
                    scheme = suites.LEGACY_RSA_MD5_SHA1 if cand.key_type == suites.KEY_RSA \
                        else suites.LEGACY_ECDSA_SHA1
                choices.append((index, cand, suite, scheme))
        self._no_fit = "no certificate and cipher suite fit the client's offer"
        if not choices:
            raise self._no_certificate(self._no_fit)
        self._choices = choices
        self.group = group
        return self._with_certificate(self._server_flight_12)

    def _make_server_random(self) -> bytes:
        random = self._random(32)
        cfg = self.config
        if self.version == suites.TLS12 and cfg.version_max >= suites.TLS13:
            random = random[:24] + suites.DOWNGRADE_TLS12
        elif self.version is not None and self.version < suites.TLS12 \
                and cfg.version_max >= suites.TLS12:
            random = random[:24] + suites.DOWNGRADE_TLS11
        return random

    def _server_flight_12(self) -> StateValue:
        self._server_random = self._make_server_random()
        extensions = []
        if self._offer.secure_renegotiation:
            extensions.append(m.Extension(suites.EXT_RENEGOTIATION_INFO,
                                          m.build_renegotiation_info(b"")))
        if self._ems:
            extensions.append(m.Extension(suites.EXT_EXTENDED_MASTER_SECRET, b""))
        # RFC 7366 3: encrypt-then-MAC only for a CBC suite; an AEAD suite ignores the offer.
        self._etm = self._offer.etm and self.suite.mac is not None
        if self._etm:
            extensions.append(m.Extension(suites.EXT_ENCRYPT_THEN_MAC, b""))
        if self._offer.point_formats is not None:
            extensions.append(m.Extension(suites.EXT_EC_POINT_FORMATS,
                                          m.build_ec_point_formats(b"\x00")))
        # An empty session_id: we never resume (RFC 5246 7.4.1.3).
        server_hello = m.ServerHello(
            legacy_version=self.version, random=self._server_random, session_id=b"",
            cipher_suite=self.suite.code, extensions=tuple(extensions))
        flight = [handshake_message(suites.HS_SERVER_HELLO, m.build_server_hello(server_hello)),
                  handshake_message(suites.HS_CERTIFICATE, m.build_certificate12(
                      m.Certificate12(tuple(self._candidate.chain))))]
        public, signature = self.keys.server_key_exchange12(
            self.group, self.scheme, self._client_random, self._server_random)
        wire_scheme = self.scheme if self.version >= suites.TLS12 else None
        flight.append(handshake_message(suites.HS_SERVER_KEY_EXCHANGE,
                                        m.build_server_key_exchange(m.ServerKeyExchangeECDHE(
                                            self.group, public, wire_scheme, signature))))
        if self.config.request_client_certificate:
            # RFC 5246 7.4.4 (TLS 1.0/1.1: without supported_signature_algorithms).
            tls12 = self.version >= suites.TLS12
            flight.append(handshake_message(
                suites.HS_CERTIFICATE_REQUEST, m.build_certificate_request12(
                    m.CertificateRequest12(CLIENT_CERTIFICATE_TYPES,
                                           CLIENT_SCHEMES_12 if tls12 else (),
                                           self.config.client_ca_names), has_schemes=tls12)))
        flight.append(handshake_message(suites.HS_SERVER_HELLO_DONE,
                                        m.build_server_hello_done()))
        self._transcript.extend(flight)
        self._send_handshake(flight)
        return State.WAIT_CLIENT_CERTIFICATE if self.config.request_client_certificate \
            else State.WAIT_CLIENT_KEY_EXCHANGE

    def _client_key_exchange(self, body: bytes, whole: bytes) -> StateValue:
        cke = m.parse_client_key_exchange(body)
        if len(cke.public) != suites.KEY_SHARE_SIZES[self.group][0]:
            raise Abort(suites.ILLEGAL_PARAMETER, "client key share of the wrong size")
        self._transcript.append(whole)
        if self._client_chain:
            session_hash = self._transcript_hash() if self._ems else None
            self.keys.derive12(self.version, self.suite.code, cke.public, self._client_random,
                               self._server_random, session_hash, self._etm)
            return State.WAIT_CLIENT_CERTIFICATE_VERIFY   # RFC 5246 7.4.8
        # One round trip: the keys, the client's Finished expected, and ours sealed ahead
        # (sent only once the client's has verified).
        self._expected_client_finished, self._server_finished = self.keys.derive12_finished(
            self.version, self.suite.code, cke.public, self._client_random,
            self._server_random, self._transcript.messages, self._ems, self._etm)
        return State.WAIT_CHANGE_CIPHER_SPEC

    def _change_cipher_spec_12(self) -> StateValue:
        self.keys.activate(READ)
        self._protected_read = True
        self._reader.limit = suites.MAX_CIPHERTEXT_12
        return State.WAIT_FINISHED
