"""Benchmark: our tlswrapper (under tcpserver, and as tlswrapper-listen) against Debian's C
tlswrapper under tcpserver, on 127.0.0.1, alternating the servers round by round (A B C A B C
...) and reporting medians and ratios to the C version. Needs root (the jail), tcpserver
(ucspi-tcp) and /usr/bin/tlswrapper (Debian's tlswrapper package).

    make bench                                   # the full run (256 MiB bulk, 3 rounds)
    .venv/bin/python bench/run.py --quick        # a short run (16 MiB bulk, 1 s per figure)
    .venv/bin/python bench/run.py --help

Measured, for TLS 1.2 and 1.3 (the C version has no 1.3: ours alone there), ECDSA P-256 and
RSA 2048 certificates:
  (a) sequential handshakes/s: connect, full handshake, one line echoed by `cat`, close;
  (b) the same from 4 concurrent client processes;
  (c) bulk download (prog: head -c SIZE /dev/zero) and upload
      (prog: head -c SIZE >/dev/null; echo done), MB/s;
  (d) time to first byte (connect until the first byte of the echoed line), p50 and p99,
      from the sequential run (the client sets TCP_NODELAY); and p50 again with a client
      that leaves Nagle's algorithm on (most clients' default), which shows a server that
      delays its ACKs during the handshake;
  (e) PSS and RSS of all processes serving one idle connection (/proc/PID/smaps_rollup);
  and the client's own CPU time per handshake, so that a client-bound figure shows.

The client is Python's ssl module (OpenSSL), one process per concurrent client, with
verification off (it still checks the handshake signature). Results: bench/results/*.json and
*.md (gitignored); the markdown table is printed at the end. The same servers against real
client programs (curl, openssl s_client, gnutls-cli), by hand: bench/real_clients.py.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
VENV_BIN = Path(sys.executable).parent
C_TLSWRAPPER = "/usr/bin/tlswrapper"
HOST = "127.0.0.1"
LINE = b"hello, tlswrapper\n"

IMPLS = ("c", "tcpserver", "listener")
LABEL = {"c": "C tlswrapper + tcpserver", "tcpserver": "ours + tcpserver",
         "listener": "ours, tlswrapper-listen"}
CERTS = ("ecdsa", "rsa")
VERSIONS = ("1.2", "1.3")


# --------------------------------------------------------------------------- certificates

def make_certs(directory: Path) -> dict[str, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, key in (("ecdsa", ec.generate_private_key(ec.SECP256R1())),
                      ("rsa", rsa.generate_private_key(65537, 2048))):
        path = directory / f"{name}.pem"
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]),
                               critical=False)
                .sign(key, hashes.SHA256()))
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()) \
            + cert.public_bytes(serialization.Encoding.PEM)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        out[name] = path
    return out


# --------------------------------------------------------------------------- servers

def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    # Bytecode as an installed package has it (pip compiles it), without writing into src/.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(RESULTS / "pycache")
    return env


class Server:
    def __init__(self, impl: str, pem: Path, prog: list[str], log: Path) -> None:
        self.impl = impl
        self.port = free_port()
        port = str(self.port)
        if impl == "c":
            cmd = ["tcpserver", "-HRDl0", "-c", "100", HOST, port, C_TLSWRAPPER, "-f", str(pem),
                   "--", *prog]
        elif impl == "tcpserver":
            cmd = ["tcpserver", "-HRDl0", "-c", "100", HOST, port, str(VENV_BIN / "tlswrapper"),
                   "-f", str(pem), "--", *prog]
        else:
            cmd = [str(VENV_BIN / "tlswrapper-listen"), "-c", "100", HOST, port, "-f", str(pem),
                   "--", *prog]
        self.log = open(log, "ab")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self.log, env=server_env())
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{cmd} exited with {self.proc.returncode}")
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# --------------------------------------------------------------------------- the client

def client_context(version: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if version == "1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    else:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def handshakes(port: int, version: str, seconds: float, min_count: int,
               nodelay: bool = True) -> dict:
    """Sequential connections for `seconds` (and at least min_count): per connection the
    time to first byte; overall the rate and this process's CPU per connection. With
    nodelay=False the client leaves Nagle's algorithm on, as many clients do."""
    ctx = client_context(version)
    ttfb = []
    cipher = None
    cpu0 = os.times()
    start = time.perf_counter()
    end = start + seconds
    while time.perf_counter() < end or len(ttfb) < min_count:
        t0 = time.perf_counter()
        sock = socket.create_connection((HOST, port))
        if nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = ctx.wrap_socket(sock)
        conn.sendall(LINE)
        data = conn.recv(4096)
        ttfb.append(time.perf_counter() - t0)
        while not data.endswith(b"\n"):
            more = conn.recv(4096)
            if not more:
                raise RuntimeError("connection closed before the echo")
            data += more
        if data != LINE:
            raise RuntimeError(f"bad echo {data!r}")
        cipher = cipher or conn.cipher()
        conn.close()
    elapsed = time.perf_counter() - start
    cpu1 = os.times()
    cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    return {"count": len(ttfb), "seconds": elapsed, "cpu": cpu, "ttfb": ttfb,
            "cipher": cipher}


