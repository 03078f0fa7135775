"""warmup.py: a spare's throw-away ClientHello reaches ClientHelloReceived without the key
service, for every version range the command line allows."""

from __future__ import annotations

import pytest

from tlswrapper import cli, warmup
from tlswrapper.tls import messages as m
from tlswrapper.tls import suites


@pytest.mark.parametrize("extra", [[], ["-m", "tls13"], ["-M", "tls12"],
                                   ["-c", "AES_128_GCM_SHA256", "-e", "secp256r1"]])
def test_network_side_reaches_client_hello_received(pki, extra: list[str]) -> None:
    options = cli.parse([*extra, "-f", str(pki.ecdsa_p256.path), "cat"])
    assert warmup.network_side(options.server_config())


def test_sample_hello_is_a_well_formed_client_hello() -> None:
    record = warmup.sample_client_hello()
    assert record[0] == suites.HANDSHAKE and int.from_bytes(record[3:5], "big") == len(record) - 5
    hello = m.parse_client_hello(record[9:])
    assert m.find_extension(hello.extensions, suites.EXT_KEY_SHARE) is not None
    assert warmup.sample_client_hello()[11:43] != record[11:43], "a fresh random each time"


def test_the_key_service_is_never_asked() -> None:
    with pytest.raises(RuntimeError):
        warmup._NoKeys().load([])


def test_full_handshakes_complete_and_are_replayed_on_the_key_side(pki) -> None:
    options = cli.parse(["-f", str(pki.ecdsa_p256.path), "cat"])
    assert warmup.full_handshakes(options.server_config()) == 4   # 1.3 and 1.2 x ECDSA, RSA
    names = [name for name, _ in warmup._replay]
    assert names[:3] == ["load", "select", "server_flight13"]
    assert warmup._replay[0][1][0][0].startswith("/proc/self/fd/"), "a memfd, no file"
    assert warmup.key_side() >= 3


def test_full_handshakes_follow_the_configuration(pki) -> None:
    options = cli.parse(["-m", "tls13", "-f", str(pki.ecdsa_p256.path), "cat"])
    assert warmup.full_handshakes(options.server_config()) == 2   # no TLS 1.2
