"""tlswrapper-tcp end to end: curl -> tcpserver -> tlswrapper -> tlswrapper-tcp -> nginx.

nginx (Debian's package) runs with the test's own minimal configuration on loopback ports:
a plain listener serving a 64 MiB file, and a `proxy_protocol` listener whose access log
shows the client address it learned from the PROXY header.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from testenv import free_port, needs_root, our_command, wait_for_port, which

pytestmark = [needs_root, pytest.mark.timeout(300)]

BIG = 64 << 20
HOSTS_NAME = "tlswrapper-multi-test"


class Nginx:
    def __init__(self, root: Path, listen: list[str]):
        self.root = root
        self.port = free_port()
        self.proxy_port = free_port()
        self.log = root / "access.log"
        conf = root / "nginx.conf"
        listens = "\n".join(f"        listen {a}:{self.port};" for a in listen)
        conf.write_text(f"""
daemon off;
master_process on;
worker_processes 1;
user root;
pid {root}/nginx.pid;
error_log {root}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {root}/tmp;
    proxy_temp_path {root}/tmp;
    fastcgi_temp_path {root}/tmp;
    uwsgi_temp_path {root}/tmp;
    scgi_temp_path {root}/tmp;
    log_format pp '$proxy_protocol_addr:$proxy_protocol_port $remote_addr "$request" $status';
    server {{
{listens}
        root {root}/www;
    }}
    server {{
        listen 127.0.0.1:{self.proxy_port} proxy_protocol;
        access_log {self.log} pp;
        root {root}/www;
    }}
}}
""")
        (root / "www").mkdir()
        (root / "tmp").mkdir()
        self.proc = subprocess.Popen([which("nginx"), "-c", str(conf), "-p", str(root)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        host = listen[0].strip("[]")
        wait_for_port(self.port, host, proc=self.proc)
        wait_for_port(self.proxy_port, proc=self.proc)

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


class TcpServer:
    def __init__(self, argv, log_path: Path):
        self.port = free_port()
        self.logf = open(log_path, "wb")  # noqa: SIM115 -- closed in stop()
        self.log_path = log_path
        self.proc = subprocess.Popen([which("tcpserver"), "-HRDl0", "127.0.0.1", str(self.port),
                                      *argv], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self.logf,
                                     start_new_session=True)
        wait_for_port(self.port, proc=self.proc)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)
        self.logf.close()


@pytest.fixture
def nginx(tmp_path):
    (tmp_path / "nginx").mkdir()
    n = Nginx(tmp_path / "nginx", ["127.0.0.1"])
    with open(n.root / "www" / "big", "wb") as f:
        block = hashlib.sha256(b"seed").digest() * 4096          # 128 KiB
        f.writelines(block for _ in range(BIG // len(block)))
    (n.root / "www" / "index.html").write_text("hello from nginx\n")
    yield n
    n.stop()


def wrapper(pki, tmp_path, *tcp_args, tlswrapper_args=()):
    """tcpserver ... sh -c 'tlswrapper ... tlswrapper-tcp ...; echo exit $?': the shell
    logs tlswrapper's exit status (prog's, i.e. tlswrapper-tcp's) in the tcpserver log."""
    argv = [our_command("tlswrapper"), *tlswrapper_args, "-f", str(pki.ecdsa_p256.path),
            our_command("tlswrapper-tcp"), *tcp_args]
    return TcpServer(["/bin/sh", "-c", '"$@"; echo "exit status $?" >&2', "sh", *argv],
                     tmp_path / "tcpserver.log")


def curl(port: int, pki, path: str, out: Path | None = None, timeout=120):
    cmd = [which("curl"), "-sS", "--max-time", str(timeout - 10), "--cacert", str(pki.ca_pem),
           "--resolve", f"localhost:{port}:127.0.0.1", f"https://localhost:{port}{path}"]
    if out is not None:
        cmd += ["-o", str(out)]
    return subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)