def download(port: int, version: str, size: int) -> dict:
    ctx = client_context(version)
    conn = ctx.wrap_socket(socket.create_connection((HOST, port)))
    buf = bytearray(1 << 18)
    view = memoryview(buf)
    got = 0
    cpu0 = os.times()
    t0 = time.perf_counter()
    while True:
        n = conn.recv_into(view)
        if not n:
            break
        got += n
    elapsed = time.perf_counter() - t0
    cpu1 = os.times()
    conn.close()
    if got != size:
        raise RuntimeError(f"download: {got} bytes, expected {size}")
    return {"seconds": elapsed, "bytes": got,
            "cpu": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)}


def upload(port: int, version: str, size: int) -> dict:
    ctx = client_context(version)
    conn = ctx.wrap_socket(socket.create_connection((HOST, port)))
    chunk = bytes(1 << 18)
    left = size
    cpu0 = os.times()
    t0 = time.perf_counter()
    while left:
        n = min(left, len(chunk))
        conn.sendall(chunk[:n] if n < len(chunk) else chunk)
        left -= n
    # prog reads exactly `size` bytes, then answers (the C version ends the whole connection
    # when the client half-closes, so the end of the upload cannot be signalled that way)
    answer = b""
    while not answer.endswith(b"\n"):
        more = conn.recv(4096)
        if not more:
            break
        answer += more
    elapsed = time.perf_counter() - t0
    cpu1 = os.times()
    conn.close()
    if answer != b"done\n":
        raise RuntimeError(f"upload: prog answered {answer!r}")
    return {"seconds": elapsed, "bytes": size,
            "cpu": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)}


def worker_main(argv: list[str]) -> None:
    port, version, seconds, start_at = int(argv[0]), argv[1], float(argv[2]), float(argv[3])
    while time.time() < start_at:
        time.sleep(0.001)
    result = handshakes(port, version, seconds, 1)
    result.pop("ttfb")
    print(json.dumps(result))


def concurrent(port: int, version: str, seconds: float, clients: int) -> dict:
    start_at = time.time() + 0.5
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", str(port), version,
                               str(seconds), str(start_at)], stdout=subprocess.PIPE)
             for _ in range(clients)]
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=seconds + 120)
        if p.returncode != 0:
            raise RuntimeError("a client worker failed")
        results.append(json.loads(out))
    count = sum(r["count"] for r in results)
    span = max(r["seconds"] for r in results)
    return {"count": count, "seconds": span, "cpu": sum(r["cpu"] for r in results)}


# --------------------------------------------------------------------------- memory

def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                data = Path(f"/proc/{entry}/stat").read_bytes()
            except OSError:
                continue
            fields = data[data.rindex(b")") + 2:].split()
            if int(fields[1]) == pid and fields[0] != b"Z":
                out.append(int(entry))
    return out


def _descendants(pid: int) -> list[int]:
    out = []
    todo = [pid]
    while todo:
        kids = _children(todo.pop())
        out += kids
        todo += kids
    return out


def _rollup(pid: int) -> tuple[int, int, int]:
    """(PSS, RSS, USS) in KiB; USS = private clean + private dirty, what the process alone
    holds (what one more connection costs)."""
    pss = rss = uss = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            pss = int(line.split()[1])
        elif line.startswith("Rss:"):
            rss = int(line.split()[1])
        elif line.startswith(("Private_Clean:", "Private_Dirty:")):
            uss += int(line.split()[1])
    return pss, rss, uss


