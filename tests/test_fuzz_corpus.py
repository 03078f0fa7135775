"""The fuzzing corpus replayed through every target (issue 12): fuzz/corpus/<target>/* are
the seeds and the inputs atheris found worth keeping (crashes fixed included), run here
without atheris so that CI fails if any of them regresses. The campaign itself: make fuzz."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
sys.path.insert(0, str(FUZZ))

import targets  # noqa: E402  (fuzz/targets.py)
from tlswrapper.tls import messages as m  # noqa: E402


@pytest.mark.parametrize("target", sorted(targets.TARGETS))
def test_corpus_replays_clean(target):
    files = sorted((FUZZ / "corpus" / target).iterdir())
    assert any(f.name.startswith("seed-") for f in files), f"no seeds for {target}"
    for f in files:
        try:
            targets.TARGETS[target](f.read_bytes())
        except Exception as e:     # report which input, then fail with the original error
            raise AssertionError(f"{target}: {f.name}: {e!r}") from e


def test_every_message_parser_is_a_target_and_has_a_seed():
    names = {n for n in dir(m) if n.startswith("parse_")}
    assert {n for n, _ in targets.PARSERS} == names
    seeded = {targets.PARSERS[f.read_bytes()[0] % len(targets.PARSERS)][0]
              for f in (FUZZ / "corpus" / "messages").glob("seed-*")}
    assert seeded == names, names - seeded


def test_every_target_has_a_max_len():
    assert set(targets.MAX_LEN) == set(targets.TARGETS)
