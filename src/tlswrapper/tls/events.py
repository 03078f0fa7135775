"""What the engine reports to its caller. Rule: small immutable values, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClientHelloReceived:
    """The ClientHello was parsed. The engine waits for ServerConnection.choose_certificate().
    `sni` is the host name (lower case, validated) or None."""

    sni: str | None
    versions: tuple[int, ...]          # offered protocol versions, best first
    cipher_suites: tuple[int, ...]
    groups: tuple[int, ...]
    signature_schemes: tuple[int, ...]
    key_share_groups: tuple[int, ...]  # TLS 1.3 key shares sent


@dataclass(frozen=True)
class HandshakeComplete:
    version: int        # suites.TLS12 ...
    cipher_suite: int   # the IANA code
    cipher: str         # IANA name, e.g. TLS_AES_128_GCM_SHA256
    group: str          # -e name, e.g. x25519
    sni: str | None
    signature_scheme: int
    version_name: str   # TLSv1.2, TLSv1.3
    # -a: the verifier's identity of the client certificate (clientcert's ClientIdentity)
    client_identity: object | None = None


@dataclass(frozen=True)
class ApplicationData:
    data: bytes


@dataclass(frozen=True)
class PeerClosed:
    """The client will send no more: close_notify received (clean=True) or the transport
    ended without it (clean=False, a truncation when it happens after the handshake)."""

    clean: bool


@dataclass(frozen=True)
class AlertReceived:
    level: int
    description: int


@dataclass(frozen=True)
class CertificateRefused:
    """The key side could not use candidate `index` (of the list given to choose_certificate)
    when its private key was parsed, e.g. the key does not match the certificate. The engine
    went on with the next fitting candidate; `reason` is for the log."""

    index: int
    reason: str


@dataclass(frozen=True)
class ConnectionFailed:
    """A fatal error. `alert` is the alert sent to the client (already queued in the
    outgoing bytes), or None when the client sent a fatal alert or vanished. `reason` is
    a line for the log."""

    alert: int | None
    reason: str


Event = (ClientHelloReceived | HandshakeComplete | ApplicationData | PeerClosed
         | AlertReceived | CertificateRefused | ConnectionFailed)
