"""Isolation, checked on the LIVE processes of open connections through
`tcpserver -HRDl0 127.0.0.1 PORT tlswrapper -f cert -- /bin/cat` (root only: the jail needs
root, and so does reading a non-dumpable process's memory).

What is proven here:
- both jailed processes (network, key) run under non-zero uids/gids, distinct from each other
  and from every other live connection's; their root is the jail dir; their limits are
  NOFILE 0, NPROC 0, CORE 0 and a finite address-space cap; they are not dumpable (the kernel
  gives /proc/PID/* of a non-dumpable process to root instead of the process's uid);
- the network process's whole memory, read over /proc/PID/maps + /proc/PID/mem while the
  connection is open after a data exchange, holds none of the secrets the client logged
  (SSLKEYLOGFILE via Python's keylog_filename: the TLS 1.2 master secret, every TLS 1.3
  traffic secret) nor the private key's scalar / RSA primes / d, for TLS 1.2 and 1.3, ECDSA and
  RSA. Positive controls: the same scan finds the client random and the server certificate in
  the network process, and the logged secrets in the key process (which must hold them);
- the key process's PEM secret part (each base64 line of the private-key block, its DER in
  PKCS#8 and traditional form) is not in clear in its memory (a) while the handshake has not
  started (trivially: the file is not read yet), and (b) after the file was loaded AND the key
  selected (unsealed and parsed) but before the first signature: a TLS 1.3 client offering no
  usable key share gets a HelloRetryRequest and then stalls; the server has then chosen the
  certificate but signs only after the second ClientHello. The parsed key itself (the scalar)
  is expected in the key process at that point; the test notes whether it is seen.
What is not proven: the window between load (sealed) and select, which lasts one pipe round
trip inside one ClientHello's processing and cannot be caught from outside;
tests/test_keys_local.py scans that state in-process.
"""

from __future__ import annotations

import socket
import ssl
import time

import pytest
from testenv import needs_root, our_command
from cryptography.hazmat.primitives import serialization

import e2e
from tls13client import TLS13Client
from tlswrapper.tls import suites as s

pytestmark = needs_root

JAIL = "/var/lib/tlswrapper/empty"


@pytest.fixture()
def cat_server(pki):
    servers = []

    def start(cert="ecdsa-p256", extra=()):
        srv = e2e.TcpServer([our_command(), *extra, "-f", pki[cert].path, "--", "/bin/cat"])
        servers.append(srv)
        return srv.start()

    yield start
    for srv in servers:
        srv.close()


def _echo(sock: ssl.SSLSocket, payload: bytes = b"ping\n") -> None:
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(len(payload) - len(got))
        assert chunk, "connection closed before the echo"
        got += chunk
    assert got == payload


def test_live_jail_of_three_connections(pki, cat_server):
    srv = cat_server()
    socks = []
    try:
        for _ in range(3):
            s_ = e2e.tls_connect(srv.port, pki.ca_pem, "tls13")
            socks.append(s_)
            _echo(s_)
        conns = srv.all_connections(3)
        seen_uids = []
        for c in conns:
            for pid in (c.network, c.key):
                u, g = e2e.uids(pid), e2e.gids(pid)
                assert len(set(u)) == 1 and u[0] != 0, f"pid {pid} uids {u}"
                assert len(set(g)) == 1 and g[0] != 0, f"pid {pid} gids {g}"
                groups = e2e.status_fields(pid)["Groups"].split()
                assert groups in ([], [str(g[0])]), f"pid {pid} groups {groups}"
                seen_uids.append(u[0])
                assert e2e.proc_root(pid) == JAIL
                lim = e2e.limits(pid)
                assert lim["Max open files"] == ("0", "0")
                assert lim["Max processes"] == ("0", "0")
                assert lim["Max core file size"] == ("0", "0")
                soft, hard = lim["Max address space"]
                assert soft == hard and soft != "unlimited" and int(soft) <= 1 << 31, lim
                # Not dumpable: the kernel makes /proc/PID/* owned by root (not by the
                # process's uid) for a non-dumpable process.
                for name in ("status", "mem", "maps", "environ"):
                    st = e2e.Path(f"/proc/{pid}/{name}").stat()
                    assert (st.st_uid, st.st_gid) == (0, 0), f"/proc/{pid}/{name} {st}"
            # prog (cat) is not jailed: it runs as invoked (root here), root dir /.
            assert e2e.proc_root(c.prog) == "/"
            assert e2e.exe_name(c.prog) == "/usr/bin/cat"
        assert len(set(seen_uids)) == 6, f"uids not all distinct: {seen_uids}"
        # A dumpable process of the same uid would own its /proc files: check the control
        # on ourselves after the fact is meaningless as root, so check one property instead:
        # the jailed uid differs from the owner of its /proc files.
        assert all(u != 0 for u in seen_uids)
    finally:
        for s_ in socks:
            s_.close()
    assert srv.wait_idle() == []


def _key_der_forms(key) -> dict[str, bytes]:
    out = {
        "pkcs8 DER": key.private_bytes(serialization.Encoding.DER,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()),
        "traditional DER": key.private_bytes(serialization.Encoding.DER,
                                             serialization.PrivateFormat.TraditionalOpenSSL,
                                             serialization.NoEncryption()),
    }
    return out