def test_64mib_through_tlswrapper_and_tlswrapper_tcp(nginx, pki, tmp_path):
    ts = wrapper(pki, tmp_path, "127.0.0.1", str(nginx.port))
    try:
        out = tmp_path / "got"
        p = curl(ts.port, pki, "/big", out)
        assert p.returncode == 0, (p.stderr, ts.log())
        h = hashlib.sha256()
        with open(out, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        with open(nginx.root / "www" / "big", "rb") as f:
            want = hashlib.file_digest(f, "sha256").hexdigest()
        assert out.stat().st_size == BIG and h.hexdigest() == want
    finally:
        ts.stop()


@pytest.mark.parametrize("version", ["1", "2"])
def test_proxy_protocol_reaches_nginx(version, nginx, pki, tmp_path):
    """-P 1 (text) and -P 2 (binary): nginx, a real receiver of both, logs the client."""
    ts = wrapper(pki, tmp_path, "-P", version, "127.0.0.1", str(nginx.proxy_port))
    try:
        p = curl(ts.port, pki, "/index.html")
        assert p.returncode == 0 and p.stdout == b"hello from nginx\n", (p.stderr, ts.log())
        deadline = time.monotonic() + 10
        while not nginx.log.exists() or "index.html" not in nginx.log.read_text():
            assert time.monotonic() < deadline, "nothing in nginx's log"
            time.sleep(0.05)
        line = nginx.log.read_text().strip().splitlines()[-1]
        # nginx learned the client's address (curl's, via TCPREMOTEIP/PORT) from the header
        addr, port = line.split()[0].rsplit(":", 1)
        assert addr == "127.0.0.1" and port.isdigit() and int(port) != ts.port
        assert '"GET /index.html HTTP/1.1" 200' in line
    finally:
        ts.stop()


def test_backend_down_clean_close_111(pki, tmp_path):
    dead = free_port()
    ts = wrapper(pki, tmp_path, "127.0.0.1", str(dead), tlswrapper_args=("-v",))
    try:
        p = curl(ts.port, pki, "/", timeout=60)
        assert p.returncode != 0
        # curl sees the connection end (empty reply), not a hang or a TLS error
        assert b"Empty reply" in p.stderr or b"(52)" in p.stderr or b"closed" in p.stderr, p.stderr
        log = ts.log()
        deadline = time.monotonic() + 10
        while "exit status" not in log and time.monotonic() < deadline:
            time.sleep(0.05)
            log = ts.log()
        assert "tlswrapper-tcp: fatal: 127.0.0.1:" in log
        assert f": unable to connect to 127.0.0.1:{dead} (connection refused)" in log
        assert "exit status 111" in log
        assert "Traceback" not in log
    finally:
        ts.stop()


@pytest.fixture
def multi_name():
    """An /etc/hosts name with ::1 first and 127.0.0.1 second."""
    hosts = Path("/etc/hosts")
    original = hosts.read_text()
    hosts.write_text(original + f"::1 {HOSTS_NAME}\n127.0.0.1 {HOSTS_NAME}\n")
    try:
        order = [a[4][0] for a in socket.getaddrinfo(HOSTS_NAME, 80, type=socket.SOCK_STREAM)]
        yield order
    finally:
        hosts.write_text(original)


def test_first_address_dead(nginx, pki, tmp_path, multi_name):
    # nginx listens on 127.0.0.1 only: whichever of ::1 / 127.0.0.1 comes first, we need the
    # dead one first.
    if multi_name[0] != "::1":
        pytest.skip(f"getaddrinfo order {multi_name}: ::1 not first")
    ts = wrapper(pki, tmp_path, "-vv", HOSTS_NAME, str(nginx.port))
    try:
        p = curl(ts.port, pki, "/index.html")
        assert p.returncode == 0 and p.stdout == b"hello from nginx\n", (p.stderr, ts.log())
        log = ts.log()
        assert f"unable to connect to [::1]:{nginx.port} (connection refused)" in log
        assert f"connected to 127.0.0.1:{nginx.port}" in log
    finally:
        ts.stop()
