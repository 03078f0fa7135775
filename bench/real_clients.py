"""Latency with real client programs (curl, openssl s_client, gnutls-cli) against Debian's C
tlswrapper under tcpserver, ours under tcpserver and ours as tlswrapper-listen, on 127.0.0.1,
started as bench/run.py starts them. Run by hand (root, for the jail), never by the tests:

    .venv/bin/python bench/real_clients.py            # 30 connections per cell
    .venv/bin/python bench/real_clients.py -n 100 --clients curl --versions 1.3

bench/run.py's client is Python's ssl with TCP_NODELAY, which hid the TLS 1.3 delayed-ACK
stall of clients that leave Nagle's algorithm on (fixed by 1c563da). Here each connection is
one client process, alternating between the servers one by one after a short idle gap:
  curl (TCP_NODELAY; prog reads the HTTP request head, answers one response): its own
      handshake time (appconnect - connect), time to first byte (starttransfer) and total;
  s_client (TCP_NODELAY) and gnutls-cli (Nagle on): from the start of the process to the
      echo of one line by `cat` (process start included, the same for every server);
  gnutls-cli-split: after the handshake, a request written in two pieces 2 ms apart, until
      prog (`read a; read b; echo ok`) answers: a client with Nagle on holds the second
      piece until the server acknowledges the first, so this shows a server whose kernel
      delays that ACK (the delayed-ACK timer, 40 ms).
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run as bench  # noqa: E402

TIMEOUT = 10.0
# prog for curl: read the request head (dash's read takes a byte per read(2); no fork), answer
HTTP_PROG = ["sh", "-c", "while IFS= read -r l; do case $l in ''|?) break;; esac; done; "
             "printf 'HTTP/1.0 200 OK\\r\\nContent-Length: 3\\r\\nConnection: close\\r\\n"
             "\\r\\nok\\n'"]
ECHO_PROG = ["cat"]
SPLIT_PROG = ["sh", "-c", "read a; read b; echo ok"]    # answers once both writes are in
CLIENTS = ("curl", "s_client", "gnutls-cli", "gnutls-cli-split")
TOOLS = {"curl": "curl", "s_client": "openssl", "gnutls-cli": "gnutls-cli",
         "gnutls-cli-split": "gnutls-cli"}


class Failed(Exception):
    pass


def curl(port: int, version: str) -> dict:
    vers = ["--tlsv1.2", "--tls-max", "1.2"] if version == "1.2" else ["--tlsv1.3"]
    cmd = ["curl", "-k", "-s", "-S", "-o", "/dev/null", "--max-time", str(TIMEOUT), *vers,
           "-w", "%{time_connect} %{time_appconnect} %{time_starttransfer} %{time_total} "
           "%{http_code}", f"https://{bench.HOST}:{port}/"]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT + 5)
    except subprocess.TimeoutExpired:
        raise Failed("curl timed out") from None
    fields = p.stdout.split()
    if p.returncode != 0 or len(fields) != 5 or fields[4] != "200":
        raise Failed(f"curl exit {p.returncode}: {p.stdout.strip()} {p.stderr.strip()}")
    connect, app, start, total = (float(f) for f in fields[:4])
    return {"handshake": app - connect, "ttfb": start, "total": total}


def read_until(p: subprocess.Popen, token: bytes, deadline: float, out: bytes = b"") -> bytes:
    """Read p's stdout until a line equal to token; a clear Failed on timeout or exit."""
    while b"\n" + token + b"\n" not in b"\n" + out:
        left = deadline - time.perf_counter()
        if left <= 0:
            raise Failed(f"{p.args[0]}: no {token!r} within {TIMEOUT:g} s; "
                         f"stdout {out[-200:]!r}")
        if select.select([p.stdout], [], [], left)[0]:
            more = os.read(p.stdout.fileno(), 65536)
            if not more:
                err = p.stderr.read(2000) if p.poll() is not None else b""
                raise Failed(f"{p.args[0]}: exited ({p.poll()}) before {token!r}; "
                             f"stdout {out[-200:]!r} stderr {err[-300:]!r}")
            out += more
    return out


def echo_client(cmd: list[str], split: bool = False) -> dict:
    """Start cmd, write to its stdin (kept open: neither client may half-close or quit first)
    and time until the answer line comes back on its stdout, then kill it. Default: one line,
    timed from the start of the process. split: once the client has printed that the
    handshake is done, "a\n" and 2 ms later "b\n" (two records, two TCP segments: a
    request written in two pieces), timed from the first write to prog's "ok"."""
    t0 = time.perf_counter()
    deadline = t0 + TIMEOUT
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        if not split:
            p.stdin.write(b"ping\n")
            p.stdin.flush()
            read_until(p, b"ping", deadline)
            return {"echo": time.perf_counter() - t0}
        out = read_until(p, b"- Handshake was completed", deadline)
        t0 = time.perf_counter()
        p.stdin.write(b"a\n")
        p.stdin.flush()
        time.sleep(0.002)
        p.stdin.write(b"b\n")
        p.stdin.flush()
        read_until(p, b"ok", deadline, out)
        return {"split": time.perf_counter() - t0}
    finally:
        p.kill()
        try:
            p.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def s_client(port: int, version: str) -> dict:
    return echo_client(["openssl", "s_client", "-connect", f"{bench.HOST}:{port}", "-quiet",
                        "-tls1_2" if version == "1.2" else "-tls1_3"])


