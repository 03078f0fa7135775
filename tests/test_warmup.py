"""warmup.py: a spare's throw-away ClientHello reaches ClientHelloReceived without the key
service, for every version range the command line allows."""

from __future__ import annotations

import os

import pytest

from tlswrapper import warmup
from tlswrapper.commands import cli
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


def test_key_side_calls_are_recorded_by_a_helper_and_replayed(pki) -> None:
    options = cli.parse(["-f", str(pki.ecdsa_p256.path), "cat"])
    assert warmup.record_key_side(options.server_config()) > 3
    names = [name for name, _ in warmup.REPLAY.calls]
    assert names[:3] == ["load", "select", "server_flight13"]
    assert warmup.REPLAY.fd >= 0
    fd = warmup.REPLAY.fd
    data = os.pread(fd, 1 << 16, 0)
    assert b"PRIVATE KEY" in data and b"CERTIFICATE" in data
    assert warmup.key_side() >= 3
    assert warmup.REPLAY.fd == -1       # key_side closed it
    with pytest.raises(OSError):
        os.fstat(fd)


def test_helper_handshakes_follow_the_configuration(pki) -> None:
    options = cli.parse(["-m", "tls13", "-f", str(pki.ecdsa_p256.path), "cat"])
    fd = os.memfd_create("test")
    try:
        assert warmup.full_handshakes(options.server_config(), fd) == 1   # no TLS 1.2
    finally:
        os.close(fd)


def test_network_process_drops_the_throwaway_file(pki) -> None:
    options = cli.parse(["-f", str(pki.ecdsa_p256.path), "cat"])
    assert warmup.record_key_side(options.server_config())
    fd = warmup.REPLAY.fd
    warmup.close_key_file()
    assert warmup.REPLAY.fd == -1
    with pytest.raises(OSError):
        os.fstat(fd)
