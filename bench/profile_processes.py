"""Where a listener connection's CPU time and page faults go, by process and memory region.

    .venv/bin/python bench/profile_processes.py [--count N] [--version 1.2|1.3]
                                                [--cert ecdsa|rsa] [--top K]

Starts tlswrapper-listen as bench/run.py does (prog: cat), makes N sequential connections
while `perf record -a` samples every CPU (cpu-clock) and records each process creation and
each user-space page fault (exceptions:page_fault_user: address, write or read). Every sample
is then given to its process's role: the listener; a network process (a spare: the
listener's child); its key process (the spare's Python child); prog's waiting shell (sh) and
prog (cat). Per connection, it prints:
  - CPU by role, user and kernel (perf's sampling inflates the absolute figures: compare the
    shares, and take bench/cpu_per_connection.py for the absolute ones);
  - page faults by role, write or read, and by the listener's memory region that holds the
    address: pymalloc's arenas ([anon]), malloc's heap, libpython's data, a library's code
    (read faults: fork does not copy page tables of file mappings, the child maps them again);
  - the hottest symbols of each role.
A write fault on a page the listener already had is a copy-on-write copy. Needs root and perf
(Debian: linux-perf).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
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

FREQUENCY = 10000      # cpu-clock samples per second and CPU
FORK = re.compile(r"sched:sched_process_fork:.* pid=(\d+) .*child_pid=(\d+)")
FAULT = re.compile(r"exceptions:page_fault_user:.*address=(0x[0-9a-f]+).*error_code=(0x[0-9a-f]+)")
SAMPLE = re.compile(r"cpu-clock\S*:\s+[0-9a-f]+\s+(\S+)\s+\((\S+)\)")
ROLES = ("listener", "network", "key", "sh", "cat")


def regions(pid: int) -> list[tuple[int, int, str]]:
    """The listener's mappings: (start, end, short name with permissions)."""
    out = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split()
        start, end = (int(x, 16) for x in parts[0].split("-"))
        name = os.path.basename(parts[5]) if len(parts) > 5 else "[anon]"
        out.append((start, end, f"{name} {parts[1]}"))
    return out


def region_of(address: int, maps: list[tuple[int, int, str]]) -> str:
    for start, end, name in maps:
        if start <= address < end:
            return name
    return "mapped after the fork"


def record(args: argparse.Namespace, tmp: Path) -> tuple[str, int, list, int]:
    pem = bench.make_certs(tmp)[args.cert]
    server = bench.Server("listener", pem, ["cat"], tmp / "log")
    try:
        bench.handshakes(server.port, args.version, 0.2, 10)     # warm, spares made
        time.sleep(0.5)
        maps = regions(server.proc.pid)
        data = tmp / "perf.data"
        # -c 1: every fork and fault is recorded; the clock samples at FREQUENCY.
        perf = subprocess.Popen(["perf", "record", "-q", "-a", "-m", "8192", "-c", "1",
                                 "-o", str(data), "-e", f"cpu-clock/freq={FREQUENCY}/",
                                 "-e", "sched:sched_process_fork",
                                 "-e", "exceptions:page_fault_user"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
        count = bench.handshakes(server.port, args.version, 0.0, args.count)["count"]
        time.sleep(1)       # the last connection's processes exit
        perf.send_signal(signal.SIGINT)
        perf.wait()
    finally:
        server.stop()
    script = subprocess.run(["perf", "script", "-i", str(data),
                             "-F", "comm,pid,period,event,trace,ip,sym,dso"],
                            capture_output=True, text=True, check=True).stdout
    return script, server.proc.pid, maps, count


def analyse(script: str, listener: int, maps: list, count: int, top: int) -> None:
    parent: dict[int, int] = {}
    lines = script.splitlines()
    for line in lines:
        m = FORK.search(line)
        if m:
            parent[int(m.group(2))] = int(m.group(1))

    def role(comm: str, pid: int) -> str | None:
        if pid == listener:
            return "listener"
        if comm in ("sh", "cat"):
            return comm
        up = parent.get(pid)
        if up == listener:
            return "network"
        if up is not None and parent.get(up) == listener:
            return "key"
        return None

    cpu: collections.Counter = collections.Counter()
    faults: collections.Counter = collections.Counter()
    symbols: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in lines:
        fields = line.split(None, 3)       # comm, pid, period (ns for the clock), the rest
        if len(fields) < 4 or not fields[1].isdigit() or not fields[2].isdigit():
            continue
        r = role(fields[0], int(fields[1]))
        if r is None:
            continue
        m = SAMPLE.search(line)
        if m:
            kernel = m.group(2) == "[kernel.kallsyms]"
            cpu[(r, "kernel" if kernel else "user")] += int(fields[2])
            symbols[r][m.group(1)] += int(fields[2])
            continue
        m = FAULT.search(line)
        if m:
            write = int(m.group(2), 16) & 2
            faults[(r, "write" if write else "read", region_of(int(m.group(1), 16), maps))] += 1

    ms = 1e-6 / count        # ns of samples -> ms per connection
    print(f"\nCPU per connection by process (perf-sampled, {count} connections; shares matter)")
    total = sum(cpu.values()) * ms or 1.0
    for r in ROLES:
        user, kernel = cpu[(r, "user")] * ms, cpu[(r, "kernel")] * ms
        print(f"  {r:9} user {user:6.2f} ms  kernel {kernel:6.2f} ms  "
              f"({(user + kernel) / total:5.1%})")
    print(f"  {'all':9} {total:.2f} ms")
    print("\nPage faults per connection by process, kind and region of the listener's memory")
    for r in ROLES:
        rows = sorted(((n, k) for k, n in faults.items() if k[0] == r), reverse=True)
        if not rows:
            continue
        print(f"  {r}: {sum(n for n, _ in rows) / count:.0f}")
        for n, (_, kind, region) in rows[:8]:
            print(f"    {n / count:7.1f}  {kind:5}  {region}")
    print(f"\nHottest symbols per process (ms per connection, perf-sampled), top {top}")
    for r in ROLES:
        if symbols[r]:
            hot = ", ".join(f"{s} {n * ms:.2f}" for s, n in symbols[r].most_common(top))
            print(f"  {r}: {hot}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--version", default="1.3", choices=("1.2", "1.3"))
    ap.add_argument("--cert", default="ecdsa", choices=bench.CERTS)
    ap.add_argument("--top", type=int, default=8)
    args = ap.parse_args()
    if os.geteuid() != 0 or shutil.which("perf") is None:
        print("profile_processes: needs root and perf (Debian: apt-get install linux-perf)",
              file=sys.stderr)
        return 100
    with tempfile.TemporaryDirectory() as tmp:
        script, listener, maps, count = record(args, Path(tmp))
    print(f"tlswrapper-listen, TLS {args.version}, {args.cert}, prog cat: "
          f"perf record -a over {count} sequential connections")
    analyse(script, listener, maps, count, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