def _pem_body_lines(path) -> dict[str, bytes]:
    """Each base64 line of the private-key block of the PEM file (long enough to be unique)."""
    lines = e2e.Path(path).read_bytes().splitlines()
    out = {}
    inside = False
    for n, line in enumerate(lines):
        if line.startswith(b"-----BEGIN") and b"PRIVATE KEY" in line:
            inside = True
            continue
        if line.startswith(b"-----END"):
            inside = False
            continue
        if inside and len(line) >= 32:
            out[f"PEM line {n}"] = line
    assert out
    return out


@pytest.mark.parametrize("version,cert", [("tls12", "ecdsa-p256"), ("tls13", "ecdsa-p256"),
                                          ("tls12", "rsa-2048"), ("tls13", "rsa-2048")])
def test_network_process_memory_has_no_secret(pki, cat_server, tmp_path, version, cert):
    srv = cat_server(cert)
    keylog = str(tmp_path / "keylog.txt")
    with e2e.tls_connect(srv.port, pki.ca_pem, version, keylog=keylog) as sock:
        for _ in range(20):
            _echo(sock, b"x" * 3000 + b"\n")
        conn = srv.connection()
        logged = e2e.parse_keylog(keylog)
        secrets = {k: v for k, v in logged.items() if not k.startswith("random#")}
        randoms = {k: v for k, v in logged.items() if k.startswith("random#")}
        labels = {k.split("#")[0] for k in secrets}
        if version == "tls12":
            assert labels == {"CLIENT_RANDOM"}
        else:
            assert {"CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET",
                    "CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0"} <= labels
        key_secrets = dict(pki[cert].secret_patterns)
        key_secrets.update(_key_der_forms(pki[cert].key))
        key_secrets.update(_pem_body_lines(pki[cert].path))

        net_mem = e2e.read_memory(conn.network)
        key_mem = e2e.read_memory(conn.key)
        # Positive controls: the scan sees public values in the network process and the
        # logged secrets in the key process.
        assert e2e.find_secrets(net_mem, randoms), "client random not found: scan broken?"
        assert pki[cert].der in net_mem, "server certificate not found: scan broken?"
        assert e2e.find_secrets(key_mem, secrets), \
            "no logged secret in the key process either: scan broken?"

        assert e2e.find_secrets(net_mem, secrets) == []
        assert e2e.find_secrets(net_mem, key_secrets) == []
        _echo(sock)
    assert srv.wait_idle() == []


def _hrr_stall(port: int, timeout: float = 10.0) -> tuple[socket.socket, TLS13Client]:
    """Connect, send a TLS 1.3 ClientHello with supported_groups=[secp256r1] and no key share,
    read the HelloRetryRequest, and stop there (the caller holds the socket open)."""
    client = TLS13Client(groups=(s.SECP256R1,), key_share_groups=(), sni="localhost")
    client.start()
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(client.data_to_send())
    deadline = time.monotonic() + timeout
    while client.hello_retry_request is None:
        assert time.monotonic() < deadline, "no HelloRetryRequest"
        data = sock.recv(65536)
        assert data, "server closed instead of sending a HelloRetryRequest"
        client.receive(data)
    return sock, client


@pytest.mark.parametrize("cert", ["ecdsa-p256", "rsa-2048"])
def test_key_process_holds_no_clear_pem_before_signing(pki, cat_server, cert):
    srv = cat_server(cert)
    patterns = dict(_pem_body_lines(pki[cert].path))
    patterns.update(_key_der_forms(pki[cert].key))

    # (a) connected, nothing sent: the key process exists, jailed? not yet (it jails after
    # reading the file); either way the file is not read.
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as idle:
        conn = srv.connection(need_jail=False)
        assert e2e.find_secrets(e2e.read_memory(conn.key), patterns) == []
        idle.close()
    assert srv.wait_idle() == []

    # (b) after load + select, before the first signature.
    sock, client = _hrr_stall(srv.port)
    try:
        conn = srv.connection()          # both processes now jailed (the file was read)
        assert client.certificate_verify is None
        key_mem = e2e.read_memory(conn.key)
        net_mem = e2e.read_memory(conn.network)
        found = e2e.find_secrets(key_mem, patterns)
        assert found == [], f"clear PEM secret in the key process before signing: {found}"
        assert e2e.find_secrets(net_mem, patterns) == []
        assert e2e.find_secrets(net_mem, pki[cert].secret_patterns) == []
        # Positive control on the key process: its certificate chain (read from the same
        # file, kept in clear as it is public) is visible to the scan.
        assert pki[cert].der in key_mem

        # Finish the handshake: the key now signs; the network process still holds no
        # scalar/prime, the key process does (the parsed key) -- the scan sees it.
        sock.sendall(client.data_to_send())
        deadline = time.monotonic() + 10
        while not client.connected:
            assert time.monotonic() < deadline
            data = sock.recv(65536)
            assert data, "server closed during the handshake"
            client.receive(data)
            out = client.data_to_send()
            if out:
                sock.sendall(out)
        assert client.certificate_verify is not None
        time.sleep(0.1)
        assert e2e.find_secrets(e2e.read_memory(conn.network), pki[cert].secret_patterns) == []
        assert e2e.find_secrets(e2e.read_memory(conn.key), pki[cert].secret_patterns), \
            "the parsed private key is not visible in the key process: scan broken?"
    finally:
        sock.close()
    assert srv.wait_idle() == []
