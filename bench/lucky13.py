"""Time CbcProtection.open (MAC-then-encrypt) on records that fail in different ways, to see
whether the time to reject depends on the padding or on where the check failed (Lucky
Thirteen). No pass/fail: it prints the figures.

    .venv/bin/python bench/lucky13.py [-n 100000] [--size 512] [--suite 0xC013] [--version 0x0303]

Cases, all rejected with bad_record_mac (a MAC-then-encrypt record of `size` bytes of
ciphertext after the explicit IV):
    mac/pad0     good padding of length 0 (the longest content), one MAC bit flipped
    mac/pad255   good padding of length 255 (256 bytes less to MAC), one MAC bit flipped
    badpad/255   last byte 255, the padding bytes before it wrong
    badpad/15    last byte 15, the padding bytes before it wrong
A naive implementation (strip the padding it sees, MAC the rest, or stop at a bad padding)
shows mac/pad255 and badpad/* faster than mac/pad0; the script times one (naive_open, below,
never used by tlswrapper) on the same records for comparison.

The cases are interleaved in a shuffled order per round so that drift (frequency scaling,
other load) hits them alike. Reported per case: median, 10th and 90th percentile in
nanoseconds, and the median's difference from mac/pad0.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from tlswrapper.keys.protect import CbcProtection
from tlswrapper.tls import suites


def make_record(version: int, key: bytes, mac_key: bytes, mac_hash: str, size: int,
                case: str) -> bytes:
    mac_len = hashlib.new(mac_hash).digest_size
    if case == "mac/pad0":
        pad_len, fault = 0, "mac"
    elif case == "mac/pad255":
        pad_len, fault = 255, "mac"
    elif case == "badpad/255":
        pad_len, fault = 255, "pad"
    else:
        pad_len, fault = 15, "pad"
    content_len = size - mac_len - pad_len - 1
    if content_len < 0:
        raise SystemExit(f"--size {size} too small for {case}")
    content = os.urandom(content_len)
    header = (0).to_bytes(8, "big") + bytes((suites.APPLICATION_DATA,)) \
        + version.to_bytes(2, "big") + content_len.to_bytes(2, "big")
    mac = bytearray(hmac.new(mac_key, header + content, mac_hash).digest())
    padding = bytearray((pad_len,) * (pad_len + 1))
    if fault == "mac":
        mac[0] ^= 1
    else:
        padding[0] ^= 0x55
    plain = content + bytes(mac) + bytes(padding)
    if len(plain) % 16:
        raise SystemExit("--size must be a multiple of 16")
    iv = os.urandom(16)
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    body = iv + enc.update(plain) + enc.finalize()
    return bytes((suites.APPLICATION_DATA,)) + version.to_bytes(2, "big") \
        + len(body).to_bytes(2, "big") + body


def naive_open(key: bytes, mac_key: bytes, mac_hash: str, version: int, record: bytes) -> bool:
    """For comparison only: the textbook MAC-then-encrypt check without the countermeasure
    (stop at a bad padding, MAC only the content the padding leaves)."""
    body = record[5:]
    dec = Cipher(algorithms.AES(key), modes.CBC(body[:16])).decryptor()
    plain = dec.update(body[16:]) + dec.finalize()
    pad = plain[-1]
    if pad + 1 > len(plain) or plain[-pad - 1:] != bytes((pad,)) * (pad + 1):
        return False
    mac_len = hashlib.new(mac_hash).digest_size
    content = plain[:len(plain) - pad - 1 - mac_len]
    header = (0).to_bytes(8, "big") + bytes((record[0],)) + version.to_bytes(2, "big") \
        + len(content).to_bytes(2, "big")
    mac = hmac.new(mac_key, header + content, mac_hash).digest()
    return hmac.compare_digest(mac, plain[len(content):len(content) + mac_len])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=100_000, help="opens per case")
    ap.add_argument("--size", type=int, default=512, help="ciphertext bytes after the IV")
    ap.add_argument("--suite", type=lambda x: int(x, 0), default=0xC013)
    ap.add_argument("--version", type=lambda x: int(x, 0), default=suites.TLS12)
    args = ap.parse_args()
    suite = suites.SUITES[args.suite]
    if suite.mac is None or args.version < suites.TLS11:
        raise SystemExit("a CBC suite and TLS 1.1 or 1.2 (explicit IV) please")
    key, mac_key = os.urandom(suite.key_len), os.urandom(suite.mac_len)
    prot = CbcProtection(args.version, suite.cipher, key, os.urandom(16), suite.mac, mac_key)
    cases = ["mac/pad0", "mac/pad255", "badpad/255", "badpad/15"]
    recs = {c: make_record(args.version, key, mac_key, suite.mac, args.size, c) for c in cases}
    # Each record fails the same way every time: a failed open leaves seq unchanged, and the
    # explicit IV makes the result independent of the CBC stream's previous block.
    for c in cases:
        results, alert, reason = prot.open([recs[c]])
        if results or alert != suites.BAD_RECORD_MAC:
            raise SystemExit(f"{c}: expected bad_record_mac, got {alert} {reason}")
    times: dict[str, list[int]] = {c: [] for c in cases}
    naive: dict[str, list[int]] = {c: [] for c in cases}
    rng = random.Random(1)
    order = list(cases)
    clock = time.perf_counter_ns
    for _ in range(200):                    # warm-up
        for c in cases:
            prot.open([recs[c]])
    for _ in range(args.n):
        rng.shuffle(order)
        for c in order:
            rec = [recs[c]]
            t0 = clock()
            prot.open(rec)
            times[c].append(clock() - t0)
            t0 = clock()
            naive_open(key, mac_key, suite.mac, args.version, rec[0])
            naive[c].append(clock() - t0)
    print(f"{suite.name} {suites.VERSION_LABELS[args.version]}, {args.size}-byte records, "
          f"{args.n} opens per case, interleaved; Python {sys.version.split()[0]}")
    for title, table in (("CbcProtection.open (ours)", times),
                         ("naive MAC-then-encrypt check (reference, not used)", naive)):
        print(title)
        base = statistics.median(table["mac/pad0"])
        print(f"  {'case':12} {'median ns':>10} {'p10':>8} {'p90':>8} {'vs mac/pad0':>12}")
        for c in cases:
            t = sorted(table[c])
            med = statistics.median(t)
            p10, p90 = t[len(t) // 10], t[len(t) * 9 // 10]
            print(f"  {c:12} {med:10.0f} {p10:8d} {p90:8d} {med - base:+12.0f}")


if __name__ == "__main__":
    main()
