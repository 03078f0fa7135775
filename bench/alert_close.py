"""Measurement: how soon the connection ends after a fatal alert. tlswrapper under tcpserver;
a client sends a line that is not TLS (HTTP) right after connecting (SETTLE=0: while the key
process is still starting) or once the processes are up, and times the alert's arrival to
EOF, and to the network process's exit.

    .venv/bin/python bench/alert_close.py [-n 20] [--settle 0] [--src OTHER/src]

--src runs another checkout's code (PYTHONPATH) with this venv, for a before/after figure.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "support"))
sys.path.insert(0, str(HERE))

import e2e  # noqa: E402  (tests/support/e2e.py: tcpserver and /proc helpers)
import run as bench  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=20)
    parser.add_argument("--settle", type=float, default=0.0)
    parser.add_argument("--src", default=str(HERE.parent / "src"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pem = bench.make_certs(Path(tmp))["ecdsa"]
        env = dict(bench.server_env(), PYTHONPATH=args.src)
        argv = [sys.executable, "-c", "from tlswrapper.commands.cli import main; main()",
                "-f", str(pem), "--", "cat"]
        srv = e2e.TcpServer(argv, env=env).start()
        to_eof, to_exit = [], []
        try:
            for _ in range(args.n):
                with socket.create_connection((bench.HOST, srv.port), timeout=10) as s:
                    time.sleep(args.settle)
                    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                    first = s.recv(64)
                    t1 = time.monotonic()
                    while s.recv(64):
                        pass
                    to_eof.append((time.monotonic() - t1) * 1000)
                    if first[:1] != b"\x15":
                        raise RuntimeError(f"no alert: {first!r}")
                while srv.connections():
                    time.sleep(0.001)
                to_exit.append((time.monotonic() - t1) * 1000)
        finally:
            srv.close()
    print(f"{args.src} (settle {args.settle} s, n={args.n}): alert -> EOF ms median "
          f"{statistics.median(to_eof):.1f} max {max(to_eof):.1f}; alert -> network process "
          f"gone ms median {statistics.median(to_exit):.1f} max {max(to_exit):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