def gnutls_cli(port: int, version: str, split: bool = False) -> dict:
    # without --logfile its messages (such as "- Handshake was completed") go to stdout
    return echo_client(["gnutls-cli", "--insecure", "-p", str(port), "--priority",
                        "NORMAL:-VERS-ALL:+VERS-TLS" + version, bench.HOST], split)


def gnutls_split(port: int, version: str) -> dict:
    return gnutls_cli(port, version, split=True)


RUNNERS = {"curl": (curl, HTTP_PROG), "s_client": (s_client, ECHO_PROG),
           "gnutls-cli": (gnutls_cli, ECHO_PROG), "gnutls-cli-split": (gnutls_split, SPLIT_PROG)}
MEASURES = {"curl": (("handshake", "handshake (appconnect - connect)"),
                     ("ttfb", "time to first byte (starttransfer)"),
                     ("total", "total (time_total)")),
            "s_client": (("echo", "process start to echoed line"),),
            "gnutls-cli": (("echo", "process start to echoed line"),),
            "gnutls-cli-split": (("split", "request in 2 writes 2 ms apart, to answer"),)}


def measure(args: argparse.Namespace, certs: dict, log: Path) -> dict:
    """{client: {version: {impl: {measure: [seconds...]}}}}"""
    results: dict = {}
    progs = {id(RUNNERS[c][1]): RUNNERS[c][1] for c in args.clients}
    servers: dict = {}
    try:
        for impl in bench.IMPLS:
            for key, prog in progs.items():
                servers[impl, key] = bench.Server(impl, certs[args.cert], prog, log)
        for client in args.clients:
            fn, prog = RUNNERS[client]
            for version in args.versions:
                impls = bench.impls_for(version)
                cell = results.setdefault(client, {}).setdefault(version, {})
                print(f"{client} TLS {version}: {args.n} connections x {', '.join(impls)}",
                      file=sys.stderr, flush=True)
                for i in range(args.warmup + args.n):
                    for impl in impls:
                        time.sleep(args.gap)
                        r = fn(servers[impl, id(prog)].port, version)
                        if i >= args.warmup:
                            for k, v in r.items():
                                cell.setdefault(impl, {}).setdefault(k, []).append(v)
    finally:
        for srv in servers.values():
            srv.stop()
    return results


def fmt_cell(values: list[float], c_values: list[float] | None, q: float) -> str:
    v = 1000 * bench.percentile(values, q)
    text = f"{v:.2f}"
    if c_values:
        text += f" ({v / (1000 * bench.percentile(c_values, q)):.2f}x)"
    return text


def tables(results: dict) -> str:
    out = []
    for client, by_version in results.items():
        out.append(f"\n**{client}** (ms; ratio to C)\n")
        out.append(f"| | {bench.LABEL['c']} | {bench.LABEL['tcpserver']} | "
                   f"{bench.LABEL['listener']} |")
        out.append("|---|---:|---:|---:|")
        for version, cell in by_version.items():
            for key, label in MEASURES[client]:
                for q, qname in ((0.5, "p50"), (0.9, "p90"), (1.0, "max")):
                    row = [f"TLS {version} {label} {qname}"]
                    c_values = cell.get("c", {}).get(key)
                    for impl in bench.IMPLS:
                        values = cell.get(impl, {}).get(key)
                        row.append("n/a" if not values else
                                   fmt_cell(values, None if impl == "c" else c_values, q))
                    out.append("| " + " | ".join(row) + " |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=30, help="connections per server and cell (30)")
    ap.add_argument("--warmup", type=int, default=3, help="unmeasured connections first (3)")
    ap.add_argument("--gap", type=float, default=0.05,
                    help="idle seconds before each connection (0.05)")
    ap.add_argument("--clients", nargs="+", default=list(CLIENTS), choices=CLIENTS)
    ap.add_argument("--versions", nargs="+", default=list(bench.VERSIONS),
                    choices=bench.VERSIONS)
    ap.add_argument("--cert", default="ecdsa", choices=bench.CERTS)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("real_clients: needs root (the jail)", file=sys.stderr)
        return 1
    needed = ["tcpserver", bench.C_TLSWRAPPER, "sh", "cat", str(bench.VENV_BIN / "tlswrapper"),
              str(bench.VENV_BIN / "tlswrapper-listen")] + [TOOLS[c] for c in args.clients]
    for tool in needed:
        if not shutil.which(tool):
            print(f"real_clients: {tool} not found (apt-get install ucspi-tcp tlswrapper curl "
                  f"openssl gnutls-bin; the venv: make demo)", file=sys.stderr)
            return 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    bench.RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        certs = bench.make_certs(Path(tmp))
        try:
            results = measure(args, certs, bench.RESULTS / "real_clients.log")
        except Failed as e:
            print(f"real_clients: {e}", file=sys.stderr)
            return 1
    command = "python bench/real_clients.py " + " ".join(sys.argv[1:])
    print(f"Command: `{command.strip()}` ({args.cert}, {args.n} connections per cell, "
          f"servers alternating; percentiles over connections)\n\nMachine: {bench.machine()}"
          f"\n{tables(results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
