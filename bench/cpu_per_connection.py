"""Server CPU per connection (user + system, all processes), the figure behind the handshake rate.

    .venv/bin/python bench/cpu_per_connection.py [--count N] [--version 1.2|1.3] [--cert ecdsa|rsa]
                                                [--impls c tcpserver listener]

Starts each server as bench/run.py does, makes N sequential handshakes (one line echoed by cat),
and reads the server's own CPU plus that of its reaped descendants (/proc/PID/stat utime, stime,
cutime, cstime) before and after: tcpserver and the listener reap every connection's process,
which reaps prog and the key process, so the difference is everything the server side spent.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as bench  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / TICK


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--version", default="1.3")
    ap.add_argument("--cert", default="ecdsa")
    ap.add_argument("--impls", nargs="+", default=list(bench.IMPLS))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pem = bench.make_certs(Path(tmp))[args.cert]
        for impl in args.impls:
            version = "1.2" if impl == "c" else args.version
            server = bench.Server(impl, pem, ["cat"], Path(tmp) / "log")
            try:
                bench.handshakes(server.port, version, 0.2, 10)
                time.sleep(0.5)
                before = cpu(server.proc.pid)
                client0 = os.times()
                t0 = time.monotonic()
                result = bench.handshakes(server.port, version, 0.0, args.count)
                wall = time.monotonic() - t0
                time.sleep(0.5)
                used = cpu(server.proc.pid) - before
                client1 = os.times()
                n = result["count"]
                client = (client1.user + client1.system - client0.user - client0.system) / n
                print(f"{impl:10} TLS {version}: server CPU {used / n * 1000:6.2f} ms/conn, "
                      f"client CPU {client * 1000:5.2f} ms/conn, wall {wall / n * 1000:6.2f} "
                      f"ms/conn ({n} conns)")
            finally:
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
