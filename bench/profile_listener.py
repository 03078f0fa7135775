"""Profile the per-connection path of tlswrapper-listen with cProfile.

    .venv/bin/python bench/profile_listener.py [--count N] [--version 1.2|1.3] [--cert ecdsa|rsa]
                                               [--key] [--sort tottime|cumtime]

Runs the listener in this process (as `tlswrapper-listen`), makes N sequential connections with
Python's ssl client from a second process, and profiles each forked connection: the network
process (default) or, with --key, the key process. The profile is written to a descriptor
opened before the jail (the jail allows no new file), merged, and printed (top 40).
Jailed processes are not dumpable, so sampling profilers (py-spy) cannot attach to them.
"""

from __future__ import annotations

import argparse
import cProfile
import marshal
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as bench  # noqa: E402  (bench/run.py: certificates and the client)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=50)
    ap.add_argument("--version", default="1.2")
    ap.add_argument("--cert", default="ecdsa")
    ap.add_argument("--key", action="store_true", help="profile the key process instead")
    ap.add_argument("--sort", default="tottime")
    ap.add_argument("--lines", type=int, default=40)
    args = ap.parse_args()

    from tlswrapper.commands import cli, listen
    from tlswrapper.keys import process as key_process

    outdir = Path(tempfile.mkdtemp(prefix="tlsprof-"))
    certs = bench.make_certs(bench.RESULTS / "certs")
    port = bench.free_port()
    options = cli.parse(["-f", str(certs[args.cert]), "--", "cat"])
    sock = listen.bind(bench.HOST, port, 128)
    listen.prepare_imports()

    def dump(profile: cProfile.Profile, fd: int) -> None:
        profile.create_stats()
        data = marshal.dumps(profile.stats)
        while data:
            data = data[os.write(fd, data):]
        os.close(fd)

    original_serve = listen.spare_main
    original_main = key_process._key_process_main

    if args.key:
        original_factory = key_process._local_factory
        opened = []

        def factory(jail):
            # after the key process closed the fds it does not need, before its jail
            opened.append(os.open(outdir / f"{os.getpid()}.prof", os.O_WRONLY | os.O_CREAT,
                                  0o600))
            return original_factory(jail)

        def key_main(rfd, wfd, parent, _factory, jail, log):
            profile = cProfile.Profile(time.process_time)
            profile.enable()
            try:
                return original_main(rfd, wfd, parent, factory, jail, log)
            finally:
                profile.disable()
                if opened:
                    dump(profile, opened[0])
        key_process._key_process_main = key_main
    else:
        def serve(sock, close, opts, nofile=None):
            fd = os.open(outdir / f"{os.getpid()}.prof", os.O_WRONLY | os.O_CREAT, 0o600)
            profile = cProfile.Profile(time.process_time)
            real_exit = os._exit
            me = os.getpid()

            def exit_with_dump(code):
                if os.getpid() == me:     # not in the forked key process or prog
                    profile.disable()
                    dump(profile, fd)
                real_exit(code)
            os._exit = exit_with_dump
            profile.enable()
            original_serve(sock, close, opts, nofile)
        listen.spare_main = serve

    pid = os.fork()
    if pid == 0:
        listen.Listener(sock, options, 100).run()
        os._exit(0)
    sock.close()
    time.sleep(0.2)
    client = subprocess.run(
        [sys.executable, "-c",
         f"import sys; sys.path.insert(0, {str(HERE)!r}); import run, json; "
         f"r = run.handshakes({port}, {args.version!r}, 0, {args.count}); "
         f"print(r['count'] / r['seconds'], 'conn/s under the profiler')"],
        check=True, capture_output=True, text=True)
    print(client.stdout.strip())
    time.sleep(0.5)
    os.kill(pid, 15)
    os.waitpid(pid, 0)
    files = [p for p in outdir.iterdir() if p.stat().st_size]
    stats = None
    for p in files:
        tmp = p.with_suffix(".pstats")
        tmp.write_bytes(p.read_bytes())
        if stats is None:
            stats = pstats.Stats(str(tmp), stream=open(os.devnull, "w"))
        else:
            stats.add(str(tmp))
    if stats is None:
        print("no profiles written")
        return 1
    print(f"{len(files)} {'key' if args.key else 'network'} processes profiled")
    stats.stream = open(os.devnull, "w")
    stats.sort_stats(args.sort)
    stats.stream = sys.stdout
    stats.files = []
    stats.print_stats(args.lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
