"""The engine's configuration, in the CLI's vocabulary. Rule: validated once, then immutable."""

from __future__ import annotations

from . import suites
from .frozen import Frozen, init

# typing is not imported at run time (it costs each tcpserver-mode connection several ms):
# for the type checker ClientCertificateVerifier is a Protocol, at run time a plain class.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Protocol
else:
    Protocol = object


class ConfigError(ValueError):
    """A configuration the engine cannot use; the message is one line for the user."""


class ClientCertificateVerifier(Protocol):
    """The -a policy, injected by the caller (clientcert.ClientCertificates): X.509 path
    validation and public-key signature checks are not protocol work, and keeping them out
    keeps tls/ free of cryptography and of policy. The engine calls it synchronously when the
    client's Certificate and CertificateVerify arrive."""

    def verify_chain(self, chain: Sequence[bytes]) -> tuple[int | None, str, object]:
        """(None, "", identity) when the DER chain (leaf first) is trusted; else (alert,
        reason, None). The identity is opaque to the engine: HandshakeComplete carries it."""

    def verify_signature(self, leaf: bytes, scheme: int | None, data: bytes, signature: bytes,
                         tls13: bool) -> bool:
        """Whether `signature` over `data` verifies with the leaf's key under `scheme`
        (None: the TLS 1.0/1.1 form, whose algorithm follows from the key type)."""


class ServerConfig(Frozen):
    """Checked when made (ConfigError). Equality ignores client_verifier."""

    __slots__ = ("version_min", "version_max", "ciphers", "groups", "server_preference",
                 "request_client_certificate", "client_ca_names", "client_verifier")
    _compare = ("version_min", "version_max", "ciphers", "groups", "server_preference",
                "request_client_certificate", "client_ca_names")
    version_min: int
    version_max: int
    ciphers: tuple[str, ...]            # -c names, preference order
    groups: tuple[str, ...]             # -e names, preference order
    server_preference: bool             # -s (True) / -S (False)
    # Client certificates (-a): DER subjects of the anchors for certificate_authorities.
    request_client_certificate: bool
    client_ca_names: tuple[bytes, ...]
    client_verifier: ClientCertificateVerifier | None

    def __init__(self, version_min: int = suites.TLS12, version_max: int = suites.TLS13,
                 ciphers: tuple[str, ...] = suites.DEFAULT_CIPHERS,
                 groups: tuple[str, ...] = suites.DEFAULT_GROUPS,
                 server_preference: bool = True, request_client_certificate: bool = False,
                 client_ca_names: tuple[bytes, ...] = (),
                 client_verifier: ClientCertificateVerifier | None = None) -> None:
        init(self, "version_min", version_min)
        init(self, "version_max", version_max)
        init(self, "ciphers", ciphers)
        init(self, "groups", groups)
        init(self, "server_preference", server_preference)
        init(self, "request_client_certificate", request_client_certificate)
        init(self, "client_ca_names", client_ca_names)
        init(self, "client_verifier", client_verifier)
        self._check()

    def _check(self) -> None:
        if self.version_min not in suites.VERSION_LABELS:
            raise ConfigError(f"unknown version {self.version_min:#x}")
        if self.version_max not in suites.VERSION_LABELS:
            raise ConfigError(f"unknown version {self.version_max:#x}")
        if self.version_min > self.version_max:
            raise ConfigError("minimal version is above the maximal version")
        for name in self.ciphers:
            if name not in suites.CIPHER_NAMES:
                raise ConfigError(f"unknown cipher {name}")
        for name in self.groups:
            if name not in suites.GROUP_NAMES:
                raise ConfigError(f"unknown group {name}")
        if not self.ciphers:
            raise ConfigError("no cipher enabled")
        if not self.groups:
            raise ConfigError("no group enabled")

    @property
    def group_codes(self) -> tuple[int, ...]:
        return tuple(suites.GROUP_NAMES[g] for g in self.groups)

    def suite_codes(self, version: int) -> tuple[int, ...]:
        """The IANA codes enabled for `version`, preference order (by -c order, then ECDSA
        before RSA for a TLS 1.2 name; the key type later filters)."""
        out = []
        for name in self.ciphers:
            for s in suites.SUITES.values():
                if s.cli == name and s.version_min <= version <= s.version_max:
                    out.append(s.code)
        return tuple(out)
