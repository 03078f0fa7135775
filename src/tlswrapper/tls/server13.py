"""TLS 1.3: the choice of certificate, suite and group, the HelloRetryRequest and the second
ClientHello, and the server flight made in one KeyService call.

Rule: a mixin of ServerConnection, which holds the shared machine (records, alerts, the
transitions table, Finished, KeyUpdate); each handler returns the next state, as _TRANSITIONS
lists it.
"""

from __future__ import annotations

from . import messages as m
from . import suites
from .clientauth import CLIENT_SCHEMES_13
from .record import plaintext_records
from .state import Abort, State, StateValue
from .wire import handshake_message

# No typing at run time: each tcpserver-mode connection imports this module.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from .keyservice import Candidate, Unusable


class Tls13Server:
    """The TLS 1.3 part of ServerConnection."""

    def _choose_13(self, candidates: Sequence[Candidate | Unusable]) -> StateValue:
        hello = self.client_hello
        suite = self._pick_suite(hello.cipher_suites, self.config.suite_codes(suites.TLS13))
        if suite is None:
            raise Abort(suites.HANDSHAKE_FAILURE, "no cipher suite in common")
        choices: list[tuple[int, Candidate, int | None, int]] = []
        for index, cand in self._usable_candidates(candidates):
            scheme = next((s for s in suites.SCHEMES_13.get(cand.key_type, ())
                           if s in self._offer.schemes), None)
            if scheme is not None:
                choices.append((index, cand, None, scheme))
        self._no_fit = "no certificate fits the client's signature algorithms"
        if not choices:
            raise self._no_certificate(self._no_fit)
        # The key is selected with the server flight (_with_certificate), after a
        # HelloRetryRequest if one is needed: neither the suite nor the group depends on it.
        self._choices = choices
        enabled = self.config.group_codes
        shared = {g: s for g, s in self._offer.shares}
        group = next((g for g in enabled if g in shared), None)
        self.suite = suites.SUITES[suite]
        if group is None:
            offered = frozenset(self._offer.groups)
            group = next((g for g in enabled if g in offered), None)
            if group is None:
                raise Abort(suites.HANDSHAKE_FAILURE, "no key exchange group in common")
            self.group = group
            return self._send_hello_retry_request()
        self.group = group
        return self._server_flight_13(shared[group])

    def _send_hello_retry_request(self) -> StateValue:
        hello = self.client_hello
        hrr = m.ServerHello(
            legacy_version=suites.TLS12, random=suites.HRR_RANDOM,
            session_id=hello.session_id, cipher_suite=self.suite.code,
            extensions=(
                m.Extension(suites.EXT_SUPPORTED_VERSIONS,
                            m.build_supported_versions_server(suites.TLS13)),
                m.Extension(suites.EXT_KEY_SHARE, m.build_key_share_hrr(self.group)),
            ))
        # RFC 8446 4.4.1: the first ClientHello is replaced by its hash.
        self._transcript.replace_client_hello(self._hash_name())
        msg = handshake_message(suites.HS_SERVER_HELLO, m.build_server_hello(hrr))
        self._transcript.append(msg)
        self._send_handshake([msg])
        self._hrr_sent = True
        if hello.session_id:
            self._send_change_cipher_spec()
            self._ccs_sent = True
        return State.WAIT_CLIENT_HELLO_2

    def _client_hello_2(self, body: bytes, whole: bytes) -> StateValue:
        self._require_record_boundary("ClientHello")
        hello = m.parse_client_hello(body)
        first = self.client_hello
        raw = hello.extension(suites.EXT_SUPPORTED_VERSIONS)
        if raw is None or suites.TLS13 not in m.parse_supported_versions_client(raw):
            raise Abort(suites.ILLEGAL_PARAMETER, "second ClientHello without TLS 1.3")
        if hello.cipher_suites != first.cipher_suites or hello.random != first.random \
                or hello.session_id != first.session_id:
            raise Abort(suites.ILLEGAL_PARAMETER, "second ClientHello differs from the first")
        raw = hello.extension(suites.EXT_KEY_SHARE)
        shares = m.parse_key_share_client(raw) if raw is not None else ()
        # RFC 8446 4.2.8: exactly one share, for the group we asked for.
        if len(shares) != 1 or shares[0][0] != self.group:
            raise Abort(suites.ILLEGAL_PARAMETER, "second ClientHello without the key share "
                        "we asked for")
        if hello.extension(suites.EXT_EARLY_DATA) is not None:
            raise Abort(suites.ILLEGAL_PARAMETER, "early_data in the second ClientHello")
        self._early_data_offered = False
        self.client_hello = hello
        self._transcript.append(whole)
        return self._server_flight_13(shares[0][1])

    def _server_flight_13(self, peer_share: bytes) -> StateValue:
        expected = suites.KEY_SHARE_SIZES[self.group][0]
        if len(peer_share) != expected:
            raise Abort(suites.ILLEGAL_PARAMETER, f"key share of {len(peer_share)} bytes for "
                        f"group {suites.GROUP_LABELS[self.group]}")
        return self._with_certificate(lambda: self._flight_13(peer_share))

    def _flight_13(self, peer_share: bytes) -> StateValue:
        """The flight with the certificate and scheme _with_certificate chose; nothing of the
        engine's state changes before the key side's answer but the server random."""
        hello = self.client_hello
        self._server_random = self._random(32)
        # Our key share is the last thing in the ServerHello (key_share, the last extension,
        # ends with it): the key side makes it and appends it to `hello_head`.
        share_size = suites.KEY_SHARE_SIZES[self.group][1]
        server_hello = m.ServerHello(
            legacy_version=suites.TLS12, random=self._server_random,
            session_id=hello.session_id, cipher_suite=self.suite.code,
            extensions=(
                m.Extension(suites.EXT_SUPPORTED_VERSIONS,
                            m.build_supported_versions_server(suites.TLS13)),
                m.Extension(suites.EXT_KEY_SHARE,
                            m.build_key_share_server(self.group, bytes(share_size))),
            ))
        hello_head = handshake_message(suites.HS_SERVER_HELLO,
                                       m.build_server_hello(server_hello))[:-share_size]
        flight = [handshake_message(suites.HS_ENCRYPTED_EXTENSIONS,
                                    m.build_encrypted_extensions(m.EncryptedExtensions(())))]
        client_auth = self.config.request_client_certificate
        if client_auth:
            # RFC 8446 4.3.2: an empty context (no post-handshake auth), our schemes, and the
            # anchors' names so that the client can pick its certificate.
            extensions = [m.Extension(suites.EXT_SIGNATURE_ALGORITHMS,
                                      m.build_signature_algorithms(CLIENT_SCHEMES_13))]
            if self.config.client_ca_names:
                extensions.append(m.Extension(suites.EXT_CERTIFICATE_AUTHORITIES,
                                              m.build_certificate_authorities(
                                                  self.config.client_ca_names)))
            flight.append(handshake_message(
                suites.HS_CERTIFICATE_REQUEST, m.build_certificate_request13(
                    m.CertificateRequest13(b"", tuple(extensions)))))
        flight.append(handshake_message(suites.HS_CERTIFICATE, m.build_certificate13(
            m.Certificate13(b"", tuple((der, b"") for der in self._candidate.chain)))))
        # One round trip: key exchange, handshake keys (both directions active), signature,
        # our Finished, the sealed flight, application keys (WRITE active).
        our_share, certificate_verify, finished, records, client_verify = \
            self.keys.server_flight13(self.group, peer_share, self.suite.code, self.scheme,
                                      self._transcript.messages, hello_head, flight, client_auth)
        if len(our_share) != share_size:
            raise Abort(suites.INTERNAL_ERROR, "key share of the wrong size from the key side")
        msg = hello_head + our_share
        self._transcript.append(msg)
        self._out.append(plaintext_records(suites.HANDSHAKE, self._record_version, msg))
        if hello.session_id and not self._ccs_sent:
            # RFC 8446 D.4: middlebox compatibility mode.
            self._send_change_cipher_spec()
            self._ccs_sent = True
        self._protected_write = self._protected_read = True
        self._reader.limit = suites.MAX_CIPHERTEXT_13
        self._transcript.extend(flight)
        self._transcript.append(certificate_verify)
        self._transcript.append(finished)
        self._out.append(records)
        self._expected_client_finished = client_verify
        return State.WAIT_CLIENT_CERTIFICATE if client_auth else State.WAIT_FINISHED
