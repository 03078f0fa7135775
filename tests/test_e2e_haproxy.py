"""A real load balancer in front: Debian's haproxy (TCP mode) on 127.0.0.1 in front of three
tlswrapper-listen instances on 127.0.0.2, 127.0.0.3 and 127.0.0.4, as the README's "Running
more than one host" describes.

haproxy has two frontends, one whose backend sends `send-proxy` (v1) and one `send-proxy-v2`
with TLVs (a CRC32C of the header, which tlswrapper checks, and a unique id), to the same
three listeners, which read either (`-p 0`); health checks on (`check` with
`check-send-proxy`: each check is a connection with a PROXY header, a v2 LOCAL one for the v2
backend, and no TLS). The clients connect from 127.0.0.9, so that an address that reaches
prog can only have come from the header. prog is a shell script: `env` prints the
connection's variables, `get` names the instance and sends an 8 MiB file (the client checks
its sha256).

The tests run in file order on one bed: addresses through each instance and both versions;
a SIGTERM restart of instance a while 50 transfers run through it (every transfer completes
intact, new connections go elsewhere, the old instance drains and exits 0, haproxy takes the
new one back); three restarts of instance c under continuous load (no connection fails);
instance b killed outright (every new connection after haproxy marks it down succeeds, none
on b). Each prints its figures (pytest -s shows them): connections, transfers, failures,
and how long things took (reported, never asserted).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
from testenv import free_port, needs_root, our_command, which
from e2e import children_of

pytestmark = needs_root   # each connection's processes jail themselves

INSTANCES = {"a": "127.0.0.2", "b": "127.0.0.3", "c": "127.0.0.4"}
CLIENT_IP = "127.0.0.9"
BIG = 8 << 20
TRANSFERS = 50
CHECK_INTER_MS = 500
FALL = 2
RISE = 2

PROG = """#!/bin/sh
read -r cmd
case "$cmd" in
  env) env | grep -E '^(TCP|BED_)' | sort; echo end-of-env ;;
  get) echo "$BED_INSTANCE"; exec cat "$BED_BIG" ;;
esac
"""

HAPROXY_CFG = """\
global
    maxconn 2000
    stats socket {stats} mode 600 level admin
    log stderr format short local0 info

defaults
    mode tcp
    # one line per connection in haproxy.log (its termination state tells who ended it)
    log global
    option tcplog
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    # A refused connection (an instance restarting or dead, before its checks say so) is
    # tried again on another instance at once.
    retries 3
    option redispatch 1

frontend fe_v1
    bind 127.0.0.1:{port_v1}
    default_backend bk_v1

frontend fe_v2
    bind 127.0.0.1:{port_v2}
    unique-id-format %{{+X}}o\\ %ci:%cp_%fi:%fp_%Ts_%rt:%pid
    default_backend bk_v2

backend bk_v1
    balance roundrobin
    default-server check check-send-proxy inter {inter}ms fall {fall} rise {rise} maxconn 100 send-proxy
{servers}

