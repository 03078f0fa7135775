"""What the engine reports to its caller. Rule: small immutable values, no behaviour.

(Frozen value classes, not dataclasses: see frozen.py.)"""

from __future__ import annotations

from .frozen import Frozen, init


class ClientHelloReceived(Frozen):
    """The ClientHello was parsed. The engine waits for ServerConnection.choose_certificate().
    `sni` is the host name (lower case, validated) or None."""

    __slots__ = ("sni", "versions", "cipher_suites", "groups", "signature_schemes",
                 "key_share_groups")
    sni: str | None
    versions: tuple[int, ...]          # offered protocol versions, best first
    cipher_suites: tuple[int, ...]
    groups: tuple[int, ...]
    signature_schemes: tuple[int, ...]
    key_share_groups: tuple[int, ...]  # TLS 1.3 key shares sent

    def __init__(self, sni: str | None, versions: tuple[int, ...],
                 cipher_suites: tuple[int, ...], groups: tuple[int, ...],
                 signature_schemes: tuple[int, ...], key_share_groups: tuple[int, ...]) -> None:
        init(self, "sni", sni)
        init(self, "versions", versions)
        init(self, "cipher_suites", cipher_suites)
        init(self, "groups", groups)
        init(self, "signature_schemes", signature_schemes)
        init(self, "key_share_groups", key_share_groups)


class HandshakeComplete(Frozen):
    __slots__ = ("version", "cipher_suite", "cipher", "group", "sni", "signature_scheme",
                 "version_name", "client_identity")
    version: int        # suites.TLS12 ...
    cipher_suite: int   # the IANA code
    cipher: str         # IANA name, e.g. TLS_AES_128_GCM_SHA256
    group: str          # -e name, e.g. x25519
    sni: str | None
    signature_scheme: int
    version_name: str   # TLSv1.2, TLSv1.3
    # -a: the verifier's identity of the client certificate (clientcert's ClientIdentity)
    client_identity: object | None

    def __init__(self, version: int, cipher_suite: int, cipher: str, group: str,
                 sni: str | None, signature_scheme: int, version_name: str,
                 client_identity: object | None = None) -> None:
        init(self, "version", version)
        init(self, "cipher_suite", cipher_suite)
        init(self, "cipher", cipher)
        init(self, "group", group)
        init(self, "sni", sni)
        init(self, "signature_scheme", signature_scheme)
        init(self, "version_name", version_name)
        init(self, "client_identity", client_identity)


class ApplicationData(Frozen):
    __slots__ = ("data",)
    data: bytes

    def __init__(self, data: bytes) -> None:
        init(self, "data", data)


class PeerClosed(Frozen):
    """The client will send no more: close_notify received (clean=True) or the transport
    ended without it (clean=False, a truncation when it happens after the handshake)."""

    __slots__ = ("clean",)
    clean: bool

    def __init__(self, clean: bool) -> None:
        init(self, "clean", clean)


class AlertReceived(Frozen):
    __slots__ = ("level", "description")
    level: int
    description: int

    def __init__(self, level: int, description: int) -> None:
        init(self, "level", level)
        init(self, "description", description)


class CertificateRefused(Frozen):
    """The key side could not use candidate `index` (of the list given to choose_certificate)
    when its private key was parsed, e.g. the key does not match the certificate. The engine
    went on with the next fitting candidate; `reason` is for the log."""

    __slots__ = ("index", "reason")
    index: int
    reason: str

    def __init__(self, index: int, reason: str) -> None:
        init(self, "index", index)
        init(self, "reason", reason)


class ConnectionFailed(Frozen):
    """A fatal error. `alert` is the alert sent to the client (already queued in the
    outgoing bytes), or None when the client sent a fatal alert or vanished. `reason` is
    a line for the log."""

    __slots__ = ("alert", "reason")
    alert: int | None
    reason: str

    def __init__(self, alert: int | None, reason: str) -> None:
        init(self, "alert", alert)
        init(self, "reason", reason)


Event = (ClientHelloReceived | HandshakeComplete | ApplicationData | PeerClosed
         | AlertReceived | CertificateRefused | ConnectionFailed)
