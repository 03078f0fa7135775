"""End to end: bulk transfer in both directions at once through
`tcpserver -HRDl0 127.0.0.1 PORT tlswrapper -f cert -- python3 transfer_prog.py ...`.

prog writes SIZE bytes of seeded pseudo-random data while reading all of stdin, then prints
the sha256 of what it read (e2e.TRANSFER_PROG). The client uploads SIZE bytes of other seeded
data at the same time and compares both hashes.

Sizes: 64 MiB up and 64 MiB down simultaneously with the Python ssl client, for TLS 1.2 and
TLS 1.3. The external clients (openssl s_client, gnutls-cli, curl) move 8 MiB each way, to keep
the suite fast: they exercise interoperability, the Python runs exercise volume.

Half-close: with Python ssl (close_notify, and a bare TCP SHUT_WR) and gnutls-cli (close_notify
at the end of its stdin), prog reads until EOF and writes its hash only after that: the hash
arriving proves that prog's output after the client's half-close still reaches the client.
openssl s_client -quiet ignores the end of its stdin (it never half-closes; without -quiet it
sends close_notify and exits at once), so prog reads exactly SIZE bytes there. curl sends an
HTTP POST; prog answers with the data and then the hash of the request body.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from testenv import our_command, which

import e2e

MiB = 1 << 20
BIG = 64 * MiB
SMALL = 8 * MiB
PYTHON = sys.executable


def serve(pki, tmp_path, prog_args, cert="ecdsa-p256", extra=()) -> e2e.TcpServer:
    prog = e2e.write_prog(tmp_path)
    return e2e.TcpServer([our_command(), *extra, "-f", pki[cert].path, "--",
                          PYTHON, prog, *prog_args])


class Sink:
    """Hashes what arrives; keeps the tail (prog's hash lines come after the data)."""

    def __init__(self, data_size: int) -> None:
        self.data_size = data_size
        self.got = 0
        self.h = hashlib.sha256()
        self.tail = bytearray()

    def __call__(self, chunk: bytes) -> None:
        take = max(0, min(len(chunk), self.data_size - self.got))
        if take:
            self.h.update(chunk[:take])
        self.tail += chunk[take:]
        self.got += len(chunk)


@pytest.mark.parametrize("version", ["tls12", "tls13"])
def test_python_64mib_both_ways(pki, tmp_path, version):
    """64 MiB up and 64 MiB down at the same time; close_notify half-close; hashes match."""
    with serve(pki, tmp_path, ["stream", str(BIG), "1"]) as srv:
        ctx = e2e.client_context(pki.ca_pem, version)
        sink = Sink(BIG)
        with e2e.DuplexClient(srv.port, ctx, timeout=120) as c:
            c.handshake()
            assert c.obj.version() == {"tls12": "TLSv1.2", "tls13": "TLSv1.3"}[version]
            c.exchange(e2e.data_chunks(BIG, 2), sink, half_close="close_notify")
            assert c.clean_close, "the server did not end with close_notify"
        assert sink.got >= BIG
        assert sink.h.hexdigest() == e2e.data_sha256(BIG, 1), "download corrupted"
        assert sink.tail.decode() == e2e.data_sha256(BIG, 2) + "\neof\n", "upload corrupted"
        assert srv.wait_idle() == []


@pytest.mark.parametrize("version", ["tls12", "tls13"])
def test_python_tcp_half_close(pki, tmp_path, version):
    """A TCP SHUT_WR without close_notify (a truncation, logged at -v): prog's stdin still
    closes, and what prog writes afterwards still arrives."""
    size = MiB
    with serve(pki, tmp_path, ["stream", str(size), "3"], extra=["-v"]) as srv:
        ctx = e2e.client_context(pki.ca_pem, version)
        sink = Sink(size)
        with e2e.DuplexClient(srv.port, ctx) as c:
            c.handshake()
            c.exchange(e2e.data_chunks(size, 4), sink, half_close="shutdown")
            assert c.clean_close
        assert sink.h.hexdigest() == e2e.data_sha256(size, 3)
        assert sink.tail.decode() == e2e.data_sha256(size, 4) + "\neof\n"
        assert srv.wait_idle() == []
        assert "truncated" in srv.wait_log("truncated")


def _feed(proc: subprocess.Popen, path: Path, close: threading.Event | None) -> None:
    """Write the file to proc's stdin; close stdin at once, or when `close` is set."""
    try:
        with open(path, "rb") as f:
            while chunk := f.read(MiB):
                proc.stdin.write(chunk)
            proc.stdin.flush()
        if close is not None:
            close.wait(60)
    except (BrokenPipeError, OSError):
        pass
    finally:
        try:
            proc.stdin.close()
        except OSError:
            pass


def _run_piped_client(cmd, upload: Path, download: Path, close_at_once: bool,
                      timeout: float = 90):
    """Run cmd with upload on stdin, stdout to download; returns (returncode, stderr)."""
    close = None if close_at_once else threading.Event()
    err_file = download.with_suffix(".stderr")
    with open(download, "wb") as out, open(err_file, "wb") as err_out:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=err_out)
        feeder = threading.Thread(target=_feed, args=(proc, upload, close), daemon=True)
        feeder.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        finally:
            if close is not None:
                close.set()
            feeder.join(10)
    err = err_file.read_bytes()
    return proc.returncode, err


def _split_download(path: Path, size: int) -> tuple[str, bytes]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = size
        while left:
            chunk = f.read(min(MiB, left))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
        tail = f.read()
    return h.hexdigest(), tail