backend bk_v2
    balance roundrobin
    default-server check check-send-proxy inter {inter}ms fall {fall} rise {rise} maxconn 100 send-proxy-v2 proxy-v2-options crc32c,unique-id
{servers}
"""


def client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Instance:
    """One tlswrapper-listen, in its own process group (so that "killed" can mean all of it)."""

    def __init__(self, name: str, port: int, pem: Path, prog: Path, big: Path,
                 directory: Path) -> None:
        self.name, self.ip, self.port = name, INSTANCES[name], port
        self.pem, self.prog, self.big, self.directory = pem, prog, big, directory
        self.generation = 0
        self.proc: subprocess.Popen | None = None
        self.log: Path | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Start it and wait for its "listening" line. A restart may find the address still
        held by the old listener's last spares for a moment: bind is then tried again."""
        deadline = time.monotonic() + timeout
        while True:
            self.generation += 1
            self.log = self.directory / f"{self.name}.{self.generation}.log"
            env = {**os.environ, "BED_INSTANCE": self.name, "BED_BIG": str(self.big)}
            with open(self.log, "wb") as log:
                self.proc = subprocess.Popen(
                    [our_command("tlswrapper-listen"), "-c", "100", self.ip, str(self.port),
                     "-vv", "-p", "0", "-f", str(self.pem), "--", "/bin/sh", str(self.prog)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                    start_new_session=True)
            while time.monotonic() < deadline:
                # Serving once it has forked its first spare: its signal handlers are set
                # by then (a SIGTERM before that would end it at once).
                if b"listening on" in self.log.read_bytes() and children_of(self.proc.pid):
                    return
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
            if time.monotonic() >= deadline:
                pytest.fail(f"instance {self.name} did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)

    def kill_all(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)


class Bed:
    def __init__(self, directory: Path, pem: Path) -> None:
        self.directory = directory
        self.big = directory / "big"
        self.big.write_bytes(os.urandom(BIG))
        self.big_sha256 = hashlib.sha256(self.big.read_bytes()).hexdigest()
        prog = directory / "prog"
        prog.write_text(PROG)
        prog.chmod(0o755)
        self.instances = {name: Instance(name, free_port(ip), pem, prog, self.big, directory)
                          for name, ip in INSTANCES.items()}
        self.port_v1, self.port_v2 = free_port(), free_port()
        self.stats = directory / "stats.sock"
        self.haproxy: subprocess.Popen | None = None

    def start(self) -> None:
        for inst in self.instances.values():
            inst.start()
        servers = "\n".join(f"    server {inst.name} {inst.ip}:{inst.port}"
                            for inst in self.instances.values())
        cfg = self.directory / "haproxy.cfg"
        cfg.write_text(HAPROXY_CFG.format(stats=self.stats, port_v1=self.port_v1,
                                          port_v2=self.port_v2, inter=CHECK_INTER_MS,
                                          fall=FALL, rise=RISE, servers=servers))
        haproxy = which(shutil.which("haproxy") or "/usr/sbin/haproxy")
        subprocess.run([haproxy, "-c", "-q", "-f", str(cfg)], check=True, timeout=30)
        self.haproxy_log = self.directory / "haproxy.log"
        with open(self.haproxy_log, "wb") as log:
            self.haproxy = subprocess.Popen([haproxy, "-db", "-f", str(cfg)],
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self.wait_states({name: "UP" for name in self.instances}, timeout=30)

    def stop(self) -> None:
        if self.haproxy is not None:
            self.haproxy.kill()
            self.haproxy.wait(10)
        for inst in self.instances.values():
            inst.kill_all()

    # -- haproxy's view, from its stats socket ---------------------------------------------

    def states(self) -> dict[tuple[str, str], str]:
        """(backend, server) -> UP / DOWN / ... from `show stat`."""
        return {key: row["status"].split()[0] for key, row in self.stat_rows().items()}

    def set_weights(self, weights: dict[str, int]) -> None:
        """`set weight` on the stats socket, in both backends (0: no new connections)."""
        for name, weight in weights.items():
            for backend in ("bk_v1", "bk_v2"):
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(5)
                    s.connect(str(self.stats))
                    s.sendall(f"set weight {backend}/{name} {weight}\n".encode())
                    answer = b""
                    while chunk := s.recv(4096):
                        answer += chunk
                assert answer.strip() == b"", answer

    def redispatched(self) -> int:
        """Connections haproxy retried on another instance (a refused connect), in all."""
        return sum(int(row["wredis"] or 0) for row in self.stat_rows().values())

    def stat_rows(self) -> dict[tuple[str, str], dict[str, str]]:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.stats))
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        lines = data.decode().splitlines()
        fields = lines[0].lstrip("# ").split(",")
        out = {}
        for line in lines[1:]:
            row = dict(zip(fields, line.split(",")))
            if row.get("svname") in self.instances:
                out[(row["pxname"], row["svname"])] = row
        return out

    def wait_states(self, want: dict[str, str], timeout: float) -> float:
        """Wait until every server named in `want` has that status in both backends; returns
        the seconds it took."""
        start = time.monotonic()
        while True:
            assert self.haproxy is not None and self.haproxy.poll() is None, \
                self.haproxy_log.read_text()[-2000:]
            try:
                states = self.states()
            except (FileNotFoundError, ConnectionRefusedError):
                states = {}          # haproxy is starting: no stats socket yet
            if all(states.get((bk, name)) == status for name, status in want.items()
                   for bk in ("bk_v1", "bk_v2")):
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                pytest.fail(f"haproxy states {states}, wanted {want}; "
                            f"log: {self.haproxy_log.read_text()[-2000:]}")
            time.sleep(0.05)

    # -- clients ---------------------------------------------------------------------------

    def connect(self, port: int) -> tuple[ssl.SSLSocket, int]:
        sock = socket.socket()
        sock.settimeout(60)
        sock.bind((CLIENT_IP, 0))
        sock.connect(("127.0.0.1", port))
        client_port = sock.getsockname()[1]      # wrap_socket takes the descriptor over
        return client_context().wrap_socket(sock), client_port

    def env_of_one(self, port: int) -> tuple[dict[str, str], int]:
        conn, client_port = self.connect(port)
        with conn:
            conn.sendall(b"env\n")
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
        text = data.decode()
        assert text.endswith("end-of-env\n"), text
        return dict(line.split("=", 1) for line in text.splitlines()[:-1]), client_port


@pytest.fixture(scope="module")
def bed(pki, tmp_path_factory: pytest.TempPathFactory):
    bed = Bed(tmp_path_factory.mktemp("haproxy"), pki.ecdsa_p256.path)
    try:
        bed.start()
        yield bed
    finally:
        bed.stop()


def test_client_address_reaches_prog_through_each_instance_v1_and_v2(bed: Bed) -> None:
    seen: dict[int, set[str]] = {}
    for port in (bed.port_v1, bed.port_v2):
        seen[port] = set()
        for _ in range(6):        # roundrobin: each instance twice
            env, client_port = bed.env_of_one(port)
            assert env["TCPREMOTEIP"] == CLIENT_IP and env["TCPREMOTEPORT"] == str(client_port)
            assert env["TCPLOCALIP"] == "127.0.0.1" and env["TCPLOCALPORT"] == str(port)
            seen[port].add(env["BED_INSTANCE"])
    assert seen == {bed.port_v1: set(INSTANCES), bed.port_v2: set(INSTANCES)}
    # The v2 backend's health checks are LOCAL headers: read, and never a handshake.
    logs = "".join(inst.log.read_text() for inst in bed.instances.values())
    assert "PROXY v2 LOCAL" in logs
    assert "Traceback" not in logs
    print(f"\naddresses: 12 connections (6 per PROXY version), 0 failures; instances "
          f"{sorted(seen[bed.port_v1])}")


class Transfer(threading.Thread):
    """Downloads the 8 MiB file; with `hold`, stops after its first 64 KiB until it is set."""

    def __init__(self, bed: Bed, port: int, hold: threading.Event | None = None) -> None:
        super().__init__(daemon=True)
        self.bed, self.port, self.hold = bed, port, hold
        self.in_flight = threading.Event()
        self.instance = ""
        self.size = 0
        self.sha256 = ""
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            conn, _ = self.bed.connect(self.port)
            with conn:
                conn.sendall(b"get\n")
                data = b""
                while b"\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        raise EOFError("end of stream before the instance's name")
                    data += chunk
                name, _, data = data.partition(b"\n")
                self.instance = name.decode()
                h = hashlib.sha256(data)
                self.size = len(data)
                while self.size < 65536:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    h.update(chunk)
                    self.size += len(chunk)
                self.in_flight.set()
                if self.hold is not None and not self.hold.wait(120):
                    raise TimeoutError("never released")
                while chunk := conn.recv(1 << 18):
                    h.update(chunk)
                    self.size += len(chunk)
                self.sha256 = h.hexdigest()
        except BaseException as e:   # noqa: BLE001 -- reported by the test
            self.error = e
        finally:
            self.in_flight.set()

    def ok(self) -> bool:
        return self.error is None and self.size == BIG and self.sha256 == self.bed.big_sha256


def test_sigterm_restart_during_50_transfers_loses_nothing(bed: Bed) -> None:
    """50 transfers run through instance a (b and c at weight 0 in haproxy while they start;
    each has received its first 64 KiB and is held) when a gets SIGTERM and a new instance a
    is started at once on the same address. The transfers then go on while 20 new connections
    come during the restart. All 50 complete with the file's sha256 and every new connection
    is served (by b, c or the new a); the old a drains its transfers and exits 0; haproxy
    takes the new a back after its checks."""
    a = bed.instances["a"]
    old, old_log = a.proc, a.log
    hold = threading.Event()
    ports = (bed.port_v1, bed.port_v2)
    bed.set_weights({"b": 0, "c": 0})
    try:
        transfers = [Transfer(bed, ports[i % 2], hold) for i in range(TRANSFERS)]
        for t in transfers:
            t.start()
        for t in transfers:
            assert t.in_flight.wait(120)
    finally:
        bed.set_weights({"b": 1, "c": 1})
    assert all(t.error is None for t in transfers), [t.error for t in transfers if t.error]
    assert [t.instance for t in transfers] == ["a"] * TRANSFERS
    redispatched = bed.redispatched()
    old.send_signal(signal.SIGTERM)
    started = time.monotonic()
    hold.set()
    newcomers: list[str] = []

    def newcomer(i: int) -> None:
        try:
            newcomers.append(bed.env_of_one(ports[i % 2])[0]["BED_INSTANCE"])
        except (OSError, AssertionError) as e:
            newcomers.append(repr(e))

    during = [threading.Thread(target=newcomer, args=(i,)) for i in range(20)]
    for t in during:
        t.start()
    generation = a.generation
    a.start()                         # the new version/certificate: same address and port
    restarted_in = time.monotonic() - started
    bind_attempts = a.generation - generation
    for t in transfers + during:
        t.join(180)
        assert not t.is_alive()
    failures = [(t.instance, t.size, t.error) for t in transfers if not t.ok()]
    assert old.wait(60) == 0          # drained: its transfers done, then it exits
    drained_in = time.monotonic() - started
    print(f"\nrestart: {TRANSFERS} transfers of {BIG >> 20} MiB in flight on the restarted "
          f"instance, {len(failures)} failures; {len(during)} new connections during the "
          f"restart, served by {({k: newcomers.count(k) for k in sorted(set(newcomers))})}; "
          f"new instance listening after "
          f"{restarted_in:.1f} s ({bind_attempts} start(s)), old one drained and exited "
          f"after {drained_in:.1f} s; "
          f"{bed.redispatched() - redispatched} connections redispatched by haproxy")
    assert failures == []
    assert set(newcomers) <= set(INSTANCES) and len(newcomers) == len(during), newcomers
    assert "Traceback" not in old_log.read_text()
    # haproxy sends new connections to the new a again once its checks pass.
    bed.wait_states({"a": "UP"}, timeout=30)
    served = {bed.env_of_one(bed.port_v2)[0]["BED_INSTANCE"] for _ in range(6)}
    assert "a" in served


def test_restarts_under_continuous_load_lose_no_connection(bed: Bed) -> None:
    """Four clients connect back to back through both frontends while instance c is
    restarted three times (SIGTERM, new instance at once, back in haproxy): not one
    connection fails. The connections the kernel had queued for the old instance are served
    by it; a connect that comes once it has stopped listening is refused, and haproxy
    redispatches it."""
    c = bed.instances["c"]
    stop = threading.Event()
    lock = threading.Lock()
    latencies: list[float] = []
    failures: list[str] = []

    def client(i: int) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                bed.env_of_one((bed.port_v1, bed.port_v2)[i % 2])
                with lock:
                    latencies.append(time.monotonic() - started)
            except (OSError, AssertionError) as e:
                with lock:
                    failures.append(repr(e))

    clients = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(4)]
    for t in clients:
        t.start()
    restarts = 3
    time.sleep(1.0)
    for _ in range(restarts):
        bed.wait_states({"c": "UP"}, timeout=30)
        time.sleep(0.5)
        old = c.proc
        old.send_signal(signal.SIGTERM)
        c.start()
        assert old.wait(30) == 0
    bed.wait_states({"c": "UP"}, timeout=30)
    stop.set()
    for t in clients:
        t.join(60)
    latencies.sort()
    print(f"\ncontinuous load: {restarts} restarts, {len(latencies) + len(failures)} "
          f"connections, {len(failures)} failures; latency p50 "
          f"{latencies[len(latencies) // 2]:.2f} s, max {latencies[-1]:.2f} s, "
          f"{sum(x > 1 for x in latencies)} over 1 s")
    assert failures == []


