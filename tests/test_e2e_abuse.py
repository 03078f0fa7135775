"""Processes and memory under abuse: what a hostile or vanishing client leaves behind, counted
on live processes through /proc.

Rule: every claim is checked by an attacker's move against the real commands (tcpserver +
tlswrapper as subprocesses), never by calling tlswrapper's code; no timing assertion beyond
generous "gone within" limits.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

import pytest
from conftest import needs_root, our_command

import e2e

pytestmark = [needs_root, pytest.mark.timeout(180)]

GONE = 60.0      # generous: the processes of 100 connections on a loaded 2-core machine
SETTLE = 1.0     # after the last network process: what a key process still starting needs


def group_members(pgid: int) -> list[int]:
    """Live processes of process group `pgid` (TcpServer starts tcpserver in its own session:
    every connection's processes stay in its group, also once re-parented to init)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            data = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        fields = data[data.rindex(b")") + 2:].split()
        if fields[0] != b"Z" and int(fields[2]) == pgid:
            out.append(int(entry))
    return sorted(out)


def abrupt_clients(port: int, count: int) -> None:
    """`count` clients connect at once, then all reset their connection without a byte."""
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    for s in socks:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()


def test_burst_of_abrupt_clients_leaves_no_key_process_behind(pki):
    """100 clients connect and reset at once, while their key processes are still starting
    (importing cryptography, as root, not yet jailed). The jailed network process cannot
    signal such a key process, nor can PR_SET_PDEATHSIG reach it (the kernel checks the dying
    parent's credentials): once the network processes are gone, none of their key processes
    may be left running, re-parented to init."""
    with e2e.TcpServer([our_command(), "-f", pki.ecdsa_p256.path, "--", "cat"],
                       tcpserver_flags=("-HRDl0", "-c", "100")) as srv:
        abrupt_clients(srv.port, 100)
        assert srv.wait_idle(GONE) == [], srv.log()
        time.sleep(SETTLE)
        left = [pid for pid in group_members(srv.proc.pid) if pid != srv.proc.pid]
        described = [(pid, e2e.ppid_of(pid), e2e.uids(pid)) for pid in left if e2e.alive(pid)]
        assert described == [], f"left behind (pid, ppid, uids): {described}"
