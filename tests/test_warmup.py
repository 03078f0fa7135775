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
