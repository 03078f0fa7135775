"""Client authentication (-a), TLS 1.0-1.3: what we ask for, and the client's Certificate and
CertificateVerify.

Rule: a mixin of ServerConnection; the chain and the signature are judged by the configured
ClientVerifier (never here); each handler returns the next state, as _TRANSITIONS lists it.
"""

from __future__ import annotations

from . import messages as m
from . import suites
from .keyservice import SENDER_CLIENT
from .state import Abort, State, StateValue
from .transcript import CLIENT_PREFIX
from .wire import Reader

# Client certificates (-a): the schemes we accept in the client's CertificateVerify, listed in
# our CertificateRequest (no SHA-1; PKCS#1 v1.5 is not allowed in TLS 1.3 CertificateVerify).
CLIENT_SCHEMES_13 = (suites.ECDSA_SECP256R1_SHA256, suites.ECDSA_SECP384R1_SHA384,
                     suites.ECDSA_SECP521R1_SHA512, suites.RSA_PSS_RSAE_SHA256,
                     suites.RSA_PSS_RSAE_SHA384, suites.RSA_PSS_RSAE_SHA512)
CLIENT_SCHEMES_12 = CLIENT_SCHEMES_13 + (suites.RSA_PKCS1_SHA256, suites.RSA_PKCS1_SHA384,
                                         suites.RSA_PKCS1_SHA512)
# TLS 1.0-1.2 CertificateRequest certificate_types: rsa_sign, ecdsa_sign (RFC 5246, RFC 8422).
CLIENT_CERTIFICATE_TYPES = bytes((1, 64))


class ClientAuth:
    """The client-certificate part of ServerConnection."""

    def _client_certificate(self, body: bytes, whole: bytes) -> StateValue:
        tls13 = self.version == suites.TLS13
        if tls13:
            msg = m.parse_certificate13(body)
            if msg.context:
                raise Abort(suites.ILLEGAL_PARAMETER, "client Certificate with a context")
            chain = tuple(der for der, _ in msg.entries)
        else:
            chain = m.parse_certificate12(body).chain
        self._transcript.append(whole)
        if not chain:
            # RFC 8446 4.4.2.4 / RFC 5246 7.4.6: we require one.
            raise Abort(suites.CERTIFICATE_REQUIRED if tls13 else suites.HANDSHAKE_FAILURE,
                        "client sent no certificate")
        verifier = self.config.client_verifier
        if verifier is None:
            raise Abort(suites.INTERNAL_ERROR, "no client certificate verifier configured")
        alert, reason, identity = verifier.verify_chain(chain)
        if alert is not None:
            raise Abort(alert, f"client certificate refused: {reason}")
        self._client_chain = chain
        self._client_identity = identity
        return State.WAIT_CLIENT_CERTIFICATE_VERIFY if tls13 \
            else State.WAIT_CLIENT_KEY_EXCHANGE

    def _client_certificate_verify(self, body: bytes, whole: bytes) -> StateValue:
        tls13 = self.version == suites.TLS13
        scheme: int | None
        if self.version < suites.TLS12:
            # RFC 4346 7.4.8: no SignatureAndHashAlgorithm, the key type decides.
            r = Reader(body)
            scheme, signature = None, r.vec16()
            r.expect_end("CertificateVerify")
        else:
            cv = m.parse_certificate_verify(body)
            scheme, signature = cv.scheme, cv.signature
            if scheme not in (CLIENT_SCHEMES_13 if tls13 else CLIENT_SCHEMES_12):
                raise Abort(suites.ILLEGAL_PARAMETER, f"client CertificateVerify with "
                            f"scheme {scheme:#06x}, which we did not offer")
        if tls13:
            content = CLIENT_PREFIX + self._transcript_hash()
        else:
            content = b"".join(self._transcript.messages)   # every handshake message so far
        if not self.config.client_verifier.verify_signature(self._client_chain[0], scheme,
                                                           content, signature, tls13):
            raise Abort(suites.DECRYPT_ERROR, "client CertificateVerify does not verify")
        self._transcript.append(whole)
        if tls13:
            self._expected_client_finished = self.keys.finished13(SENDER_CLIENT,
                                                                  self._transcript_hash())
            return State.WAIT_FINISHED
        self._expected_client_finished = self.keys.finished12(SENDER_CLIENT,
                                                              self._transcript_hash())
        return State.WAIT_CHANGE_CIPHER_SPEC