def test_killed_instance_is_routed_around_after_the_check_interval(bed: Bed) -> None:
    """Instance b dies outright (its whole process group, SIGKILL): haproxy marks it down
    within its checks, and not one of the connections made after that fails or lands on b."""
    bed.wait_states({name: "UP" for name in INSTANCES}, timeout=30)
    bed.instances["b"].kill_all()
    # FALL failed checks, CHECK_INTER_MS apart: reported; the timeout only guards a hang.
    down_in = bed.wait_states({"b": "DOWN"}, timeout=30)
    served: dict[str, int] = {}
    failures = []
    count = 30
    for i in range(count):
        try:
            env, _ = bed.env_of_one((bed.port_v1, bed.port_v2)[i % 2])
            served[env["BED_INSTANCE"]] = served.get(env["BED_INSTANCE"], 0) + 1
        except (OSError, AssertionError) as e:
            failures.append(repr(e))
    print(f"\nkill: instance b marked down {down_in:.1f} s after SIGKILL; then {count} "
          f"connections, {len(failures)} failures, served by {served}")
    assert failures == []
    assert set(served) == {"a", "c"}


RAW_CFG = """\
defaults
    mode tcp
    timeout connect 2s
    timeout client 10s
    timeout server 10s

frontend fe
    bind 127.0.0.1:{port}
    unique-id-format %{{+X}}o\\ %ci:%cp_%fi:%fp_%Ts_%rt:%pid
    default_backend bk

backend bk
    server raw 127.0.0.1:{raw} {send}
"""