@pytest.mark.parametrize("version", ["tls12", "tls13"])
def test_openssl_s_client(pki, tmp_path, version):
    """8 MiB each way with openssl s_client -quiet (prog reads exactly 8 MiB: s_client -quiet
    never half-closes). prog exits, tlswrapper sends close_notify, s_client ends."""
    openssl = which("openssl")
    up = tmp_path / "up"
    up_hash = e2e.write_data_file(up, SMALL, 6)
    with serve(pki, tmp_path, ["stream", str(SMALL), "5", str(SMALL)]) as srv:
        code, err = _run_piped_client(
            [openssl, "s_client", "-quiet", "-connect", f"127.0.0.1:{srv.port}",
             "-servername", "localhost", "-CAfile", str(pki.ca_pem), "-verify_return_error",
             {"tls12": "-tls1_2", "tls13": "-tls1_3"}[version]],
            up, tmp_path / "down", close_at_once=False)
        got, tail = _split_download(tmp_path / "down", SMALL)
        assert got == e2e.data_sha256(SMALL, 5), err
        assert tail.decode() == up_hash + "\n", err
        assert srv.wait_idle() == []


@pytest.mark.parametrize("version", ["tls12", "tls13"])
def test_gnutls_cli(pki, tmp_path, version):
    """8 MiB each way with gnutls-cli; at the end of its stdin gnutls-cli sends close_notify
    (gnutls_bye SHUT_WR) and keeps reading: prog's hash, written after its EOF, arrives."""
    gnutls = which("gnutls-cli")
    up = tmp_path / "up"
    up_hash = e2e.write_data_file(up, SMALL, 8)
    prio = {"tls12": "NORMAL:-VERS-ALL:+VERS-TLS1.2", "tls13": "NORMAL:-VERS-ALL:+VERS-TLS1.3"}
    with serve(pki, tmp_path, ["stream", str(SMALL), "7"]) as srv:
        code, err = _run_piped_client(
            [gnutls, "--x509cafile", str(pki.ca_pem), "--port", str(srv.port),
             "--priority", prio[version], "--logfile", "/dev/null", "localhost"],
            up, tmp_path / "down", close_at_once=True)
        got, tail = _split_download(tmp_path / "down", SMALL)
        assert got == e2e.data_sha256(SMALL, 7), err
        assert tail.decode() == up_hash + "\neof\n", err
        assert srv.wait_idle() == []


@pytest.mark.parametrize("version", ["tls12", "tls13"])
def test_curl_post(pki, tmp_path, version):
    """An 8 MiB POST answered by 8 MiB plus the hash of the request body."""
    curl = which("curl")
    up = tmp_path / "up"
    up_hash = e2e.write_data_file(up, SMALL, 10)
    flags = {"tls12": ["--tlsv1.2", "--tls-max", "1.2"], "tls13": ["--tlsv1.3"]}
    with serve(pki, tmp_path, ["http", str(SMALL), "9"]) as srv:
        proc = subprocess.run(
            [curl, "-sS", "--http1.1", "--cacert", str(pki.ca_pem), *flags[version],
             "--resolve", f"localhost:{srv.port}:127.0.0.1", "-H", "Expect:",
             "--data-binary", f"@{up}", "-o", str(tmp_path / "down"),
             f"https://localhost:{srv.port}/"],
            capture_output=True, timeout=90, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stderr
        got, tail = _split_download(tmp_path / "down", SMALL)
        assert got == e2e.data_sha256(SMALL, 9)
        assert tail.decode() == up_hash
        assert srv.wait_idle() == []


def test_concurrent_connections_independent(pki, tmp_path):
    """Three 4 MiB duplex transfers at the same time on one tcpserver do not mix."""
    size = 4 * MiB
    results: dict[int, tuple[str, str]] = {}
    errors: list[BaseException] = []

    def one(i: int, port: int) -> None:
        try:
            sink = Sink(size)
            with e2e.DuplexClient(port, e2e.client_context(pki.ca_pem)) as c:
                c.handshake()
                c.exchange(e2e.data_chunks(size, 100 + i), sink)
            results[i] = (sink.h.hexdigest(), sink.tail.decode())
        except BaseException as e:   # noqa: BLE001 -- reported below
            errors.append(e)

    with serve(pki, tmp_path, ["stream", str(size), "11"]) as srv:
        threads = [threading.Thread(target=one, args=(i, srv.port)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        for i in range(3):
            assert results[i] == (e2e.data_sha256(size, 11),
                                  e2e.data_sha256(size, 100 + i) + "\neof\n")
        assert srv.wait_idle() == []


def test_prog_environment(pki, tmp_path):
    """prog gets TCPREMOTEIP/TCPLOCALPORT from tcpserver and SSL_PROTOCOL from us."""
    script = tmp_path / "env.sh"
    script.write_text("#!/bin/sh\necho \"$TCPREMOTEIP $TCPLOCALPORT $SSL_PROTOCOL $SSL_TLS_SNI\"\n")
    script.chmod(0o755)
    with e2e.TcpServer([our_command(), "-f", pki.ecdsa_p256.path, "--", str(script)]) as srv:
        with e2e.tls_connect(srv.port, pki.ca_pem, "tls13") as s:
            line = e2e.recv_all(s).decode()
        assert line.split() == ["127.0.0.1", str(srv.port), "TLSv1.3", "localhost"]
