"""Benchmark: slot exhaustion. tlswrapper-listen with its defaults faces 1000 clients that
connect and send nothing and 200 that send one byte every 5 s (each reconnects when the
listener closes it, so that 1200 stay pending); a legitimate client's handshake time is
measured unloaded and under that load, and the listener's memory with the 1200 pending.

    .venv/bin/python bench/slot_exhaustion.py                 # needs root (the jail)
    .venv/bin/python bench/slot_exhaustion.py --rounds 5 --seconds 20
    .venv/bin/python bench/slot_exhaustion.py -- -w 3600     # listener options: no churn

Targets (issue 12): handshake p99 under load within 2x of unloaded; the listener's memory
under 64 MB with the 1200 pending. Unloaded and loaded phases alternate (--rounds), so that
the machine's other load weighs on both alike. The attackers run in a child process (selectors, one
thread), which raises its own soft RLIMIT_NOFILE to the hard limit for its 1200 sockets; the
listener raises its own for its pool (listen.raise_nofile). Results: bench/results/
slot_exhaustion.json (gitignored); a markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import selectors
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as bench  # noqa: E402  (bench/run.py: certificates, client, percentiles)

SILENT = 1000
SLOW = 200
SLOW_EVERY = 5.0


def attacker_main(port: int) -> None:
    """Keep SILENT silent and SLOW slow connections open; print the open count each second."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # On one machine the attackers' own CPU competes with the server's; a real attacker's is
    # elsewhere: nice +10 keeps them from taking the cores the measured client needs.
    os.nice(10)
    sel = selectors.DefaultSelector()
    next_byte: dict[socket.socket, float] = {}

    def open_one(slow: bool) -> None:
        try:
            s = socket.create_connection((bench.HOST, port), timeout=5)
        except OSError:
            return
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, slow)
        if slow:
            next_byte[s] = time.monotonic() + SLOW_EVERY

    def close_one(s: socket.socket) -> bool:
        slow = sel.get_key(s).data
        sel.unregister(s)
        next_byte.pop(s, None)
        s.close()
        return slow

    for i in range(SILENT + SLOW):
        open_one(i >= SILENT)
    last_report = 0.0
    while True:
        now = time.monotonic()
        for s, when in list(next_byte.items()):
            if when <= now:
                try:
                    s.send(b"\x16")
                    next_byte[s] = now + SLOW_EVERY
                except OSError:
                    open_one(close_one(s))
        for key, _ in sel.select(0.2):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                open_one(close_one(s))       # closed by the listener: back in the queue
        if now - last_report >= 1.0:
            last_report = now
            print(f"open {len(sel.get_map())}", flush=True)


def handshake_times(port: int, count: int, seconds: float = 0.0,
                    sample=None) -> list[float]:
    """`count` handshakes one after the other, for at least `seconds`; `sample()` is called
    about once a second."""
    ctx = bench.client_context("1.3")
    out = []
    start = last = time.monotonic()
    while len(out) < count or time.monotonic() - start < seconds:
        t0 = time.perf_counter()
        with socket.create_connection((bench.HOST, port), timeout=60) as raw:
            with ctx.wrap_socket(raw):
                out.append((time.perf_counter() - t0) * 1000)
        if sample is not None and time.monotonic() - last >= 1.0:
            last = time.monotonic()
            sample()
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (not its children)."""
    data = Path(f"/proc/{pid}/stat").read_text()
    fields = data[data.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def listener_memory(pid: int) -> dict:
    pss, rss, uss = bench._rollup(pid)
    return {"pss_kib": pss, "rss_kib": rss, "uss_kib": uss,
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def summary(times: list[float]) -> dict:
    return {"count": len(times), "p50_ms": bench.percentile(times, 0.5),
            "p99_ms": bench.percentile(times, 0.99), "max_ms": max(times)}


def start_attacker(port: int) -> subprocess.Popen:
    """The attackers' process, once its SILENT + SLOW connections are open."""
    attacker = subprocess.Popen([sys.executable, __file__, "--attacker", str(port)],
                                stdout=subprocess.PIPE, text=True)
    while True:
        line = attacker.stdout.readline()
        if not line:
            raise RuntimeError("the attacker died")
        if int(line.split()[1]) >= SILENT + SLOW:
            return attacker


