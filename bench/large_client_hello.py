"""What a large but valid ClientHello costs the engine (issue 12): the peak of Python
allocations (tracemalloc) while it parses the hello and answers with its flight, what it
holds at the end of it, and the time of that work (best of 3, without tracemalloc; it
includes the flight's key exchange and ECDSA signature, about 1 ms). No pass/fail: it prints
the figures (tests/test_hostile_hello.py::test_large_client_hello_memory_is_bounded holds
the bound).

    .venv/bin/python bench/large_client_hello.py

Kinds (tests/test_hostile_hello.py::_large_client): 16 k empty extensions, a 64 KiB padding
extension, 32 k signature schemes, 32 k cipher suites, 20 k groups with 4 k key shares, and
"everything" (32 k suites and a full extensions block, about MAX_CLIENT_HELLO bytes)."""

from __future__ import annotations

import gc
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "support"))

import hostile  # noqa: E402
from certs import PKI  # noqa: E402
from test_hostile_hello import CONFIG, LARGE, _large_client  # noqa: E402
from tlswrapper.keys.local import LocalKeyService  # noqa: E402
from tlswrapper.tls import suites as s  # noqa: E402
from tlswrapper.tls.server import ServerConnection  # noqa: E402


def main() -> None:
    pki = PKI.create(Path(tempfile.mkdtemp(prefix="tlswrapper-bench-")))
    print(f"MAX_CLIENT_HELLO = {s.MAX_CLIENT_HELLO} bytes")
    print(f"{'kind':<18} {'hello':>7} {'peak':>9} {'x max':>6} {'held':>9} {'ms':>6}")
    for kind in LARGE:
        data = hostile.records(_large_client(kind).start())
        times = []
        for traced in (False, False, False, True):   # timed without tracemalloc's cost
            keys = LocalKeyService()
            candidates = keys.load([str(pki["ecdsa-p256"].path)])
            gc.collect()
            if traced:
                tracemalloc.start()
            start = time.perf_counter()
            server = ServerConnection(CONFIG, keys)
            server.receive(data)
            server.choose_certificate(candidates)
            times.append(time.perf_counter() - start)
        elapsed = min(times[:3])
        held, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"{kind:<18} {len(data):>7} {peak:>9} {peak / s.MAX_CLIENT_HELLO:>6.1f} "
              f"{held:>9} {elapsed * 1000:>6.0f}")


if __name__ == "__main__":
    main()
