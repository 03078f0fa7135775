"""Warm-up of a listener's spare: run the engine's ClientHello path once on a made-up hello.

Why: every process of a connection is a fork of the listener, and the first write to each
shared page (Python writes reference counts on every object it uses) copies that page. Under
this machine's gVisor a copy costs 6-10 us, and a connection's network process makes a few
hundred of them after it gets its socket. A spare that has parsed one ClientHello already has
copied most of the pages the real one needs, before the client is waiting.

Rule: nothing here holds or computes a secret, and the throw-away engine gets a key service
that refuses every call (the ClientHello path never asks it anything).
"""

from __future__ import annotations

import os

from .tls import messages as m
from .tls import suites
from .tls.events import ClientHelloReceived
from .tls.record import plaintext_records
from .tls.server import ServerConnection
from .tls.wire import handshake_message


class _NoKeys:
    """A KeyService that must not be used: the warm-up ends at ClientHelloReceived."""

    def __getattr__(self, name: str):
        raise RuntimeError(f"warm-up asked the key service for {name}")


def sample_client_hello() -> bytes:
    """A ClientHello record as a current client sends it (TLS 1.3 and 1.2, SNI, x25519 share);
    the key share is random bytes, never used."""
    extensions = (
        m.Extension(suites.EXT_SERVER_NAME, m.build_server_name("warm-up.invalid")),
        m.Extension(suites.EXT_SUPPORTED_VERSIONS,
                    m.build_supported_versions_client((suites.TLS13, suites.TLS12))),
        m.Extension(suites.EXT_SUPPORTED_GROUPS,
                    m.build_supported_groups((suites.X25519, suites.SECP256R1))),
        m.Extension(suites.EXT_SIGNATURE_ALGORITHMS, m.build_signature_algorithms(
            (suites.ECDSA_SECP256R1_SHA256, suites.RSA_PSS_RSAE_SHA256))),
        m.Extension(suites.EXT_KEY_SHARE,
                    m.build_key_share_client(((suites.X25519, os.urandom(32)),))),
        m.Extension(suites.EXT_EC_POINT_FORMATS, m.build_ec_point_formats(b"\x00")),
        m.Extension(suites.EXT_EXTENDED_MASTER_SECRET, b""),
    )
    hello = m.ClientHello(suites.TLS12, os.urandom(32), os.urandom(32),
                          (0x1303, 0x1301, 0xCCA9, 0xC02B), b"\x00", extensions)
    body = handshake_message(suites.HS_CLIENT_HELLO, m.build_client_hello(hello))
    return plaintext_records(suites.HANDSHAKE, 0x0301, body)


def network_side(config) -> bool:
    """Parse a sample ClientHello with a throw-away engine; True if it got as far as the
    real one would (ClientHelloReceived). Never raises."""
    try:
        events = ServerConnection(config, _NoKeys()).receive(sample_client_hello())
    except Exception:   # noqa: BLE001 -- only a warm-up: the real connection reports its own
        return False
    return any(isinstance(e, ClientHelloReceived) for e in events)
