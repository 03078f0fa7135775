"""Figures for one connection through tcpserver, ours beside Debian's C tlswrapper, same run:

- the RSS (VmRSS, /proc/PID/status) of each of the three processes of one idle connection
  (network process, key process, prog = /bin/cat), after a handshake and one echo;
- one handshake's wall time as a client sees it: TCP connect to handshake complete, which
  includes tcpserver's fork, tlswrapper's start (interpreter and imports for ours), both
  forks and the key operations. Median and minimum of N runs, Python ssl client.

Run as root (the jail needs it):
    .venv/bin/python bench/e2e_figures.py [-n 20] [--cert ecdsa-p256]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "support"))

import e2e  # noqa: E402
from certs import PKI  # noqa: E402

OURS = str(Path(sys.executable).parent / "tlswrapper")
DEBIAN = "/usr/bin/tlswrapper"


def measure(command: str, pki: PKI, cert: str, version: str, runs: int) -> dict:
    with e2e.TcpServer([command, "-f", pki[cert].path, "--", "/bin/cat"]) as srv:
        ctx = e2e.client_context(pki.ca_pem, version)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            sock = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
            tls = ctx.wrap_socket(sock, server_hostname="localhost")
            times.append(time.perf_counter() - start)
            tls.close()
            srv.wait_idle()
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", srv.port), timeout=30),
                             server_hostname="localhost") as tls:
            tls.sendall(b"x")
            tls.recv(1)
            procs = srv.connection()
            time.sleep(0.2)
            rss = {"network": e2e.rss_kib(procs.network), "key": e2e.rss_kib(procs.key),
                   "prog": e2e.rss_kib(procs.prog)}
            vm = {"network": e2e.status_fields(procs.network)["VmSize"],
                  "key": e2e.status_fields(procs.key)["VmSize"]}
    return {"times": times, "rss": rss, "vm": vm}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=20, help="handshakes per configuration")
    ap.add_argument("--cert", default="ecdsa-p256")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="e2e-figures-") as tmp:
        pki = PKI.create(Path(tmp) / "pki")
        rows = [("ours", OURS, "tls13"), ("ours", OURS, "tls12"), ("debian", DEBIAN, "tls12")]
        print(f"cert {args.cert}, {args.n} handshakes each, prog /bin/cat, via tcpserver")
        print(f"{'impl':8} {'tls':6} {'net RSS':>9} {'key RSS':>9} {'prog RSS':>9}"
              f" {'hs median':>10} {'hs min':>8}")
        for impl, cmd, version in rows:
            if not Path(cmd).exists():
                print(f"{impl:8} {version:6} (not installed: {cmd})")
                continue
            r = measure(cmd, pki, args.cert, version, args.n)
            med = statistics.median(r["times"]) * 1000
            low = min(r["times"]) * 1000
            print(f"{impl:8} {version:6} {r['rss']['network']:>6} KiB {r['rss']['key']:>5} KiB"
                  f" {r['rss']['prog']:>5} KiB {med:>7.1f} ms {low:>5.1f} ms"
                  f"   (VmSize net {r['vm']['network']}, key {r['vm']['key']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