def idle_memory(server: Server, version: str) -> dict:
    """PSS/RSS (KiB) of the processes serving one idle connection (not counting tcpserver or
    the listener, which serve every connection; those are reported apart)."""
    ctx = client_context(version)
    conn = ctx.wrap_socket(socket.create_connection((HOST, server.port)))
    conn.sendall(LINE)
    conn.recv(4096)
    time.sleep(0.3)
    # The listener's spares (a network process, key process and prog started ahead of a
    # connection, waiting for its socket) belong to the listener's own cost.
    procs, spares = [], []
    for kid in _children(server.proc.pid):
        try:
            serving = os.readlink(f"/proc/{kid}/fd/0").startswith("socket:")
        except OSError:
            continue
        (procs if serving else spares).extend([kid, *_descendants(kid)])
    pss = rss = uss = 0
    for pid in procs:
        p, r, u = _rollup(pid)
        pss += p
        rss += r
        uss += u
    root_pss, root_rss, _ = _rollup(server.proc.pid)
    for pid in spares:
        p, r, _ = _rollup(pid)
        root_pss += p
        root_rss += r
    conn.close()
    return {"processes": len(procs), "pss": pss, "rss": rss, "uss": uss, "root_pss": root_pss,
            "root_rss": root_rss}


# --------------------------------------------------------------------------- the run

def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, int(round(q * (len(values) - 1)))))
    return values[k]


def impls_for(version: str) -> tuple[str, ...]:
    return IMPLS if version == "1.2" else IMPLS[1:]


def run(args: argparse.Namespace) -> dict:
    RESULTS.mkdir(parents=True, exist_ok=True)
    certs = make_certs(RESULTS / "certs")
    log = RESULTS / "servers.log"
    size = args.size << 20
    raw: dict = {}

    def add(key: tuple, value) -> None:
        raw.setdefault("|".join(key), []).append(value)

    certs_wanted = [c for c in CERTS if c in args.certs]
    versions = [v for v in VERSIONS if v in args.versions]
    for rnd in range(args.rounds):
        for cert in certs_wanted:
            for version in versions:
                for impl in impls_for(version):
                    print(f"round {rnd + 1}/{args.rounds}: {cert} TLS {version} {impl}",
                          file=sys.stderr, flush=True)
                    if "hs" in args.only:
                        srv = Server(impl, certs[cert], ["cat"], log)
                        try:
                            handshakes(srv.port, version, 0, 3)       # warm-up
                            add((cert, version, impl, "seq"),
                                handshakes(srv.port, version, args.seconds, args.min_count))
                            add((cert, version, impl, "conc"),
                                concurrent(srv.port, version, args.seconds, args.clients))
                            add((cert, version, impl, "mem"), idle_memory(srv, version))
                            add((cert, version, impl, "nagle"),
                                handshakes(srv.port, version, args.seconds / 3, 10,
                                           nodelay=False))
                        finally:
                            srv.stop()
                    if "bulk" in args.only:
                        srv = Server(impl, certs[cert], ["head", "-c", str(size), "/dev/zero"],
                                     log)
                        try:
                            add((cert, version, impl, "down"),
                                download(srv.port, version, size))
                        finally:
                            srv.stop()
                        srv = Server(impl, certs[cert], ["sh", "-c", f"head -c {size} "
                                                         ">/dev/null && echo done"], log)
                        try:
                            add((cert, version, impl, "up"), upload(srv.port, version, size))
                        finally:
                            srv.stop()
    return raw


def summarize(raw: dict, args: argparse.Namespace) -> dict:
    summary: dict = {}
    for key, runs in raw.items():
        cert, version, impl, what = key.split("|")
        s = summary.setdefault(f"{cert}|{version}|{impl}", {})
        if what == "seq":
            s["hs_seq"] = median([r["count"] / r["seconds"] for r in runs])
            s["client_cpu_ms"] = median([1000 * r["cpu"] / r["count"] for r in runs])
            all_ttfb = [t for r in runs for t in r["ttfb"]]
            s["ttfb_p50_ms"] = 1000 * percentile(all_ttfb, 0.50)
            s["ttfb_p99_ms"] = 1000 * percentile(all_ttfb, 0.99)
            s["cipher"] = runs[0]["cipher"]
        elif what == "nagle":
            all_ttfb = [t for r in runs for t in r["ttfb"]]
            s["ttfb_nagle_p50_ms"] = 1000 * percentile(all_ttfb, 0.50)
        elif what == "conc":
            s["hs_conc"] = median([r["count"] / r["seconds"] for r in runs])
            s["client_cpu_conc_ms"] = median([1000 * r["cpu"] / r["count"] for r in runs])
        elif what in ("down", "up"):
            s[f"{what}_MBps"] = median([r["bytes"] / r["seconds"] / 1e6 for r in runs])
            s[f"{what}_client_cpu"] = median([r["cpu"] / r["seconds"] for r in runs])
        elif what == "mem":
            s["pss_kib"] = median([r["pss"] for r in runs])
            s["rss_kib"] = median([r["rss"] for r in runs])
            s["uss_kib"] = median([r["uss"] for r in runs])
            s["procs"] = runs[0]["processes"]
            s["root_pss_kib"] = median([r["root_pss"] for r in runs])
    return summary