def stop_attacker(attacker: subprocess.Popen, listener_pid: int) -> None:
    attacker.kill()
    attacker.wait()
    attacker.stdout.close()
    deadline = time.monotonic() + 30     # until the listener has dropped the closed ones
    while listener_memory(listener_pid)["fds"] > 64 and time.monotonic() < deadline:
        time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3,
                        help="unloaded and loaded phases, alternated (the machine's other "
                             "load then weighs on both alike)")
    parser.add_argument("--seconds", type=float, default=15.0,
                        help="length of each phase (the default -w 10 closes the pending "
                             "clients, which reconnect: a loaded phase covers that churn)")
    parser.add_argument("--attacker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("listener_args", nargs="*",
                        help="listener options before host and port (default: none)")
    args = parser.parse_args()
    if args.attacker:
        attacker_main(args.attacker)
        return 0
    bench.RESULTS.mkdir(parents=True, exist_ok=True)
    pem = bench.make_certs(bench.RESULTS / "certs")["ecdsa"]
    port = bench.free_port()
    log = open(bench.RESULTS / "slot_exhaustion.log", "ab")
    cmd = [str(bench.VENV_BIN / "tlswrapper-listen"), *args.listener_args, bench.HOST,
           str(port), "-f", str(pem), "--", "cat"]
    listener = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=log,
                                env=bench.server_env())
    attacker = None
    unloaded: list[float] = []
    loaded: list[float] = []
    loaded_memory: list[dict] = []
    listener_cpu = attack_seconds = 0.0
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((bench.HOST, port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or listener.poll() is not None:
                    raise RuntimeError("the listener did not start") from None
                time.sleep(0.05)
        handshake_times(port, 20)                        # warm-up
        idle = listener_memory(listener.pid)
        for _ in range(args.rounds):
            unloaded += handshake_times(port, 1, args.seconds)
            attacker = start_attacker(port)
            loaded_memory.append(listener_memory(listener.pid))
            started = time.monotonic()
            cpu_before = cpu_seconds(listener.pid)
            loaded += handshake_times(
                port, 1, args.seconds,
                lambda: loaded_memory.append(listener_memory(listener.pid)))
            attack_seconds += time.monotonic() - started
            listener_cpu += cpu_seconds(listener.pid) - cpu_before
            stop_attacker(attacker, listener.pid)
            attacker = None
    finally:
        if attacker is not None:
            attacker.kill()
            attacker.wait()
        listener.terminate()
        try:
            listener.wait(30)
        except subprocess.TimeoutExpired:
            listener.kill()
            listener.wait()
        log.close()
    result = {
        "command": " ".join(cmd), "rounds": args.rounds, "seconds": args.seconds,
        "unloaded": summary(unloaded), "loaded": summary(loaded),
        "p99_ratio": bench.percentile(loaded, 0.99) / bench.percentile(unloaded, 0.99),
        "listener_idle": idle, "listener_loaded_samples": loaded_memory,
        "loaded_seconds": attack_seconds, "listener_cpu_seconds": listener_cpu,
        "load_average": os.getloadavg(), "machine": bench.machine(),
    }
    (bench.RESULTS / "slot_exhaustion.json").write_text(json.dumps(result, indent=2))
    worst = max(loaded_memory, key=lambda m: m["rss_kib"])
    fewest = min(m["fds"] for m in loaded_memory)
    print(f"| handshake (TLS 1.3, ECDSA), {args.rounds} x {args.seconds:.0f} s each | n | "
          f"p50 ms | p99 ms |\n|---|---:|---:|---:|\n"
          f"| unloaded | {len(unloaded)} | {result['unloaded']['p50_ms']:.1f} | "
          f"{result['unloaded']['p99_ms']:.1f} |\n"
          f"| {SILENT} silent + {SLOW} slow pending | {len(loaded)} | "
          f"{result['loaded']['p50_ms']:.1f} | {result['loaded']['p99_ms']:.1f} |\n\n"
          f"p99 ratio loaded/unloaded: {result['p99_ratio']:.2f}; the listener under load: "
          f"RSS at most {worst['rss_kib'] / 1024:.1f} MiB (PSS {worst['pss_kib'] / 1024:.1f} "
          f"MiB), descriptors {fewest}..{max(m['fds'] for m in loaded_memory)}, median "
          f"{bench.median([m['fds'] for m in loaded_memory]):.0f} (idle: RSS "
          f"{idle['rss_kib'] / 1024:.1f} MiB, {idle['fds']} descriptors), "
          f"{100 * listener_cpu / attack_seconds:.1f}% of a core; load average "
          f"{os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
