"""The relay's socket handling after its handshake flight: the client's next segment is
acknowledged at once (TCP_QUICKACK), so that a client that leaves Nagle's algorithm on is not
held back by Linux's delayed-ACK timer (40 ms) when we send nothing after its TLS 1.3 Finished.

Checked on a real TCP connection on 127.0.0.1: getsockopt(TCP_QUICKACK) reports whether the
socket is in quick-ACK mode (not in delayed-ACK "ping-pong" mode). Answering a peer's bytes at
once puts a socket in ping-pong mode; after the relay has written its flight it must not be.
"""

from __future__ import annotations

import os
import socket
import sys
from types import SimpleNamespace

import pytest

from tlswrapper.net.relay import TCP_QUICKACK, Relay

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="TCP_QUICKACK is Linux's")


def _connected_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname(), timeout=5)
        accepted, _ = server.accept()
    return client, accepted


def _relay(out: socket.socket, **state) -> Relay:
    relay = Relay(conn=None, keys=None, prog=None, options=SimpleNamespace(),
                  client_in=out.fileno(), client_out=out.fileno())
    for name, value in state.items():
        setattr(relay, name, value)
    return relay


def _answer_in_ping_pong(relay: Relay, client: socket.socket, accepted: socket.socket) -> None:
    """The client's bytes (its ClientHello, say), then our answer through the relay."""
    client.sendall(b"hello")
    assert accepted.recv(16) == b"hello"
    relay.to_client += b"flight"
    relay._write_client()
    assert client.recv(16) == b"flight"


def test_quick_ack_after_the_handshake_flight() -> None:
    client, accepted = _connected_pair()
    with client, accepted:
        relay = _relay(accepted)
        try:
            _answer_in_ping_pong(relay, client, accepted)
            assert accepted.getsockopt(socket.IPPROTO_TCP, TCP_QUICKACK) == 1
        finally:
            relay.client_sock.detach()


def test_without_the_relay_the_kernel_delays_acks() -> None:
    """The same exchange written directly: the socket is in delayed-ACK mode, which is what
    the test above would otherwise see (if not, this kernel never delays, and the test above
    proves nothing: say so)."""
    client, accepted = _connected_pair()
    with client, accepted:
        client.sendall(b"hello")
        assert accepted.recv(16) == b"hello"
        accepted.sendall(b"flight")
        assert client.recv(16) == b"flight"
        if accepted.getsockopt(socket.IPPROTO_TCP, TCP_QUICKACK) != 0:
            pytest.skip("this kernel did not enter delayed-ACK mode")


def test_one_more_quick_ack_after_the_handshake_then_none() -> None:
    """The flight written once the handshake has completed (TLS 1.2's ChangeCipherSpec and
    Finished; in TLS 1.3 our first application data) is the last one quick-ACKed: a client
    that writes its request in two pieces with Nagle on would otherwise wait 40 ms for the
    second. After that, application data is prog's: the relay leaves the kernel's ACK policy
    alone (one setsockopt per handshake flight, none per record)."""
    client, accepted = _connected_pair()
    with client, accepted:
        relay = _relay(accepted, tls_up=True)
        try:
            _answer_in_ping_pong(relay, client, accepted)
            assert accepted.getsockopt(socket.IPPROTO_TCP, TCP_QUICKACK) == 1
            _answer_in_ping_pong(relay, client, accepted)
            assert accepted.getsockopt(socket.IPPROTO_TCP, TCP_QUICKACK) == 0
        finally:
            relay.client_sock.detach()


def test_a_client_on_pipes_is_left_alone() -> None:
    """fd 0/1 not a socket (a pipe, as under some inetd setups or in tests): nothing to set."""
    r, w = os.pipe()
    try:
        relay = Relay(conn=None, keys=None, prog=None, options=SimpleNamespace(),
                      client_in=r, client_out=w)
        relay.to_client += b"flight"
        relay._write_client()
        assert os.read(r, 16) == b"flight"
    finally:
        os.close(r)
        os.close(w)
