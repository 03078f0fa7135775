"""Run fuzz targets under atheris (coverage-guided, libFuzzer), one process per target.

Rule: the harness only wires targets.py to atheris; the campaign (time per target, where new
inputs go, the merge of what is worth keeping into fuzz/corpus, the report) is run_campaign.

    .venv/bin/python fuzz/run.py                      # every target, FUZZ_SECONDS (60) each
    .venv/bin/python fuzz/run.py --seconds 300 engine13 proxy
    .venv/bin/python fuzz/run.py --one engine13 [libFuzzer args...]   # one raw atheris run

New inputs are written to fuzz/.work/<target>/ (not in git); after each run, the inputs that
add coverage are merged into fuzz/corpus/<target>/ (libFuzzer -merge=1), crashes go to
fuzz/crashes/. Executions and coverage per target are printed at the end."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def one(target: str, libfuzzer_args: list[str]) -> None:
    import atheris
    # Instrument our package only: the coverage libFuzzer reports (cov:) is of tlswrapper's
    # own code, not of cryptography or the standard library.
    with atheris.instrument_imports(include=["tlswrapper"]):
        import targets
    fn = targets.TARGETS[target]

    def test_one_input(data: bytes) -> None:
        fn(data)

    atheris.Setup([_launcher(target), *libfuzzer_args], test_one_input)
    atheris.Fuzz()


def _launcher(target: str) -> str:
    """An executable that runs this target: libFuzzer starts argv[0] again for -merge=1
    (and -fork), with only libFuzzer's own arguments."""
    work = HERE / ".work"
    work.mkdir(exist_ok=True)
    path = work / f"run-{target}"
    text = f'#!/bin/sh\nexec "{sys.executable}" "{HERE / "run.py"}" --one {target} "$@"\n'
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
        path.chmod(0o755)
    return str(path)


_STATS = re.compile(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/(\S+).*?exec/s: (\d+)")


def campaign(names: list[str], seconds: int, merge: bool) -> int:
    import targets
    work = HERE / ".work"
    crashes = HERE / "crashes"
    crashes.mkdir(exist_ok=True)
    rows, failed = [], []
    for name in names:
        corpus = HERE / "corpus" / name
        scratch = work / name
        corpus.mkdir(parents=True, exist_ok=True)
        scratch.mkdir(parents=True, exist_ok=True)
        log = work / f"{name}.log"
        cmd = [sys.executable, str(HERE / "run.py"), "--one", name, str(scratch), str(corpus),
               f"-max_total_time={seconds}", f"-max_len={targets.MAX_LEN[name]}",
               "-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1",
               f"-artifact_prefix={crashes}/{name}-"]
        print(f"fuzzing {name} for {seconds} s ...", flush=True)
        with open(log, "w") as out:
            rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT)
        text = log.read_text(errors="replace")
        stats = _STATS.findall(text)
        last = stats[-1] if stats else ("0", "0", "0", "0", "0", "0")
        if rc != 0:
            failed.append(name)
            print(f"  {name}: exit {rc}, see {log} and {crashes}/", flush=True)
        if merge:
            subprocess.call([sys.executable, str(HERE / "run.py"), "--one", name, "-merge=1",
                             f"-max_len={targets.MAX_LEN[name]}", str(corpus), str(scratch)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for f in corpus.iterdir():
                if not f.name.startswith(("seed-", "found-")):
                    f.rename(corpus / f"found-{f.name}")
        rows.append((name, int(last[0]), int(last[5]), int(last[1]), int(last[2]),
                     len(list(corpus.iterdir())), "CRASH" if rc else "ok"))
    print(f"\n{'target':<10} {'execs':>10} {'exec/s':>7} {'cov':>6} {'ft':>7} {'corpus':>7}")
    for name, execs, rate, cov, ft, files, state in rows:
        print(f"{name:<10} {execs:>10} {rate:>7} {cov:>6} {ft:>7} {files:>7}  {state}")
    return 1 if failed else 0


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--one":
        one(sys.argv[2], sys.argv[3:])   # before anything imports tlswrapper uninstrumented
        return 0
    import targets
    p = argparse.ArgumentParser(description="Fuzz tlswrapper's parsers, engine and decoders.")
    p.add_argument("targets", nargs="*", default=list(targets.TARGETS),
                   help="targets to run (default: all): " + ", ".join(targets.TARGETS))
    p.add_argument("--seconds", type=int, default=int(os.environ.get("FUZZ_SECONDS", 60)))
    p.add_argument("--no-merge", action="store_true",
                   help="do not add new coverage inputs to fuzz/corpus")
    args = p.parse_args()
    unknown = set(args.targets) - set(targets.TARGETS)
    if unknown:
        p.error(f"unknown target(s): {', '.join(sorted(unknown))}")
    return campaign(args.targets, args.seconds, not args.no_merge)


if __name__ == "__main__":
    sys.exit(main())