ROWS = (  # (key, label, format, higher is better)
    ("hs_seq", "handshakes/s, sequential", "{:.0f}", True),
    ("hs_conc", "handshakes/s, 4 clients", "{:.0f}", True),
    ("down_MBps", "download MB/s", "{:.0f}", True),
    ("up_MBps", "upload MB/s", "{:.0f}", True),
    ("ttfb_p50_ms", "time to first byte p50, ms", "{:.2f}", False),
    ("ttfb_p99_ms", "time to first byte p99, ms", "{:.2f}", False),
    ("ttfb_nagle_p50_ms", "time to first byte p50, client with Nagle on (no TCP_NODELAY), ms",
     "{:.2f}", False),
    ("pss_kib", "PSS of one idle connection, KiB", "{:.0f}", False),
    ("rss_kib", "RSS of one idle connection, KiB", "{:.0f}", False),
    ("uss_kib", "USS (private memory) of one idle connection, KiB", "{:.0f}", False),
    ("root_pss_kib", "PSS of tcpserver / the listener itself (and its spares), KiB", "{:.0f}",
     False),
    ("client_cpu_ms", "client CPU per handshake, ms", "{:.2f}", False),
)


def table(summary: dict, args: argparse.Namespace) -> str:
    lines = []
    for cert in CERTS:
        for version in VERSIONS:
            cells = {impl: summary.get(f"{cert}|{version}|{impl}") for impl in IMPLS}
            if not any(cells.values()):
                continue
            c = cells["c"]
            cipher = next((v["cipher"][0] for v in cells.values() if v and v.get("cipher")),
                          "?")
            lines.append(f"\n**{'ECDSA P-256' if cert == 'ecdsa' else 'RSA 2048'}, TLS "
                         f"{version}** ({cipher})\n")
            lines.append(f"| | {LABEL['c']} | {LABEL['tcpserver']} | {LABEL['listener']} |")
            lines.append("|---|---:|---:|---:|")
            for key, label, fmt, _ in ROWS:
                row = [label]
                for impl in IMPLS:
                    v = cells[impl].get(key) if cells[impl] else None
                    if v is None:
                        row.append("n/a" if impl == "c" and version == "1.3" else "")
                        continue
                    text = fmt.format(v)
                    if impl != "c" and c and c.get(key):
                        text += f" ({v / c[key]:.2f}x)"
                    row.append(text)
                lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def machine() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}, "
            f"Python {platform.python_version()}, {ssl.OPENSSL_VERSION}")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=256, help="bulk transfer size in MiB (256)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds, servers alternating (3)")
    ap.add_argument("--seconds", type=float, default=3.0,
                    help="seconds per handshake figure and round (3)")
    ap.add_argument("--min-count", type=int, default=100,
                    help="at least this many sequential handshakes per round, for p99 (100)")
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients (4)")
    ap.add_argument("--certs", nargs="+", default=list(CERTS), choices=CERTS)
    ap.add_argument("--versions", nargs="+", default=list(VERSIONS), choices=VERSIONS)
    ap.add_argument("--only", nargs="+", default=["hs", "bulk"], choices=["hs", "bulk"])
    ap.add_argument("--quick", action="store_true",
                    help="16 MiB bulk, 1 round, 1 s per figure, 30 handshakes minimum")
    args = ap.parse_args()
    if args.quick:
        args.size, args.rounds, args.seconds, args.min_count = 16, 1, 1.0, 30
    if os.geteuid() != 0:
        print("bench: needs root (the jail)", file=sys.stderr)
        return 1
    for tool in ("tcpserver", C_TLSWRAPPER, "head", "wc", "cat"):
        if not shutil.which(tool):
            print(f"bench: {tool} not found (apt-get install ucspi-tcp tlswrapper)",
                  file=sys.stderr)
            return 1
    # SIGTERM unwinds like Ctrl-C, so that the servers started so far are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    started = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    command = "python bench/run.py " + " ".join(sys.argv[1:])
    raw = run(args)
    summary = summarize(raw, args)
    md = (f"Command: `{command.strip()}` ({args.rounds} rounds, {args.seconds:g} s per "
          f"handshake figure, bulk {args.size} MiB; medians over rounds; ratios vs the C "
          f"version)\n\nMachine: {machine()}\n" + table(summary, args) + "\n")
    (RESULTS / f"{started}.json").write_text(json.dumps(
        {"command": command, "machine": machine(), "summary": summary, "raw": raw},
        indent=1, default=str))
    (RESULTS / f"{started}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