@pytest.mark.parametrize("send", ["send-proxy", "send-proxy-v2",
                                  "send-proxy-v2 proxy-v2-options crc32c,unique-id"])
def test_haproxys_own_header_bytes_parse(send: str, tmp_path: Path) -> None:
    """The header exactly as haproxy writes it (captured by a plain TCP server behind it),
    through tlswrapper's reader: the client's address and port, the bytes after it intact;
    with CRC32C and unique-id TLVs, a CRC32C changed by one bit is refused."""
    from tlswrapper.net.proxyproto import ProxyError, ProxyReader
    raw = socket.socket()
    raw.bind(("127.0.0.1", 0))
    raw.listen(1)
    raw.settimeout(20)
    port = free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(RAW_CFG.format(port=port, raw=raw.getsockname()[1], send=send))
    haproxy = which(shutil.which("haproxy") or "/usr/sbin/haproxy")
    proc = subprocess.Popen([haproxy, "-db", "-f", str(cfg)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client = socket.create_connection(("127.0.0.1", port), timeout=2)
                break
            except ConnectionRefusedError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        with client:
            client.sendall(b"\x16\x03\x01after")
            conn, _ = raw.accept()
            with conn:
                conn.settimeout(10)
                data = b""
                while not data.endswith(b"after"):
                    data += conn.recv(65536)
            client_port = client.getsockname()[1]
    finally:
        proc.kill()
        proc.wait(10)
        raw.close()
    reader = ProxyReader(0)
    header = reader.feed(data)
    assert header is not None and reader.rest == b"\x16\x03\x01after"
    assert (header.source_ip, header.source_port, header.dest_ip, header.dest_port) == \
        ("127.0.0.1", client_port, "127.0.0.1", port)
    if "crc32c" in send:
        length = len(data) - len(reader.rest)
        assert length > 16 + 12 + 7, "no TLVs sent"
        at = data.index(b"\x03\x00\x04", 28)       # the CRC32C TLV: type 3, length 4
        broken = data[:at + 3] + bytes([data[at + 3] ^ 1]) + data[at + 4:]
        with pytest.raises(ProxyError, match="CRC32C mismatch"):
            ProxyReader(2).feed(broken)
